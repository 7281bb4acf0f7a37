"""Ray marching with empty-space skipping: emit only the samples that fall in occupied cells.

Samples sit at t = t_start + step * (k + u) along each ray (u: one jitter per ray in training, 0 otherwise), as in
TensoRF, but the samples in empty cells are never produced, so the field is queried only where something can be.
The output is packed: all samples of ray 0, then ray 1, ... (nerfacc's layout).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from vqrf.render.occupancy import OccupancyGrid

__all__ = ["ray_box", "march", "count_samples"]


def ray_box(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor, near: float, far: float):
    """Entry and exit distances of rays [R, 3] through ``aabb`` [2, 3], clamped to [near, far] -> ([R], [R])."""
    safe = torch.where(directions == 0, torch.full_like(directions, 1e-6), directions)
    t_a = (aabb[1] - origins) / safe
    t_b = (aabb[0] - origins) / safe
    t_in = torch.minimum(t_a, t_b).amax(-1).clamp(near, far)
    t_out = torch.maximum(t_a, t_b).amin(-1).clamp(near, far)
    return t_in, t_out


@njit(cache=True, inline="always")
def _occupied(x, y, z, lo, scale, cells) -> bool:
    fx = (x - lo[0]) * scale[0]
    fy = (y - lo[1]) * scale[1]
    fz = (z - lo[2]) * scale[2]
    nx, ny, nz = cells.shape
    # A sample on the box's face (where every ray enters) may land a rounding error outside it: let it in.
    tol = 1e-3
    if fx < -tol or fy < -tol or fz < -tol or fx > nx + tol or fy > ny + tol or fz > nz + tol:
        return False
    return cells[min(max(int(fx), 0), nx - 1), min(max(int(fy), 0), ny - 1), min(max(int(fz), 0), nz - 1)] != 0


@njit(parallel=True, cache=True)
def _count(origins, directions, t_start, t_end, step, jitter, lo, scale, cells, max_samples, counts):
    for r in prange(origins.shape[0]):
        n = 0
        for k in range(max_samples):
            t = t_start[r] + step * (k + jitter[r])
            if t >= t_end[r]:
                break
            if _occupied(
                origins[r, 0] + t * directions[r, 0],
                origins[r, 1] + t * directions[r, 1],
                origins[r, 2] + t * directions[r, 2],
                lo, scale, cells,
            ):
                n += 1
        counts[r] = n


@njit(parallel=True, cache=True)
def _fill(origins, directions, t_start, t_end, step, jitter, lo, scale, cells, max_samples, offsets, xyz, ts, ray_ids):
    for r in prange(origins.shape[0]):
        j = offsets[r]
        for k in range(max_samples):
            t = t_start[r] + step * (k + jitter[r])
            if t >= t_end[r]:
                break
            x = origins[r, 0] + t * directions[r, 0]
            y = origins[r, 1] + t * directions[r, 1]
            z = origins[r, 2] + t * directions[r, 2]
            if _occupied(x, y, z, lo, scale, cells):
                xyz[j, 0] = x
                xyz[j, 1] = y
                xyz[j, 2] = z
                ts[j] = t
                ray_ids[j] = r
                j += 1


def _host(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def _grid_args(occupancy: OccupancyGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cells = occupancy.cells.numpy()
    lo = _host(occupancy.aabb[0])
    scale = (np.array(cells.shape, dtype=np.float32) / _host(occupancy.aabb[1] - occupancy.aabb[0])).astype(np.float32)
    return lo, scale, cells


def count_samples(
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_start: torch.Tensor,
    t_end: torch.Tensor,
    step: float,
    occupancy: OccupancyGrid,
    max_samples: int,
) -> torch.Tensor:
    """[R] number of unjittered samples each ray would get in occupied space (no samples are materialised)."""
    counts = np.empty(origins.shape[0], dtype=np.int64)
    jitter = np.zeros(origins.shape[0], dtype=np.float32)
    _count(_host(origins), _host(directions), _host(t_start), _host(t_end), np.float32(step), jitter,
           *_grid_args(occupancy), max_samples, counts)
    return torch.from_numpy(counts).to(origins.device)


def march(
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_start: torch.Tensor,
    t_end: torch.Tensor,
    step: float,
    jitter: torch.Tensor,
    occupancy: OccupancyGrid,
    max_samples: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed samples of rays in occupied space.

    Args:
        origins, directions: [R, 3] rays.
        t_start, t_end: [R] the range to march.
        step: spacing of samples in t.
        jitter: [R] offset in [0, 1) of each ray's samples, in steps.
        occupancy: which cells may hold anything.
        max_samples: cap on samples per ray, counted before skipping.

    Returns:
        xyz [M, 3], t [M], ray_ids [M] (int64, non-decreasing), counts [R] (int64), on the rays' device.
    """
    device = origins.device
    o, d, t0, t1, u = _host(origins), _host(directions), _host(t_start), _host(t_end), _host(jitter)
    lo, scale, cells = _grid_args(occupancy)
    counts = np.empty(o.shape[0], dtype=np.int64)
    step = np.float32(step)
    _count(o, d, t0, t1, step, u, lo, scale, cells, max_samples, counts)
    offsets = np.zeros(o.shape[0], dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    total = int(counts.sum())
    xyz = np.empty((total, 3), dtype=np.float32)
    ts = np.empty(total, dtype=np.float32)
    ray_ids = np.empty(total, dtype=np.int64)
    _fill(o, d, t0, t1, step, u, lo, scale, cells, max_samples, offsets, xyz, ts, ray_ids)
    out = (torch.from_numpy(xyz), torch.from_numpy(ts), torch.from_numpy(ray_ids), torch.from_numpy(counts))
    return tuple(x.to(device) for x in out)

