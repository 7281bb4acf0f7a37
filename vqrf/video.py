"""Render a camera path to an mp4 (and a depth mp4 beside it), one frame in memory at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from vqrf.checkpoint import LoadedModel
from vqrf.data.scene import Cameras
from vqrf.errors import VqrfError
from vqrf.render.rays import camera_rays, ndc_rays
from vqrf.render.volume import render_image

__all__ = ["render_frame", "write_video"]


def render_frame(model: LoadedModel, cameras: Cameras, i: int,
                 cancelled: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """View ``i`` of ``cameras`` -> RGB uint8 [H, W, 3] and depth uint8 [H, W] (near..far mapped to 255..0).

    Videos, the viewer and the benchmarks all render through here. ``cancelled``: see ``render_image``.
    """
    origins, directions = camera_rays(cameras, i)
    info = model.scene
    if info.ndc:
        origins, directions = ndc_rays(origins, directions, info.height, info.width, info.ndc_focal)
    device = model.field.aabb.device
    out = render_image(model.field, model.occupancy, origins.to(device), directions.to(device), model.render_settings(),
                       cancelled=cancelled)
    h, w = cameras.height, cameras.width
    rgb = (out["rgb"].reshape(h, w, 3).clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
    near, far = (0.0, 1.0) if info.ndc else (info.near, info.far)
    depth = (out["depth"] / out["acc"].clamp_min(1e-6)).reshape(h, w)
    closeness = ((far - depth) / (far - near)).clamp(0, 1) * out["acc"].reshape(h, w)
    return rgb, (closeness * 255 + 0.5).byte().cpu().numpy()


def write_video(model: LoadedModel, cameras: Cameras, out: Path, fps: int = 30, progress: bool = True) -> list[Path]:
    """Render every view of ``cameras`` into ``out`` (mp4) and ``<out>_depth.mp4``; each is written to a temporary
    file and renamed into place, so an interrupted render never leaves a broken video."""
    import imageio.v2 as imageio

    depth_out = out.with_name(out.stem + "_depth" + out.suffix)
    temps = [p.with_name(f".{p.stem}.partial{p.suffix}") for p in (out, depth_out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"fps": fps, "codec": "libx264", "quality": 8, "macro_block_size": 1, "ffmpeg_log_level": "error"}
    writers = [imageio.get_writer(str(t), **options) for t in temps]
    try:
        for i in tqdm(range(len(cameras)), disable=not progress, desc="render", unit="frame", dynamic_ncols=True):
            rgb, depth = render_frame(model, cameras, i)
            writers[0].append_data(rgb)
            writers[1].append_data(np.repeat(depth[..., None], 3, axis=-1))
    except BaseException as e:
        for w, t in zip(writers, temps):
            try:
                w.close()
            except OSError:
                pass  # ffmpeg already failed; its message is the one worth showing
            t.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VqrfError(out, f"ffmpeg could not write the video ({str(e).splitlines()[0]})") from None
        raise
    for w in writers:
        w.close()
    for t, p in zip(temps, (out, depth_out)):
        os.replace(t, p)
    return [out, depth_out]
