"""Scatter sample weights onto grid sites with the coefficients a linear-interpolation lookup reads them with.

CPU tensors use a numba kernel; other devices (or ``VQRF_KERNELS=torch``) the PyTorch reference, which is what the
kernel is tested against.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from vqrf.backend import numba_threads, use_numba

__all__ = ["splat_bilinear", "splat_bilinear_torch"]


def splat_bilinear(target: torch.Tensor, u: torch.Tensor, v: torch.Tensor, weights: torch.Tensor) -> None:
    """Add ``weights`` [M] to the 4 texels around each point of ``target`` [H, W], in place.

    ``u`` (along W) and ``v`` (along H) are [M] coordinates in [-1, 1] with align_corners=True, clamped at the border
    exactly as the feature lookup clamps them. The numba path (float64 CPU tensors) skips non-finite points.
    """
    if not (use_numba(target) and target.dtype == torch.float64 and target.is_contiguous()):
        splat_bilinear_torch(target, u, v, weights)
        return
    parts = numba_threads()
    partial = np.zeros((parts, *target.shape))
    _splat_kernel(_f64(u), _f64(v), _f64(weights), partial)
    target += torch.from_numpy(partial.sum(0))


def _f64(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy(), dtype=np.float64)


@njit(parallel=True, cache=True)
def _splat_kernel(u, v, weights, partial):  # pragma: no cover - compiled
    """Each of ``partial``'s [P, H, W] slices takes one P-th of the points: no two threads add to one array."""
    parts, height, width = partial.shape
    n = u.shape[0]
    per = (n + parts - 1) // parts
    for p in prange(parts):
        out = partial[p]
        for i in range(p * per, min(n, (p + 1) * per)):
            px = min(max((u[i] + 1) * 0.5 * (width - 1), 0.0), width - 1.0)
            py = min(max((v[i] + 1) * 0.5 * (height - 1), 0.0), height - 1.0)
            if not (np.isfinite(px) and np.isfinite(py) and np.isfinite(weights[i])):
                continue
            x0 = min(np.floor(px), max(width - 2, 0))
            y0 = min(np.floor(py), max(height - 2, 0))
            fx, fy = px - x0, py - y0
            ix, iy = int(x0), int(y0)
            jx, jy = min(ix + 1, width - 1), min(iy + 1, height - 1)
            w = weights[i]
            out[iy, ix] += w * ((1 - fy) * (1 - fx))
            out[iy, jx] += w * ((1 - fy) * fx)
            out[jy, ix] += w * (fy * (1 - fx))
            out[jy, jx] += w * (fy * fx)


def splat_bilinear_torch(target: torch.Tensor, u: torch.Tensor, v: torch.Tensor, weights: torch.Tensor) -> None:
    """:func:`splat_bilinear` in PyTorch, on any device (the reference)."""
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
