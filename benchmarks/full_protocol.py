"""The paper's protocol on one NeRF-Synthetic scene: 800x800, preset syn, 30k iterations, every test view, compression.

Trains with the syn preset (method-spec §1.2) at full resolution, scores the test views (PSNR, SSIM, LPIPS-alex, and
LPIPS-vgg when a weights file is given), then compresses twice from the same trained model: with the reference's
settings (``compress_defaults`` for the dataset, no budget) and at ``--target-size`` (1MB). Each .vqrf is written,
opened again as a file and scored on the same views. Times every stage; on CUDA also the peak GPU memory
(``torch.cuda.max_memory_allocated``) of each stage, and the process's peak RSS.

Training resumes: a re-run continues ``OUT/checkpoint.safetensors``, or reuses a finished ``OUT/model.safetensors``
that was trained with the same settings (``--fresh`` starts over). With ``--max-train-seconds`` training stops at that
wall-clock limit; the result then records the iterations run, the measured rate and an extrapolated time for the full
schedule. The result JSON is rewritten after every stage, so a run that is killed keeps what it measured.

    python benchmarks/full_protocol.py --scene ../shared/data/nerf_synthetic/lego [--device cuda] [--iters 30000]
        [--max-train-seconds S] [--every 1] [--finetune-iters N] [--lpips-vgg-weights FILE] [--name N] [--out DIR]

Writes benchmarks/results/<name>.json (default full_protocol_<scene>_<device>) and a row in docs/benchmarks.md, or
only the JSON at ``--json PATH`` (used by benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from common import ROOT, add_doc_row, command, data_root, machine, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.pipeline import compress_scene
from vqrf.compress.rate import parse_size
from vqrf.config import Preset, compress_defaults, preset_with
from vqrf.data import load_scene
from vqrf.data.scene import Scene
from vqrf.evaluate import evaluate
from vqrf.metrics import lpips as lpips_distance
from vqrf.models import open_model
from vqrf.train import train

EXIT_BAD_INPUT = 2
DOC_SECTION = "Full protocol (paper: 800x800, preset syn, 30k iterations, every test view)"


# ---- small helpers shared with lego_fullres_cpu.py ---------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StageMemory:
    """Peak GPU memory of one stage (None on the CPU)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()}-thread CPU"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Stages:
    """Runs the stages of a benchmark: logs each, records its seconds and the peak RSS so far in ``summary``, and
    calls ``save`` after each, so a killed run keeps what it measured."""

    def __init__(self, summary: dict[str, Any], save: Callable[[], None]):
        self.summary, self.save = summary, save
        summary.setdefault("stage_seconds", {})
        summary.setdefault("stage_peak_rss_mb", {})

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        log(f"stage {label}: start")
        start = time.perf_counter()
        value = fn()
        self.summary["stage_seconds"][label] = time.perf_counter() - start
        self.summary["stage_peak_rss_mb"][label] = peak_rss_mb()
        log(f"stage {label}: {self.summary['stage_seconds'][label]:.1f} s (peak RSS so far {peak_rss_mb():,.0f} MB)")
        self.save()
        return value


