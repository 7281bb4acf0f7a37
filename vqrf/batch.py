"""``vqrf batch``: train, compress and evaluate every scene of a dataset as Ray tasks, then merge the results.

Each scene is one Ray task writing into ``OUT/<scene>/``: ``model.safetensors`` (``checkpoint.safetensors`` while
training), ``<scene>.vqrf`` (``<scene>.vqrf.partial.safetensors`` while fine-tuning), ``eval_raw/`` and ``eval_vqrf/``
(renders and ``metrics.json``), ``stages.json`` (the settings and time of every finished step) and, written last,
``result.json``. A scene with ``result.json`` is finished and skipped by a rerun; any other continues from what it left.
A failing scene leaves its one-line error in ``error.txt`` and does not stop the others. The merged tables (one row
per finished scene and their mean) go to ``OUT/summary.md``, ``summary.csv`` and ``summary.json``.

Ray runs locally by default; given an address, the scenes run on that cluster, whose nodes must have vqrf installed
and see the dataset and output folders at the same paths.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numba
import torch

from vqrf.checkpoint import atomic_write
from vqrf.config import CompressConfig, Preset, compress_defaults, preset_with
from vqrf.data import DATASET_KINDS, detect_kind, load_scene, one_line
from vqrf.errors import VqrfError
from vqrf.evaluate import write_json

__all__ = ["DATASETS", "Budget", "SceneJob", "SceneSource", "discover_scenes", "run_batch", "run_scene", "scene_job",
           "write_summary"]

DATASETS = ("syn", "nsvf", "tt", "llff", "custom")
_LAYOUTS = {"syn": ("blender",), "nsvf": ("nsvf", "tt"), "tt": ("nsvf", "tt"), "llff": ("llff",),
            "custom": DATASET_KINDS}
_LAYOUT_NAMES = {"syn": "folders holding transforms_train.json", "nsvf": "folders holding intrinsics.txt and pose/",
                 "tt": "folders holding intrinsics.txt and pose/", "llff": "folders holding poses_bounds.npy",
                 "custom": "folders in a format vqrf reads"}
_READER = {"syn": "blender", "nsvf": "nsvf", "tt": "tt", "llff": "llff"}  # custom: each folder's detected format
_DEFAULT_PRESET = {"blender": "syn", "nsvf": "nsvf", "tt": "tt", "llff": "llff", "ngp": "syn"}

RESULT_FILE = "result.json"
STAGES_FILE = "stages.json"
ERROR_FILE = "error.txt"
MODEL_FILE = "model.safetensors"
SUMMARY_NAME = "summary"
OBJECT_STORE_BYTES = 100 * 2**20  # task arguments and results are a few kB; Ray's minimum is 75 MiB
FINETUNE_CHECKPOINT_EVERY = 200

# (key, Markdown header, Markdown format) of the merged table's columns after the scene name.
COLUMNS = (
    ("psnr_raw", "PSNR raw", "{:.2f}"), ("psnr_vqrf", "PSNR vqrf", "{:.2f}"),
    ("ssim_raw", "SSIM raw", "{:.4f}"), ("ssim_vqrf", "SSIM vqrf", "{:.4f}"),
    ("lpips_raw", "LPIPS raw", "{:.4f}"), ("lpips_vqrf", "LPIPS vqrf", "{:.4f}"),
    ("raw_bytes", "raw bytes", "{:,.0f}"), ("vqrf_bytes", "vqrf bytes", "{:,.0f}"), ("ratio", "ratio", "{:.1f}x"),
    ("train_s", "train s", "{:.0f}"), ("compress_s", "compress s", "{:.0f}"), ("eval_s", "eval s", "{:.0f}"),
)


@dataclass(frozen=True)
class SceneSource:
    """One scene folder of the dataset root."""

    name: str
    path: Path
    kind: str
    """The reader: one of ``vqrf.data.DATASET_KINDS``."""


@dataclass(frozen=True)
class Budget:
    """How every scene is trained, compressed and scored; None: the preset's (or the library's) default."""

    preset: str | None = None
    """Preset for every scene; None: the dataset's (for ``custom``, by each scene's format)."""
    field: str = "tensorf"
    """Field type trained for every scene: 'tensorf' or 'dvgo'."""
    iters: int | None = None
    grid_init: int | None = None
    """Initial grid: about N^3 voxels."""
    grid_final: int | None = None
    batch_rays: int | None = None
    checkpoint_every: int | None = None
    """Training iterations between checkpoints (what a killed run continues from)."""
    downscale: float | None = None
    target_size: int | None = None
    """Byte budget of each .vqrf (rate control); None: the default split."""
    finetune_iters: int | None = None
    eval_every: int = 1
    use_lpips: bool = True
    lpips_weights: str | None = None


@dataclass(frozen=True)
class SceneJob:
    """Everything one scene's Ray task needs (picklable)."""

    name: str
    data: str
    kind: str
    out_dir: str
    preset: Preset
    """Resolved and scaled to the budget."""
    downscale: float
    target_size: int | None
    finetune_iters: int | None
    eval_every: int
    lpips_weights: str | None
    """None: no LPIPS."""
    threads: int
    device: str = "cpu"

    def settings(self) -> dict[str, Any]:
        """What the trained model and the .vqrf depend on: a scene is only resumed with the same."""
        cfg = self.preset.train
        return {"field": self.preset.field_type, "preset": self.preset.name, "iters": cfg.iters, "n_voxel_init": cfg.n_voxel_init,
                "n_voxel_final": cfg.n_voxel_final, "batch_rays": cfg.batch_rays, "downscale": self.downscale,
                "target_size": self.target_size, "finetune_iters": self.compress_config().finetune_steps(self.preset)}

    def compress_config(self) -> CompressConfig:
        """The reference's split for this scene's format (nsvf and llff prune nothing), with the budget's steps."""
        cfg = compress_defaults(self.kind, self.preset.field_type)
        cfg.finetune_iters = self.finetune_iters
        return cfg

    def eval_settings(self) -> dict[str, Any]:
        return {"every": self.eval_every, "lpips": self.lpips_weights is not None}


