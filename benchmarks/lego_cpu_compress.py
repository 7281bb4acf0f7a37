"""Compress the lego-cpu model (benchmarks/lego_cpu.py) to a .vqrf: stage table, timings, rate-distortion curve.

Stages follow the paper's pipeline figure: original -> pruned -> vector-quantised -> fine-tuned -> packed, each scored
on the 25 lego-cpu test views (0, 8, ..., 192 at 200x200). The packed stage is the decoded file itself; its views are
saved as PNGs and re-scored by ../shared/tools/score.py. A rate-distortion curve runs --target-size over several
budgets. Writes benchmarks/results/lego_cpu_compress.json, a PNG plot, and rows in docs/benchmarks.md.

    python benchmarks/lego_cpu_compress.py [--field dvgo] [--target-size 362800] [--finetune-iters N] [--budgets ...]

``--field dvgo`` compresses the DVGO lego-cpu model (``benchmarks/lego_cpu.py --field dvgo``) with DVGO's defaults
(keep 0.6, prune past 0.999, fine-tuning at 0.79 of the training learning rates); names gain ``_dvgo``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, add_doc_row, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.codec import decode_field
from vqrf.compress.pipeline import compress_scene
from vqrf.compress.rate import parse_size
from vqrf.compress.vq import VQState
from vqrf.config import compress_defaults
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.fields import Field

REFERENCE = {"bytes": 1_451_198, "psnr": 30.89, "seconds": 479.0}


def naive_bytes(field: Field, state: VQState | None, stage: str) -> int:
    """What a stage would take stored plainly in float32 (the paper figure's size axis before packing)."""
    dense = sum(p.numel() for p in field.parameters()) * 4
    if state is None or stage == "original":
        return dense
    grids = field.feature_grids()
    others = dense - sum(t.numel() for g in grids for t in g.tensors.values()) * 4
    masks = sum(2 * c.keep.numel() for c in state.grids) // 8
    total = others + masks
    for code, grid in zip(state.grids, grids):
        for kind, tensor in grid.tensors.items():
            channels = tensor.shape[-1]
            if stage == "pruned" or kind not in code.codebooks:
                total += int(code.non_pruned.sum()) * channels * 4
            else:
                k = code.codebooks[kind].shape[0]
                total += int(code.keep.sum()) * channels * 4 + k * channels * 4
                total += math.ceil(int(code.vq.sum()) * max(1, math.ceil(math.log2(max(k, 2)))) / 8)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--field", default="tensorf", choices=("tensorf", "dvgo"))
    ap.add_argument("--model", default=None, help="default: benchmarks/out/lego_cpu[_dvgo]/model.safetensors")
    ap.add_argument("--target-size", default="362800", help="budget of the main run (the acceptance bound)")
    ap.add_argument("--finetune-iters", type=int, default=None, help="default: the compression default")
    ap.add_argument("--budgets", default="250KB,500KB,1MB", help="extra budgets for the rate-distortion curve")
    ap.add_argument("--timing-iters", type=int, default=333, help="fine-tuning steps of the timed default run")
    ap.add_argument("--non-prune", type=float, default=None,
                    help="for the budgeted runs (default: 0.9999 for tensorf, DVGO's 0.999 for dvgo): on lego-cpu, "
                         "TensoRF pruned at the reference's 0.999 loses 1.3 dB before fine-tuning (0.03 dB at 0.9999) "
                         "for ~15 KB of indices saved")
    ap.add_argument("--name", default=None, help="default lego_cpu_compress (lego_cpu_dvgo_compress for dvgo)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the saved JSON and stop")
    args = ap.parse_args()
    suffix = "" if args.field == "tensorf" else "_dvgo"
    args.name = args.name or f"lego_cpu{suffix}_compress"
    args.model = args.model or str(ROOT / "benchmarks" / "out" / f"lego_cpu{suffix}" / "model.safetensors")
    if args.non_prune is None:
        args.non_prune = 0.9999 if args.field == "tensorf" else compress_defaults("blender", "dvgo").non_prune
    if args.plot_only:
        saved = json.loads((ROOT / "benchmarks" / "results" / f"{args.name}.json").read_text())
        _plot(saved["rate_distortion"], saved["psnr_original"], ROOT / saved["plot"], args.field)
        return

    data = data_root()
    lego = data / "nerf_synthetic" / "lego"
    model_path = Path(args.model)
    if not model_path.is_file():
        sys.exit(f"{model_path} missing: run `python benchmarks/lego_cpu.py --field {args.field}` first")
    out = ROOT / "benchmarks" / "out" / args.name
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty()
    train_scene = load_scene(lego, "train", downscale=4)
    test_scene = load_scene(lego, "test", downscale=4)

    def score(model, out_dir=None) -> dict:
        return evaluate(model, test_scene, every=8, out_dir=out_dir, use_lpips=out_dir is not None, progress=progress)

    def run(budget: int | None, finetune_iters: int | None, stages: list | None = None):
        model = load_model(model_path)
        cfg = compress_defaults("blender", model.preset.field_type)
        if budget is not None:
            cfg.non_prune = args.non_prune
        if finetune_iters is not None:
            cfg.finetune_iters = finetune_iters
        def on_stage(name: str, field: Field, state: VQState | None) -> None:
            model_view = load_model(model_path)
            model_view.field = field
            if name == "packed":
                return
            stages.append({"stage": name, "psnr": score(model_view)["psnr"],
                           "bytes": naive_bytes(field, state, name)})

        start = time.perf_counter()
        result = compress_scene(model, train_scene, cfg, model_path, str(lego), 4.0, budget=budget, progress=progress,
                                on_stage=on_stage if stages is not None else None)
        return result, time.perf_counter() - start

    # 1. The timed run at compression defaults (keep 0.7, non-prune 0.999, up to 4096 codes, full k-means).
    model_path.with_name(model_path.stem + ".importance.safetensors").unlink(missing_ok=True)  # time it too
    timed, timed_wall = run(None, args.timing_iters)
    timed_psnr = score(timed.model)["psnr"]
    timing = {"finetune_iters": args.timing_iters, "bytes": len(timed.data), "psnr": timed_psnr,
              "seconds": timed.seconds, "importance_codebooks_finetune_s":
                  timed.seconds["importance"] + timed.seconds["codebooks"] + timed.seconds["finetune"]}
    print("timed default run:", json.dumps(timing), flush=True)

    # 2. The main run at the target size, with the stage-by-stage table.
    budget = parse_size(args.target_size)
    stages: list[dict] = []
    main_result, main_wall = run(budget, args.finetune_iters, stages)
    file_path = out / "lego.vqrf"
    file_path.write_bytes(main_result.data)
    decode_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        decode_field(file_path.read_bytes(), file_path)
        decode_times.append(time.perf_counter() - t0)
    cold = subprocess.run([sys.executable, "-c", "import time, sys; t = time.perf_counter(); "
                           "from vqrf.models import open_model; open_model(sys.argv[1]); "
                           "print(time.perf_counter() - t)", str(file_path)],
                          check=True, capture_output=True, text=True)
    original = score(load_model(model_path))
    packed = score(main_result.model, out_dir=out)
    stages.append({"stage": "packed", "psnr": packed["psnr"], "bytes": len(main_result.data)})
    for row, name in zip(stages, ("original", "pruned", "vq", "finetuned", "packed")):
        assert row["stage"] == name, stages
        row["seconds"] = {"original": 0.0, "pruned": main_result.seconds["importance"],
                          "vq": main_result.seconds["codebooks"] + main_result.seconds.get("rate_control", 0.0),
                          "finetuned": main_result.seconds["finetune"], "packed": main_result.seconds["pack"]}[name]
    scorer = data.parent / "tools" / "score.py"
    scored = json.loads(subprocess.run(
        [sys.executable, str(scorer), "--renders", str(out / "renders"), "--scene", "nerf_synthetic/lego",
         "--every", "8", "--json"], check=True, capture_output=True, text=True,
        env={"VQRF_DATA": str(data), "PATH": ""}).stdout)

    # 3. Rate-distortion: the same pipeline under other budgets.
    curve = [{"budget": budget, "bytes": len(main_result.data), "psnr": packed["psnr"],
              "keep": main_result.info["rate"]["keep"], "codebook_size": main_result.info["rate"]["codebook_size"]}]
    for text in [b for b in args.budgets.split(",") if b]:
        b = parse_size(text)
        r, _ = run(b, args.finetune_iters)
        curve.append({"budget": b, "bytes": len(r.data), "psnr": score(r.model)["psnr"], "keep": r.info["rate"]["keep"],
                      "codebook_size": r.info["rate"]["codebook_size"]})
        print("rd point:", curve[-1], flush=True)
    curve.sort(key=lambda p: p["budget"])
    for p in curve:
        p["under_budget_pct"] = 100.0 * (p["budget"] - p["bytes"]) / p["budget"]
    plot = ROOT / "docs" / f"lego_cpu{suffix}_rd.png"
    _plot(curve, original["psnr"], plot, args.field)

    summary = {
        "protocol": f"lego-cpu {args.field} model (benchmarks/lego_cpu.py --field {args.field}); 25 test views "
                    "0,8,...,192 at 200x200",
        "field": args.field,
        "bytes": len(main_result.data),
        "mib": len(main_result.data) / 2**20,
        "psnr": packed["psnr"],
        "ssim": packed["ssim"],
        "lpips_alex": packed.get("lpips_alex"),
        "psnr_scorer_png": scored["psnr"],
        "psnr_original": original["psnr"],
        "psnr_drop": original["psnr"] - packed["psnr"],
        "seconds": main_wall,
        "stage_seconds": main_result.seconds,
        "stages": stages,
        "chosen": {k: v for k, v in main_result.info["rate"].items() if k != "candidates"},
        "non_prune": args.non_prune,
        "rate_candidates": main_result.info["rate"]["candidates"],
        "tiers": main_result.info["tiers"],
        "codebooks": main_result.info["codebooks"],
        "decode_seconds_warm": min(decode_times),
        "decode_seconds_cold_process": float(cold.stdout.strip().splitlines()[-1]),
        "render_rays_per_s": packed["render_rays_per_s"],
        "timed_default_run": timing,
        "rate_distortion": curve,
        "reference": REFERENCE if args.field == "tensorf" else None,
        "peak_rss_mb": peak_rss_mb(),
        "renders": str((out / "renders").relative_to(ROOT)),
        "plot": str(plot.relative_to(ROOT)),
    }
    path = write_result(args.name, summary)
    date = time.strftime("%Y-%m-%d")
    machine = f"{torch.get_num_threads()}-thread CPU"
    add_doc_row(
        "lego-cpu compression (VQRF)" + (" (DVGO)" if suffix else ""),
        "| date | machine | command | bytes (MiB) | PSNR (float / scorer PNG) | drop | SSIM | LPIPS-alex | chose | "
        "seconds | decode s | default run: importance + codebooks + FT s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {date} | {machine} | `{path.name}`: `python benchmarks/lego_cpu_compress.py{' --field dvgo' if suffix else ''}` | {len(main_result.data):,} "
        f"({len(main_result.data) / 2**20:.3f}) | {packed['psnr']:.2f} / {scored['psnr']:.2f} | "
        f"{original['psnr'] - packed['psnr']:.2f} | {packed['ssim']:.4f} | {packed.get('lpips_alex', float('nan')):.4f} | "
        f"keep {summary['chosen']['keep']:.3f}, {summary['chosen']['codebook_size']} codes | {main_wall:.0f} | "
        f"{min(decode_times):.2f} | {timing['importance_codebooks_finetune_s']:.0f} ({args.timing_iters} FT its, "
        f"{timing['bytes']:,} B, {timed_psnr:.2f} dB) |",
    )
    add_doc_row(
        "lego-cpu compression stages" + (" (DVGO)" if suffix else ""),
        "| date | stage | PSNR | bytes | stage seconds |\n| --- | --- | --- | --- | --- |",
        "\n".join(f"| {date} | {s['stage']} | {s['psnr']:.2f} | {s['bytes']:,} | {s['seconds']:.1f} |" for s in stages),
    )
    add_doc_row(
        "lego-cpu rate-distortion" + (" (DVGO)" if suffix else ""),
        "| date | budget | bytes | under budget | PSNR | keep | codes |\n| --- | --- | --- | --- | --- | --- | --- |",
        "\n".join(f"| {date} | {p['budget']:,} | {p['bytes']:,} | {p['under_budget_pct']:.1f}% | {p['psnr']:.2f} | "
                  f"{p['keep']:.3f} | {p['codebook_size']} |" for p in curve),
    )
    print(json.dumps(summary, indent=2))


def _plot(curve: list[dict], original_psnr: float, path: Path, field: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([p["bytes"] / 1e3 for p in curve], [p["psnr"] for p in curve], "o-", label="vqrf (--target-size)")
    if field == "tensorf":  # the reference was run on this machine for VQ-TensoRF only
        ax.plot([REFERENCE["bytes"] / 1e3], [REFERENCE["psnr"]], "s",
                label="reference VQ-TensoRF (zip; its own 1000-it, 30.69 dB model)")
    ax.axhline(original_psnr, color="gray", ls="--", lw=1, label="uncompressed model")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v in (300, 500) else ""))
    ax.set_xlabel("file size (KB, 1000 bytes)")
    ax.set_ylabel("PSNR on 25 lego test views (dB)")
    ax.set_title(f"lego-cpu ({'TensoRF-VM' if field == 'tensorf' else 'DVGO'}): rate-distortion")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