def train_stage(scene: Scene, preset: Preset, out: Path, device: str, max_seconds: float | None, fresh: bool,
                progress: bool, key: dict[str, Any]) -> dict[str, Any]:
    """Train (resuming, or reusing a finished model trained with the same ``key``); returns the training figures.

    The iteration/time of every checkpoint is recorded, so the rate of the latest segment (the largest grid reached)
    gives an extrapolation to the full schedule.
    """
    model_path, checkpoint, record = out / "model.safetensors", out / "checkpoint.safetensors", out / "train.json"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if model_path.is_file() and not checkpoint.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key:
            log(f"train: reusing {model_path} ({saved['iters']} iterations, {saved['train_seconds']:.0f} s); "
                "--fresh trains again")
            return {**saved["result"], "reused": True}
    record.unlink(missing_ok=True)

    marks: list[tuple[int, float]] = []
    start = time.perf_counter()

    def on_checkpoint(iteration: int) -> None:
        marks.append((iteration, time.perf_counter() - start))

    resumed = checkpoint.is_file()
    memory = StageMemory(device)
    result = train(scene, preset, out, resume=True, device=device, progress=progress, on_checkpoint=on_checkpoint,
                   max_seconds=max_seconds)
    field, iters, seconds = result.field, result.iters, result.seconds
    sync(device)
    wall = time.perf_counter() - start
    target = preset.train.iters
    figures: dict[str, Any] = {
        "iters": iters,
        "iters_target": target,
        "stopped_at_time_limit": iters < target,
        "max_train_seconds": max_seconds,
        "train_seconds": seconds,
        "train_wall_seconds": wall,
        "resumed": resumed,
        "seconds_per_iter": seconds / max(iters, 1),
        "iters_per_s": iters / max(seconds, 1e-9),
        "train_rays_per_s": iters * preset.train.batch_rays / max(seconds, 1e-9),
        "grid": list(field.grid_size),
        "model_bytes": model_path.stat().st_size,
        "checkpoint_marks": [{"iteration": i, "seconds": round(t, 3)} for i, t in marks],
        "gpu_peak_mb": memory.peak_mb(),
    }
    if iters < target:
        rate = figures["iters_per_s"]
        if len(marks) >= 2 and marks[-1][0] > marks[-2][0]:
            (i0, t0), (i1, t1) = marks[-2], marks[-1]
            rate = (i1 - i0) / max(t1 - t0, 1e-9)
            figures["last_segment"] = {"from": i0, "to": i1, "iters_per_s": rate}
        figures["extrapolated_full_seconds_naive"] = target / max(figures["iters_per_s"], 1e-9)
        figures["extrapolated_full_seconds"] = seconds + (target - iters) / max(rate, 1e-9)
        figures["extrapolation_note"] = (
            f"stopped at iteration {iters} of {target} (grid {'x'.join(map(str, field.grid_size))}); the last "
            "segment's rate is used for the rest, which underestimates if later upsamplings are still to come")
    record.write_text(json.dumps({"key": key, "iters": iters, "train_seconds": seconds, "result": figures}, indent=2))
    return {**figures, "reused": False}


def score(model, scene: Scene, every: int, out_dir: Path | None, vgg_weights: str | None, device: str,
          progress: bool) -> dict[str, Any]:
    """``evaluate`` on views 0, every, ...; LPIPS-vgg (from the saved 8-bit renders) when ``vgg_weights`` is given."""
    memory = StageMemory(device)
    start = time.perf_counter()
    metrics = evaluate(model, scene, every=every, out_dir=out_dir, progress=progress)
    sync(device)
    out = {k: v for k, v in metrics.items() if k != "per_view"}
    out["eval_seconds"] = time.perf_counter() - start
    out["lpips_alex"] = metrics.get("lpips_alex")
    if out["lpips_alex"] is None:
        out["lpips_alex_note"] = "not measured: no LPIPS-alex weights found (VQRF_DATA/lpips or VQRF_LPIPS_WEIGHTS)"
    if vgg_weights and out_dir is not None:
        from PIL import Image
        import numpy as np

        values = []
        for i in range(0, len(scene), every):
            png = np.asarray(Image.open(out_dir / "renders" / f"{scene.image_names[i]}.png").convert("RGB"))
            pred = torch.from_numpy(png.astype(np.float32) / 255.0)
            gt = torch.as_tensor(scene.image(i))
            values.append(lpips_distance(pred.to(device), gt.to(device), net="vgg", weights=vgg_weights))
        out["lpips_vgg"] = float(sum(values) / len(values))
        out["lpips_vgg_note"] = "on the saved 8-bit PNG renders"
    else:
        out["lpips_vgg"] = None
        out["lpips_vgg_note"] = "not measured: no LPIPS-vgg weights given (--lpips-vgg-weights FILE); none offline"
    out["gpu_peak_mb"] = memory.peak_mb()
    return out


