"""lego at full resolution on the CPU: train at 800x800 with ``--preset syn``, score every 8th test view, compress to 1MB.

Trains on the lego train split at 800x800 (downscale 1) with the syn preset's schedule stretched to ``--iters``,
scores test views 0, 8, ..., 192 at 800x800 (the raw model, float renders; PNGs re-scored by ../shared/tools/score.py),
then compresses at ``--target-size 1MB`` and scores the decoded .vqrf file on the same views. Training resumes: a
re-run continues ``OUT/checkpoint.safetensors`` (the real run takes about an hour), or reuses a finished model trained
with the same settings (``--fresh`` starts over). Writes ``benchmarks/results/<name>.json`` (rewritten after every
stage) and a row in docs/benchmarks.md.

    python benchmarks/lego_fullres_cpu.py [--iters 6000] [--every 8] [--finetune-iters N] [--name lego_fullres_cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import ROOT, add_doc_row, command, data_root, peak_rss_mb, write_result
from full_protocol import Stages, compress_stage, fmt, log, run_scorer, score, show_path, train_stage
from vqrf.checkpoint import load_model
from vqrf.compress.rate import parse_size
from vqrf.config import preset_with
from vqrf.data import load_scene


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="syn")
    ap.add_argument("--iters", type=int, default=6000, help="training iterations (the syn schedule, stretched)")
    ap.add_argument("--downscale", type=float, default=1.0, help="1: 800x800 (smoke tests: 16)")
    ap.add_argument("--every", type=int, default=8, help="score test views 0, every, 2*every, ...")
    ap.add_argument("--target-size", default="1MB", help="compression budget")
    ap.add_argument("--finetune-iters", type=int, default=None,
                    help="compression fine-tuning steps (default: the compression default, a third of --iters)")
    ap.add_argument("--checkpoint-every", type=int, default=500, help="training checkpoint period (resume points)")
    ap.add_argument("--grid-init", type=int, default=None, help="initial grid ~N^3 (smoke tests only)")
    ap.add_argument("--grid-final", type=int, default=None, help="final grid ~N^3 (smoke tests only)")
    ap.add_argument("--fresh", action="store_true", help="train from scratch even if OUT holds a checkpoint/model")
    ap.add_argument("--name", default="lego_fullres_cpu", help="result name: benchmarks/results/NAME.json")
    ap.add_argument("--out", default=None, help="working folder (default: benchmarks/out/NAME)")
    args = ap.parse_args()

    data = data_root()
    lego = data / "nerf_synthetic" / "lego"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "out" / args.name
    progress = sys.stderr.isatty()
    device = "cpu"
    preset = preset_with(args.preset, args.iters, args.grid_init, args.grid_final, None, args.checkpoint_every)
    budget = parse_size(args.target_size)

    summary: dict[str, Any] = {
        "protocol": f"lego train split at downscale {args.downscale:g} (1: 800x800), preset {args.preset} stretched to "
                    f"{args.iters} iterations; test views 0,{args.every},...,192 at the same size; white background; "
                    f"then --target-size {args.target_size}, the decoded file scored on the same views",
        "complete": False,
        "preset": args.preset,
        "downscale": args.downscale,
        "every": args.every,
        "threads": torch.get_num_threads(),
        "stage_seconds": {},
        "stage_peak_rss_mb": {},
    }

    def save() -> None:
        summary["peak_rss_mb"] = peak_rss_mb()
        write_result(args.name, summary)

    stage = Stages(summary, save)

    train_scene = stage("load_train", lambda: load_scene(lego, "train", downscale=args.downscale))
    test_scene = stage("load_test", lambda: load_scene(lego, "test", downscale=args.downscale))
    summary["resolution"] = f"{train_scene.hw[1]}x{train_scene.hw[0]}"
    key = json.loads(json.dumps({"scene": str(lego.resolve()), "downscale": args.downscale,
                                 "preset": preset.to_dict(), "max_train_seconds": None, "device": device}))
    trained = stage("train", lambda: train_stage(train_scene, preset, out, device, None, args.fresh, progress, key))
    summary.update({k: trained[k] for k in ("iters", "train_seconds", "seconds_per_iter", "iters_per_s",
                                            "train_rays_per_s", "grid", "model_bytes", "resumed", "reused")})
    summary["grid"] = "x".join(map(str, trained["grid"]))
    log(f"train: {trained['iters']} iterations in {trained['train_seconds']:.0f} s "
        f"({trained['seconds_per_iter']:.3f} s/iter), grid {summary['grid']}")
    save()

    model_path = out / "model.safetensors"
    raw = stage("eval", lambda: score(load_model(model_path, device), test_scene, args.every, out / "eval", None,
                                      device, progress))
    scored = run_scorer(data, lego, out / "eval" / "renders", args.every)
    summary.update({"psnr": raw["psnr"], "ssim": raw["ssim"], "lpips_alex": raw["lpips_alex"], "views": raw["views"],
                    "psnr_scorer_png": scored["psnr"] if scored else None,
                    "ssim_scorer_png": scored["ssim"] if scored else None,
                    "render_rays_per_s": raw["render_rays_per_s"], "render_seconds": raw["render_seconds"],
                    "renders": show_path(out / "eval" / "renders")})
    log(f"eval: {raw['views']} views, PSNR {raw['psnr']:.2f}, SSIM {raw['ssim']:.4f}, "
        f"LPIPS-alex {fmt(raw['lpips_alex'], '.4f')}, {raw['render_rays_per_s']:,.0f} rays/s")
    save()

    model_path.with_name(model_path.stem + ".importance.safetensors").unlink(missing_ok=True)  # time importance too
    packed = stage("compress", lambda: compress_stage(model_path, train_scene, test_scene, str(lego), args.downscale,
                                                      budget, args.finetune_iters, device, out / "lego.vqrf",
                                                      args.every, None, progress))
    summary.update({
        "vqrf_bytes": packed["bytes"],
        "vqrf_mib": packed["mib"],
        "vqrf_psnr": packed["psnr"],
        "vqrf_ssim": packed["ssim"],
        "vqrf_lpips_alex": packed["lpips_alex"],
        "vqrf_psnr_drop": raw["psnr"] - packed["psnr"],
        "vqrf_render_rays_per_s": packed["render_rays_per_s"],
        "compress_seconds": packed["seconds"],
        "compress_stage_seconds": packed["stage_seconds"],
        "compress_finetune_iters": packed["finetune_iters"],
        "compress_chosen": packed.get("chosen"),
        "vqrf_file": packed["file"],
    })
    summary["complete"] = True
    save()
    log(f"compress: {packed['bytes']:,} bytes, PSNR {packed['psnr']:.2f}, {packed['seconds']:.0f} s")

    st = packed["stage_seconds"]
    path = write_result(args.name, {**summary, "peak_rss_mb": peak_rss_mb()})
    add_doc_row(
        "lego at 800x800 on the CPU (full resolution)",
        "| date | machine | command | iters | PSNR (float / scorer PNG) | SSIM | LPIPS-alex | train s | s/iter | "
        "render rays/s | peak MB | grid | .vqrf bytes | .vqrf PSNR / SSIM | compress s (importance / rate / codebooks / "
        "FT / pack) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: `{command()}` | "
        f"{summary['iters']} | {raw['psnr']:.2f} / {fmt(summary['psnr_scorer_png'], '.2f')} | {raw['ssim']:.4f} | "
        f"{fmt(raw['lpips_alex'], '.4f')} | {summary['train_seconds']:.0f} | {summary['seconds_per_iter']:.3f} | "
        f"{raw['render_rays_per_s']:,.0f} | {peak_rss_mb():.0f} | {summary['grid']} | {packed['bytes']:,} | "
        f"{packed['psnr']:.2f} / {packed['ssim']:.4f} | {packed['seconds']:.0f} ("
        + " / ".join(f"{st.get(k, 0.0):.0f}" for k in ("importance", "rate_control", "codebooks", "finetune", "pack"))
        + ") |",
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
