"""Per-site importance (method-spec §2.2, §5.2): how much each grid site contributes to the training images.

For site v of a feature grid (a plane texel of TensoRF, a voxel of DVGO), I(v) = sum over every training ray and
every sample s of w_s * c_v(x_s), where w_s is the sample's compositing weight and c_v the interpolation coefficient
with which a feature lookup at x_s reads site v (the field's ``splat_importance``). It is computed with density only,
through the renderer's own empty-space skipping, in chunks of rays.
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
from vqrf.fields.base import Field
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.volume import RenderSettings, sample_weights
from vqrf.step import RayPool

__all__ = ["grid_importance", "cached_importance"]


@torch.no_grad()
def grid_importance(
    field: Field,
    occupancy: OccupancyGrid,
    pool: RayPool,
    settings: RenderSettings,
    chunk: int = 1 << 14,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Importance of every site of each of the field's feature grids: one float64 tensor of the grid's ``shape`` each.

    Every pixel of ``pool`` is rendered once, without jitter.
    """
    device = field.aabb.device
    maps = [torch.zeros(g.shape, dtype=torch.float64, device=device) for g in field.feature_grids()]
    pixels = torch.arange(pool.colors.shape[0], device=pool.device)
    for idx in tqdm(pixels.split(chunk), disable=not progress, desc="importance", unit="chunk", dynamic_ncols=True):
        origins, directions, _ = pool.rays(idx)
        samples = sample_weights(field, occupancy, origins, directions, settings)
        if samples.weights.numel():
            field.splat_importance(samples.xyz, samples.weights, maps)
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
                return [tensors[f"grid_{i}"] for i in range(len(tensors) - 1)]
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # a stale or broken cache is recomputed
    maps = compute()
    payload = {f"grid_{i}": m.cpu().contiguous() for i, m in enumerate(maps)}
    payload["key"] = torch.tensor(list(key.encode()), dtype=torch.uint8)
    try:
        atomic_write(cache, lambda tmp: save_file(payload, str(tmp)))
    except OSError:
        pass  # read-only model directory: the cache is an optimisation only
    return maps