# ---- discovery and jobs -----------------------------------------------------------------------------------------
def discover_scenes(dataset: str, root: str | Path, names: Sequence[str] | None = None) -> list[SceneSource]:
    """The scene folders of kind ``dataset`` directly under ``root`` (by name), or just ``names`` in that order."""
    if dataset not in DATASETS:
        raise VqrfError(None, f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    root = Path(root).absolute()
    if not root.is_dir():
        raise VqrfError(root, "not a directory" if root.exists() else "no such directory")
    found: dict[str, SceneSource] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        kind = _layout(folder)
        if kind in _LAYOUTS[dataset]:
            found[folder.name] = SceneSource(folder.name, folder, _READER.get(dataset, kind))
    if not found:
        hint = "; this folder is one scene: pass the folder holding it" if _layout(root) else ""
        raise VqrfError(root, f"no {dataset} scenes here ({_LAYOUT_NAMES[dataset]}){hint}")
    if names is None:
        return list(found.values())
    unknown = [n for n in names if n not in found]
    if unknown:
        raise VqrfError(root, f"no {dataset} scene named {', '.join(unknown)} here (scenes: {', '.join(found)})")
    return [found[n] for n in dict.fromkeys(names)]


def _layout(folder: Path) -> str | None:
    try:
        return detect_kind(folder)
    except VqrfError:
        return None


def _check_budget(budget: Budget) -> None:
    """Refuse a budget no scene could run with, before any work starts."""
    checks = [("--iters", budget.iters, 1), ("--grid-init", budget.grid_init, 2),
              ("--grid-final", budget.grid_final, 2), ("--batch-rays", budget.batch_rays, 1),
              ("--checkpoint-every", budget.checkpoint_every, 1), ("--finetune-iters", budget.finetune_iters, 0),
              ("--eval-every", budget.eval_every, 1)]
    for flag, value, least in checks:
        if value is not None and value < least:
            raise VqrfError(None, f"{flag} must be at least {least}, got {value}")
    if budget.downscale is not None and not budget.downscale > 0:
        raise VqrfError(None, f"--downscale must be positive, got {budget.downscale:g}")


def scene_job(source: SceneSource, budget: Budget, out: Path, lpips_weights: str | None, threads: int) -> SceneJob:
    """The task for ``source`` under ``budget``, writing into ``out/<scene>``, on ``threads`` CPU threads."""
    preset = preset_with(budget.preset or _DEFAULT_PRESET[source.kind], budget.iters, budget.grid_init,
                         budget.grid_final, budget.batch_rays, budget.checkpoint_every, budget.field)
    downscale = preset.downscale if budget.downscale is None else budget.downscale
    return SceneJob(source.name, str(source.path), source.kind, str(out / source.name), preset, downscale,
                    budget.target_size, budget.finetune_iters, budget.eval_every, lpips_weights, threads)


def _lpips_weights(budget: Budget) -> str | None:
    """The LPIPS-alex weights file every scene is scored with, or None (no LPIPS)."""
    if not budget.use_lpips:
        return None
    from vqrf.metrics import resolve_lpips_weights

    path = resolve_lpips_weights("alex", budget.lpips_weights)
    if path is None:
        print("vqrf batch: no LPIPS weights configured (--lpips-weights or VQRF_LPIPS_WEIGHTS); LPIPS is left out")
        return None
    if not path.is_file():
        raise VqrfError(path, "LPIPS weights file not found")
    return str(path.absolute())


# ---- one scene (runs in a Ray worker) ---------------------------------------------------------------------------
def run_scene(job: SceneJob) -> dict[str, Any]:
    """Train, compress and evaluate one scene, skipping every step already done; the body of a Ray task.

    Returns the scene's result (as written to ``result.json``), or ``{"scene": name, "error": one line}`` after
    writing that line (and, for an unexpected error, its traceback) to ``error.txt``. Never raises an ``Exception``.
    """
    torch.set_num_threads(job.threads)
    # The ray-marching kernels run on numba's thread count, which torch's setting does not reach.
    numba.set_num_threads(min(job.threads, numba.config.NUMBA_NUM_THREADS))
    out = Path(job.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ERROR_FILE).unlink(missing_ok=True)
        with _exclusive(out):
            return _run_steps(job, out)
    except Exception as e:  # every failure becomes this scene's error line; the other scenes go on
        expected = isinstance(e, VqrfError)
        line = one_line(e) if expected else f"{type(e).__name__}: {one_line(e)}"
        detail = "" if expected else "\n" + traceback.format_exc()
        try:
            atomic_write(out / ERROR_FILE, lambda tmp: tmp.write_text(line + "\n" + detail))
        except OSError:
            pass  # the error still reaches the summary
        return {"scene": job.name, "error": line}


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``OUT/<scene>/.lock`` for the scene's run: a second batch on the same folder fails instead of clobbering
    it. The operating system releases the lock when the process dies, so a killed run leaves nothing stale."""
    import fcntl

    with open(out / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VqrfError(out, "another vqrf batch is working on this scene") from None
        yield


class _Stages:
    """``stages.json``: the settings a scene was started with and, for every finished step, its record."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = _read_json(path) or {}

    def done(self, step: str, output: Path, settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The record of ``step`` if it finished (with ``settings``) and its ``output`` is still there."""
        record = self.data.get(step)
        if record is None or not output.exists() or record.get("settings") != settings:
            return None
        return record

    def record(self, step: str, seconds: float, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        self.data[step] = {"seconds": seconds, "settings": settings}
        write_json(self.path, self.data)
        return self.data[step]


def _say(message: str) -> None:
    print(message, flush=True)  # a Ray worker's output reaches the driver line by line, prefixed with the scene


def _run_steps(job: SceneJob, out: Path) -> dict[str, Any]:
    from vqrf.compress.pipeline import compress_scene
    from vqrf.evaluate import evaluate
    from vqrf.models import open_model
    from vqrf.train import train

    stages = _Stages(out / STAGES_FILE)
    settings = job.settings()
    started = stages.data.setdefault("settings", settings)
    if started != settings:
        changed = ", ".join(f"{k} {started.get(k)} -> {v}" for k, v in settings.items() if started.get(k) != v)
        raise VqrfError(out, f"was started with other settings ({changed}); delete the folder to start it over")
    write_json(stages.path, stages.data)

    model_path = out / MODEL_FILE
    train_scene = None
    trained = stages.done("train", model_path)
    if trained is None:
        train_scene = load_scene(job.data, "train", job.downscale, job.kind)
        iters = job.preset.train.iters
        resuming = " (resuming)" if (out / "checkpoint.safetensors").is_file() else ""
        _say(f"training: {len(train_scene)} views at {train_scene.hw[1]}x{train_scene.hw[0]}, preset "
             f"{job.preset.name}, {iters:,} iterations{resuming}")
        result = train(train_scene, job.preset, out, resume=True, device=job.device, progress=False,
                       on_checkpoint=lambda it: _say(f"training: {it:,}/{iters:,} iterations"))
        trained = stages.record("train", result.seconds)
        _say(f"trained in {result.seconds:.0f} s: {model_path}")

    vqrf_path = out / f"{job.name}.vqrf"
    compressed = stages.done("compress", vqrf_path)
    if compressed is None:
        train_scene = train_scene or load_scene(job.data, "train", job.downscale, job.kind)
        model = open_model(model_path, job.device)
        cfg = job.compress_config()
        steps = cfg.finetune_steps(model.preset)
        partial = vqrf_path.with_name(vqrf_path.name + ".partial.safetensors")
        resuming = " (resuming)" if partial.is_file() else ""
        budget = f", budget {job.target_size:,} bytes" if job.target_size else ""
        _say(f"compressing: importance, codebooks, {steps:,} fine-tuning steps{budget}{resuming}")
        result = compress_scene(model, train_scene, cfg, model_path, job.data, job.downscale, budget=job.target_size,
                                progress=False, checkpoint=partial, checkpoint_every=FINETUNE_CHECKPOINT_EVERY,
                                on_checkpoint=lambda it: _say(f"compressing: {it:,}/{steps:,} fine-tuning steps"))
        atomic_write(vqrf_path, lambda tmp: tmp.write_bytes(result.data))
        compressed = stages.record("compress", sum(result.seconds.values()))
        _say(f"compressed in {compressed['seconds']:.0f} s: {vqrf_path} ({len(result.data):,} bytes)")
    del train_scene  # the training images are not needed any more

    test = load_scene(job.data, "test", job.downscale, job.kind)
    scores: dict[str, dict[str, Any]] = {}
    seconds = {"train": trained["seconds"], "compress": compressed["seconds"], "eval": 0.0}
    for step, path in (("eval_raw", model_path), ("eval_vqrf", vqrf_path)):
        metrics_path = out / step / "metrics.json"
        scored = stages.done(step, metrics_path, job.eval_settings())
        if scored is None:
            views = len(range(0, len(test), job.eval_every))
            _say(f"evaluating {path.name} on {views} test views")
            start = time.perf_counter()
            evaluate(open_model(path, job.device), test, every=job.eval_every, out_dir=out / step,
                     lpips_weights=job.lpips_weights, use_lpips=job.lpips_weights is not None, progress=False)
            scored = stages.record(step, time.perf_counter() - start, job.eval_settings())
        metrics = _read_json(metrics_path) or {}
        scores[step] = {"psnr": metrics.get("psnr"), "ssim": metrics.get("ssim"),
                        "lpips_alex": metrics.get("lpips_alex"), "views": metrics.get("views"),
                        "bytes": path.stat().st_size, "file": path.name}
        seconds["eval"] += scored["seconds"]

    result = {"scene": job.name, "kind": job.kind, "data": job.data, "settings": settings,
              "eval": job.eval_settings(), "raw": scores["eval_raw"], "vqrf": scores["eval_vqrf"], "seconds": seconds}
    write_json(out / RESULT_FILE, result)
    return result


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (it is then redone)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- the driver -------------------------------------------------------------------------------------------------
def run_batch(
    dataset: str,
    root: str | Path,
    out: str | Path,
    budget: Budget,
    scenes: Sequence[str] | None = None,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_scene: float = 1.0,
    gpus_per_scene: float | None = None,
    progress: bool = True,
) -> int:
    """Run every unfinished scene as a Ray task, then write the merged tables; returns the exit code (1 if any scene
    failed). Finished scenes (``OUT/<scene>/result.json``) are skipped.

    Args:
        address: a Ray cluster to run on; None starts a local Ray instance with ``workers`` CPUs (default: all).
        gpus_per_scene: None: 1 when the Ray instance has GPUs, else 0.
        progress: show a progress bar over the scenes.
    """
    sources = discover_scenes(dataset, root, scenes)
    _check_budget(budget)
    if workers is not None and (address or workers < 1):
        raise VqrfError(None, "--workers sets the size of a local Ray instance: at least 1, and not with --address")
    if not cpus_per_scene > 0 or (gpus_per_scene is not None and gpus_per_scene < 0):
        raise VqrfError(None, "--cpus-per-scene must be positive and --gpus-per-scene at least 0")
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise VqrfError(out, "exists and is not a folder")
    weights = _lpips_weights(budget)
    threads = max(1, int(cpus_per_scene))
    jobs = [scene_job(s, budget, out, weights, threads) for s in sources]
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        finished = _read_json(Path(job.out_dir) / RESULT_FILE)
        if finished is None:
            pending.append(job)
            continue
        results[job.name] = finished
        other = "" if finished.get("settings") == job.settings() else " (other settings: delete the folder to redo it)"
        print(f"{job.name}: finished earlier, skipped{other}: {Path(job.out_dir) / RESULT_FILE}", flush=True)
    failed: dict[str, str] = {}
    if pending:
        print(f"vqrf batch: {len(pending)} of {len(jobs)} {dataset} scenes to run -> {out}", flush=True)
        for outcome in _run_on_ray(pending, address, workers, cpus_per_scene, gpus_per_scene, progress):
            if "error" in outcome:
                failed[outcome["scene"]] = outcome["error"]
            else:
                results[outcome["scene"]] = outcome

    ordered = [results[j.name] for j in jobs if j.name in results]
    paths = write_summary(out, ordered, failed, {"dataset": dataset, "root": str(Path(root).absolute())})
    print(f"\n{len(ordered)} of {len(jobs)} scenes finished" + (f", {len(failed)} failed" if failed else ""))
    for job in jobs:
        folder = Path(job.out_dir)
        if job.name in failed:
            print(f"  {job.name}: failed, see {folder / ERROR_FILE}")
        elif job.name in results:
            print(f"  {job.name}: {folder / (job.name + '.vqrf')}, {folder / MODEL_FILE}, {folder / RESULT_FILE}, "
                  f"renders in {folder / 'eval_raw' / 'renders'} and {folder / 'eval_vqrf' / 'renders'}")
    for path in paths:
        print(f"wrote {path}")
    return 1 if failed else 0


def _import_ray():
    # The driver prints every worker line (each names its scene), and prints through Ray's own bar-aware printer.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
    except ImportError:
        raise VqrfError(None, "vqrf batch needs Ray: pip install 'vqrf[batch]'") from None
    return ray


def _run_on_ray(jobs: list[SceneJob], address: str | None, workers: int | None, cpus_per_scene: float,
                gpus_per_scene: float | None, progress: bool) -> list[dict[str, Any]]:
    """Run ``jobs`` as Ray tasks, printing a status line as each scene ends; Ray is shut down however this ends."""
    ray = _import_ray()
    from ray.experimental import tqdm_ray

    where = f"the Ray cluster at {address}" if address else "the local Ray instance"
    if address:
        _check_listening(address)
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR)
        else:  # "local": never attach to whatever cluster a killed earlier run may have left registered
            # Ray's workers run at nice 15 by default: any other busy process then slows the scenes tenfold or more.
            # They do all of this batch's work, so they get the priority `vqrf train` would have.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, logging_level=logging.ERROR)
    except Exception as e:  # Ray reports unreachable clusters and failed starts with several exception types
        raise VqrfError(None, f"cannot {'connect to' if address else 'start'} {where} ({_first_line(e)})") from None
    bar = None
    try:
        gpus = _gpus_that_fit(ray, cpus_per_scene, gpus_per_scene, where, local=not address)
        device = "cuda" if gpus > 0 else "cpu"
        task = ray.remote(num_cpus=cpus_per_scene, num_gpus=gpus, max_retries=0, max_calls=1)(run_scene)
        running = {task.options(name=job.name).remote(dataclasses.replace(job, device=device)): job for job in jobs}
        echo = tqdm_ray.safe_print if progress else print
        bar = tqdm_ray.tqdm(total=len(jobs), desc="scenes", unit="scene") if progress else None
        if bar:
            bar.refresh()  # on screen from the start, not from the first finished scene
        outcomes = []
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as e:  # the worker died (out of memory, killed) or Ray lost it
                outcome = {"scene": job.name, "error": f"the Ray task failed: {_first_line(e)}"}
            echo(_status_line(outcome), flush=True)
            if bar:
                bar.update(1)
            outcomes.append(outcome)
        return outcomes
    except KeyboardInterrupt:
        print("vqrf batch: interrupted; the same command continues where the scenes stopped", file=sys.stderr)
        raise
    finally:
        if bar:
            bar.close()
        ray.shutdown()


def _check_listening(address: str) -> None:
    """Refuse a host:port where nothing listens: Ray would retry it for many minutes before giving up."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto" and other forms that Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise VqrfError(None, f"cannot connect to the Ray cluster at {address} (nothing answers there: "
                              f"{e.strerror or e})") from None


def _gpus_that_fit(ray, cpus: float, gpus: float | None, where: str, local: bool) -> float:
    """GPUs per scene (default: 1 if there are GPUs, else 0), refused when no node could ever run such a task: Ray
    would keep it waiting forever."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    most_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    if gpus is None:
        gpus = 1.0 if most_gpus >= 1 else 0.0
    if gpus > most_gpus:
        has = "no GPU" if most_gpus == 0 else f"at most {most_gpus:g} GPUs on a node"
        raise VqrfError(None, f"--gpus-per-scene {gpus:g}: {where} has {has}, so the scenes would wait forever; "
                              "pass --gpus-per-scene 0 to run them on CPUs")
    if cpus > most_cpus:
        raise VqrfError(None, f"--cpus-per-scene {cpus:g}: {where} has at most {most_cpus:g} CPUs on a node"
                              + ("; raise --workers" if local else ""))
    return gpus


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _status_line(outcome: dict[str, Any]) -> str:
    name = outcome["scene"]
    if "error" in outcome:
        return f"{name}: FAILED: {outcome['error']}"
    raw, small, s = outcome["raw"], outcome["vqrf"], outcome["seconds"]
    return (f"{name}: done: PSNR {raw['psnr']:.2f} dB raw, {small['psnr']:.2f} dB vqrf; {raw['bytes']:,} -> "
            f"{small['bytes']:,} bytes ({raw['bytes'] / small['bytes']:.0f}x); train {s['train']:.0f} s, "
            f"compress {s['compress']:.0f} s, eval {s['eval']:.0f} s")


# ---- the merged tables ------------------------------------------------------------------------------------------
def _row(result: dict[str, Any]) -> dict[str, Any]:
    raw, small, seconds = result["raw"], result["vqrf"], result["seconds"]
    return {"scene": result["scene"], "psnr_raw": raw["psnr"], "psnr_vqrf": small["psnr"], "ssim_raw": raw["ssim"],
            "ssim_vqrf": small["ssim"], "lpips_raw": raw["lpips_alex"], "lpips_vqrf": small["lpips_alex"],
            "raw_bytes": raw["bytes"], "vqrf_bytes": small["bytes"], "ratio": raw["bytes"] / small["bytes"],
            "train_s": seconds["train"], "compress_s": seconds["compress"], "eval_s": seconds["eval"]}


def _mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean: dict[str, Any] = {"scene": "mean"}
    for key, _, _ in COLUMNS:
        values = [r[key] for r in rows if r[key] is not None]
        mean[key] = sum(values) / len(values) if values else None
    return mean


def write_summary(out: Path, results: list[dict[str, Any]], failed: dict[str, str],
                  about: dict[str, Any]) -> list[Path]:
    """``OUT/summary.{md,csv,json}`` (each written atomically): a row per finished scene, their mean, the failures."""
    rows = [_row(r) for r in results]
    table = rows + [_mean_row(rows)] if rows else []
    keys = ["scene"] + [key for key, _, _ in COLUMNS]

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    csv_text = text.getvalue()

    lines = [f"# vqrf batch: {about['dataset']} scenes of {about['root']}", "",
             "| scene | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
             "| --- " * (len(COLUMNS) + 1) + "|"]
    for row in table:
        cells = ["" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
        name = f"**{row['scene']}**" if row is table[-1] else row["scene"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", ("raw: the trained model.safetensors; vqrf: the compressed .vqrf; PSNR in dB, LPIPS-alex, on the "
                   "test views of each scene's result.json; times in seconds; mean: plain average over the finished "
                   "scenes.")]
    if failed:
        lines += ["", f"Failed ({len(failed)}):", ""] + [f"- {name}: {error}" for name, error in failed.items()]

    summary = {**about, "columns": keys, "scenes": rows, "mean": table[-1] if table else None,
               "failed": [{"scene": name, "error": error} for name, error in failed.items()],
               "settings": {r["scene"]: {**r["settings"], "eval": r["eval"]} for r in results}}
    paths = []
    for suffix, content in ((".md", "\n".join(lines) + "\n"), (".csv", csv_text),
                            (".json", json.dumps(summary, indent=2) + "\n")):
        path = out / (SUMMARY_NAME + suffix)
        atomic_write(path, lambda tmp, content=content: tmp.write_text(content))
        paths.append(path)
    return paths
