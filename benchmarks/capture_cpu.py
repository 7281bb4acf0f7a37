"""Your own photos on a CPU: the shared beer capture (COLMAP, 71 phone photos, background all around) end to end.

Trains ``--preset custom-cpu`` on the capture (every 8th photo held out), scores the held-out views (PSNR, SSIM,
LPIPS), compresses with ``--target-size 1MB`` and scores the file, renders an orbit video from the decoded file, and
saves a strip of held-out views (photo above, render below) to docs/capture_beer.png. Writes
benchmarks/results/capture_beer.json and a row in docs/benchmarks.md.

    python benchmarks/capture_cpu.py [--iters N] [--target-size 1MB]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image

from common import ROOT, add_doc_row, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import load_model
from vqrf.compress.pipeline import compress_scene
from vqrf.compress.rate import parse_size
from vqrf.config import compress_defaults, get_preset
from vqrf.data import load_scene
from vqrf.evaluate import evaluate
from vqrf.models import open_model
from vqrf.render.paths import path_poses, resized
from vqrf.video import write_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the preset's)")
    ap.add_argument("--target-size", default="1MB")
    ap.add_argument("--name", default="capture_beer")
    args = ap.parse_args()

    capture = data_root() / "captures" / "beer"
    out = ROOT / "benchmarks" / "out" / args.name
    shutil.rmtree(out, ignore_errors=True)
    preset = get_preset("custom-cpu")
    if args.iters:
        preset.train = preset.train.scaled_to(args.iters)
    progress = sys.stderr.isatty()
    downscale = preset.downscale

    train_scene = load_scene(capture, "train", downscale=downscale)
    test_scene = load_scene(capture, "test", downscale=downscale)
    from vqrf.train import train

    result = train(train_scene, preset, out, progress=progress)
    model_path = out / "model.safetensors"
    raw = evaluate(load_model(model_path), test_scene, out_dir=out / "raw", progress=progress)
    on_train = evaluate(load_model(model_path), train_scene, use_lpips=False, progress=progress)

    cfg = compress_defaults(preset.dataset, preset.field_type, train_scene.contract)
    start = time.perf_counter()
    packed = compress_scene(load_model(model_path), train_scene, cfg, model_path, str(capture), downscale,
                            budget=parse_size(args.target_size), progress=progress)
    compress_seconds = time.perf_counter() - start
    file_path = out / "beer.vqrf"
    file_path.write_bytes(packed.data)
    decoded = open_model(file_path)
    compressed = evaluate(decoded, test_scene, out_dir=out / "vqrf", progress=progress)

    orbit = path_poses(train_scene.camera_set(), "orbit", 60)
    cameras = resized(train_scene.cameras, orbit, train_scene.hw[1] * 2, train_scene.hw[0] * 2)
    write_video(decoded, cameras, out / "orbit.mp4", fps=20, progress=progress)
    strip = _strip(test_scene, out / "vqrf" / "renders", ROOT / "docs" / "capture_beer.png")

    summary = {
        "protocol": "captures/beer (COLMAP, 71 SIMPLE_RADIAL photos 720x1280) at 1/8 (90x160); every 8th photo "
                    "held out (9 views); unbounded (contracted) scene",
        "preset": preset.name,
        "iters": result.iters,
        "psnr": raw["psnr"],
        "ssim": raw["ssim"],
        "lpips_alex": raw.get("lpips_alex"),
        "train_psnr": result.train_psnr,
        "eval_psnr_on_train_views": on_train["psnr"],
        "eval_psnr_on_train_views_pooled": on_train["psnr_pooled"],
        "train_seconds": result.seconds,
        "grid": result.field.grid_size,
        "vqrf_bytes": len(packed.data),
        "vqrf_psnr": compressed["psnr"],
        "vqrf_ssim": compressed["ssim"],
        "vqrf_lpips_alex": compressed.get("lpips_alex"),
        "vqrf_psnr_drop": raw["psnr"] - compressed["psnr"],
        "compress_seconds": compress_seconds,
        "compress_stage_seconds": packed.seconds,
        "render_rays_per_s": raw["render_rays_per_s"],
        "orbit_video": str((out / "orbit.mp4").relative_to(ROOT)),
        "strip": str(strip.relative_to(ROOT)),
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }
    path = write_result(args.name, summary)
    add_doc_row(
        "Own capture: beer (COLMAP, unbounded), custom-cpu",
        "| date | machine | command | iters | held-out PSNR / SSIM / LPIPS | train-loop PSNR | eval on train views "
        "(pooled / per-view mean) | "
        "train s | 1MB file: bytes, PSNR (drop) | compress s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: "
        f"`python benchmarks/capture_cpu.py{' --iters ' + str(args.iters) if args.iters else ''}` | {result.iters} | "
        f"{raw['psnr']:.2f} / {raw['ssim']:.4f} / {raw.get('lpips_alex', float('nan')):.4f} | "
        f"{result.train_psnr:.2f} | {on_train['psnr_pooled']:.2f} / {on_train['psnr']:.2f} | {result.seconds:.0f} | "
        f"{len(packed.data):,}, {compressed['psnr']:.2f} ({raw['psnr'] - compressed['psnr']:+.2f}) | "
        f"{compress_seconds:.0f} |",
    )
    print(summary)


def _strip(scene, renders, out_png):
    """Held-out photos (top) over the decoded file's renders (bottom), side by side."""
    tops, bottoms = [], []
    for i, name in enumerate(scene.image_names[:5]):
        tops.append((scene.image(i).numpy() * 255).round().astype(np.uint8))
        bottoms.append(np.asarray(Image.open(renders / f"{name}.png").convert("RGB")))
    grid = np.concatenate([np.concatenate(tops, axis=1), np.concatenate(bottoms, axis=1)], axis=0)
    image = Image.fromarray(grid)
    image = image.resize((image.width * 2, image.height * 2), Image.NEAREST)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_png)
    return out_png


if __name__ == "__main__":
    main()
