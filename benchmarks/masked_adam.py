"""Time one MaskedAdam step, numba kernel against the PyTorch reference and fused torch Adam; writes
benchmarks/results/masked_adam.json.

Usage: python benchmarks/masked_adam.py [--quick]

A dense [X, Y, Z, 13] grid (DVGO's k0 at 128^3 and 160^3) whose gradient is nonzero at 10% of the voxels, all
channels of a voxel together, as a batch of rays leaves it. "numba" and "torch" are ``MaskedAdam`` with
``skip_zero_grad`` on the kernel and on the reference (``VQRF_KERNELS=torch``); "_pervoxel" adds a per-voxel
learning-rate multiplier [X, Y, Z, 1]. "adam_fused" is ``torch.optim.Adam(fused=True)``, which updates every element
(no masking). Timings are wall-clock medians of ``opt.step()`` after a warm-up step (which also takes any numba
compile), on ``torch.set_num_threads(os.cpu_count())`` threads; the share of the CPU other processes used meanwhile
is recorded, as a busy neighbour distorts multi-threaded timings badly.
--quick: a 64^3 grid, 3 repeats; it writes masked_adam_quick.json instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from common import kernel_run_info, write_result
from vqrf.backend import KERNELS_ENV
from vqrf.optim import MaskedAdam

CHANNELS = 13
ACTIVE = 0.1  # share of voxels with a gradient
IMPLS = ("numba", "numba_pervoxel", "torch", "torch_pervoxel", "adam_fused")


def cpu_counters() -> tuple[float, float, float]:
    """(busy CPU s over all cores, total CPU s over all cores, CPU s of this process); Linux."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, t.user + t.system


def make_optimizer(impl: str, param: torch.Tensor) -> torch.optim.Optimizer:
    """The optimiser ``impl`` names over ``param``; sets the kernel environment variable it needs."""
    if impl == "adam_fused":
        return torch.optim.Adam([param], lr=0.1, betas=(0.9, 0.99), fused=True)
    if impl.startswith("torch"):
        os.environ[KERNELS_ENV] = "torch"
    else:
        os.environ.pop(KERNELS_ENV, None)
    opt = MaskedAdam([{"params": [param], "skip_zero_grad": True}], lr=0.1)
    if impl.endswith("_pervoxel"):
        opt.set_lr_scale(param, torch.rand(param.shape[:-1] + (1,), generator=torch.Generator().manual_seed(2)))
    return opt


def time_impl(impl: str, size: int, reps: int) -> dict:
    """step_ms of one implementation on a [size^3, CHANNELS] grid, and the CPU share others used meanwhile."""
    gen = torch.Generator().manual_seed(0)
    shape = (size, size, size, CHANNELS)
    param = (0.1 * torch.randn(shape, generator=gen)).requires_grad_()
    active = torch.rand(shape[:-1] + (1,), generator=gen) < ACTIVE
    param.grad = torch.randn(shape, generator=gen) * active
    opt = make_optimizer(impl, param)
    opt.step()  # warm-up: numba compile or cache load, first touch of the moments
    times = []
    before = cpu_counters()
    for _ in range(reps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    busy, total, own = (b - a for a, b in zip(before, cpu_counters()))
    os.environ.pop(KERNELS_ENV, None)
    return {"step_ms": round(1e3 * statistics.median(times), 2),
            "other_processes_cpu_share": round(max(0.0, busy - own) / total, 3) if total > 0 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 grid, 3 repeats (smoke run)")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    sizes = (64,) if args.quick else (128, 160)
    reps = 3 if args.quick else 9
    load_before = os.getloadavg()
    rows = []
    for size in sizes:
        row = {"grid": [size] * 3, "channels": CHANNELS, "active_voxels": ACTIVE, "reps": reps}
        for impl in IMPLS:
            row[impl] = time_impl(impl, size, reps)
        row["speedup_numba_vs_torch"] = round(row["torch"]["step_ms"] / row["numba"]["step_ms"], 1)
        row["speedup_numba_vs_adam_fused"] = round(row["adam_fused"]["step_ms"] / row["numba"]["step_ms"], 1)
        rows.append(row)
        print(f"{size}^3 x {CHANNELS} | " + " | ".join(f"{impl} {row[impl]['step_ms']:7.1f}" for impl in IMPLS)
              + " ms", flush=True)
    path = write_result("masked_adam_quick" if args.quick else "masked_adam", {
        **kernel_run_info(load_before, __doc__),
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
