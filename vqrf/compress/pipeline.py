"""The compression pipeline: importance -> split -> codebooks -> joint fine-tuning -> packed file.

Each stage reports to an optional ``on_stage(name, field, state)`` callback with the field as it stands (the benchmark
renders the test views there), and its wall time goes into ``CompressResult.seconds``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import torch

from vqrf.checkpoint import LoadedModel, load_model, save_model
from vqrf.compress.codec import Precision, decode_field, encode_field
from vqrf.compress.finetune import FinetuneProgress, finetune
from vqrf.compress.importance import cached_importance, grid_importance
from vqrf.compress.rate import fit_budget, plan_for_budget
from vqrf.compress.vq import GridCode, VQState, build_vq
from vqrf.config import CompressConfig
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError
from vqrf.fields.base import Field
from vqrf.step import RayPool

__all__ = ["CompressResult", "codebook_size", "compress_model", "compress_scene", "pruned_copy"]

StageCallback = Callable[[str, Field, "VQState | None"], None]
CheckpointCallback = Callable[[int], None]
"""Called with the fine-tuning step count after each checkpoint is saved."""


@dataclass
class CompressResult:
    data: bytes
    """The .vqrf file."""
    model: LoadedModel
    """The file decoded again: what every consumer of the file will see."""
    state: VQState
    seconds: dict[str, float] = dc_field(default_factory=dict)
    info: dict[str, Any] = dc_field(default_factory=dict)
    encode: Callable[[VQState, dict[str, Any]], bytes] | None = None

    def reencode(self, extra_stats: dict[str, Any]) -> bytes:
        """The same file with ``extra_stats`` (e.g. measured PSNR) added to its header."""
        return self.encode(self.state, extra_stats)


def codebook_size(cfg: CompressConfig, n_vq: int) -> int:
    """Codes per codebook for a feature grid with ``n_vq`` vq sites."""
    return max(1, min(cfg.codebook_size, n_vq // max(cfg.members_per_code, 1)))


@torch.no_grad()
def pruned_copy(field: Field, state: VQState) -> Field:
    """``field`` with only the pruned sites zeroed (the 'pruned' stage of the pipeline figure)."""
    out = copy.deepcopy(field)
    for code, grid in zip(state.grids, out.feature_grids()):
        for tensor in grid.tensors.values():
            tensor.data[~code.non_pruned.to(tensor.device)] = 0.0
    return out


def compress_model(
    model: LoadedModel,
    pool: RayPool,
    cfg: CompressConfig,
    importance: list[torch.Tensor] | None = None,
    budget: int | None = None,
    progress: bool = True,
    on_stage: StageCallback | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 200,
    on_checkpoint: CheckpointCallback | None = None,
) -> CompressResult:
    """Compress ``model`` (its field is modified in place by fine-tuning) into the bytes of a .vqrf file.

    With ``budget`` (bytes), rate control picks the keep fraction, codebook size and precision instead of ``cfg``'s.
    With ``checkpoint``, fine-tuning saves its progress there every ``checkpoint_every`` steps, and a run finding
    that file continues from it (the file is removed at the end); ``on_checkpoint`` hears of every save.
    """
    if checkpoint is not None and checkpoint.is_file():
        return _resume(checkpoint, pool, progress, on_stage, checkpoint_every, on_checkpoint)
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {}
    field, settings = model.field, model.render_settings()
    if on_stage:
        on_stage("original", field, None)

    start = time.perf_counter()
    if importance is None:
        importance = grid_importance(field, model.occupancy, pool, settings, progress=progress)
    seconds["importance"] = time.perf_counter() - start

    if budget is not None:
        start = time.perf_counter()
        plan = plan_for_budget(model, pool, importance, cfg, budget, progress)
        cfg = plan.cfg
        info["rate"] = {"budget": budget, "keep": cfg.keep, "codebook_size": cfg.codebook_size,
                        "precision": asdict(Precision.from_config(cfg)), "candidates": plan.candidates}
        seconds["rate_control"] = time.perf_counter() - start

    start = time.perf_counter()
    state = build_vq(field, importance, cfg.keep, cfg.non_prune, lambda n: codebook_size(cfg, n), cfg.seed,
                     cfg.kmeans_iters, progress)
    seconds["codebooks"] = time.perf_counter() - start
    if on_stage:
        on_stage("pruned", pruned_copy(field, state), state)
        quantised = copy.deepcopy(field)
        state.apply(quantised)
        on_stage("vq", quantised, state)

    return _finish(model, pool, cfg, state, budget, seconds, info, progress, on_stage, checkpoint, checkpoint_every,
                   on_checkpoint)


def _finish(model: LoadedModel, pool: RayPool, cfg: CompressConfig, state: VQState, budget: int | None,
            seconds: dict[str, float], info: dict[str, Any], progress: bool, on_stage: StageCallback | None,
            checkpoint: Path | None, checkpoint_every: int, on_checkpoint: CheckpointCallback | None = None,
            resume: FinetuneProgress | None = None) -> CompressResult:
    """Fine-tuning (from ``resume`` if given), then packing."""
    field = model.field

    def save(p: FinetuneProgress) -> None:
        _save_progress(checkpoint, model, state, cfg, budget, {**seconds, "finetune": time.perf_counter() - start}, info, p)
        if on_checkpoint:
            on_checkpoint(p.iteration)

    start = time.perf_counter() - seconds.get("finetune", 0.0)
    finetune(field, model.occupancy, state, pool, model.render_settings(), model.preset,
             cfg.finetune_steps(model.preset), cfg.sync_every, cfg.lr_scale, progress=progress, resume=resume,
             checkpoint_every=checkpoint_every if checkpoint else 0, on_checkpoint=save if checkpoint else None)
    seconds["finetune"] = time.perf_counter() - start
    if on_stage:
        on_stage("finetuned", field, state)

    start = time.perf_counter()
    precision = Precision.from_config(cfg)

    def encode(st: VQState, extra: dict[str, Any] | None = None) -> bytes:
        stats = {"tiers": st.counts(),
                 "codebooks": [{k: int(b.shape[0]) for k, b in c.codebooks.items()} for c in st.grids], **(extra or {})}
        return encode_field(field, st, model.occupancy, model.preset, model.scene, precision, stats)

    if budget is not None:
        data, info["rate"]["demoted"] = fit_budget(model, state, encode, budget)
    else:
        data = encode(state)
    seconds["pack"] = time.perf_counter() - start
    decoded = decode_field(data, "<memory>")
    info.update(decoded.extra["compressed"]["stats"])
    if on_stage:
        on_stage("packed", decoded.field, state)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return CompressResult(data, decoded, state, seconds, info, encode)


def _save_progress(path: Path, model: LoadedModel, state: VQState, cfg: CompressConfig, budget: int | None,
                   seconds: dict[str, float], info: dict[str, Any], progress: FinetuneProgress) -> None:
    """The field mid-fine-tuning, its VQ state and the optimiser, as one safetensors file (no pickle)."""
    tensors = {f"optim.{k}": v for k, v in progress.optimizer.items()}
    tensors.update(progress.rng)
    for i, code in enumerate(state.grids):
        tensors[f"vq.{i}.keep"] = code.keep.to(torch.uint8)
        tensors[f"vq.{i}.vq"] = code.vq.to(torch.uint8)
        tensors[f"vq.{i}.weights"] = state.weights[i].float()
        for kind in code.codebooks:
            tensors[f"vq.{i}.{kind}.codebook"] = code.codebooks[kind]
            tensors[f"vq.{i}.{kind}.indices"] = code.indices[kind]
    extra = {"compress": {"cfg": asdict(cfg), "budget": budget, "seconds": seconds, "info": info,
                          "iteration": progress.iteration, "epoch": progress.epoch, "position": progress.position}}
    save_model(path, model.field, model.occupancy, model.preset, model.scene, extra, tensors)


def _resume(path: Path, pool: RayPool, progress: bool, on_stage: StageCallback | None,
            checkpoint_every: int, on_checkpoint: CheckpointCallback | None) -> CompressResult:
    saved = load_model(path, pool.device)
    meta = saved.extra.get("compress")
    if meta is None:
        raise VqrfError(path, "not a compression checkpoint")
    try:
        t = saved.tensors
        grids = saved.field.feature_grids()
        codes = []
        for i, grid in enumerate(grids):
            code = GridCode(t[f"vq.{i}.keep"].bool(), t[f"vq.{i}.vq"].bool())
            for kind in grid.quantised:
                code.codebooks[kind] = t[f"vq.{i}.{kind}.codebook"]
                code.indices[kind] = t[f"vq.{i}.{kind}.indices"].long()
            codes.append(code)
        state = VQState(codes, [t[f"vq.{i}.weights"] for i in range(len(grids))])
        cfg = CompressConfig(**meta["cfg"])
        resume = FinetuneProgress(meta["iteration"], meta["epoch"], meta["position"],
                                  {k[len("optim."):]: v for k, v in t.items() if k.startswith("optim.")},
                                  {k: v for k, v in t.items() if k in ("rng", "rng_cuda")})
    except (KeyError, TypeError) as e:
        raise VqrfError(path, f"inconsistent compression checkpoint ({e})") from None
    if progress:
        print(f"compress: resuming fine-tuning at step {resume.iteration} from {path}")
    return _finish(saved, pool, cfg, state, meta["budget"], dict(meta["seconds"]), dict(meta["info"]), progress,
                   on_stage, path, checkpoint_every, on_checkpoint, resume)


def compress_scene(
    model: LoadedModel,
    scene: Scene,
    cfg: CompressConfig,
    model_path: Path,
    data_path: str,
    downscale: float,
    budget: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
    on_stage: StageCallback | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 200,
    on_checkpoint: CheckpointCallback | None = None,
) -> CompressResult:
    """:func:`compress_model` on every training ray of ``scene``, with importance cached next to ``model_path``."""
    if model.scene.views is None:  # a model trained before cameras were stored: the file gets the dataset's
        model.scene.views = scene.camera_set()
    pool = RayPool(scene, model.field.aabb.device)
    start = time.perf_counter()

    def compute() -> list[torch.Tensor]:
        return grid_importance(model.field, model.occupancy, pool, model.render_settings(), progress=progress)

    if checkpoint is not None and checkpoint.is_file():
        return compress_model(model, pool, cfg, None, budget, progress, on_stage, checkpoint, checkpoint_every,
                              on_checkpoint)
    importance = cached_importance(model_path, data_path, downscale, compute, progress) if use_cache else compute()
    seconds = time.perf_counter() - start
    result = compress_model(model, pool, cfg, importance, budget, progress, on_stage, checkpoint, checkpoint_every,
                            on_checkpoint)
    result.seconds["importance"] = seconds
    return result
