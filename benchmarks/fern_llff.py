"""LLFF fern at images_8 (504x378) with ``--preset llff`` scaled to fit this CPU; held-out views 0, 8, 16.

Writes ``benchmarks/results/<name>.json``, the held-out renders as PNGs, and a row in docs/benchmarks.md.

    python benchmarks/fern_llff.py [--iters 2000] [--grid-final 128]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import torch

from common import ROOT, add_doc_row, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.config import get_preset
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--grid-init", type=int, default=64, help="initial grid, about N^3 voxels")
    ap.add_argument("--grid-final", type=int, default=128, help="final grid, about N^3 voxels")
    ap.add_argument("--batch-rays", type=int, default=4096)
    ap.add_argument("--weight-thres", type=float, default=1e-3, help="shade samples above this weight (as the cpu preset)")
    ap.add_argument("--name", default="fern_llff")
    args = ap.parse_args()

    fern = data_root() / "nerf_llff_data" / "fern"
    out = ROOT / "benchmarks" / "out" / args.name
    shutil.rmtree(out, ignore_errors=True)
    preset = get_preset("llff")
    preset.field.bf16_mlp = True
    preset.train = preset.train.scaled_to(args.iters)
    preset.train.n_voxel_init = args.grid_init**3
    preset.train.n_voxel_final = args.grid_final**3
    preset.train.batch_rays = args.batch_rays
    preset.train.weight_thres = args.weight_thres

    result = train(load_scene(fern, "train", downscale=8), preset, out, progress=sys.stderr.isatty())
    test = load_scene(fern, "test", downscale=8)
    metrics = evaluate(load_model(out / "model.safetensors"), test, out_dir=out, progress=sys.stderr.isatty())
    summary = {
        "protocol": "LLFF fern, images_8 (504x378), train on 17 views, test on held-out views 0, 8, 16 (NDC)",
        "preset": f"llff scaled: {args.iters} iterations, grid {args.grid_init}^3 -> {args.grid_final}^3, bf16 MLP, "
                  f"weight threshold {args.weight_thres}",
        "iters": result.iters,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "lpips_alex": metrics.get("lpips_alex"),
        "train_seconds": result.seconds,
        "seconds_per_iter": result.seconds / result.iters,
        "render_rays_per_s": metrics["render_rays_per_s"],
        "peak_rss_mb": peak_rss_mb(),
        "grid": result.field.grid_size,
        "per_view": metrics["per_view"],
    }
    path = write_result(args.name, summary)
    add_doc_row(
        "fern (LLFF, images_8)",
        "| date | machine | command | iters | PSNR | SSIM | LPIPS-alex | train s | render rays/s | peak MB | grid |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: "
        f"`python benchmarks/fern_llff.py --iters {args.iters} --grid-final {args.grid_final}` | {result.iters} | "
        f"{metrics['psnr']:.2f} | {metrics['ssim']:.4f} | {metrics.get('lpips_alex', float('nan')):.4f} | "
        f"{result.seconds:.0f} | {metrics['render_rays_per_s']:,.0f} | {peak_rss_mb():.0f} | "
        f"{'x'.join(map(str, result.field.grid_size))} |",
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "per_view"}, indent=2))


if __name__ == "__main__":
    main()
