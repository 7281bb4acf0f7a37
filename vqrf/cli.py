"""The ``vqrf`` command: demo, train, eval, info.

Every verb is a thin wrapper over the library. Bad input ends with one line on stderr naming the file and the problem,
and a non-zero exit code; outputs are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from vqrf import __version__
from vqrf.config import PRESETS, demo_preset, get_preset
from vqrf.errors import VqrfError

EXIT_BAD_INPUT = 2


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VqrfError(None, "--device cuda requested but no CUDA device is available")
    return name


def _refuse_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise VqrfError(path, "already exists; pass --force to overwrite")


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _metric_rows(result: dict) -> list[tuple[str, str]]:
    rows = [("PSNR", f"{result['psnr']:.2f} dB"), ("SSIM", f"{result['ssim']:.4f}")]
    if "lpips_alex" in result:
        rows.append(("LPIPS (alex)", f"{result['lpips_alex']:.4f}"))
    rows.append(("render", f"{result['render_rays_per_s']:,.0f} rays/s"))
    return rows


# ---- verbs ------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from vqrf.data import load_scene
    from vqrf.train import train

    preset = get_preset(args.preset)
    if args.iters is not None:
        preset.train = preset.train.scaled_to(args.iters)
    if args.checkpoint_every is not None:
        preset.train.checkpoint_every = args.checkpoint_every
    if args.grid_init is not None:
        preset.train.n_voxel_init = args.grid_init**3
    if args.grid_final is not None:
        preset.train.n_voxel_final = args.grid_final**3
    if args.batch_rays is not None:
        preset.train.batch_rays = args.batch_rays
    downscale = preset.downscale if args.downscale is None else args.downscale
    out = Path(args.out)
    model_path = out / "model.safetensors"
    resuming = args.resume and (out / "checkpoint.safetensors").is_file()
    if not resuming:
        _refuse_overwrite(model_path, args.force)
    scene = load_scene(args.data, split="train", downscale=downscale, kind=args.kind)
    print(f"vqrf train: {scene.name} ({len(scene)} views, {scene.hw[1]}x{scene.hw[0]}), preset {preset.name}, "
          f"{preset.train.iters} iterations{' (resuming)' if resuming else ''}")
    result = train(scene, preset, out, resume=args.resume, device=_device(args.device), progress=not args.quiet)
    print(f"model: {model_path}  ({model_path.stat().st_size / 2**20:.2f} MiB, grid {result.field.grid_size}, "
          f"{result.seconds:.0f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vqrf.checkpoint import load_model
    from vqrf.data import load_scene
    from vqrf.evaluate import evaluate

    model = load_model(args.model, _device(args.device))
    out = Path(args.out) if args.out else Path(args.model).parent / f"eval_{args.split}"
    _refuse_overwrite(out / "metrics.json", args.force)
    downscale = model.preset.downscale if args.downscale is None else args.downscale
    scene = load_scene(args.data, split=args.split, downscale=downscale, kind=args.kind)
    result = evaluate(model, scene, every=args.every, out_dir=out, lpips_weights=args.lpips_weights,
                      use_lpips=not args.no_lpips, progress=not args.quiet)
    print(f"{scene.name} {args.split}: {result['views']} views at {scene.hw[1]}x{scene.hw[0]}")
    print(_table(_metric_rows(result)))
    print(f"metrics: {out / 'metrics.json'}   renders: {out / 'renders'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vqrf.checkpoint import load_model

    model = load_model(args.model)
    field = model.field
    rows = [
        ("file", f"{args.model} ({Path(args.model).stat().st_size / 2**20:.2f} MiB)"),
        ("preset", model.preset.name),
        ("grid", "x".join(map(str, field.grid_size))),
        ("box", " ".join(f"{v:.3f}" for v in field.aabb.flatten().tolist())),
        ("parameters", f"{field.n_parameters():,}"),
        ("occupied", f"{100 * model.occupancy.occupied_fraction():.1f}% of the box"),
        ("rays", "NDC (forward-facing)" if model.scene.ndc else f"near {model.scene.near}, far {model.scene.far}"),
        ("background", "white" if model.scene.white_bg else "black"),
    ]
    if "train" in model.extra:
        rows.append(("checkpoint", f"iteration {model.extra['train']['iteration']}"))
    print(_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vqrf.checkpoint import load_model
    from vqrf.data.synthetic import make_demo_scene
    from vqrf.evaluate import evaluate
    from vqrf.train import train

    out = Path(args.out)
    _refuse_overwrite(out / "model.safetensors", args.force)
    start = time.perf_counter()
    preset = demo_preset()
    train_scene = make_demo_scene("train")
    test_scene = make_demo_scene("test")
    print(f"vqrf demo: analytic scene, {len(train_scene)} training views at {train_scene.hw[1]}x{train_scene.hw[0]}, "
          f"{preset.train.iters} iterations -> {out}")
    result = train(train_scene, preset, out, device=_device(args.device), progress=not args.quiet)
    model = load_model(out / "model.safetensors")
    metrics = evaluate(model, test_scene, out_dir=out / "eval_test", progress=not args.quiet)
    size = (out / "model.safetensors").stat().st_size / 2**20
    print(f"\ndemo scene, {metrics['views']} held-out views")
    print(_table([*_metric_rows(metrics), ("train", f"{result.seconds:.0f} s"), ("model", f"{size:.2f} MiB"),
                  ("total", f"{time.perf_counter() - start:.0f} s")]))
    print(f"renders: {out / 'eval_test' / 'renders'}")
    return 0


# ---- parser -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqrf", description="Train grid radiance fields and compress them.")
    parser.add_argument("--version", action="version", version=f"vqrf {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: cuda when available)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")

    def dataset(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="dataset folder (Blender, LLFF, NSVF, T&T, or transforms.json)")
        p.add_argument("--kind", default="auto", help="dataset format: auto, blender, llff, nsvf, tt, ngp")
        p.add_argument("--downscale", type=float, default=None, help="image downscale factor (default: the preset's)")

    p = verbs.add_parser("demo", help="train and evaluate on a built-in analytic scene (no dataset needed)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    common(p)
    p.set_defaults(run=cmd_demo)

    p = verbs.add_parser("train", help="train a TensoRF-VM field")
    dataset(p)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="hyperparameters per dataset")
    p.add_argument("--iters", type=int, default=None, help="iterations (the preset's schedule scales with it)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints")
    p.add_argument("--grid-init", type=int, default=None, help="initial grid: about N^3 voxels")
    p.add_argument("--grid-final", type=int, default=None, help="final grid after upsampling: about N^3 voxels")
    p.add_argument("--batch-rays", type=int, default=None, help="rays per iteration")
    p.add_argument("--out", required=True, help="output folder; the model is OUT/model.safetensors")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if present")
    common(p)
    p.set_defaults(run=cmd_train)

    p = verbs.add_parser("eval", help="render a split and report PSNR, SSIM, LPIPS")
    p.add_argument("model", help="model file (.safetensors)")
    dataset(p)
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--every", type=int, default=1, help="evaluate every K-th view (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: next to the model, eval_<split>)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS-alex weights file (or set VQRF_LPIPS_WEIGHTS)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    common(p)
    p.set_defaults(run=cmd_eval)

    p = verbs.add_parser("info", help="describe a model file")
    p.add_argument("model", help="model file (.safetensors)")
    p.set_defaults(run=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VqrfError as e:
        print(f"vqrf {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"vqrf {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
