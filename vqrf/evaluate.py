"""Render a split with a trained field and score it: the field's standard test protocol."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vqrf.checkpoint import LoadedModel, atomic_write
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError
from vqrf.metrics import ImageMetrics
from vqrf.render.volume import render_image

__all__ = ["evaluate", "save_png", "write_json"]


def save_png(path: Path, image: torch.Tensor) -> None:
    """Write [H, W, 3] in [0, 1] as an 8-bit PNG, atomically."""
    pixels = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def evaluate(
    model: LoadedModel,
    scene: Scene,
    every: int = 1,
    out_dir: Path | None = None,
    lpips_weights: str | Path | None = None,
    use_lpips: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Render views 0, every, 2*every, ... of ``scene`` and score them against its images.

    Writes ``out_dir/renders/<view>.png`` and ``out_dir/metrics.json`` when ``out_dir`` is given.

    Returns:
        mean ``psnr``, ``ssim`` (and ``lpips_alex`` when weights are available), ``views``, ``render_seconds``,
        ``render_rays_per_s`` and a ``per_view`` list.
    """
    if every < 1:
        raise VqrfError(None, f"--every must be >= 1, got {every}")
    if model.scene.ndc != scene.ndc:
        raise VqrfError(scene.root, "this dataset's ray space (NDC or not) does not match the model's")
    settings = model.render_settings()
    metrics = ImageMetrics(lpips_weights, use_lpips=use_lpips)
    views = list(range(0, len(scene), every))
    render_seconds, n_rays, rows = 0.0, 0, []
    for i in tqdm(views, desc="eval", unit="view", disable=not progress):
        origins, directions = scene.rays(i)
        start = time.perf_counter()
        out = render_image(model.field, model.occupancy, origins, directions, settings)
        render_seconds += time.perf_counter() - start
        n_rays += origins.shape[0]
        pred = out["rgb"].reshape(*scene.hw, 3)
        row = {"view": scene.image_names[i], **metrics(pred, scene.image(i))}
        rows.append(row)
        if out_dir is not None:
            save_png(Path(out_dir) / "renders" / f"{scene.image_names[i]}.png", pred)
    result = {
        **metrics.mean(),
        "views": len(views),
        "render_seconds": render_seconds,
        "render_rays_per_s": n_rays / max(render_seconds, 1e-9),
        "per_view": rows,
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", result)
    return result
