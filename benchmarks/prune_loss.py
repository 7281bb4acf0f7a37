"""What pruning alone costs: lego-cpu's test PSNR with only the pruned texels zeroed, per non-prune fraction.

Pruning is measured before any fine-tuning, density and appearance planes together (the split is shared), on the 25
lego-cpu test views. Uses the importance cache next to the model (computed if missing).

    python benchmarks/prune_loss.py [--fractions 0.99,0.999,0.9999,0.99999]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import ROOT, add_doc_row, data_root, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.importance import cached_importance, grid_importance
from vqrf.compress.pipeline import pruned_copy
from vqrf.compress.split import cdf_split
from vqrf.compress.vq import GridCode, VQState
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.step import RayPool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "benchmarks" / "out" / "lego_cpu" / "model.safetensors"))
    ap.add_argument("--fractions", default="0.99,0.999,0.9999,0.99999")
    args = ap.parse_args()
    model_path = Path(args.model)
    model = load_model(model_path)
    lego = data_root() / "nerf_synthetic" / "lego"
    maps = cached_importance(model_path, str(lego), 4.0, lambda: grid_importance(
        model.field, model.occupancy, RayPool(load_scene(lego, "train", downscale=4), torch.device("cpu")),
        model.render_settings(), progress=False))
    test = load_scene(lego, "test", downscale=4)
    original = evaluate(model, test, every=8, use_lpips=False, progress=False)["psnr"]
    rows = []
    for fraction in (float(f) for f in args.fractions.split(",")):
        state = VQState([GridCode(*cdf_split(m.cpu(), 0.0, fraction)) for m in maps], maps)
        view = load_model(model_path)
        view.field = pruned_copy(model.field, state)
        psnr = evaluate(view, test, every=8, use_lpips=False, progress=False)["psnr"]
        rows.append({"non_prune": fraction, "unpruned_texels": state.counts()["vq"], "pruned_texels":
                     state.counts()["pruned"], "psnr": psnr, "loss_db": original - psnr})
        print(rows[-1], flush=True)
    path = write_result("prune_loss", {"psnr_original": original, "rows": rows})
    add_doc_row(
        "Pruning alone (lego-cpu, before fine-tuning)",
        "| date | command | non-prune | texels kept / pruned | PSNR | loss |\n| --- | --- | --- | --- | --- | --- |",
        "\n".join(f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `python benchmarks/prune_loss.py` | {r['non_prune']} | "
                  f"{r['unpruned_texels']:,} / {r['pruned_texels']:,} | {r['psnr']:.2f} | {r['loss_db']:.2f} dB |"
                  for r in rows),
    )


if __name__ == "__main__":
    main()