def compress_stage(model_path: Path, train_scene: Scene, test_scene: Scene, data_path: str, downscale: float,
                   budget: int | None, finetune_iters: int | None, device: str, vqrf_path: Path, every: int,
                   vgg_weights: str | None, progress: bool) -> dict[str, Any]:
    """Compress a fresh copy of the trained model, write the .vqrf, open that file again and score it."""
    model = load_model(model_path, device)  # fine-tuning changes the field in place: every run starts from the file
    cfg = compress_defaults(model.preset.dataset, model.preset.field_type)
    if finetune_iters is not None:
        cfg.finetune_iters = finetune_iters
    cache = model_path.with_name(model_path.stem + ".importance.safetensors")
    importance_cached = cache.is_file()
    memory = StageMemory(device)
    start = time.perf_counter()
    result = compress_scene(model, train_scene, cfg, model_path, data_path, downscale, budget=budget,
                            progress=progress)
    sync(device)
    wall = time.perf_counter() - start
    vqrf_path.parent.mkdir(parents=True, exist_ok=True)
    vqrf_path.write_bytes(result.data)
    gpu_peak = memory.peak_mb()
    start = time.perf_counter()
    decoded = open_model(vqrf_path, device)
    sync(device)
    open_seconds = time.perf_counter() - start
    scores = score(decoded, test_scene, every, vqrf_path.parent / vqrf_path.stem, vgg_weights, device, progress)
    out = {
        "budget": budget,
        "bytes": len(result.data),
        "mib": len(result.data) / 2**20,
        "file": show_path(vqrf_path),
        "finetune_iters": cfg.finetune_steps(model.preset),
        "keep": cfg.keep,
        "non_prune": cfg.non_prune,
        "seconds": wall,
        "stage_seconds": result.seconds,
        "importance_from_cache": importance_cached,
        "open_seconds": open_seconds,
        "tiers": result.info.get("tiers"),
        "codebooks": result.info.get("codebooks"),
        "gpu_peak_mb": gpu_peak,
        **{k: scores[k] for k in ("psnr", "ssim", "lpips_alex", "lpips_vgg", "views", "render_rays_per_s",
                                  "eval_seconds")},
        "eval_gpu_peak_mb": scores["gpu_peak_mb"],
    }
    if "rate" in result.info:
        out["chosen"] = {k: v for k, v in result.info["rate"].items() if k != "candidates"}
    return out


def run_scorer(data: Path, scene_dir: Path, renders: Path, every: int) -> dict[str, Any] | None:
    """The independent ../shared/tools/score.py on the PNG renders, when it is there and the scene is in VQRF_DATA."""
    scorer = data.parent / "tools" / "score.py"
    try:
        rel = scene_dir.resolve().relative_to(data.resolve())
    except ValueError:
        return None
    if not scorer.is_file():
        return None
    done = subprocess.run([sys.executable, str(scorer), "--renders", str(renders), "--scene", str(rel), "--every",
                           str(every), "--json"], capture_output=True, text=True,
                          env={"VQRF_DATA": str(data), "PATH": ""})
    if done.returncode != 0:
        log(f"scorer failed: {done.stderr.strip()[-300:]}")
        return None
    return json.loads(done.stdout)


