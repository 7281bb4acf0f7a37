"""Ray marching with empty-space skipping: emit only the samples that fall in occupied cells.

Samples sit at t = t_start + step * (k + u) along each ray (u: one jitter per ray in training, 0 otherwise), as in
TensoRF, but the samples in empty cells are never produced, so the field is queried only where something can be.
The output is packed: all samples of ray 0, then ray 1, ... (nerfacc's layout).

Unbounded scenes march in the contraction's sample parameter s instead of t (:mod:`vqrf.render.contraction`): the
emitted positions are contracted points and the emitted distances the world ones.

Two implementations emit the same samples: numba loops for CPU tensors (the fast path there) and a vectorised
PyTorch version for every other device (CUDA) or when ``VQRF_KERNELS=torch``. Both compute sample positions and the
cell test in float64 and round the emitted positions to float32, so they agree sample for sample.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from vqrf.backend import use_numba
from vqrf.render.contraction import inner_span, t_to_s
from vqrf.render.occupancy import OccupancyGrid

__all__ = ["ray_box", "ray_span", "march", "count_samples"]


def ray_box(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor, near: float, far: float):
    """Entry and exit distances of rays [R, 3] through ``aabb`` [2, 3], clamped to [near, far] -> ([R], [R])."""
    safe = torch.where(directions == 0, torch.full_like(directions, 1e-6), directions)
    t_a = (aabb[1] - origins) / safe
    t_b = (aabb[0] - origins) / safe
    t_in = torch.minimum(t_a, t_b).amax(-1).clamp(near, far)
    t_out = torch.maximum(t_a, t_b).amin(-1).clamp(near, far)
    return t_in, t_out


def ray_span(origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor, near: float, far: float,
             contract: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Where to march rays [R, 3]: ([R] start, [R] end, inner spans or None), to pass on to :func:`march`.

    Bounded scenes march t through ``aabb`` clamped to [near, far]; contracted ones march the whole of [near, far] in
    the sample parameter s, which needs each ray's inner span.
    """
    if not contract:
        return *ray_box(origins, directions, aabb, near, far), None
    inner = inner_span(origins, directions)
    return t_to_s(near, inner), t_to_s(far, inner), inner


# A sample on the box's face (where every ray enters) may land a rounding error outside it: let it in.
_FACE_TOLERANCE = 1e-3
# Ray x step entries the PyTorch marcher holds at once (about 30 bytes each).
_TORCH_BLOCK = 1 << 23


@njit(cache=True, inline="always")
def _occupied(x, y, z, lo, scale, cells) -> bool:
    fx = (x - lo[0]) * scale[0]
    fy = (y - lo[1]) * scale[1]
    fz = (z - lo[2]) * scale[2]
    nx, ny, nz = cells.shape
    tol = _FACE_TOLERANCE
    if fx < -tol or fy < -tol or fz < -tol or fx > nx + tol or fy > ny + tol or fz > nz + tol:
        return False
    return cells[min(max(int(fx), 0), nx - 1), min(max(int(fy), 0), ny - 1), min(max(int(fz), 0), nz - 1)] != 0


@njit(cache=True, inline="always")
def _position(origins, directions, r, s, inner, contract):
    """(x, y, z, t) of the sample at parameter s on ray r: s is t, unless contracting (see vqrf.render.contraction)."""
    t = s
    if contract and s > inner[r]:
        span = np.float64(inner[r])  # float64 throughout, as the PyTorch marcher computes it
        t = span * span / max(2.0 * span - s, 1e-12)
    x = origins[r, 0] + t * directions[r, 0]
    y = origins[r, 1] + t * directions[r, 1]
    z = origins[r, 2] + t * directions[r, 2]
    if contract:
        norm = max(abs(x), abs(y), abs(z))
        if norm > 1.0:
            factor = (2.0 - 1.0 / norm) / norm
            x, y, z = x * factor, y * factor, z * factor
    return x, y, z, t


@njit(parallel=True, cache=True)
def _count(origins, directions, t_start, t_end, step, jitter, inner, contract, lo, scale, cells, max_samples, counts):
    for r in prange(origins.shape[0]):
        n = 0
        for k in range(max_samples):
            s = t_start[r] + step * (k + jitter[r])
            if s >= t_end[r]:
                break
            x, y, z, _ = _position(origins, directions, r, s, inner, contract)
            if _occupied(x, y, z, lo, scale, cells):
                n += 1
        counts[r] = n


