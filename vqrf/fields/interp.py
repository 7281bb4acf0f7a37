"""Pieces the numba interpolation kernels share (``vm_kernel`` for TensoRF-VM, ``grid_kernel`` for dense grids)."""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["FASTMATH", "axis_corners"]

# fastmath without "nnan"/"ninf": the clamp in axis_corners must still see NaN/inf coordinates (they then contribute
# zero instead of producing a wild index); reassociation and contraction, which vectorise the channel loops, stay.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(inline="always", fastmath=FASTMATH)
def axis_corners(u: float, size: int) -> tuple[int, int, float, float]:
    """Linear-interpolation corners of normalised coord ``u`` on an axis of ``size`` grid points.

    Returns indices (i0, i1), clamped into range, and float32 weights (w0, w1), 0 for corners outside the axis.
    Float32 arithmetic in the same order as ``grid_sample`` so the two agree to rounding.
    """
    f = (np.float32(u) + np.float32(1.0)) * np.float32(0.5) * np.float32(size - 1)
    # Written so that NaN fails the test and is clamped too: NaN/inf points contribute nothing.
    if not (f > np.float32(-1.0)):
        f = np.float32(-1.0)
    if not (f < np.float32(size)):
        f = np.float32(size)
    f0 = np.floor(f)
    i0 = int(f0)
    w1 = f - f0
    w0 = np.float32(1.0) - w1
    i1 = i0 + 1
    if i0 < 0:
        w0 = np.float32(0.0)
        i0 = 0
    if i1 > size - 1:
        w1 = np.float32(0.0)
        i1 = size - 1
        if i0 > size - 1:
            w0 = np.float32(0.0)
            i0 = size - 1
    return i0, i1, w0, w1
