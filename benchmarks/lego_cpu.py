"""The lego-cpu protocol: train on lego at 200x200 with ``--preset cpu``, score test views 0, 8, ..., 192.

Writes ``benchmarks/results/<name>.json``, the 25 rendered views as PNGs, and a row in docs/benchmarks.md; checks the
PSNR against the independent scorer ``../shared/tools/score.py`` on those PNGs. ``--field dvgo`` trains DVGO's cpu
preset (both stages; the name defaults to lego_cpu_dvgo).

    python benchmarks/lego_cpu.py [--field tensorf|dvgo] [--iters N] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, add_doc_row, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.config import get_preset
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the cpu preset's)")
    ap.add_argument("--field", default="tensorf", choices=("tensorf", "dvgo"))
    ap.add_argument("--name", default=None, help="result name: benchmarks/results/NAME.json (default lego_cpu, "
                                                 "lego_cpu_dvgo for dvgo)")
    ap.add_argument("--out", default=None, help="working folder (default: benchmarks/out/NAME)")
    args = ap.parse_args()
    default_name = "lego_cpu" if args.field == "tensorf" else "lego_cpu_dvgo"
    args.name = args.name or default_name

    data = data_root()
    lego = data / "nerf_synthetic" / "lego"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "out" / args.name
    shutil.rmtree(out, ignore_errors=True)
    preset = get_preset("cpu", args.field)
    if args.iters:
        preset.train = preset.train.scaled_to(args.iters)

    train_scene = load_scene(lego, "train", downscale=4)
    result = train(train_scene, preset, out, progress=sys.stderr.isatty())
    test_scene = load_scene(lego, "test", downscale=4)
    model = load_model(out / "model.safetensors")
    metrics = evaluate(model, test_scene, every=8, out_dir=out, progress=sys.stderr.isatty())

    scorer = data.parent / "tools" / "score.py"
    scored = json.loads(subprocess.run(
        [sys.executable, str(scorer), "--renders", str(out / "renders"), "--scene", "nerf_synthetic/lego", "--every", "8",
         "--json"], check=True, capture_output=True, text=True, env={"VQRF_DATA": str(data), "PATH": ""}).stdout)

    grid = "x".join(map(str, result.field.grid_size))
    summary = {
        "protocol": "lego train split at 200x200 (downscale 4); test views 0,8,...,192 at 200x200; white background",
        "preset": "cpu",
        "field": args.field,
        "iters": result.iters,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "lpips_alex": metrics.get("lpips_alex"),
        "psnr_scorer_png": scored["psnr"],
        "ssim_scorer_png": scored["ssim"],
        "train_seconds": result.seconds,
        "seconds_per_iter": result.seconds / result.iters,
        "render_rays_per_s": metrics["render_rays_per_s"],
        "render_seconds": metrics["render_seconds"],
        "peak_rss_mb": peak_rss_mb(),
        "grid": result.field.grid_size,
        "model_bytes": (out / "model.safetensors").stat().st_size,
        "threads": torch.get_num_threads(),
        "renders": os.path.relpath(out / "renders", ROOT),
    }
    path = write_result(args.name, summary)
    add_doc_row(
        "lego-cpu (TensoRF-VM baseline)" if args.field == "tensorf" else "lego-cpu (DVGO baseline)",
        "| date | machine | command | iters | PSNR (float / scorer PNG) | SSIM | LPIPS-alex | train s | s/iter | render rays/s | peak MB | grid |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: "
        f"`python benchmarks/lego_cpu.py{' --field dvgo' if args.field == 'dvgo' else ''}"
        f"{' --iters ' + str(args.iters) if args.iters else ''}"
        f"{' --name ' + args.name if args.name != default_name else ''}` | {result.iters} | "
        f"{metrics['psnr']:.2f} / {scored['psnr']:.2f} | {metrics['ssim']:.4f} | "
        f"{metrics.get('lpips_alex', float('nan')):.4f} | {result.seconds:.0f} | {result.seconds / result.iters:.3f} | "
        f"{metrics['render_rays_per_s']:,.0f} | {peak_rss_mb():.0f} | {grid} |",
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
