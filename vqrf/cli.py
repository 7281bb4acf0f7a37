"""The ``vqrf`` command: demo, train, compress, eval, render, view, info, batch.

Every verb is a thin wrapper over the library. Bad input ends with one line on stderr naming the file and the problem,
and a non-zero exit code; outputs are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from vqrf import __version__
from vqrf.config import FIELD_TYPES, PRESET_NAMES, demo_preset, preset_with
from vqrf.data.capture import SCENE_KINDS
from vqrf.errors import VqrfError

if TYPE_CHECKING:
    from vqrf.checkpoint import LoadedModel
    from vqrf.data.scene import Cameras, CameraSet

EXIT_BAD_INPUT = 2


def _device(name: str) -> str:
    """``--device``: cpu, cuda, cuda:N or auto (CUDA when there is one), checked against this machine."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise VqrfError(None, f"--device must be cpu, cuda, cuda:N or auto, got '{name}'")
    if not torch.cuda.is_available():
        raise VqrfError(None, f"--device {name} requested but no CUDA device is available")
    if index and int(index) >= torch.cuda.device_count():
        raise VqrfError(None, f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
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


def _load_scene(args: argparse.Namespace, split: str, downscale: float, model=None):
    """``split`` of ``--data`` as the model was trained on it: a capture read bounded or unbounded as its model
    renders it, unless ``--scene`` says otherwise."""
    from vqrf.data import load_scene

    kind = args.scene
    if kind is None:
        kind = "unbounded" if model is not None and model.scene.contract else "auto"
    scene = load_scene(args.data, split=split, downscale=downscale, kind=args.kind, scene=kind)
    if args.scene is None and model is not None and scene.contract and not model.scene.contract:
        scene = load_scene(args.data, split=split, downscale=downscale, kind=args.kind, scene="bounded")
    return scene


def _training_views(args: argparse.Namespace, model: LoadedModel, needed_for: str) -> CameraSet:
    """The training cameras for camera paths and the viewer: the model file's own, or for a file written before vqrf
    stored them (field version 1 or 2, older checkpoints), those of ``--data``; without either, a one-line error
    saying that ``needed_for`` needs ``--data``."""
    if model.scene.views is not None:
        return model.scene.views
    if not args.data:
        raise VqrfError(args.model, f"stores no training cameras (written by an older vqrf); {needed_for} needs "
                                    f"--data DATASET")
    downscale = model.preset.downscale if args.downscale is None else args.downscale
    return _load_scene(args, "train", downscale, model).camera_set()


# ---- verbs ------------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from vqrf.train import train

    preset = preset_with(args.preset, args.iters, args.grid_init, args.grid_final, args.batch_rays,
                         args.checkpoint_every, args.field)
    downscale = preset.downscale if args.downscale is None else args.downscale
    out = Path(args.out)
    model_path = out / "model.safetensors"
    resuming = args.resume and (out / "checkpoint.safetensors").is_file()
    if not resuming:
        _refuse_overwrite(model_path, args.force)
    scene = _load_scene(args, "train", downscale)
    stages = f"{preset.coarse.train.iters} coarse + " if preset.coarse else ""
    print(f"vqrf train: {scene.name} ({len(scene)} views, {scene.hw[1]}x{scene.hw[0]}), {preset.field_type} preset "
          f"{preset.name}, {stages}{preset.train.iters} iterations{' (resuming)' if resuming else ''}")
    result = train(scene, preset, out, resume=args.resume, device=_device(args.device), progress=not args.quiet)
    print(f"model: {model_path}  ({model_path.stat().st_size / 2**20:.2f} MiB, grid {result.field.grid_size}, "
          f"{result.seconds:.0f} s)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from vqrf.evaluate import evaluate
    from vqrf.models import open_model

    model = open_model(args.model, _device(args.device))
    out = Path(args.out) if args.out else Path(args.model).parent / f"eval_{args.split}"
    _refuse_overwrite(out / "metrics.json", args.force)
    downscale = model.preset.downscale if args.downscale is None else args.downscale
    scene = _load_scene(args, args.split, downscale, model)
    result = evaluate(model, scene, every=args.every, out_dir=out, lpips_weights=args.lpips_weights,
                      use_lpips=not args.no_lpips, progress=not args.quiet)
    print(f"{scene.name} {args.split}: {result['views']} views at {scene.hw[1]}x{scene.hw[0]}")
    print(_table(_metric_rows(result)))
    print(f"metrics: {out / 'metrics.json'}   renders: {out / 'renders'}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from vqrf.checkpoint import atomic_write
    from vqrf.compress.pipeline import compress_scene
    from vqrf.compress.rate import parse_size
    from vqrf.compress.vq import describe_tiers
    from vqrf.config import compress_defaults
    from vqrf.models import is_compressed, open_model

    out = Path(args.out)
    _refuse_overwrite(out, args.force)
    budget = parse_size(args.target_size) if args.target_size else None
    if is_compressed(args.model):
        raise VqrfError(args.model, "is already compressed; compress the trained model (.safetensors)")
    model = open_model(args.model, _device(args.device))
    cfg = compress_defaults(model.preset.dataset, model.preset.field_type, model.scene.contract)
    for name in ("keep", "non_prune", "codebook_size", "finetune_iters", "sync_every"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.precision is not None:
        cfg.codebook_precision = cfg.line_precision = cfg.network_precision = args.precision
    if not 1 <= cfg.codebook_size <= 65536:
        raise VqrfError(None, f"--codebook-size must be between 1 and 65536, got {cfg.codebook_size}")
    if cfg.sync_every < 1 or (cfg.finetune_iters is not None and cfg.finetune_iters < 0):
        raise VqrfError(None, "--sync-every must be >= 1 and --finetune-iters >= 0")
    for name in ("keep", "non_prune"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise VqrfError(None, f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(cfg, name)}")
    downscale = model.preset.downscale if args.downscale is None else args.downscale
    scene = _load_scene(args, "train", downscale, model)
    if (scene.ndc, scene.contract) != (model.scene.ndc, model.scene.contract):
        raise VqrfError(scene.root, "this dataset's ray space (NDC, contracted or plain) does not match the model's")
    print(f"vqrf compress: {args.model} with {len(scene)} training views of {scene.name} -> {out}"
          + (f" (budget {budget:,} bytes)" if budget else ""))
    checkpoint = out.with_name(out.name + ".partial.safetensors")
    if checkpoint.is_file() and not args.resume:
        checkpoint.unlink()  # a stale run's progress: start over, as asked
    try:
        result = compress_scene(model, scene, cfg, Path(args.model), args.data, downscale, budget=budget,
                                use_cache=not args.no_cache, progress=not args.quiet, checkpoint=checkpoint,
                                checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt:
        if checkpoint.is_file():
            print(f"vqrf compress: interrupted; the same command with --resume continues from {checkpoint}",
                  file=sys.stderr)
        raise
    data = result.data
    if args.eval_every:
        from vqrf.evaluate import evaluate

        test = _load_scene(args, "test", downscale, model)
        metrics = evaluate(result.model, test, every=args.eval_every, use_lpips=False, progress=not args.quiet)
        recorded = result.reencode({"psnr": metrics["psnr"], "ssim": metrics["ssim"], "views": metrics["views"],
                                    "split": "test"})
        if budget is None or len(recorded) <= budget:
            data = recorded
        print(f"decoded file on {metrics['views']} test views: PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    rows = [("file", f"{out}  {len(data):,} bytes ({len(data) / 2**20:.3f} MiB)"),
            ("sites", describe_tiers(result.info["tiers"])),
            ("codebooks", "; ".join(", ".join(f"{kind} {size}" for kind, size in per_grid.items())
                                    for per_grid in result.info["codebooks"]) + " codes (per feature grid)"),
            ("time", ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))]
    if "rate" in result.info:
        r = result.info["rate"]
        prec = r["precision"]
        rows.insert(1, ("chose", f"keep {r['keep']:.3f}, {r['codebook_size']} codes, codebooks {prec['codebooks']} "
                                 f"({prec['codebook_levels']} levels), lines {prec['lines']}, MLP {prec['network']}"
                                 + (f", {r['demoted']} kept sites moved to codes to fit" if r["demoted"] else "")))
    print(_table(rows))
    print(f"next: vqrf eval {out} --data {args.data}")
    return 0


def _video_cameras(args: argparse.Namespace, model: LoadedModel, size: tuple[int, int] | None) -> Cameras:
    """The cameras ``vqrf render`` draws: the dataset's test views, or an orbit or spiral about the training cameras
    (the model's own, so no dataset is needed), at ``size`` (W, H), or the resolution the model was trained at."""
    from vqrf.render.paths import path_poses, resized

    if args.path == "test":
        downscale = model.preset.downscale if args.downscale is None else args.downscale
        base = _load_scene(args, "test", downscale, model).cameras
        c2w = base.c2w[:: args.every]
    else:
        views = _training_views(args, model, f"--path {args.path}")
        base, c2w = views.cameras, path_poses(views, args.path, args.frames)
    if size is None and args.downscale is None and model.scene.width:
        size = (model.scene.width, model.scene.height)
    width, height = size or (base.width, base.height)
    return resized(base, c2w, width - width % 2, height - height % 2)  # H.264 (yuv420p) needs even sizes


def cmd_render(args: argparse.Namespace) -> int:
    from vqrf.models import open_model
    from vqrf.video import write_video

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise VqrfError(out, "the output must be an .mp4 file")
    depth_out = out.with_name(out.stem + "_depth" + out.suffix)
    for path in (out, depth_out):
        _refuse_overwrite(path, args.force)
    size = None
    if args.resolution:
        try:
            size = tuple(int(v) for v in args.resolution.lower().split("x"))
            assert len(size) == 2 and min(size) > 0
        except (ValueError, AssertionError):
            raise VqrfError(None, f"--resolution must look like 800x600, got {args.resolution!r}") from None
    if args.path == "test" and not args.data:
        raise VqrfError(None, "--path test renders the dataset's test views: pass --data DATASET")
    model = open_model(args.model, _device(args.device))
    cameras = _video_cameras(args, model, size)
    print(f"vqrf render: {args.path} path, {len(cameras)} frames at {cameras.width}x{cameras.height}, {args.fps} fps")
    paths = write_video(model, cameras, out, args.fps, progress=not args.quiet)
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from vqrf.models import open_model
    from vqrf.viewer import Viewer, ViewerSettings

    if not 0 <= args.port <= 65535:
        raise VqrfError(None, f"--port must be between 0 and 65535, got {args.port}")
    if args.max_resolution < 8:
        raise VqrfError(None, f"--max-resolution must be at least 8 pixels, got {args.max_resolution}")
    if args.web:
        return _view_in_browser(args)
    model = open_model(args.model, _device(args.device))
    if model.scene.views is None and not args.data:  # an older file still plays, from a default view
        print(f"vqrf view: note: {args.model} stores no training cameras (written by an older vqrf); pass --data "
              f"DATASET to show them", file=sys.stderr)
        views = None
    else:
        views = _training_views(args, model, "the viewer")
    viewer = Viewer(model, Path(args.model), views, host=args.host, port=args.port,
                    settings=ViewerSettings(max_resolution=args.max_resolution))
    busy = f" (port {args.port} was busy)" if args.port and viewer.server.get_port() != args.port else ""
    print(f"vqrf view: {args.model} at {viewer.url}{busy}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        viewer.close()


def _view_in_browser(args: argparse.Namespace) -> int:
    """``vqrf view --web``: the page ``vqrf export-web`` writes, served from a temporary folder; the browser decodes
    and renders the file itself."""
    import tempfile

    from vqrf.web import SiteServer, export_site

    with tempfile.TemporaryDirectory(prefix="vqrf-web-") as tmp:
        site = export_site(Path(args.model), Path(tmp) / "site")
        server = SiteServer(site, args.host, args.port)
        print(f"vqrf view: {args.model} at {server.url} (decoded and rendered in the browser; Ctrl-C to stop)",
              flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            server.close()


def cmd_export_web(args: argparse.Namespace) -> int:
    from vqrf.web import export_site

    site = export_site(Path(args.model), Path(args.out), args.force)
    size = sum(f.stat().st_size for f in site.iterdir())
    print(f"vqrf export-web: {site}/ ({size / 1e6:.2f} MB with the page); serve it with any static file server, "
          f"e.g. python -m http.server -d {site}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vqrf.models import is_compressed, open_model

    if is_compressed(args.model):
        return _info_compressed(Path(args.model))
    model = open_model(args.model)
    field = model.field
    rows = [
        ("file", f"{args.model} ({Path(args.model).stat().st_size / 2**20:.2f} MiB)"),
        ("field", field.field_type),
        ("preset", model.preset.name),
        ("grid", "x".join(map(str, field.grid_size))),
        ("box", " ".join(f"{v:.3f}" for v in field.aabb.flatten().tolist())),
        ("parameters", f"{field.n_parameters():,}"),
        ("occupied", f"{100 * model.occupancy.occupied_fraction():.1f}% of the box"),
        ("rays", _rays_text(model.scene)),
        ("background", "white" if model.scene.white_bg else "black"),
    ]
    if "train" in model.extra:
        rows.append(("checkpoint", f"iteration {model.extra['train']['iteration']}"))
    print(_table(rows))
    return 0


def _rays_text(scene) -> str:
    """How a model's rays are marched, for ``vqrf info``."""
    if scene.ndc:
        return "NDC (forward-facing)"
    if scene.contract:
        return f"unbounded: contracted beyond [-1, 1]^3, near {scene.near:g}"
    return f"near {scene.near}, far {scene.far}"


def _info_compressed(path: Path) -> int:
    import numpy as np

    from vqrf.compress.container import decode_container, section_sizes
    from vqrf.compress.vq import describe_tiers
    from vqrf.models import open_model

    model = open_model(path)
    data = path.read_bytes()
    meta = model.extra["compressed"]
    stats = meta.get("stats", {})
    roles = {f"param.{name}": role for name, role in model.field.parameter_roles().items()}
    groups: dict[str, int] = {}
    for s in section_sizes(data, path):
        name = s["name"].removesuffix(".scale").removesuffix(".offset")
        group = ("occupancy mask" if name == "occupancy" else
                 "masks" if name.endswith("_mask") else
                 "indices" if name.endswith(".indices") else
                 "codebooks" if name.endswith(".codebook") else
                 "kept features" if name.endswith(".keep") else
                 "unpruned features" if name.endswith(".values") else
                 "training cameras" if name.startswith("views.") else
                 "lines" if roles.get(name) == "line" else
                 "network" if name in roles else "buffers")
        groups[group] = groups.get(group, 0) + s["bytes"]
    overhead = len(data) - sum(groups.values())
    rows = [("file", f"{path}  {len(data):,} bytes ({len(data) / 2**20:.3f} MiB)"),
            ("field", model.field.field_type),
            ("preset", model.preset.name),
            ("grid", "x".join(map(str, model.field.grid_size))),
            ("rays", _rays_text(model.scene))]
    views = model.scene.views
    rows.append(("cameras", "none stored: orbits, spirals and the viewer's camera list need --data" if views is None
                 else f"{len(views.cameras)} training views at {views.cameras.width}x{views.cameras.height}"))
    if "tiers" in stats:
        rows.append(("sites", describe_tiers(stats["tiers"])))
    _, sections = decode_container(data, path)
    for grid in model.field.feature_grids():
        parts = []
        for kind in grid.quantised:
            size = sections[f"{grid.name}.{kind}.codebook"].shape[0]
            counts = np.bincount(sections[f"{grid.name}.{kind}.indices"].astype(np.int64), minlength=size)
            used = int((counts > 0).sum())
            p = counts[counts > 0] / max(counts.sum(), 1)
            perplexity = float(np.exp(-(p * np.log(p)).sum())) if counts.sum() else 0.0
            parts.append(f"{kind} {used}/{size} used, perplexity {perplexity:.0f}")
        rows.append((f"codebooks {grid.name}", "; ".join(parts)))
    prec = meta["precision"]
    rows.append(("precision", f"codebooks {prec.get('codebooks')}"
                 + (f" ({prec.get('codebook_levels')} levels)" if prec.get("codebooks") == "int8" else "")
                 + f", kept features int8 (std/{prec.get('keep_steps_per_std')}), lines {prec.get('lines')}, "
                 f"MLP {prec.get('network')}"))
    if "psnr" in stats:
        rows.append(("recorded", f"PSNR {stats['psnr']:.2f} dB on {stats.get('views', '?')} {stats.get('split', 'test')} views"))
    rows.append(("sections", ""))
    for name, size in sorted(groups.items(), key=lambda kv: -kv[1]):
        rows.append((f"  {name}", f"{size:>9,} bytes  {100 * size / len(data):5.1f}%"))
    rows.append(("  header + table", f"{overhead:>9,} bytes  {100 * overhead / len(data):5.1f}%"))
    print(_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vqrf.checkpoint import atomic_write, load_model
    from vqrf.compress.pipeline import compress_model
    from vqrf.config import CompressConfig
    from vqrf.data.synthetic import make_demo_scene
    from vqrf.evaluate import evaluate
    from vqrf.models import open_model
    from vqrf.step import RayPool
    from vqrf.train import train

    out = Path(args.out)
    _refuse_overwrite(out / "model.safetensors", args.force)
    start = time.perf_counter()
    preset = demo_preset()
    train_scene = make_demo_scene("train")
    test_scene = make_demo_scene("test")
    device = _device(args.device)
    print(f"vqrf demo: analytic scene, {len(train_scene)} training views at {train_scene.hw[1]}x{train_scene.hw[0]}, "
          f"{preset.train.iters} iterations -> {out}")
    result = train(train_scene, preset, out, device=device, progress=not args.quiet)
    model = load_model(out / "model.safetensors", device)
    metrics = evaluate(model, test_scene, out_dir=out / "eval_test", progress=not args.quiet)

    compress_start = time.perf_counter()
    cfg = CompressConfig(finetune_iters=150, codebook_precision="int8", line_precision="int8", network_precision="int8")
    packed = compress_model(model, RayPool(train_scene, torch.device(device)), cfg, progress=not args.quiet)
    vqrf_path = out / "demo.vqrf"
    atomic_write(vqrf_path, lambda tmp: tmp.write_bytes(packed.data))
    compress_seconds = time.perf_counter() - compress_start
    small = evaluate(open_model(vqrf_path, device), test_scene, out_dir=out / "eval_test_vqrf", progress=not args.quiet)

    size = (out / "model.safetensors").stat().st_size
    print(f"\ndemo scene, {metrics['views']} held-out views      trained model      compressed .vqrf")
    rows = [("PSNR", f"{metrics['psnr']:.2f} dB", f"{small['psnr']:.2f} dB"),
            ("SSIM", f"{metrics['ssim']:.4f}", f"{small['ssim']:.4f}")]
    if "lpips_alex" in metrics:
        rows.append(("LPIPS (alex)", f"{metrics['lpips_alex']:.4f}", f"{small['lpips_alex']:.4f}"))
    rows += [("size", f"{size:,} bytes", f"{len(packed.data):,} bytes ({size / len(packed.data):.0f}x smaller)"),
             ("time", f"train {result.seconds:.0f} s", f"compress {compress_seconds:.0f} s"),
             ("render", f"{metrics['render_rays_per_s']:,.0f} rays/s", f"{small['render_rays_per_s']:,.0f} rays/s")]
    for name, a, b in rows:
        print(f"  {name:<13} {a:<26} {b}")
    print(f"total {time.perf_counter() - start:.0f} s; renders: {out / 'eval_test' / 'renders'}, "
          f"{out / 'eval_test_vqrf' / 'renders'}; try: vqrf info {vqrf_path}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from vqrf.batch import Budget, run_batch
    from vqrf.compress.rate import parse_size

    scenes = None
    if args.scenes is not None:
        scenes = [name.strip() for name in args.scenes.split(",") if name.strip()]
        if not scenes:
            raise VqrfError(None, "--scenes must name at least one scene folder, e.g. --scenes lego,fern")
    budget = Budget(preset=args.preset, field=args.field, iters=args.iters, grid_init=args.grid_init, grid_final=args.grid_final,
                    batch_rays=args.batch_rays, checkpoint_every=args.checkpoint_every, downscale=args.downscale,
                    target_size=parse_size(args.target_size) if args.target_size else None,
                    finetune_iters=args.finetune_iters, eval_every=args.eval_every, use_lpips=not args.no_lpips,
                    lpips_weights=args.lpips_weights)
    return run_batch(args.dataset, args.root, args.out, budget, scenes=scenes, address=args.address,
                     workers=args.workers, cpus_per_scene=args.cpus_per_scene, gpus_per_scene=args.gpus_per_scene,
                     progress=not args.quiet)


# ---- parser -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqrf", description="Train grid radiance fields and compress them.")
    parser.add_argument("--version", action="version", version=f"vqrf {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: cuda when available)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")

    def dataset(p: argparse.ArgumentParser, required: bool = True,
                data_help: str = "dataset folder (Blender, LLFF, NSVF, T&T, COLMAP, or transforms.json)") -> None:
        p.add_argument("--data", required=required, help=data_help)
        p.add_argument("--kind", default="auto", help="dataset format: auto, blender, llff, nsvf, tt, ngp, colmap")
        p.add_argument("--scene", default=None, choices=SCENE_KINDS,
                       help="captures (COLMAP, transforms.json): bounded, unbounded (contracted) or auto (360-degree: "
                            "unbounded; forward-facing: NDC); default: auto, or as the model was trained")
        p.add_argument("--downscale", type=float, default=None, help="image downscale factor (default: the preset's)")

    p = verbs.add_parser("demo", help="train and evaluate on a built-in analytic scene (no dataset needed)")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    common(p)
    p.set_defaults(run=cmd_demo)

    p = verbs.add_parser("train", help="train a TensoRF-VM or DVGO field")
    dataset(p)
    p.add_argument("--field", default="tensorf", choices=FIELD_TYPES, help="field type (default: tensorf)")
    p.add_argument("--preset", required=True, choices=PRESET_NAMES,
                   help="hyperparameters per dataset (dvgo: syn, nsvf, tt, cpu)")
    p.add_argument("--iters", type=int, default=None, help="iterations (the preset's schedule scales with it)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints")
    p.add_argument("--grid-init", type=int, default=None, help="initial grid: about N^3 voxels")
    p.add_argument("--grid-final", type=int, default=None, help="final grid after upsampling: about N^3 voxels")
    p.add_argument("--batch-rays", type=int, default=None, help="rays per iteration")
    p.add_argument("--out", required=True, help="output folder; the model is OUT/model.safetensors")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors if present")
    common(p)
    p.set_defaults(run=cmd_train)

    p = verbs.add_parser("compress", help="compress a trained model into one small .vqrf file")
    p.add_argument("model", help="trained model (OUT/model.safetensors from vqrf train)")
    dataset(p)
    p.add_argument("-o", "--out", required=True, help="the .vqrf file to write")
    p.add_argument("--target-size", default=None, help="byte budget, e.g. 500KB, 1MB, 1.5MiB (KB = 1000 bytes)")
    p.add_argument("--keep", type=float, default=None, help="importance fraction kept unquantised (default 0.7)")
    p.add_argument("--non-prune", type=float, default=None,
                   help="importance fraction not pruned (default 0.999; 1.0 for nsvf and llff)")
    p.add_argument("--codebook-size", type=int, default=None, help="codes per codebook at most (default 4096)")
    p.add_argument("--finetune-iters", type=int, default=None,
                   help="joint fine-tuning steps (default: a third of the preset's training iterations)")
    p.add_argument("--sync-every", type=int, default=None, help="re-tie codes every N fine-tuning steps (default 10)")
    p.add_argument("--precision", choices=("fp16", "int8"), default=None,
                   help="codebooks, lines and MLP (default: int8 codebooks, fp16 lines and MLP)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="score the decoded file on every N-th test view and record PSNR in it (default: off)")
    p.add_argument("--no-cache", action="store_true", help="recompute importance even if MODEL.importance is cached")
    p.add_argument("--checkpoint-every", type=int, default=200,
                   help="save fine-tuning progress to OUT.partial.safetensors every N steps (default 200)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial.safetensors")
    common(p)
    p.set_defaults(run=cmd_compress)

    p = verbs.add_parser("eval", help="render a split and report PSNR, SSIM, LPIPS")
    p.add_argument("model", help="model file (.safetensors or .vqrf)")
    dataset(p)
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--every", type=int, default=1, help="evaluate every K-th view (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: next to the model, eval_<split>)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS-alex weights file (or set VQRF_LPIPS_WEIGHTS)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    common(p)
    p.set_defaults(run=cmd_eval)

    p = verbs.add_parser("render", help="render a camera path to an mp4 (and a depth mp4 beside it)")
    p.add_argument("model", help="model file (.safetensors or .vqrf)")
    dataset(p, required=False, data_help="the dataset: for --path test, and for orbits and spirals of files written "
                                         "before vqrf stored the training cameras")
    p.add_argument("--path", choices=("test", "orbit", "spiral"), default="orbit",
                   help="the dataset's test views; a 360-degree orbit at the cameras' radius and elevation "
                        "(Blender, NSVF, T&T); or the LLFF forward-facing spiral")
    p.add_argument("--frames", type=int, default=120, help="frames of an orbit or spiral (default 120)")
    p.add_argument("--every", type=int, default=1, help="test path: every N-th view")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--resolution", default=None, help="WxH (default: the resolution the model was trained at)")
    p.add_argument("-o", "--out", required=True, help="the .mp4 to write; the depth video goes to <name>_depth.mp4")
    common(p)
    p.set_defaults(run=cmd_render)

    p = verbs.add_parser("view", help="look around a model in the browser (viser): vqrf view scene.vqrf")
    p.add_argument("model", help="model file (.safetensors or .vqrf)")
    dataset(p, required=False, data_help="the dataset, to show the training cameras of a file written before vqrf "
                                         "stored them (optional)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to share on the network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-resolution", type=int, default=512,
                   help="long side of a still frame in pixels (default 512; previews while moving are smaller)")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (default: cuda when available)")
    p.add_argument("--web", action="store_true",
                   help="serve the browser player instead (a .vqrf, decoded and rendered on the browser's own GPU)")
    p.set_defaults(run=cmd_view)

    p = verbs.add_parser("export-web", help="write a static site that plays a .vqrf in any browser: "
                                            "vqrf export-web scene.vqrf -o site/")
    p.add_argument("model", help="compressed file (.vqrf)")
    p.add_argument("-o", "--out", required=True, help="site folder to write (index.html, scripts, scene.vqrf)")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.set_defaults(run=cmd_export_web)

    p = verbs.add_parser("info", help="describe a model file (sections, tiers, codebooks of a .vqrf)")
    p.add_argument("model", help="model file (.safetensors or .vqrf)")
    p.set_defaults(run=cmd_info)

    p = verbs.add_parser("batch", help="train, compress and evaluate every scene of a dataset as Ray tasks, "
                                       "resumable, with merged tables (needs vqrf[batch])")
    p.add_argument("--dataset", required=True, choices=("syn", "nsvf", "tt", "llff", "custom"),
                   help="scene layout under ROOT: syn (Blender), nsvf, tt (NSVF layout), llff, or custom (any "
                        "format vqrf reads, detected per folder)")
    p.add_argument("--root", required=True, help="folder holding one folder per scene")
    p.add_argument("--scenes", default=None, help="comma-separated scene folder names (default: every scene)")
    p.add_argument("--out", required=True, help="output folder: OUT/<scene>/ per scene, OUT/summary.{md,csv,json}")
    p.add_argument("--field", default="tensorf", choices=FIELD_TYPES, help="field type for every scene")
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="hyperparameters for every scene (default: the dataset's; custom: by each scene's format); "
                        "cpu is NeRF-Synthetic's CPU-scale preset")
    p.add_argument("--iters", type=int, default=None, help="training iterations (the preset's schedule scales with it)")
    p.add_argument("--grid-init", type=int, default=None, help="initial grid: about N^3 voxels")
    p.add_argument("--grid-final", type=int, default=None, help="final grid after upsampling: about N^3 voxels")
    p.add_argument("--batch-rays", type=int, default=None, help="rays per training iteration")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="training iterations between checkpoints, which a rerun continues from")
    p.add_argument("--downscale", type=float, default=None, help="image downscale factor (default: the preset's)")
    p.add_argument("--target-size", default=None, help="byte budget of each .vqrf, e.g. 500KB, 1MB (default: none)")
    p.add_argument("--finetune-iters", type=int, default=None,
                   help="joint fine-tuning steps (default: a third of the training iterations)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every K-th test view (default: all)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS-alex weights file (or set VQRF_LPIPS_WEIGHTS)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--address", default=None,
                   help="Ray cluster to run on (its head, e.g. head:6379); its nodes need vqrf and must see ROOT "
                        "and OUT at the same paths (default: a local Ray instance)")
    p.add_argument("--workers", type=int, default=None, help="local Ray instance: CPUs to use (default: all)")
    p.add_argument("--cpus-per-scene", type=float, default=1.0, help="CPUs (torch threads) per scene (default 1)")
    p.add_argument("--gpus-per-scene", type=float, default=None,
                   help="GPUs per scene (default: 1 when the Ray instance has GPUs, else 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_batch)
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
