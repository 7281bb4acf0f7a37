"""LLFF fern at images_8 (504x378) on this CPU; held-out views 0, 8, 16.

``--preset llff-cpu`` (the default) trains the CPU preset as a user would (``vqrf train --preset llff-cpu``);
``--preset llff`` is the reference recipe scaled as the first fern rows were (bf16 MLP, weight threshold 1e-3,
``--iters``, grid ``--grid-init`` -> ``--grid-final``). Also counts the samples per ray on the held-out views (density
queries and shaded samples) and times a held-out 504x378 frame as the viewer renders it. Writes ``benchmarks/results/<name>.json``, the held-out renders as PNGs, and a row in
docs/benchmarks.md.

    python benchmarks/fern_llff.py [--preset llff-cpu] [--iters N] [--grid-init N] [--grid-final N] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import torch

from common import ROOT, add_doc_row, command, data_root, peak_rss_mb, write_result
from vqrf.checkpoint import LoadedModel, load_model
from vqrf.config import preset_with
from vqrf.data import load_scene
from vqrf.data.scene import Scene
from vqrf.evaluate import evaluate
from vqrf.render.volume import sample_weights
from vqrf.train import train
from vqrf.video import render_frame


@torch.no_grad()
def samples_per_ray(model: LoadedModel, scene: Scene) -> tuple[float, float]:
    """(density queries, shaded samples) per ray over every view of ``scene``."""
    settings = model.render_settings()
    queried = shaded = rays = 0
    for i in range(len(scene)):
        origins, directions = scene.rays(i)
        for o, d in zip(origins.split(16384), directions.split(16384)):
            weights = sample_weights(model.field, model.occupancy, o, d, settings).weights
            queried += weights.numel()
            shaded += int((weights > settings.weight_thres).sum())
            rays += o.shape[0]
    return queried / rays, shaded / rays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llff-cpu", choices=["llff-cpu", "llff"])
    ap.add_argument("--iters", type=int, help="default: the preset's (llff: 2000)")
    ap.add_argument("--grid-init", type=int, help="initial grid, about N^3 voxels (llff: 64)")
    ap.add_argument("--grid-final", type=int, help="final grid, about N^3 voxels (llff: 128)")
    ap.add_argument("--batch-rays", type=int)
    ap.add_argument("--name", default="fern_llff")
    args = ap.parse_args()

    fern = data_root() / "nerf_llff_data" / "fern"
    out = ROOT / "benchmarks" / "out" / args.name
    shutil.rmtree(out, ignore_errors=True)
    if args.preset == "llff":  # the first rows' scaling of the reference recipe
        args.iters, args.grid_init = args.iters or 2000, args.grid_init or 64
        args.grid_final = args.grid_final or 128
    preset = preset_with(args.preset, args.iters, args.grid_init, args.grid_final, args.batch_rays)
    if args.preset == "llff":
        preset.field.bf16_mlp = True
        preset.train.weight_thres = 1e-3

    result = train(load_scene(fern, "train", downscale=8), preset, out, progress=sys.stderr.isatty())
    test = load_scene(fern, "test", downscale=8)
    model = load_model(out / "model.safetensors")
    metrics = evaluate(model, test, out_dir=out, progress=sys.stderr.isatty())
    queried, shaded = samples_per_ray(model, test)
    start = time.perf_counter()  # what `vqrf view` does for a sharp frame: render_frame at the camera's size
    render_frame(model, test.cameras, 0)
    viewer_frame_s = time.perf_counter() - start
    t = preset.train
    summary = {
        "protocol": "LLFF fern, images_8 (504x378), train on 17 views, test on held-out views 0, 8, 16 (NDC)",
        "preset": f"{args.preset}: {t.iters} iterations, grid {round(t.n_voxel_init ** (1 / 3))}^3 -> "
                  f"{round(t.n_voxel_final ** (1 / 3))}^3, batch {t.batch_rays}, bf16 MLP {preset.field.bf16_mlp}, "
                  f"weight threshold {t.weight_thres}, NDC depth steps {t.ndc_depth_steps}",
        "iters": result.iters,
        "psnr": metrics["psnr"],
        "ssim": metrics["ssim"],
        "lpips_alex": metrics.get("lpips_alex"),
        "train_seconds": result.seconds,
        "seconds_per_iter": result.seconds / result.iters,
        "render_rays_per_s": metrics["render_rays_per_s"],
        "viewer_frame_s": viewer_frame_s,
        "viewer_frame_size": [test.cameras.width, test.cameras.height],
        "samples_per_ray": queried,
        "shaded_samples_per_ray": shaded,
        "max_samples": model.render_settings().max_samples,
        "occupied_fraction": model.occupancy.occupied_fraction(),
        "peak_rss_mb": peak_rss_mb(),
        "grid": result.field.grid_size,
        "per_view": metrics["per_view"],
    }
    path = write_result(args.name, summary)
    add_doc_row(
        "fern (LLFF, images_8) with samples per ray",
        "| date | machine | command | iters | PSNR | SSIM | LPIPS-alex | train s | render rays/s | samples / shaded "
        "per ray | viewer frame | occupied | peak MB | grid |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | {torch.get_num_threads()}-thread CPU | `{path.name}`: `{command()}` | "
        f"{result.iters} | {metrics['psnr']:.2f} | {metrics['ssim']:.4f} | "
        f"{metrics.get('lpips_alex', float('nan')):.4f} | {result.seconds:.0f} | "
        f"{metrics['render_rays_per_s']:,.0f} | {queried:.0f} / {shaded:.1f} | "
        f"{test.cameras.width}x{test.cameras.height} in {viewer_frame_s:.1f} s | "
        f"{summary['occupied_fraction']:.0%} | {peak_rss_mb():.0f} | {'x'.join(map(str, result.field.grid_size))} |",
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "per_view"}, indent=2))


if __name__ == "__main__":
    main()
