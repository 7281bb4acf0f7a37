"""Render a split with a trained field and score it: the field's standard test protocol."""

from __future__ import annotations

import json
import math
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
        ``render_rays_per_s``, a ``per_view`` list, and ``psnr_pooled``: the PSNR of the mean squared error over
        every scored pixel (what a training loop's PSNR over random pixels estimates; the protocol's ``psnr`` is
        the mean of the views' PSNRs, higher when views differ in difficulty).
    """
    if every < 1:
        raise VqrfError(None, f"--every must be >= 1, got {every}")
    if (model.scene.ndc, model.scene.contract) != (scene.ndc, scene.contract):
        raise VqrfError(scene.root, "this dataset's ray space (NDC, contracted or plain) does not match the model's")
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
    mean_mse = sum(10 ** (-row["psnr"] / 10) for row in rows) / len(rows)  # every view has H x W pixels
    result = {
        **metrics.mean(),
        "psnr_pooled": -10 * math.log10(max(mean_mse, 1e-10)),
        "views": len(views),
        "render_seconds": render_seconds,
        "render_rays_per_s": n_rays / max(render_seconds, 1e-9),
        "per_view": rows,
    }
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", result)
    return result
