"""Adam that leaves untouched the grid elements a step gave no gradient: DVGO's ``MaskedAdam``.

A dense voxel grid gets gradient only at the voxels the batch's rays sampled. Plain Adam still moves every other
voxel (its momentum decays but keeps pushing); with ``skip_zero_grad`` an element whose gradient is exactly 0 keeps
its value and its moments, as DVGO's CUDA kernel does. A per-element learning-rate multiplier (DVGO's
``pervoxel_lr``) can be set per parameter.

The update is ``torch.optim.Adam``'s (eps added to the bias-corrected ``sqrt(v)``; DVGO adds it before the
correction), so without masking or multiplier the two agree to rounding. Contiguous float32 CPU parameters go
through a one-pass numba kernel; other devices, other layouts, or ``VQRF_KERNELS=torch`` take the PyTorch reference
:func:`masked_adam_torch`, which never reads a value back to the host.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from numba import njit, prange, uint64
from torch import Tensor
from torch.optim.optimizer import ParamsT

from vqrf.backend import numba_threads, use_numba

__all__ = ["MaskedAdam", "masked_adam_torch"]

# No "nnan"/"ninf": a NaN or inf gradient must reach the parameter as it does in torch's Adam, not be assumed away.
_FASTMATH = {"nsz", "arcp", "contract", "reassoc"}

# Elements per parallel work item when no multiplier constrains the split.
_ROW = 4096


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _masked_adam_kernel(p, g, m, v, scale, k, step_size, w1, beta2, w2, eps, bc2_sqrt, skip_zero):  # pragma: no cover
    """One Adam step in place over one parameter, in a single pass.

    p, g, m, v: flat [N] float32 (parameter, gradient, first and second moments). Rows of ``k`` >= 1 consecutive
    elements (the last one may be short) share a multiplier: row r takes ``scale[r % scale.size]``. Scalars are
    float32: ``step_size = lr / (1 - beta1^t)``, ``w1 = 1 - beta1``, ``w2 = 1 - beta2``,
    ``bc2_sqrt = sqrt(1 - beta2^t)``.
    Indices are uint64: numba then skips negative-index wraparound, which lets the element loop vectorise (4x).
    """
    n = uint64(p.shape[0])
    k = uint64(k)
    period = uint64(scale.shape[0])
    for r in prange((n + k - uint64(1)) // k):
        row = uint64(r)
        lr_r = step_size * scale[row % period]
        start = row * k
        for i in range(start, min(start + k, n)):
            gi = g[i]
            if skip_zero and gi == 0:
                continue
            mi = m[i] + w1 * (gi - m[i])  # torch's lerp, so the moments round as in torch's Adam
            vi = v[i] * beta2 + w2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] -= lr_r * (mi / (np.sqrt(vi) / bc2_sqrt + eps))


def _bias_corrections(step: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    """``(1 - beta1^t, sqrt(1 - beta2^t))`` for the count ``step``: float64 scalars on its device (no host sync)."""
    t = step.double()
    return 1 - beta1**t, (1 - beta2**t).sqrt()


def _scale_row(shape: torch.Size, scale: Tensor | None) -> int | None:
    """Row length k for the kernel: element i of a contiguous parameter of ``shape`` takes multiplier
    ``scale.flatten()[(i // k) % scale.numel()]``; None when ``scale`` broadcasts in another way.

    That covers a multiplier varying along one run of consecutive dimensions: per voxel ``[X, Y, Z, 1]`` for
    ``[X, Y, Z, C]`` (k = C), per channel ``[C]`` (k = 1), or none at all (any k).
    """
    if scale is None or scale.numel() == 1:
        return _ROW
    padded = (1,) * (len(shape) - scale.dim()) + tuple(scale.shape)
    varying = [d for d, s in enumerate(padded) if s != 1]
    first, last = varying[0], varying[-1]
    if any(padded[d] == 1 and shape[d] != 1 for d in range(first, last + 1)):
        return None
    return max(1, math.prod(shape[last + 1:]))  # 1 when the parameter is empty


def _flat(t: Tensor) -> np.ndarray:
    """Flat numpy view of a contiguous tensor: writes go to the tensor."""
    return t.detach().numpy().reshape(-1)


def _numba_step(p: Tensor, g: Tensor, m: Tensor, v: Tensor, scale: Tensor | None, k: int, lr: float, beta1: float,
                beta2: float, eps: float, step: Tensor, skip_zero: bool) -> None:
    """:func:`masked_adam_torch` through the kernel; p, m, v, scale contiguous float32 CPU tensors."""
    bc1, bc2_sqrt = _bias_corrections(step, beta1, beta2)
    f32 = np.float32
    scale_np = np.ones(1, np.float32) if scale is None else _flat(scale)
    numba_threads()
    _masked_adam_kernel(_flat(p), _flat(g.contiguous()), _flat(m), _flat(v), scale_np, k, f32(lr / float(bc1)),
                        f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(eps), f32(float(bc2_sqrt)), skip_zero)


def masked_adam_torch(p: Tensor, g: Tensor, m: Tensor, v: Tensor, scale: Tensor | None, lr: float, beta1: float,
                      beta2: float, eps: float, step: Tensor, skip_zero: bool) -> None:
    """One Adam step in place, in PyTorch: the reference of the numba kernel, and the path on other devices.

    Args:
        p, g, m, v: the parameter, its gradient and its first and second moments, all of one shape [...].
        scale: per-element learning-rate multiplier broadcastable to ``p`` (e.g. [X, Y, Z, 1] per voxel), or None.
        lr, beta1, beta2, eps: Adam's hyperparameters.
        step: float32 scalar tensor, the step count t including this step (it gives the bias corrections).
        skip_zero: leave elements whose gradient is exactly 0 as they are (p, m and v).
    """
    bc1, bc2_sqrt = _bias_corrections(step, beta1, beta2)
    if skip_zero:
        moving = g != 0
        m.copy_(torch.where(moving, m.lerp(g, 1 - beta1), m))
        v.copy_(torch.where(moving, v.mul(beta2).addcmul_(g, g, value=1 - beta2), v))
    else:
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    update = m / (v.sqrt() / bc2_sqrt + eps) * (lr / bc1)
    if scale is not None:
        update = update * scale
    if skip_zero:
        update = torch.where(moving, update, 0.0)
    p.sub_(update)


class MaskedAdam(torch.optim.Optimizer):
    """Adam (``torch.optim.Adam``'s update) with DVGO's zero-gradient masking and per-element learning rates.

    A param group may set ``skip_zero_grad: bool`` (default False): elements whose gradient is exactly 0 then keep
    their value and moments, while the step count t of the parameter still advances on every step it has a gradient
    (as DVGO). :meth:`set_lr_scale` sets a parameter's learning-rate multiplier.

    State per parameter: ``step`` (float32 scalar tensor on the parameter's device), ``exp_avg``, ``exp_avg_sq``
    (the parameter's shape), and ``lr_scale`` if set: all tensors, so ``vqrf.step.optimizer_tensors`` saves them.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-8):
        if lr < 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"need lr >= 0, eps >= 0 and betas in [0, 1), got lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "skip_zero_grad": False})

    def set_lr_scale(self, param: Tensor, scale: Tensor) -> None:
        """Multiply ``param``'s learning rate per element by ``scale`` (a copy is kept in its state).

        ``scale`` must broadcast to ``param``'s shape, e.g. [X, Y, Z, 1] for a per-voxel rate on an [X, Y, Z, C]
        grid; 0 freezes an element.
        """
        if not any(param is q for group in self.param_groups for q in group["params"]):
            raise ValueError("set_lr_scale: the tensor is not a parameter of this optimiser")
        try:
            fits = torch.broadcast_shapes(scale.shape, param.shape) == param.shape
        except RuntimeError:  # incompatible sizes
            fits = False
        if not fits:
            raise ValueError(f"lr scale of shape {list(scale.shape)} does not broadcast to {list(param.shape)}")
        self.state[param]["lr_scale"] = torch.empty(scale.shape, dtype=param.dtype, device=param.device).copy_(scale)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step over every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("MaskedAdam does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                args = (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state.get("lr_scale"))
                hyper = (group["lr"], beta1, beta2, group["eps"], state["step"], group["skip_zero_grad"])
                k = self._kernel_row(*args)
                if k is None:
                    masked_adam_torch(*args, *hyper)
                else:
                    _numba_step(*args, k, *hyper)
        return loss

    @staticmethod
    def _kernel_row(p: Tensor, g: Tensor, m: Tensor, v: Tensor, scale: Tensor | None) -> int | None:
        """The kernel's row length if this parameter can take the numba path, else None."""
        tensors = (p, m, v) if scale is None else (p, m, v, scale)
        if not use_numba(p) or g.dtype != torch.float32:
            return None
        if not all(t.dtype == torch.float32 and t.device == p.device and t.is_contiguous() for t in tensors):
            return None
        return _scale_row(p.shape, scale)
