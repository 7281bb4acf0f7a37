"""Fused trilinear lookup in a dense feature grid (DVGO density and k0 grids), and its transpose, the splat.

On CPU tensors numba kernels do the work (forward and backward, all of torch's threads); elsewhere (CUDA), or with
the environment variable ``VQRF_KERNELS=torch``, the pure-PyTorch reference built on ``F.grid_sample`` runs instead.

Conventions (``align_corners=True``, zero padding):

- The grid is channels-last, ``[X, Y, Z, C]``.
- ``xyz`` is normalised to [-1, 1]: along each axis -1 is voxel index 0 and +1 is index ``size - 1``;
  ``xyz[:, 0]`` indexes X, ``xyz[:, 1]`` Y and ``xyz[:, 2]`` Z.
- Interpolation corners outside the grid contribute zero, as ``grid_sample(padding_mode="zeros")``; NaN/inf points
  give zero. An axis of size 1 is constant along it: every finite coordinate reads index 0, as in ``grid_sample``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange, uint64
from torch import Tensor

from vqrf.backend import numba_threads, use_numba
from vqrf.fields.interp import FASTMATH, axis_corners

__all__ = ["grid_features", "grid_features_torch", "splat_trilinear"]

@njit(inline="always", fastmath=FASTMATH)
def _yz_corners(xyz: np.ndarray, n: int, dims: np.ndarray) -> tuple:
    """Offsets (within an X slab) and weights of the 4 (y, z) corners of point n: 00, 01, 10, 11 as (y, z).

    Offsets are uint64 and already scaled by C: numba then skips negative-index wraparound, which keeps the channel
    loops contiguous (vectorised) instead of gathers/scatters.
    """
    y0, y1, wy0, wy1 = axis_corners(xyz[n, 1], dims[1])
    z0, z1, wz0, wz1 = axis_corners(xyz[n, 2], dims[2])
    c = uint64(dims[3])
    r0 = uint64(y0) * uint64(dims[2])
    r1 = uint64(y1) * uint64(dims[2])
    return ((r0 + uint64(z0)) * c, (r0 + uint64(z1)) * c, (r1 + uint64(z0)) * c, (r1 + uint64(z1)) * c,
            wy0 * wz0, wy0 * wz1, wy1 * wz0, wy1 * wz1)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward_kernel(grid, dims, xyz, out):  # pragma: no cover - compiled
    """Trilinear lookup over points, split evenly across threads.

    grid: flat [X*Y*Z*C]; dims: [4] int64 (X, Y, Z, C); xyz: [N, 3]; out: flat [N*C].
    """
    c = uint64(dims[3])
    slab = uint64(dims[1] * dims[2]) * c
    for n in prange(xyz.shape[0]):
        x0, x1, wx0, wx1 = axis_corners(xyz[n, 0], dims[0])
        b00, b01, b10, b11, w00, w01, w10, w11 = _yz_corners(xyz, n, dims)
        s0 = uint64(x0) * slab
        s1 = uint64(x1) * slab
        off = uint64(n) * c
        for ch in range(c):
            v0 = w00 * grid[s0 + b00 + ch] + w01 * grid[s0 + b01 + ch] + w10 * grid[s0 + b10 + ch] \
                + w11 * grid[s0 + b11 + ch]
            v1 = w00 * grid[s1 + b00 + ch] + w01 * grid[s1 + b01 + ch] + w10 * grid[s1 + b10 + ch] \
                + w11 * grid[s1 + b11 + ch]
            out[off + ch] = wx0 * v0 + wx1 * v1


@njit(inline="always", fastmath=FASTMATH)
def _add_slab(out, s, b00, b01, b10, b11, w00, w01, w10, w11, values, off, c):
    """Add the point's ``values[off:off + c]`` times the 4 corner weights to its corners in the slab at ``s``.

    One simple read-modify-write loop per corner: these vectorise.
    """
    for ch in range(c):
        out[s + b00 + ch] += w00 * values[off + ch]
    for ch in range(c):
        out[s + b01 + ch] += w01 * values[off + ch]
    for ch in range(c):
        out[s + b10 + ch] += w10 * values[off + ch]
    for ch in range(c):
        out[s + b11 + ch] += w11 * values[off + ch]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _splat_kernel(dims, xyz, values, bands, out):  # pragma: no cover - compiled
    """Scatter-add each point's ``values`` times its trilinear coefficients into ``out``; race-free without locks.

    Thread t owns X slabs ``bands[t] <= x < bands[t + 1]``: it scans every point and adds only the corners in its
    slabs, so no two threads write the same voxel and no per-thread copy of the grid is needed.

    dims: [4] int64 (X, Y, Z, C); xyz: [N, 3]; values: flat [N*C] float32. bands: [T + 1] int64 slab boundaries,
    0 first and X last. out: flat [X*Y*Z*C], float32 (gradients) or float64 (importance sums), uninitialised.
    """
    n_pts = xyz.shape[0]
    c = uint64(dims[3])
    slab = uint64(dims[1] * dims[2]) * c
    slab_len = dims[1] * dims[2] * dims[3]
    for t in prange(bands.shape[0] - 1):
        lo = bands[t]
        hi = bands[t + 1]
        # Zero what this thread owns, on this thread: the first touch of fresh pages is parallel too.
        out[lo * slab_len:hi * slab_len] = 0.0
        for n in range(n_pts):
            x0, x1, wx0, wx1 = axis_corners(xyz[n, 0], dims[0])
            own0 = lo <= x0 < hi
            own1 = lo <= x1 < hi
            if own0 or own1:
                b00, b01, b10, b11, w00, w01, w10, w11 = _yz_corners(xyz, n, dims)
                off = uint64(n) * c
                if own0:
                    _add_slab(out, uint64(x0) * slab, b00, b01, b10, b11, wx0 * w00, wx0 * w01, wx0 * w10,
                              wx0 * w11, values, off, c)
                if own1:
                    _add_slab(out, uint64(x1) * slab, b00, b01, b10, b11, wx1 * w00, wx1 * w01, wx1 * w10,
                              wx1 * w11, values, off, c)


def _bands(xyz: Tensor, size_x: int, threads: int) -> np.ndarray:
    """[threads + 1] X-slab boundaries giving each thread about the same number of points.

    Quantiles of the points' slabs on a subsample of about 8192 finite points; otherwise the slabs split evenly.
    """
    frac = np.arange(threads + 1) / threads
    sample = xyz[:: max(1, xyz.shape[0] // 8192), 0].numpy()
    sample = sample[np.isfinite(sample)]  # NaN would make every quantile NaN
    if len(sample):
        slabs = np.clip(np.floor((sample + 1) * 0.5 * (size_x - 1)), 0, size_x - 1)
        bands = np.round(np.quantile(slabs, frac)).astype(np.int64)
    else:
        bands = np.round(frac * size_x).astype(np.int64)
    bands[0] = 0
    bands[-1] = size_x
    return bands


def _flat(t: Tensor) -> np.ndarray:
    """Zero-copy flat numpy view of a tensor (copies only if it is not contiguous)."""
    return t.detach().contiguous().numpy().reshape(-1)


def _forward(grid: Tensor, xyz: Tensor) -> Tensor:
    """Numba lookup: [N, C]."""
    out = torch.empty(xyz.shape[0], grid.shape[3], dtype=torch.float32)
    numba_threads()
    _forward_kernel(_flat(grid), np.array(grid.shape, np.int64), xyz.numpy(), out.numpy().reshape(-1))
    return out


def _splat(shape: tuple[int, int, int, int], xyz: Tensor, values: Tensor, dtype: torch.dtype) -> Tensor:
    """Numba splat of ``values`` [N, C] float32 at ``xyz`` [N, 3] into a new ``dtype`` grid [X, Y, Z, C] = ``shape``."""
    out = torch.empty(shape, dtype=dtype)
    threads = numba_threads()
    _splat_kernel(np.array(shape, np.int64), xyz.numpy(), _flat(values), _bands(xyz, shape[0], threads),
                  out.numpy().reshape(-1))
    return out


class _GridFeatures(torch.autograd.Function):
    """Autograd wrapper of the numba kernels. Inputs: xyz (no gradient), grid."""

    @staticmethod
    def forward(ctx, xyz: Tensor, grid: Tensor) -> Tensor:
        ctx.save_for_backward(xyz)
        ctx.grid_shape = tuple(grid.shape)
        return _forward(grid, xyz)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[None, Tensor]:
        (xyz,) = ctx.saved_tensors
        # The lookup is linear in the grid: its gradient is the splat of grad_out.
        return None, _splat(ctx.grid_shape, xyz, grad_out, torch.float32)


def _check(xyz: Tensor, grid_shape: tuple[int, ...], others: tuple[Tensor, ...]) -> None:
    """Shapes, dtypes and devices the numba kernels rely on (they do no bounds checks)."""
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be [N, 3], got {list(xyz.shape)}")
    if len(grid_shape) != 4 or min(grid_shape) < 1:
        raise ValueError(f"grid must be [X, Y, Z, C] with every size >= 1, got {list(grid_shape)}")
    for t in (xyz, *others):
        if t.dtype != torch.float32:
            raise TypeError(f"the numba grid kernels need float32 tensors, got {t.dtype}")
        if t.device != xyz.device:
            raise ValueError(f"tensors on different devices: {t.device} and {xyz.device}")


def grid_features_torch(grid: Tensor, xyz: Tensor) -> Tensor:
    """Pure-PyTorch reference of :func:`grid_features` (``F.grid_sample``, ``align_corners=True``, zero padding).

    Differentiable in ``grid`` and, unlike :func:`grid_features`, in ``xyz``.

    Args:
        grid: [X, Y, Z, C], channels-last.
        xyz: [N, 3] points normalised to [-1, 1].

    Returns:
        [N, C].
    """
    n, c = xyz.shape[0], grid.shape[3]
    # grid_sample's input is [1, C, D, H, W] and its coords are ordered (W, H, D) = (z, y, x) here.
    volume = grid.permute(3, 0, 1, 2).unsqueeze(0)
    coords = xyz.flip(-1).view(1, n, 1, 1, 3)
    out = F.grid_sample(volume, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.view(c, n).t()


def grid_features(grid: Tensor, xyz: Tensor) -> Tensor:
    """Trilinear features of points in a dense channels-last grid.

    CPU tensors go through the fused numba kernel (threads: ``torch.get_num_threads()``); other devices, or the
    environment variable ``VQRF_KERNELS=torch``, use the :func:`grid_features_torch` reference. Differentiable in
    ``grid`` only. The numba path reads a contiguous grid; any other (a permuted channels-first grid) is copied on
    every call.

    Args:
        grid: float32 [X, Y, Z, C], channels-last (a DVGO density grid has C = 1, its k0 grid C = 12).
        xyz: [N, 3] float32 points normalised to [-1, 1] (align_corners=True); receives no gradient.

    Returns:
        [N, C].
    """
    xyz = xyz.detach()
    if not use_numba(xyz):
        return grid_features_torch(grid, xyz)
    _check(xyz, tuple(grid.shape), (grid,))
    xyz = xyz.contiguous()
    if torch.is_grad_enabled() and grid.requires_grad:
        return _GridFeatures.apply(xyz, grid)
    return _forward(grid, xyz)


def splat_trilinear(shape: tuple[int, int, int], xyz: Tensor, weights: Tensor) -> Tensor:
    """Add each point's weight times its trilinear coefficient to the 8 voxels around it: the transpose of
    :func:`grid_features` with C = 1, e.g. per-voxel importance = sum of sample weights times coefficients.

    Sums are accumulated in float64 within the call and returned as float32; summing many calls is best done by
    the caller in float64. Corners outside the grid and NaN/inf points add nothing. CPU tensors use the numba
    kernel, other devices (or ``VQRF_KERNELS=torch``) the gradient of :func:`grid_features_torch` in float64.

    Args:
        shape: grid size (X, Y, Z).
        xyz: [N, 3] float32 points normalised to [-1, 1] (align_corners=True).
        weights: [N] float32.

    Returns:
        [X, Y, Z] float32, on the device of ``xyz``.
    """
    xyz, weights = xyz.detach(), weights.detach()
    if weights.shape != xyz.shape[:1]:
        raise ValueError(f"weights must be [N] for xyz [N, 3], got {list(weights.shape)} and {list(xyz.shape)}")
    if len(shape) != 3:
        raise ValueError(f"shape must be (X, Y, Z), got {shape}")
    grid_shape = (*(int(s) for s in shape), 1)
    if not use_numba(xyz):
        ones = torch.ones(grid_shape, dtype=torch.float64, device=xyz.device, requires_grad=True)
        with torch.enable_grad():
            out = grid_features_torch(ones, xyz.double())
        (grad,) = torch.autograd.grad(out, ones, weights.double().unsqueeze(1))
        return grad[..., 0].float()
    _check(xyz, grid_shape, (weights,))
    return _splat(grid_shape, xyz.contiguous(), weights.unsqueeze(1), torch.float64)[..., 0].float()
