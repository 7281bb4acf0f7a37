"""Which implementation of the hot loops runs: the numba CPU kernels, or their pure-PyTorch references.

The numba kernels (VM feature lookup, ray marching) are the fast path for CPU tensors. Tensors on any other device
(CUDA) take the PyTorch references, which are also what ``VQRF_KERNELS=torch`` forces on the CPU, so the code path a
GPU runs can be tested on a machine without one.
"""

from __future__ import annotations

import os

import numba
import torch

__all__ = ["KERNELS_ENV", "numba_threads", "use_numba"]

KERNELS_ENV = "VQRF_KERNELS"


def use_numba(tensor: torch.Tensor) -> bool:
    """Whether work on ``tensor`` goes to the numba kernels: a CPU tensor, and the PyTorch path not forced."""
    return tensor.device.type == "cpu" and os.environ.get(KERNELS_ENV, "").strip().lower() != "torch"


def numba_threads() -> int:
    """Run numba on as many threads as torch (``torch.set_num_threads`` is the one knob); returns the count."""
    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    # numba's OpenMP layer shares torch's libgomp; its start-up (first call here) resets the OpenMP thread count,
    # which is where torch reads its own: put torch's back.
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return numba.get_num_threads()
