"""Fine-tuning on every training ray (method-spec §2.7) against only the rays that cross an occupied cell (vqrf).

The reference draws fine-tuning batches from all training rays; vqrf leaves out the rays that pass through no occupied
cell, since they render the background whatever the field holds. This measures what that deviation does on the
lego-cpu model (benchmarks/lego_cpu.py) at the reference's split and codebook size with 333 fine-tuning steps: the
decoded file scored on test views 0, 8, ..., 192. Writes ``benchmarks/results/finetune_rays.json`` and doc rows.

    python benchmarks/finetune_rays.py [--finetune-iters 333]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import vqrf.compress.finetune as finetune_module
from common import ROOT, add_doc_row, data_root, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.pipeline import compress_scene
from vqrf.config import compress_defaults
from vqrf.data import load_scene
from vqrf.evaluate import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "out" / "lego_cpu" / "model.safetensors"))
    ap.add_argument("--finetune-iters", type=int, default=333)
    args = ap.parse_args()
    lego = data_root() / "nerf_synthetic" / "lego"
    model_path = Path(args.model)
    if not model_path.is_file():
        sys.exit(f"{model_path} missing: run `python benchmarks/lego_cpu.py` first")
    train_scene, test_scene = load_scene(lego, "train", downscale=4), load_scene(lego, "test", downscale=4)
    filtered = finetune_module.hits_occupied
    rows = {}
    for rays in ("occupied", "all"):
        # "all": every ray passes the filter, as in the reference
        finetune_module.hits_occupied = filtered if rays == "occupied" else (
            lambda field, occupancy, origins, directions, settings: torch.ones(origins.shape[0], dtype=torch.bool,
                                                                               device=origins.device))
        cfg = compress_defaults("blender")
        cfg.finetune_iters = args.finetune_iters
        start = time.perf_counter()
        result = compress_scene(load_model(model_path), train_scene, cfg, model_path, str(lego), 4.0,
                                progress=sys.stderr.isatty())
        seconds = time.perf_counter() - start
        metrics = evaluate(result.model, test_scene, every=8, use_lpips=False, progress=False)
        rows[rays] = {"psnr": metrics["psnr"], "bytes": len(result.data), "seconds": seconds,
                      "finetune_seconds": result.seconds["finetune"]}
    finetune_module.hits_occupied = filtered
    path = write_result("finetune_rays", {"finetune_iters": args.finetune_iters, **rows,
                                          "psnr_gain_of_filter": rows["occupied"]["psnr"] - rows["all"]["psnr"]})
    for rays, row in rows.items():
        add_doc_row(
            "Fine-tuning rays: occupied only (vqrf) or all (reference), lego-cpu",
            "| date | command | rays | FT steps | PSNR | bytes | fine-tune s |\n| --- | --- | --- | --- | --- | --- | --- |",
            f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `python benchmarks/finetune_rays.py` | {rays} | "
            f"{args.finetune_iters} | {row['psnr']:.2f} | {row['bytes']:,} | {row['finetune_seconds']:.0f} |",
        )
    print(rows)


if __name__ == "__main__":
    main()
