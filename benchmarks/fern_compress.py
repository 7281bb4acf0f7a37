"""Compress the fern model (benchmarks/fern_llff.py) under a byte budget and score the decoded file.

LLFF prunes nothing (the reference's split for forward-facing scenes); rate control picks keep fraction and codebook
size for the budget. Scored on the held-out views 0, 8, 16 at 504x378 against the uncompressed model.

    python benchmarks/fern_compress.py [--target-size 1MB] [--finetune-iters 333]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from common import ROOT, add_doc_row, command, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.pipeline import compress_scene
from vqrf.compress.rate import parse_size
from vqrf.config import compress_defaults
from vqrf.data import load_scene
from vqrf.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "out" / "fern_llff" / "model.safetensors"))
    ap.add_argument("--target-size", default="1MB")
    ap.add_argument("--finetune-iters", type=int, default=333)
    ap.add_argument("--name", default="fern_compress")
    args = ap.parse_args()

    data = data_root()
    fern = data / "nerf_llff_data" / "fern"
    model_path = Path(args.model)
    if not model_path.is_file():
        sys.exit(f"{model_path} missing: run `python benchmarks/fern_llff.py` first")
    out = ROOT / "benchmarks" / "out" / args.name
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    test = load_scene(fern, "test", downscale=8)
    original = evaluate(load_model(model_path), test, use_lpips=False, progress=progress)

    model = load_model(model_path)
    cfg = compress_defaults(model.preset.dataset)
    cfg.finetune_iters = args.finetune_iters
    budget = parse_size(args.target_size)
    start = time.perf_counter()
    # Importance from scratch: the cache next to the model would make its time ~0.
    result = compress_scene(model, load_scene(fern, "train", downscale=8), cfg, model_path, str(fern), 8.0,
                            budget=budget, use_cache=False, progress=progress)
    seconds = time.perf_counter() - start
    (out / "fern.vqrf").write_bytes(result.data)
    packed = evaluate(result.model, test, out_dir=out, use_lpips=False, progress=progress)

    chosen = {k: v for k, v in result.info["rate"].items() if k != "candidates"}
    summary = {
        "protocol": "fern model of benchmarks/fern_llff.py; held-out views 0, 8, 16 at 504x378 (images_8)",
        "budget": budget,
        "bytes": len(result.data),
        "psnr": packed["psnr"],
        "ssim": packed["ssim"],
        "psnr_original": original["psnr"],
        "psnr_drop": original["psnr"] - packed["psnr"],
        "seconds": seconds,
        "stage_seconds": result.seconds,
        "importance_seconds": result.seconds["importance"],
        "finetune_iters": args.finetune_iters,
        "chosen": chosen,
        "rate_candidates": result.info["rate"]["candidates"],
        "tiers": result.info["tiers"],
        "model_bytes": model_path.stat().st_size,
        "peak_rss_mb": peak_rss_mb(),
    }
    path = write_result(args.name, summary)
    add_doc_row(
        "fern compression (llff)",
        "| date | machine | command | budget | bytes | PSNR | original | drop | chose | seconds |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",  # seconds: importance + the rest
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: "
        f"`{command()}` | {budget:,} | {len(result.data):,} | {packed['psnr']:.2f} | "
        f"{original['psnr']:.2f} | {original['psnr'] - packed['psnr']:.2f} | keep {chosen['keep']:.3f}, "
        f"{chosen['codebook_size']} codes | {seconds:.0f} (importance {result.seconds['importance']:.0f}) |",
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