@njit(parallel=True, cache=True)
def _fill(origins, directions, t_start, t_end, step, jitter, inner, contract, lo, scale, cells, max_samples, offsets,
          xyz, ts, ray_ids):
    for r in prange(origins.shape[0]):
        j = offsets[r]
        for k in range(max_samples):
            s = t_start[r] + step * (k + jitter[r])
            if s >= t_end[r]:
                break
            x, y, z, t = _position(origins, directions, r, s, inner, contract)
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
    inner: torch.Tensor | None = None,
) -> torch.Tensor:
    """[R] number of unjittered samples each ray would get in occupied space (no samples are materialised)."""
    jitter = torch.zeros_like(t_start)
    if not _numba_path(origins, occupancy):
        return _march_torch(origins, directions, t_start, t_end, step, jitter, occupancy, max_samples, False,
                            inner)[3]
    counts = np.empty(origins.shape[0], dtype=np.int64)
    _count(_host(origins), _host(directions), _host(t_start), _host(t_end), np.float32(step), _host(jitter),
           *_inner_args(inner, t_start), *_grid_args(occupancy), max_samples, counts)
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
    inner: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed samples of rays in occupied space.

    Args:
        origins, directions: [R, 3] rays.
        t_start, t_end: [R] the range to march (in s when contracting).
        step: spacing of samples in t (in s when contracting).
        jitter: [R] offset in [0, 1) of each ray's samples, in steps.
        occupancy: which cells may hold anything.
        max_samples: cap on samples per ray, counted before skipping.
        inner: [R] inner spans of unit-direction rays: march contracted space (see :func:`ray_span`); None: do not.

    Returns:
        xyz [M, 3] (contracted when contracting), t [M] (world distances along the rays), ray_ids [M] (int64,
        non-decreasing), counts [R] (int64), on the rays' device.
    """
    if not _numba_path(origins, occupancy):
        return _march_torch(origins, directions, t_start, t_end, step, jitter, occupancy, max_samples, True, inner)
    device = origins.device
    o, d, t0, t1, u = _host(origins), _host(directions), _host(t_start), _host(t_end), _host(jitter)
    inner_args = _inner_args(inner, t_start)
    lo, scale, cells = _grid_args(occupancy)
    counts = np.empty(o.shape[0], dtype=np.int64)
    step = np.float32(step)
    _count(o, d, t0, t1, step, u, *inner_args, lo, scale, cells, max_samples, counts)
    offsets = np.zeros(o.shape[0], dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    total = int(counts.sum())
    xyz = np.empty((total, 3), dtype=np.float32)
    ts = np.empty(total, dtype=np.float32)
    ray_ids = np.empty(total, dtype=np.int64)
    _fill(o, d, t0, t1, step, u, *inner_args, lo, scale, cells, max_samples, offsets, xyz, ts, ray_ids)
    out = (torch.from_numpy(xyz), torch.from_numpy(ts), torch.from_numpy(ray_ids), torch.from_numpy(counts))
    return tuple(x.to(device) for x in out)


def _inner_args(inner: torch.Tensor | None, like: torch.Tensor) -> tuple[np.ndarray, bool]:
    """The kernels' (inner spans, contract) arguments: a dummy array when not contracting."""
    if inner is None:
        return np.zeros(like.shape[0], dtype=np.float32), False
    return _host(inner), True


def _numba_path(origins: torch.Tensor, occupancy: OccupancyGrid) -> bool:
    return use_numba(origins) and occupancy.cells.device.type == "cpu"


def _march_torch(
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_start: torch.Tensor,
    t_end: torch.Tensor,
    step: float,
    jitter: torch.Tensor,
    occupancy: OccupancyGrid,
    max_samples: int,
    materialise: bool,
    inner: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`march` in PyTorch on the rays' device: every (ray, step) candidate of a block of rays at once.

    With ``materialise`` False only the counts are computed (the first three outputs are empty).
    """
    device = origins.device
    cells = occupancy.cells.to(device)
    shape = cells.shape
    lo = occupancy.aabb[0].to(device, torch.float32).double()
    # The same float32 scale as the numba path's, then float64 like its arithmetic.
    extent = (occupancy.aabb[1] - occupancy.aabb[0]).to(device, torch.float32)
    scale = (torch.tensor(shape, dtype=torch.float32, device=device) / extent).double()
    step64 = float(np.float32(step))
    n_rays = origins.shape[0]
    # Steps worth trying: the longest ray's span (one sync), never more than the cap.
    span = float(((t_end - t_start).clamp_min(0).double() / step64).max()) if n_rays else 0.0
    n_steps = max(1, min(max_samples, math.floor(span) + 2))
    ks = torch.arange(n_steps, device=device, dtype=torch.float64)
    flat_cells = cells.reshape(-1)
    counts, parts = [], []
    block = max(1, _TORCH_BLOCK // n_steps)
    for first in range(0, n_rays, block):
        rows = slice(first, first + block)
        o, d = origins[rows].double(), directions[rows].double()
        s = t_start[rows, None].double() + step64 * (ks + jitter[rows, None].double())  # [r, S]
        keep = s < t_end[rows, None].double()
        t = s
        if inner is not None:  # the same arithmetic as the numba kernel's _position
            span = inner[rows, None].to(device, torch.float32).double()
            t = torch.where(s > span, span * span / (2.0 * span - s).clamp_min(1e-12), s)
        position = [o[:, axis, None] + t * d[:, axis, None] for axis in range(3)]
        if inner is not None:
            norm = torch.maximum(torch.maximum(position[0].abs(), position[1].abs()), position[2].abs())
            factor = torch.where(norm > 1.0, (2.0 - 1.0 / norm) / norm, torch.ones_like(norm))
            position = [p * factor for p in position]
        flat = torch.zeros_like(t, dtype=torch.long)
        for axis in range(3):
            f = (position[axis] - lo[axis]) * scale[axis]
            keep &= (f >= -_FACE_TOLERANCE) & (f <= shape[axis] + _FACE_TOLERANCE)
            flat = flat * shape[axis] + f.long().clamp(0, shape[axis] - 1)
        keep &= flat_cells[flat] != 0
        counts.append(keep.sum(1))
        if materialise:
            ray, col = keep.nonzero(as_tuple=True)
            xyz = torch.stack([p[ray, col] for p in position], dim=-1)
            parts.append((xyz.float(), t[ray, col].float(), ray + first))
    counts = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long, device=device)
    if not parts:
        empty = torch.zeros(0, device=device)
        return empty.reshape(0, 3), empty, empty.long(), counts
    xyz, ts, ray_ids = (torch.cat(p) for p in zip(*parts))
    return xyz, ts, ray_ids, counts
