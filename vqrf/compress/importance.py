"""Per-texel importance (method-spec §2.2): how much each plane texel contributes to the training images.

For plane i and texel (u, v), I_i(u, v) = sum over every training ray and every sample s of w_s * b_uv(proj_i(x_s)),
where w_s is the sample's compositing weight and b_uv its bilinear coefficient (align_corners=True) at that texel.
It is computed with density only, through the renderer's own empty-space skipping, in chunks of rays.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vqrf.checkpoint import atomic_write
from vqrf.fields.tensorf import TensorVM
from vqrf.fields.vm_kernel import MAT_MODE
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.volume import RenderSettings, sample_weights
from vqrf.step import RayPool

__all__ = ["splat_bilinear", "plane_importance", "cached_importance"]


def splat_bilinear(target: torch.Tensor, u: torch.Tensor, v: torch.Tensor, weights: torch.Tensor) -> None:
    """Add ``weights`` [M] to the 4 texels around each point of ``target`` [H, W], in place.

    ``u`` (along W) and ``v`` (along H) are [M] coordinates in [-1, 1] with align_corners=True, clamped at the border
    exactly as the feature lookup clamps them.
    """
    height, width = target.shape

    def axis(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = ((x + 1) * 0.5 * (size - 1)).clamp(0, size - 1)
        low = pos.floor().clamp(max=max(size - 2, 0))
        return low.long(), pos - low

    x0, fx = axis(u, width)
    y0, fy = axis(v, height)
    x1 = (x0 + 1).clamp(max=width - 1)
    y1 = (y0 + 1).clamp(max=height - 1)
    flat = target.view(-1)
    for ys, xs, w in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx), (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx)):
        flat.index_add_(0, ys * width + xs, weights * w)


@torch.no_grad()
def plane_importance(
    field: TensorVM,
    occupancy: OccupancyGrid,
    pool: RayPool,
    settings: RenderSettings,
    chunk: int = 1 << 14,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Importance of every texel of the 3 plane positions: 3 tensors [H_i, W_i] (float64 sums).

    Density and appearance plane i share the same texel grid, so one map per position serves both.
    Every pixel of ``pool`` is rendered once, without jitter.
    """
    maps = [torch.zeros(p.shape[:2], dtype=torch.float64, device=field.aabb.device) for p in field.density_planes]
    pixels = torch.arange(pool.colors.shape[0], device=pool.device)
    for idx in tqdm(pixels.split(chunk), disable=not progress, desc="importance", unit="chunk", dynamic_ncols=True):
        origins, directions, _ = pool.rays(idx)
        samples = sample_weights(field, occupancy, origins, directions, settings)
        if samples.weights.numel() == 0:
            continue
        coords = field.normalize(samples.xyz).double()
        weights = samples.weights.double()
        for target, (a, b) in zip(maps, MAT_MODE):
            splat_bilinear(target, coords[:, a], coords[:, b], weights)
    return maps


def _fingerprint(model_path: Path, data: str, downscale: float) -> str:
    stat = model_path.stat()
    key = {"model": str(model_path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
           "data": str(Path(data).resolve()), "downscale": downscale}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_importance(
    model_path: Path,
    data: str,
    downscale: float,
    compute,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Importance maps from ``MODEL.importance.safetensors`` next to the model when it matches; else ``compute()``.

    The cache is keyed by the model file (path, size, mtime) and the dataset (path, downscale).
    """
    cache = model_path.with_name(model_path.stem + ".importance.safetensors")
    key = _fingerprint(model_path, data, downscale)
    if cache.is_file():
        try:
            tensors = load_file(str(cache))
            if tensors.get("key") is not None and bytes(tensors["key"].tolist()).decode() == key:
                if progress:
                    print(f"importance: reusing {cache}")
                return [tensors[f"plane_{i}"] for i in range(3)]
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # a stale or broken cache is recomputed
    maps = compute()
    payload = {f"plane_{i}": m.cpu().contiguous() for i, m in enumerate(maps)}
    payload["key"] = torch.tensor(list(key.encode()), dtype=torch.uint8)
    try:
        atomic_write(cache, lambda tmp: save_file(payload, str(tmp)))
    except OSError:
        pass  # read-only model directory: the cache is an optimisation only
    return maps
