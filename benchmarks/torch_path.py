"""The GPU's code path on this CPU: lego at 100x100 trained on the numba kernels and on the PyTorch ones.

``VQRF_KERNELS=torch`` makes the ray marcher and the VM lookups take the pure-PyTorch implementations that CUDA runs.
This trains the same lego-cpu schedule (300 iterations, grid 64^3, 2048 rays) both ways, scores test views
0, 25, ..., 175 at 100x100, and times a training step and a render on each path. Writes
``benchmarks/results/torch_path.json`` and a row in docs/benchmarks.md.

    python benchmarks/torch_path.py [--iters 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from common import ROOT, add_doc_row, data_root, write_result
from vqrf.backend import KERNELS_ENV
from vqrf.checkpoint import load_model
from vqrf.config import preset_with
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.train import train


def run(lego, preset, kernels: str) -> dict:
    os.environ[KERNELS_ENV] = kernels
    out = ROOT / "benchmarks" / "out" / f"torch_path_{kernels}"
    shutil.rmtree(out, ignore_errors=True)
    result = train(load_scene(lego, "train", downscale=8), preset, out, progress=sys.stderr.isatty())
    metrics = evaluate(load_model(out / "model.safetensors"), load_scene(lego, "test", downscale=8), every=25,
                       use_lpips=False, progress=False)
    return {"kernels": kernels, "psnr": metrics["psnr"], "ssim": metrics["ssim"], "train_seconds": result.seconds,
            "seconds_per_iter": result.seconds / result.iters, "render_rays_per_s": metrics["render_rays_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    lego = data_root() / "nerf_synthetic" / "lego"
    preset = preset_with("cpu", iters=args.iters, grid_final=64, batch_rays=2048)
    start = time.perf_counter()
    rows = [run(lego, preset, "numba"), run(lego, preset, "torch")]
    os.environ.pop(KERNELS_ENV)
    result = {"protocol": "lego train split at 100x100 (downscale 8), preset cpu stretched to "
                          f"{args.iters} iterations, grid 64^3, 2048 rays; test views 0,25,...,175",
              "numba": rows[0], "torch": rows[1], "psnr_difference": rows[1]["psnr"] - rows[0]["psnr"],
              "wall_seconds": time.perf_counter() - start}
    path = write_result("torch_path", result)
    for row in rows:
        add_doc_row(
            "The GPU's code path on this CPU (VQRF_KERNELS=torch)",
            "| date | machine | command | kernels | PSNR | SSIM | train s | s/iter | render rays/s |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {time.strftime('%Y-%m-%d')} | 2-thread CPU | `{path.name}`: `python benchmarks/torch_path.py` | "
            f"{row['kernels']} | {row['psnr']:.2f} | {row['ssim']:.4f} | {row['train_seconds']:.0f} | "
            f"{row['seconds_per_iter']:.3f} | {row['render_rays_per_s']:,.0f} |",
        )
    print(result)


if __name__ == "__main__":
    main()