def refuse_missing_cuda(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{Path(sys.argv[0]).name}: --device {device} requested but no CUDA device is available "
              f"(torch {torch.__version__})", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def write_json_at(path: Path, result: dict[str, Any]) -> Path:
    """Like common.write_result, at an explicit path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"date": datetime.date.today().isoformat(), "machine": machine(), "command": command(), **result}
    path.write_text(json.dumps(full, indent=2) + "\n")
    return path


def show_path(path: Path) -> str:
    """Relative to the repository when inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


# ---- the protocol -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", required=True, help="a NeRF-Synthetic scene folder (transforms_*.json + images)")
    ap.add_argument("--device", default="cuda", help="cuda (default; refused without CUDA) or cpu")
    ap.add_argument("--preset", default="syn")
    ap.add_argument("--field", default="tensorf", choices=("tensorf", "dvgo"),
                    help="dvgo: the paper's VQ-DVGO protocol (coarse 5k + fine 20k iterations; --iters sets the fine)")
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's, 30000 for "
                    "tensorf syn, 20000 fine for dvgo; the schedule scales with them)")
    ap.add_argument("--max-train-seconds", type=float, default=None,
                    help="stop training at this wall-clock limit; the result extrapolates to --iters")
    ap.add_argument("--every", type=int, default=1, help="score test views 0, every, 2*every, ... (1: all 200)")
    ap.add_argument("--downscale", type=float, default=1.0, help="image downscale (1: 800x800; smoke tests only)")
    ap.add_argument("--finetune-iters", type=int, default=None,
                    help="compression fine-tuning steps (default: the compression default, a third of --iters)")
    ap.add_argument("--target-size", default="1MB", help="budget of the budgeted compression")
    ap.add_argument("--compressions", default="default,budget",
                    help="which compressions: 'default' (reference settings, no budget), 'budget' (--target-size); "
                         "comma-separated, or 'none'")
    ap.add_argument("--lpips-vgg-weights", default=None, help="LPIPS-vgg weights (.npz/.pth); none exist offline")
    ap.add_argument("--grid-init", type=int, default=None, help="initial grid ~N^3 (smoke tests only)")
    ap.add_argument("--grid-final", type=int, default=None, help="final grid ~N^3 (smoke tests only)")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="training checkpoint period in iterations (also the granularity of the segment timing)")
    ap.add_argument("--fresh", action="store_true", help="train from scratch even if OUT holds a checkpoint/model")
    ap.add_argument("--name", default=None, help="result name (default full_protocol_<scene>_<device>)")
    ap.add_argument("--out", default=None, help="working folder (default: benchmarks/out/NAME)")
    ap.add_argument("--json", default=None, help="write the result JSON here instead (no docs row)")
    args = ap.parse_args()
    refuse_missing_cuda(args.device)
    kinds = [k for k in args.compressions.split(",") if k and k != "none"]
    if any(k not in ("default", "budget") for k in kinds):
        ap.error("--compressions takes 'default', 'budget' or 'none'")
    if args.every < 1:
        ap.error("--every must be >= 1")

    data = data_root()  # also where LPIPS-alex finds its weights
    scene_dir = Path(args.scene)
    if not (scene_dir / "transforms_train.json").is_file():
        print(f"full_protocol: {scene_dir} is not a NeRF-Synthetic scene (no transforms_train.json)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    device = args.device
    name = args.name or f"full_protocol_{scene_dir.name}_{device.split(':')[0]}"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "out" / name
    progress = sys.stderr.isatty()
    preset = preset_with(args.preset, args.iters, args.grid_init, args.grid_final, None, args.checkpoint_every,
                         args.field)
    budget = parse_size(args.target_size)

    summary: dict[str, Any] = {
        "protocol": f"{scene_dir.name}: train split at downscale {args.downscale:g}, preset {args.preset}, "
                    f"{preset.train.iters} iterations; test views 0,{args.every},... ; white background",
        "complete": False,
        "scene": str(scene_dir),
        "device": device,
        "device_name": device_name(device),
        "preset": args.preset,
        "downscale": args.downscale,
        "every": args.every,
        "stage_seconds": {},
        "stage_peak_rss_mb": {},
    }
    if device.startswith("cuda"):
        summary["cuda"] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "capability": list(torch.cuda.get_device_capability(torch.device(device)))}

    def save() -> None:
        summary["peak_rss_mb"] = peak_rss_mb()
        if device.startswith("cuda"):
            summary["gpu_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if args.json:
            write_json_at(Path(args.json), summary)
        else:
            write_result(name, summary)

    stage = Stages(summary, save)

    train_scene = stage("load_train", lambda: load_scene(scene_dir, "train", downscale=args.downscale))
    test_scene = stage("load_test", lambda: load_scene(scene_dir, "test", downscale=args.downscale))
    h, w = train_scene.hw
    summary["resolution"] = f"{w}x{h}"
    summary["train_views"], summary["test_views_total"] = len(train_scene), len(test_scene)
    key = json.loads(json.dumps({"scene": str(scene_dir.resolve()), "downscale": args.downscale,
                                 "preset": preset.to_dict(), "max_train_seconds": args.max_train_seconds,
                                 "device": device}))  # as train.json will hold it (tuples become lists)
    trained = stage("train", lambda: train_stage(train_scene, preset, out, device, args.max_train_seconds,
                                                  args.fresh, progress, key))
    summary.update({k: v for k, v in trained.items()})
    log(f"train: {trained['iters']} iterations in {trained['train_seconds']:.1f} s = {trained['iters_per_s']:.2f} it/s "
        f"({trained['train_rays_per_s']:,.0f} training rays/s), grid {'x'.join(map(str, trained['grid']))}")
    if "extrapolated_full_seconds" in trained:
        log(f"train: extrapolated time for {trained['iters_target']} iterations: "
            f"{trained['extrapolated_full_seconds']:.0f} s (naive {trained['extrapolated_full_seconds_naive']:.0f} s)")
    save()

    model_path = out / "model.safetensors"
    raw = stage("eval", lambda: score(load_model(model_path, device), test_scene, args.every, out / "eval",
                                      args.lpips_vgg_weights, device, progress))
    summary.update({"psnr": raw["psnr"], "ssim": raw["ssim"], "lpips_alex": raw["lpips_alex"],
                    "lpips_vgg": raw["lpips_vgg"], "lpips_vgg_note": raw["lpips_vgg_note"], "views": raw["views"],
                    "render_seconds": raw["render_seconds"], "render_rays_per_s": raw["render_rays_per_s"],
                    "eval_seconds": raw["eval_seconds"], "eval_gpu_peak_mb": raw["gpu_peak_mb"]})
    scored = run_scorer(data, scene_dir, out / "eval" / "renders", args.every) if args.downscale == 1 else None
    summary["psnr_scorer_png"] = scored["psnr"] if scored else None
    log(f"eval: {raw['views']} views, PSNR {raw['psnr']:.2f}, SSIM {raw['ssim']:.4f}, "
        f"LPIPS-alex {fmt(raw['lpips_alex'], '.4f')}, {raw['render_rays_per_s']:,.0f} rays/s")
    save()

    # Importance is cached next to the model; the first compression computes it (timed), the second reuses it.
    model_path.with_name(model_path.stem + ".importance.safetensors").unlink(missing_ok=True)
    summary["compression"] = {}
    for kind in kinds:
        label = "default" if kind == "default" else args.target_size
        result = stage(f"compress_{kind}", lambda: compress_stage(
            model_path, train_scene, test_scene, str(scene_dir), args.downscale, None if kind == "default" else budget,
            args.finetune_iters, device, out / f"{scene_dir.name}_{kind}.vqrf", args.every, args.lpips_vgg_weights,
            progress))
        result["label"] = label
        summary["compression"][kind] = result
        log(f"compress {label}: {result['bytes']:,} bytes, PSNR {result['psnr']:.2f}, SSIM {result['ssim']:.4f}, "
            f"{result['seconds']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in result['stage_seconds'].items())})")
        save()
    summary["complete"] = True
    save()

    if not args.json:
        d = summary["compression"].get("default")
        b = summary["compression"].get("budget")
        add_doc_row(
            DOC_SECTION,
            "| date | machine | command | iters | train s | PSNR | SSIM | LPIPS-alex | LPIPS-vgg | render rays/s | "
            "default .vqrf: bytes / PSNR / s | budgeted .vqrf: bytes / PSNR / s | GPU peak MB | peak RSS MB |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {time.strftime('%Y-%m-%d')} | {summary['device_name']} | `{name}.json`: `{command()}` | "
            f"{summary['iters']}{' (time limit)' if summary['stopped_at_time_limit'] else ''} | "
            f"{summary['train_seconds']:.0f} | {summary['psnr']:.2f} | {summary['ssim']:.4f} | "
            f"{fmt(summary['lpips_alex'], '.4f')} | {fmt(summary['lpips_vgg'], '.4f')} | "
            f"{summary['render_rays_per_s']:,.0f} | "
            + (f"{d['bytes']:,} / {d['psnr']:.2f} / {d['seconds']:.0f}" if d else "n/a") + " | "
            + (f"{b['bytes']:,} / {b['psnr']:.2f} / {b['seconds']:.0f}" if b else "n/a") + " | "
            f"{fmt(summary.get('gpu_max_memory_allocated_mb'), ',.0f')} | {summary['peak_rss_mb']:,.0f} |",
        )
    if args.json:
        log(f"result: {args.json}")
    else:
        print(json.dumps({k: v for k, v in summary.items() if k != "checkpoint_marks"}, indent=2))


if __name__ == "__main__":
    main()
