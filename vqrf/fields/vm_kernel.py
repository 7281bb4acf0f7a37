"""Fused TensoRF-VM feature lookup: bilinear plane x linear line, per component, for 3 plane/line pairs.

On CPU tensors a numba kernel does the work (forward and backward, both cores); elsewhere (CUDA), or with the
environment variable ``VQRF_KERNELS=torch``, the pure-PyTorch reference built on ``F.grid_sample`` runs instead.
The backward of ``grid_sample`` dominates a PyTorch TensoRF step on a CPU; the numba path replaces it.

Conventions (TensoRF ``TensorVMSplit``, ``align_corners=True``, zero padding):

- ``xyz`` is normalised to [-1, 1]: -1 is texel index 0 and +1 is index ``size - 1`` along each axis.
- Plane ``i`` spans coords ``MAT_MODE[i] = (a, b)``: ``a`` runs along its width W, ``b`` along its height H.
  It is stored channels-last, ``[H, W, C_i]``.
- Line ``i`` runs along coord ``VEC_MODE[i] = c``, stored ``[L, C_i]``.
- Interpolation corners outside the grid contribute zero, as ``grid_sample(padding_mode="zeros")``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange, uint64
from torch import Tensor

from vqrf.backend import numba_threads, use_numba
from vqrf.fields.interp import FASTMATH, axis_corners

MAT_MODE = ((0, 1), (0, 2), (1, 2))
VEC_MODE = (2, 1, 0)

@njit(inline="always", fastmath=FASTMATH)
def _corners(xyz: np.ndarray, n: int, i: int, dims: np.ndarray, y0: int, y1: int, wy0: float, wy1: float) -> tuple:
    """Flat offsets and weights of the 4 plane corners and 2 line corners of point n in pair i, given its rows.

    Offsets are uint64: numba then skips negative-index wraparound, which keeps the channel loops contiguous
    (vectorised) instead of gathers/scatters.
    """
    x0, x1, wx0, wx1 = axis_corners(xyz[n, MAT_MODE[i][0]], dims[i, 1])
    l0, l1, wl0, wl1 = axis_corners(xyz[n, VEC_MODE[i]], dims[i, 3])
    c = uint64(dims[i, 2])
    w = uint64(dims[i, 1])
    r0 = uint64(y0) * w
    r1 = uint64(y1) * w
    return ((r0 + uint64(x0)) * c, (r0 + uint64(x1)) * c, (r1 + uint64(x0)) * c, (r1 + uint64(x1)) * c,
            uint64(l0) * c, uint64(l1) * c, wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1, wl0, wl1)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward_kernel(planes, lines, dims, xyz, out, reduce):  # pragma: no cover - compiled
    """Forward over points, split evenly across threads.

    planes: 3x flat [H*W*C]; lines: 3x flat [L*C]; dims: [3, 4] int64 rows (H, W, C, L); xyz: [N, 3];
    out: flat [N] if reduce else flat [N * sum C].
    """
    width = uint64(dims[0, 2] + dims[1, 2] + dims[2, 2])
    for n in prange(xyz.shape[0]):
        acc = np.float32(0.0)
        off = uint64(n) * width
        for i in range(3):
            pf = planes[i]
            lf = lines[i]
            y0, y1, wy0, wy1 = axis_corners(xyz[n, MAT_MODE[i][1]], dims[i, 0])
            b00, b01, b10, b11, bl0, bl1, w00, w01, w10, w11, wl0, wl1 = _corners(xyz, n, i, dims, y0, y1, wy0, wy1)
            c = uint64(dims[i, 2])
            if reduce:
                for ch in range(c):
                    p = w00 * pf[b00 + ch] + w01 * pf[b01 + ch] + w10 * pf[b10 + ch] + w11 * pf[b11 + ch]
                    acc += p * (wl0 * lf[bl0 + ch] + wl1 * lf[bl1 + ch])
            else:
                for ch in range(c):
                    p = w00 * pf[b00 + ch] + w01 * pf[b01 + ch] + w10 * pf[b10 + ch] + w11 * pf[b11 + ch]
                    out[off + ch] = p * (wl0 * lf[bl0 + ch] + wl1 * lf[bl1 + ch])
                off += c
        if reduce:
            out[n] = acc


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _backward_kernel(planes, lines, dims, xyz, grad_out, reduce, seg, bands, out, line_scratch):  # pragma: no cover
    """Scatter-add backward into one flat buffer ``out`` holding all 6 gradients; race-free without locks.

    Thread t owns rows ``bands[i, t] <= y < bands[i, t + 1]`` of plane i: it scans every point and adds only the
    plane corners in its rows, so no two threads write the same texel and no per-thread copy of a plane is needed.
    Line gradients (small) go to a per-thread copy, thread 0's being ``out`` itself, summed at the end; a point's
    line terms are added by the owner of its first row.

    planes, lines, dims, xyz, reduce: as the forward. grad_out: flat [N] if reduce else flat [N * sum C].
    seg: [6] int64 offsets in ``out`` of the gradients of planes 0-2, then lines 0-2; -1 where not needed.
    bands: [3, T + 1] int64 row boundaries, 0 first and H_i last. out: [S] float32, uninitialised.
    line_scratch: [T - 1, S - s0] float32, uninitialised: copies of ``out[s0:]``, where the line gradients lie
    (s0 = S - line_scratch.shape[1]).
    """
    n_pts = xyz.shape[0]
    n_threads = bands.shape[1] - 1
    width = uint64(dims[0, 2] + dims[1, 2] + dims[2, 2])
    c_max = max(dims[0, 2], dims[1, 2], dims[2, 2])
    s0 = out.shape[0] - line_scratch.shape[1]
    for t in prange(n_threads):
        ldst = out if t == 0 else line_scratch[t - 1]
        lseg = seg[3:] - (0 if t == 0 else s0)
        # Zero what this thread owns, on this thread: the first touch of fresh pages is parallel too.
        for i in range(3):
            if seg[i] >= 0:
                row = dims[i, 1] * dims[i, 2]
                out[seg[i] + bands[i, t] * row:seg[i] + bands[i, t + 1] * row] = 0.0
            if seg[3 + i] >= 0:
                ldst[lseg[i]:lseg[i] + dims[i, 3] * dims[i, 2]] = 0.0
        # Per-channel factors first, then one simple read-modify-write loop per corner: these vectorise.
        tmp = np.empty(c_max, np.float32)
        for n in range(n_pts):
            off = uint64(n) * width
            g = grad_out[n] if reduce else np.float32(0.0)
            for i in range(3):
                c = uint64(dims[i, 2])
                y0, y1, wy0, wy1 = axis_corners(xyz[n, MAT_MODE[i][1]], dims[i, 0])
                own0 = bands[i, t] <= y0 < bands[i, t + 1]
                own1 = bands[i, t] <= y1 < bands[i, t + 1]
                if own0 or own1:
                    b00, b01, b10, b11, bl0, bl1, w00, w01, w10, w11, wl0, wl1 = _corners(
                        xyz, n, i, dims, y0, y1, wy0, wy1)
                    if seg[i] >= 0:
                        lf = lines[i]
                        for ch in range(c):
                            gc = g if reduce else grad_out[off + ch]
                            tmp[ch] = gc * (wl0 * lf[bl0 + ch] + wl1 * lf[bl1 + ch])
                        base = uint64(seg[i])
                        if own0:
                            for ch in range(c):
                                out[base + b00 + ch] += w00 * tmp[ch]
                            for ch in range(c):
                                out[base + b01 + ch] += w01 * tmp[ch]
                        if own1:
                            for ch in range(c):
                                out[base + b10 + ch] += w10 * tmp[ch]
                            for ch in range(c):
                                out[base + b11 + ch] += w11 * tmp[ch]
                    if own0 and seg[3 + i] >= 0:
                        pf = planes[i]
                        for ch in range(c):
                            gc = g if reduce else grad_out[off + ch]
                            tmp[ch] = gc * (w00 * pf[b00 + ch] + w01 * pf[b01 + ch] + w10 * pf[b10 + ch]
                                            + w11 * pf[b11 + ch])
                        base = uint64(lseg[i])
                        for ch in range(c):
                            ldst[base + bl0 + ch] += wl0 * tmp[ch]
                        for ch in range(c):
                            ldst[base + bl1 + ch] += wl1 * tmp[ch]
                off += c
    for i in range(3):
        if seg[3 + i] >= 0:
            for k in range(seg[3 + i], seg[3 + i] + dims[i, 3] * dims[i, 2]):
                for t in range(n_threads - 1):
                    out[k] += line_scratch[t, k - s0]


def _bands(xyz: Tensor, dims: np.ndarray, threads: int) -> np.ndarray:
    """[3, threads + 1] row boundaries per plane giving each thread about the same number of points.

    Quantiles of the points' rows on a subsample of about 8192 points; empty input splits the rows evenly.
    """
    bands = np.empty((3, threads + 1), np.int64)
    frac = np.arange(threads + 1) / threads
    sample = xyz[:: max(1, xyz.shape[0] // 8192)].numpy()
    for i, (_, b) in enumerate(MAT_MODE):
        h = dims[i, 0]
        coords = sample[:, b][np.isfinite(sample[:, b])]  # a NaN would make every quantile NaN
        if len(coords):
            rows = np.clip(np.floor((coords + 1) * 0.5 * (h - 1)), 0, h - 1)
            bands[i] = np.round(np.quantile(rows, frac))
        else:
            bands[i] = np.round(frac * h)
        bands[i, 0] = 0
        bands[i, -1] = h
    return bands


def _flat(t: Tensor) -> np.ndarray:
    """Zero-copy flat float32 numpy view of a tensor (copies only if it is not contiguous)."""
    return t.detach().contiguous().numpy().reshape(-1)


def _dims(planes: Sequence[Tensor], lines: Sequence[Tensor]) -> np.ndarray:
    """[3, 4] int64 rows (H, W, C, L); checks the shapes agree."""
    dims = np.empty((3, 4), np.int64)
    for i in range(3):
        h, w, c = planes[i].shape
        length, c_line = lines[i].shape
        if c_line != c:
            raise ValueError(f"plane {i} has {c} components but line {i} has {c_line}")
        dims[i] = h, w, c, length
    return dims


def _forward(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz: Tensor, reduce: bool) -> Tensor:
    """Numba forward: [N] if reduce else [N, sum C]."""
    dims = _dims(planes, lines)
    n = xyz.shape[0]
    out = torch.empty((n,) if reduce else (n, int(dims[:, 2].sum())), dtype=torch.float32)
    numba_threads()
    _forward_kernel(tuple(_flat(p) for p in planes), tuple(_flat(l) for l in lines), dims, xyz.detach().numpy(),
                    out.numpy().reshape(-1), reduce)
    return out


class _VMFeatures(torch.autograd.Function):
    """Autograd wrapper of the numba kernels. Inputs: xyz, reduce, then the 3 planes and the 3 lines."""

    @staticmethod
    def forward(ctx, xyz: Tensor, reduce: bool, *params: Tensor) -> Tensor:
        ctx.reduce = reduce
        ctx.save_for_backward(xyz, *params)
        return _forward(params[:3], params[3:], xyz, reduce)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        xyz, *params = ctx.saved_tensors
        planes, lines = params[:3], params[3:]
        need = ctx.needs_input_grad[2:]
        # All gradients live in one flat buffer, returned as views: one allocation, one kernel.
        seg = np.full(6, -1, np.int64)
        size = 0
        for k, p in enumerate(params):
            if need[k]:
                seg[k] = size
                size += p.numel()
        flat = torch.empty(size, dtype=torch.float32)
        dims = _dims(planes, lines)
        threads = numba_threads()
        # Lines come after the planes in the buffer; per-thread copies cover only them.
        line_start = min((seg[k] for k in range(3, 6) if need[k]), default=size)
        line_scratch = np.empty((threads - 1, size - line_start), np.float32)
        _backward_kernel(tuple(_flat(p) for p in planes), tuple(_flat(l) for l in lines), dims, xyz.numpy(),
                         _flat(grad_out.float()), ctx.reduce, seg, _bands(xyz, dims, threads), flat.numpy(),
                         line_scratch)
        grads = [flat[seg[k]:seg[k] + p.numel()].view(p.shape) if need[k] else None for k, p in enumerate(params)]
        return (None, None, *grads)


def vm_features_torch(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz: Tensor, reduce: bool) -> Tensor:
    """Pure-PyTorch reference of :func:`vm_features` (``F.grid_sample``, ``align_corners=True``, zero padding).

    Args:
        planes: 3 tensors [H_i, W_i, C_i], channels-last.
        lines: 3 tensors [L_i, C_i].
        xyz: [N, 3] points normalised to [-1, 1].
        reduce: sum all components (density) instead of concatenating them (appearance).

    Returns:
        [N] if ``reduce`` else [N, sum_i C_i].
    """
    n = xyz.shape[0]
    feats = []
    for i, ((a, b), c) in enumerate(zip(MAT_MODE, VEC_MODE)):
        plane = planes[i].permute(2, 0, 1).unsqueeze(0)  # [1, C, H, W]
        line = lines[i].t().unsqueeze(0).unsqueeze(-1)  # [1, C, L, 1]
        grid_p = xyz[:, [a, b]].view(1, n, 1, 2)
        grid_l = torch.stack([torch.zeros_like(xyz[:, c]), xyz[:, c]], dim=-1).view(1, n, 1, 2)
        p = F.grid_sample(plane, grid_p, mode="bilinear", padding_mode="zeros", align_corners=True)
        l = F.grid_sample(line, grid_l, mode="bilinear", padding_mode="zeros", align_corners=True)
        feats.append((p * l).view(planes[i].shape[2], n))  # [C_i, N]
    if reduce:
        return feats[0].sum(0) + feats[1].sum(0) + feats[2].sum(0)
    return torch.cat(feats, dim=0).t()


def vm_features(planes: Sequence[Tensor], lines: Sequence[Tensor], xyz: Tensor, reduce: bool) -> Tensor:
    """TensoRF-VM features of points: per component, bilinear plane value times linear line value.

    CPU tensors go through the fused numba kernel (threads: ``torch.get_num_threads()``); other devices, or the
    environment variable ``VQRF_KERNELS=torch``, use the :func:`vm_features_torch` reference. Differentiable in
    ``planes`` and ``lines``.

    Args:
        planes: 3 float32 tensors [H_i, W_i, C_i], channels-last; plane i spans coords ``MAT_MODE[i]``.
        lines: 3 float32 tensors [L_i, C_i]; line i runs along coord ``VEC_MODE[i]``.
        xyz: [N, 3] float32 points normalised to [-1, 1] (align_corners=True); receives no gradient.
        reduce: True for density (sum of all components), False for appearance (components concatenated).

    Returns:
        [N] if ``reduce`` else [N, sum_i C_i], pair 0 first.
    """
    if not use_numba(xyz):
        return vm_features_torch(planes, lines, xyz, reduce)
    # The kernels do no bounds checks: a bad shape must fail here, not read past an array.
    if len(planes) != 3 or len(lines) != 3:
        raise ValueError(f"need 3 planes and 3 lines, got {len(planes)} and {len(lines)}")
    if xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be [N, 3], got {list(xyz.shape)}")
    params = (*planes, *lines)
    for k, t in enumerate(params):
        if t.dim() != (3 if k < 3 else 2):
            raise ValueError(f"planes must be [H, W, C] and lines [L, C], got {list(t.shape)}")
    for t in (xyz, *params):
        if t.dtype != torch.float32:
            raise TypeError(f"vm_features needs float32 tensors, got {t.dtype}")
    xyz = xyz.detach().contiguous()
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _VMFeatures.apply(xyz, reduce, *params)
    return _forward(planes, lines, xyz, reduce)
