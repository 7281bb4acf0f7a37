"""Where a lego-cpu training step and a test render spend their time, with the fused kernel and with grid_sample.

Trains the cpu preset on lego (200x200) for ``--warmup`` iterations, then times the phases of further steps with
torch.profiler (kernel = the VM feature lookup, mlp = basis + shading MLP, march = ray marching) and renders one test
view. Writes ``benchmarks/results/profile_step.json`` and a row in docs/benchmarks.md.

    python benchmarks/profile_step.py [--warmup 600] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import add_doc_row, data_root, write_result
from vqrf.config import get_preset
from vqrf.data import load_scene
from vqrf.render.volume import render_image
from vqrf.train import _Trainer


def timed_steps(trainer: _Trainer, steps: int) -> dict:
    settings = trainer.settings()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(settings)
    wall = (time.perf_counter() - start) / steps
    rows = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    kernel = sum(v for k, v in rows.items() if "VMFeatures" in k or "grid_sampler" in k)
    mlp = sum(v for k, v in rows.items() if k in ("aten::mm", "aten::addmm", "aten::threshold_backward"))
    total = sum(rows.values())
    return {"seconds_per_step": wall, "profiled_ms": {"vm_kernel_fwd_bwd": kernel, "mlp_matmuls": mlp,
                                                       "other_torch_ops": total - kernel - mlp}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=600)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    lego = data_root() / "nerf_synthetic" / "lego"
    scene = load_scene(lego, "train", downscale=4)
    preset = get_preset("cpu")
    trainer = _Trainer(scene, preset, torch.device("cpu"), Path("/nonexistent"))
    trainer.fresh()
    settings = trainer.settings()
    for it in range(args.warmup):
        trainer.step(settings)
        if it in preset.train.alpha_mask_at:
            trainer.update_occupancy()
            settings = trainer.settings()
        if it in preset.train.upsample_at:
            trainer.upsample(preset.train.upsample_at.index(it))
            settings = trainer.settings()

    result = {"warmup_iters": args.warmup, "grid": trainer.field.grid_size}
    result["fused_kernel"] = timed_steps(trainer, args.steps)
    os.environ["VQRF_KERNELS"] = "torch"
    result["grid_sample_reference"] = timed_steps(trainer, max(3, args.steps // 4))
    os.environ.pop("VQRF_KERNELS")

    test = load_scene(lego, "test", downscale=4)
    origins, directions = test.rays(0)
    render_image(trainer.field, trainer.occupancy, origins, directions, trainer.settings())
    start = time.perf_counter()
    render_image(trainer.field, trainer.occupancy, origins, directions, trainer.settings())
    result["render_rays_per_s_view0"] = origins.shape[0] / (time.perf_counter() - start)
    write_result("profile_step", result)
    fused, ref = result["fused_kernel"], result["grid_sample_reference"]
    add_doc_row(
        "Where a training step spends its time (lego-cpu, after the warm-up)",
        "| date | command | grid | s/step fused kernel | s/step grid_sample | kernel ms (fused / grid_sample) | MLP matmul ms | other ms |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | `python benchmarks/profile_step.py --warmup {args.warmup}` | "
        f"{'x'.join(map(str, result['grid']))} | {fused['seconds_per_step']:.3f} | {ref['seconds_per_step']:.3f} | "
        f"{fused['profiled_ms']['vm_kernel_fwd_bwd']:.0f} / {ref['profiled_ms']['vm_kernel_fwd_bwd']:.0f} | "
        f"{fused['profiled_ms']['mlp_matmuls']:.0f} | {fused['profiled_ms']['other_torch_ops']:.0f} |",
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
