"""`vqrf batch` over lego and fern at a small budget on a local Ray instance with 2 workers: the merged table.

Runs the command as a user would (a fresh process, `--dataset custom` over a folder linking the two shared scenes)
into benchmarks/out/batch_small/ (cleared first), then writes benchmarks/results/<name>.json (the merged table of
OUT/summary.json, the command and its wall time) and a row in docs/benchmarks.md. Ray runs its workers at nice 15,
so another busy process on the machine slows the scenes far more than it would a plain `vqrf train`.

    python benchmarks/batch_small.py [--iters 1000] [--downscale 16] [--target-size 300KB] [--name batch_small]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time

from common import ROOT, add_doc_row, command, data_root, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--grid-init", type=int, default=32)
    ap.add_argument("--grid-final", type=int, default=64)
    ap.add_argument("--batch-rays", type=int, default=2048)
    ap.add_argument("--downscale", type=float, default=16, help="lego 50x50, fern 252x189")
    ap.add_argument("--target-size", default="300KB")
    ap.add_argument("--finetune-iters", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=8)
    ap.add_argument("--name", default="batch_small")
    args = ap.parse_args()

    data = data_root()
    scenes = ROOT / "benchmarks" / "out" / f"{args.name}_scenes"
    out = ROOT / "benchmarks" / "out" / args.name
    shutil.rmtree(scenes, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    scenes.mkdir(parents=True)
    (scenes / "lego").symlink_to(data / "nerf_synthetic" / "lego")
    (scenes / "fern").symlink_to(data / "nerf_llff_data" / "fern")

    budget = ["--preset", "cpu", "--iters", str(args.iters), "--grid-init", str(args.grid_init),
              "--grid-final", str(args.grid_final), "--batch-rays", str(args.batch_rays), "--downscale",
              f"{args.downscale:g}", "--target-size", args.target_size, "--finetune-iters", str(args.finetune_iters),
              "--eval-every", str(args.eval_every), "--workers", "2"]
    cmd = [sys.executable, "-m", "vqrf.cli", "batch", "--dataset", "custom", "--root", str(scenes), "--out", str(out),
           *budget, "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark: vqrf batch exited with {done.returncode}")

    summary = json.loads((out / "summary.json").read_text())
    rows = {row["scene"]: row for row in summary["scenes"]}
    mean = summary["mean"]
    result = {
        "protocol": "vqrf batch --dataset custom over the shared lego and fern, local Ray with 2 workers (1 CPU and "
                    f"1 torch thread per scene); every {args.eval_every}th test view scored, LPIPS-alex from "
                    "$VQRF_DATA",
        "vqrf_command": "vqrf batch --dataset custom --root SCENES --out OUT " + " ".join(map(shlex.quote, budget)),
        "wall_seconds": wall,
        "summary": summary,
    }
    path = write_result(args.name, result)

    def psnr(scene: str) -> str:
        return f"{rows[scene]['psnr_raw']:.2f} / {rows[scene]['psnr_vqrf']:.2f}"

    add_doc_row(
        "vqrf batch: lego + fern on 2 local Ray workers",
        "| date | command | budget | lego PSNR raw / vqrf | fern PSNR raw / vqrf | mean bytes raw -> vqrf | mean LPIPS "
        "vqrf | train / compress / eval s (mean) | wall s |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {time.strftime('%Y-%m-%d')} | `{path.name}`: `{command()}` | preset cpu, "
        f"{args.iters} iters, grid {args.grid_init}->{args.grid_final}, downscale {args.downscale:g}, "
        f"{args.target_size}, {args.finetune_iters} fine-tuning | {psnr('lego')} | {psnr('fern')} | "
        f"{mean['raw_bytes']:,.0f} -> {mean['vqrf_bytes']:,.0f} | "
        + (f"{mean['lpips_vqrf']:.4f}" if mean["lpips_vqrf"] is not None else "-")
        + f" | {mean['train_s']:.0f} / {mean['compress_s']:.0f} / {mean['eval_s']:.0f} | {wall:.0f} |",
    )
    print(json.dumps({k: v for k, v in result.items() if k != "summary"} | {"mean": mean}, indent=2))


if __name__ == "__main__":
    main()
