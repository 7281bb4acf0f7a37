"""Time the numba dense-grid kernel against the F.grid_sample reference; writes benchmarks/results/grid_kernel.json.

Usage: python benchmarks/grid_kernel.py [--quick]

A 160^3 grid (DVGO's) with C = 1 (density) and C = 12 (k0 features), 100,000 and 500,000 points along random rays
through the box, in ray order, as a renderer produces them. "torch" is ``grid_features_torch`` on a channels-last
[X, Y, Z, C] grid (what the package runs when VQRF_KERNELS=torch); "torch_cf" is the same grid_sample code on the
channels-first [1, C, X, Y, Z] grid DVGO stores. For C = 1, "splat_ms" times ``splat_trilinear`` (float64 sums).
Timings are wall-clock medians after a warm-up call (which also takes any numba compile), on
``torch.set_num_threads(os.cpu_count())`` threads; the share of the CPU other processes used meanwhile is recorded,
as a busy neighbour distorts multi-threaded timings badly.
--quick: a 64^3 grid, 20,000 points, one repeat; it writes grid_kernel_quick.json instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import kernel_run_info, write_result
from vqrf.fields.grid_kernel import grid_features, grid_features_torch, splat_trilinear

# name: (function, grid stored channels-first)
IMPLS = {"numba": (grid_features, False), "torch": (grid_features_torch, False),
         "torch_cf": (grid_features_torch, True)}


def ray_points(n: int, size: int, gen: np.random.Generator) -> np.ndarray:
    """[n, 3] float32 points on random rays through [-1, 1]^3, half a voxel apart, in ray order."""
    step = 1.0 / size
    chunks, total = [], 0
    while total < n:
        d = gen.standard_normal(3)
        d /= np.linalg.norm(d)
        origin = gen.uniform(-0.5, 0.5, 3) - 3.0 * d
        p = origin + (np.arange(0.0, 6.0, step) + gen.uniform(0.0, step))[:, None] * d
        p = p[(np.abs(p) <= 1.0).all(axis=1)]
        chunks.append(p)
        total += len(p)
    return np.concatenate(chunks)[:n].astype(np.float32)


def median_ms(fn, reps: int) -> float:
    """Median wall time of fn() in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cpu_counters() -> tuple[float, float, float]:
    """(busy CPU s over all cores, total CPU s over all cores, CPU s of this process); Linux."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz, t.user + t.system


def time_impl(impl: str, channels: int, size: int, xyz: torch.Tensor, reps: int) -> dict:
    """fwd_ms (no grad), fwd_bwd_ms (gradient of the grid leaf) and, for C = 1, splat_ms of one implementation."""
    fn, channels_first = IMPLS[impl]
    gen = torch.Generator().manual_seed(0)
    shape = (1, channels, size, size, size) if channels_first else (size, size, size, channels)
    leaf = (0.1 * torch.randn(shape, generator=gen)).requires_grad_()
    grad_out = torch.randn(xyz.shape[0], channels, generator=gen)
    weights = torch.rand(xyz.shape[0], generator=gen)

    def grid() -> torch.Tensor:
        # Re-derive the view each call so a channels-first graph starts at the leaf, as in training.
        return leaf[0].permute(1, 2, 3, 0) if channels_first else leaf

    def forward() -> None:
        with torch.no_grad():
            fn(grid(), xyz)

    def forward_backward() -> None:
        torch.autograd.grad(fn(grid(), xyz), leaf, grad_out)

    def splat() -> None:
        splat_trilinear((size, size, size), xyz, weights)

    before = cpu_counters()
    out = {"fwd_ms": median_ms(forward, reps), "fwd_bwd_ms": median_ms(forward_backward, reps)}
    if channels == 1 and impl != "torch_cf":
        os.environ["VQRF_KERNELS"] = impl  # splat_trilinear picks its path from the environment
        out["splat_ms"] = median_ms(splat, reps)
        os.environ.pop("VQRF_KERNELS")
    busy, total, own = (b - a for a, b in zip(before, cpu_counters()))
    out = {k: round(v, 2) for k, v in out.items()}
    out["other_processes_cpu_share"] = round(max(0.0, busy - own) / total, 3) if total > 0 else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64^3 grid, 20,000 points, one repeat (smoke run)")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    os.environ.pop("VQRF_KERNELS", None)
    size = 64 if args.quick else 160
    sizes = [20_000] if args.quick else [100_000, 500_000]
    load_before = os.getloadavg()
    gen = np.random.default_rng(0)
    rows = []
    for n in sizes:
        xyz = torch.from_numpy(ray_points(n, size, gen))
        for channels in (1, 12):
            reps = 1 if args.quick else (9 if n <= 100_000 else 5)
            row = {"grid": [size] * 3, "channels": channels, "n_points": n, "points": "rays", "reps": reps}
            for impl in IMPLS:
                row[impl] = time_impl(impl, channels, size, xyz, reps)
            best = {k: min(row["torch"][k], row["torch_cf"][k]) for k in ("fwd_ms", "fwd_bwd_ms")}
            row["speedup_vs_best_torch"] = {k: round(v / row["numba"][k], 1) for k, v in best.items()}
            rows.append(row)
            splat = (f" | splat numba {row['numba']['splat_ms']:7.1f} torch {row['torch']['splat_ms']:7.1f}"
                     if channels == 1 else "")
            print(f"{size}^3 C={channels:2d} N={n:>7,} | "
                  + " | ".join(f"{impl} fwd {row[impl]['fwd_ms']:7.1f} fwd+bwd {row[impl]['fwd_bwd_ms']:7.1f}"
                               for impl in IMPLS)
                  + f" ms | speedup {row['speedup_vs_best_torch']}{splat}", flush=True)
    path = write_result("grid_kernel_quick" if args.quick else "grid_kernel", {
        **kernel_run_info(load_before, __doc__),
        "results": rows,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
