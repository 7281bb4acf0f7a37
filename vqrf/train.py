"""The optimisation loop: schedules, upsampling, occupancy updates, regularisers, checkpoints and resume.

Each iteration is :func:`vqrf.step.optimisation_step`, the step fine-tuning takes too; this module owns the schedule
around it. A checkpoint holds everything the loop's future depends on (field, occupancy, the grid that filtered the
training rays, optimiser moments, sampler position, random state), so a run resumed after a kill ends with the same
parameters as one that was never interrupted.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from vqrf.checkpoint import LoadedModel, SceneInfo, load_model, save_model
from vqrf.config import Preset
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError
from vqrf.fields import Field, create_field
from vqrf.fields.tensorf import grid_schedule, voxels_to_grid
from vqrf.render.march import march, ray_box
from vqrf.render.occupancy import OccupancyGrid, build_occupancy
from vqrf.render.volume import RenderSettings, hits_occupied
from vqrf.step import (LOG_EVERY, LossWeights, RayPool, Sampler, load_optimizer_tensors, make_optimizer,
                       optimisation_step, optimizer_tensors, restore_rng, rng_tensors, set_learning_rates)

__all__ = ["TrainResult", "train", "scene_info"]

MAX_MASK_VOXELS = 256**3
RECENT_LOGS = 5  # log points (every LOG_EVERY iterations) behind the reported training PSNR


def scene_info(scene: Scene) -> SceneInfo:
    """What the model file records about ``scene``: its ray facts and its training cameras."""
    return SceneInfo(scene.near, scene.far, scene.ndc, scene.white_bg, scene.ndc_focal, *scene.hw, scene.contract,
                     scene.camera_set())


@dataclass
class TrainResult:
    field: Field
    occupancy: OccupancyGrid
    seconds: float
    iters: int
    """Iterations run: the schedule's, or fewer when a time limit stopped training."""
    train_psnr: float = math.nan
    """The loop's own PSNR over every training pixel, from its last logged batches (about 50 iterations), the
    pixels it does not train on counted as the background they render as."""


class _Trainer:
    """One run's mutable state; ``run`` is the loop, the rest are its schedule events."""

    def __init__(self, scene: Scene, preset: Preset, device: torch.device, out_dir: Path):
        self.scene, self.preset, self.device, self.out_dir = scene, preset, device, out_dir
        self.cfg = preset.train
        self.pool = RayPool(scene, device)
        self.decay = self.cfg.lr_decay_ratio ** (1.0 / self.cfg.iters)
        self.voxel_targets = grid_schedule(self.cfg.n_voxel_init, self.cfg.n_voxel_final, len(self.cfg.upsample_at))
        self.iteration = 0  # next iteration to run
        self.lr_factor = 1.0
        self.tv_factor = 1.0
        self.l1_weight = self.cfg.l1_init
        self.mask_updates = 0
        self.ray_filter: OccupancyGrid | None = None  # the grid whose occupied cells the training rays must cross
        self.grid_lr_scale: torch.Tensor | None = None  # per-voxel learning rates ([X, Y, Z, 1]; DVGO's coarse stage)
        self.elapsed = 0.0  # training seconds of earlier (resumed) runs
        self.recent_mse: list[float] = []  # the batch MSE at the last RECENT_LOGS log points
        self.dropped = (0, 0)  # (pixels whose rays miss the box, all pixels)

    # ---- setup --------------------------------------------------------------------------------------------------
    def fresh(self, start: "CoarseStart | None" = None) -> None:
        """A new field over the scene's box, or over the box and occupancy a coarse stage found (``start``)."""
        torch.manual_seed(self.cfg.seed)
        aabb = (start.aabb if start else self.scene.aabb).to(self.device)
        grid = voxels_to_grid(self.cfg.n_voxel_init, aabb)
        self.field = create_field(self.preset.field, aabb, grid, self.cfg.n_voxel_final).to(self.device)
        if self.scene.ndc and not self.field.supports_ndc:
            raise VqrfError(None, f"a {self.field.field_type} field cannot be trained on a forward-facing (NDC) "
                                  "scene; use --field tensorf")
        self.occupancy = start.occupancy.to(self.device) if start else OccupancyGrid.full(aabb)
        self.keep_rays_in_box()
        if start:  # as DVGO's "in_maskcache" sampler: only rays through the coarse geometry
            self.ray_filter = self.occupancy
            self.pool.keep(self._hits_filter)
        self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, device=self.device)
        if self.cfg.pervoxel_lr:
            self.grid_lr_scale = view_coverage(self.field, self.pool, self.settings())
        self.opt = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        scale = self.grid_lr_scale
        if scale is not None and list(scale.shape[:3]) != self.field.grid_size:
            scale = None  # counted on an earlier grid (DVGO's coarse stage, which uses it, never changes its grid)
        return make_optimizer(self.field, self.cfg, self.lr_factor, scale)

    def restore(self, ckpt: LoadedModel) -> None:
        s = ckpt.extra["train"]
        self.field, self.occupancy = ckpt.field, ckpt.occupancy
        self.iteration, self.lr_factor, self.tv_factor = s["iteration"], s["lr_factor"], s["tv_factor"]
        self.l1_weight, self.mask_updates, self.elapsed = s["l1_weight"], s["mask_updates"], s["elapsed"]
        self.recent_mse = list(s.get("recent_mse", []))
        self.keep_rays_in_box()
        if not self.scene.ndc:
            if "filter.cells" in ckpt.tensors:
                self.ray_filter = OccupancyGrid(ckpt.tensors["filter.cells"], ckpt.tensors["filter.aabb"])
                self.pool.keep(self._hits_filter)
        if len(self.pool.valid) != s["n_rays"]:
            raise VqrfError(self.out_dir / "checkpoint.safetensors",
                            "checkpoint does not match this dataset (different training rays); train with --force")
        self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, s["epoch"], s["position"], self.device)
        self.grid_lr_scale = ckpt.tensors.get("grid_lr_scale")
        self.opt = self.make_optimizer()
        load_optimizer_tensors(self.opt, ckpt.tensors)
        restore_rng(ckpt.tensors, self.device)

    def keep_rays_in_box(self) -> None:
        """Train only on pixels whose rays cross the box: the others can never be fitted and render as background.

        Refused when most pixels of a scene with a real background miss the box while most cameras sit outside it:
        that is an unbounded capture read as a bounded one, and half its images would silently go untrained.
        """
        if self.scene.ndc or self.scene.contract:  # every ray crosses an NDC or contracted box
            return
        total = len(self.pool.valid)
        self.pool.keep(self._hits_box)
        self.dropped = (total - len(self.pool.valid), total)
        aabb = self.scene.aabb
        centres = self.scene.cameras.c2w[:, :, 3]
        outside = float((((centres < aabb[0]) | (centres > aabb[1])).any(-1)).float().mean())
        if not self.scene.white_bg and self.dropped[0] > 0.5 * total and outside > 0.5:
            box = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in zip(aabb[0].tolist(), aabb[1].tolist()))
            raise VqrfError(self.scene.root, f"{100 * self.dropped[0] / total:.0f}% of the training pixels miss the "
                                             f"scene box ({box}) and {100 * outside:.0f}% of the cameras are outside "
                                             "it: this is an unbounded capture; train with --scene unbounded (or "
                                             "give the box as 'aabb' in transforms.json)")

    def _hits_box(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        t_in, t_out = ray_box(origins, directions, self.scene.aabb.to(self.device), self.scene.near, self.scene.far)
        return t_out > t_in

    def _hits_filter(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        return hits_occupied(self.field, self.ray_filter, origins, directions, self.settings())

    def settings(self) -> RenderSettings:
        return RenderSettings.for_field(self.field, self.scene.near, self.scene.far, self.scene.ndc,
                                        self.scene.white_bg, self.cfg.step_ratio, self.cfg.weight_thres,
                                        self.scene.contract, self.cfg.ndc_depth_steps)

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.l1_weight, self.cfg.tv_density * self.tv_factor, self.cfg.tv_app * self.tv_factor,
                           self.cfg.entropy_last, self.cfg.rgbper)

    # ---- schedule events ----------------------------------------------------------------------------------------
    def update_occupancy(self) -> None:
        grid = self.field.grid_size
        if math.prod(grid) > MAX_MASK_VOXELS:
            scale = (MAX_MASK_VOXELS / math.prod(grid)) ** (1 / 3)
            grid = [max(2, int(n * scale)) for n in grid]
        occupancy, box = build_occupancy(self.field, grid, self.field.step_size(self.cfg.step_ratio),
                                         self.cfg.alpha_mask_thres,
                                         self.occupancy if self.cfg.masks_shrink_only else None)
        if box is None:
            # Too early in a short schedule: an empty mask would stop every ray, and the field could never recover.
            tqdm.write(f"vqrf train: iteration {self.iteration}: nothing is dense enough for an occupancy mask yet "
                       f"(alpha >= {self.cfg.alpha_mask_thres:g}); keeping the previous one", file=sys.stderr)
            return
        self.occupancy = occupancy
        self.mask_updates += 1
        if self.mask_updates == 1:
            self.field.shrink(box)
            self.opt = self.make_optimizer()
            self.l1_weight = self.cfg.l1_rest
        elif self.mask_updates == 2 and not self.scene.ndc:
            self.ray_filter = occupancy
            self.pool.keep(self._hits_filter)
            self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, self.sampler.epoch + 1, device=self.device)

    def upsample(self, k: int) -> None:
        self.field.upsample(voxels_to_grid(self.voxel_targets[k], self.field.aabb))
        self.lr_factor = 1.0  # both references restart the learning rates at every upsampling
        self.opt = self.make_optimizer()

    def save(self, path: Path, checkpoint: bool, seconds: float = 0.0) -> None:
        psnr = self.train_psnr()
        extra = {"trained": {"seconds": seconds, "iterations": self.iteration,
                             "psnr": psnr if math.isfinite(psnr) else None}}
        tensors = None
        if checkpoint:
            extra = {"train": {
                "iteration": self.iteration, "lr_factor": self.lr_factor, "tv_factor": self.tv_factor,
                "l1_weight": self.l1_weight, "mask_updates": self.mask_updates, "n_rays": len(self.pool.valid),
                "epoch": self.sampler.epoch, "position": self.sampler.position,
                "elapsed": self.elapsed + time.perf_counter() - self._run_start, "recent_mse": self.recent_mse,
            }}
            tensors = {**optimizer_tensors(self.opt), **rng_tensors(self.device)}
            if self.grid_lr_scale is not None:
                tensors["grid_lr_scale"] = self.grid_lr_scale
            if self.ray_filter is not None:  # copies: while no later update replaced it, it is also the occupancy
                tensors.update({"filter.cells": self.ray_filter.cells.clone(),
                                "filter.aabb": self.ray_filter.aabb.clone()})
        save_model(path, self.field, self.occupancy, self.preset, scene_info(self.scene), extra, tensors)

    def train_psnr(self) -> float:
        if not self.recent_mse:
            return math.nan
        return -10 * math.log10(max(sum(self.recent_mse) / len(self.recent_mse), 1e-10))

    # ---- the loop -----------------------------------------------------------------------------------------------
    def step(self, settings: RenderSettings):
        set_learning_rates(self.opt, self.cfg, self.lr_factor)
        stats = optimisation_step(self.field, self.occupancy, self.opt, self.pool, self.sampler, self.cfg.batch_rays,
                                  settings, self.loss_weights(), jitter=True, random_background=True)
        self.lr_factor *= self.decay
        self.tv_factor *= self.decay
        return stats

    def run(self, progress: bool, on_checkpoint: Callable[[int], None] | None = None,
            max_seconds: float | None = None) -> float:
        cfg = self.cfg
        checkpoint_path = self.out_dir / "checkpoint.safetensors"
        settings = self.settings()
        start = self._run_start = time.perf_counter()
        bar = tqdm(total=cfg.iters, initial=self.iteration, disable=not progress, unit="it", dynamic_ncols=True,
                   desc="train")
        logged_at, logged_it = start, self.iteration
        while self.iteration < cfg.iters:
            if max_seconds is not None and self.elapsed + time.perf_counter() - start >= max_seconds:
                tqdm.write(f"vqrf train: time limit of {max_seconds:g} s reached at iteration {self.iteration}",
                           file=sys.stderr)
                break
            it = self.iteration
            stats = self.step(settings)
            if it in cfg.alpha_mask_at:
                self.update_occupancy()
                settings = self.settings()
            if it in cfg.upsample_at:
                self.upsample(cfg.upsample_at.index(it))
                settings = self.settings()
            self.iteration = it + 1
            if self.iteration % LOG_EVERY == 0 or self.iteration == cfg.iters:
                # The sync: everything queued so far has run. Dropped pixels count as the background they render as.
                mse = self.pool.full_mse(float(stats.mse))
                self.recent_mse = (self.recent_mse + [mse])[-RECENT_LOGS:]
                now = time.perf_counter()
                rays_per_s = (self.iteration - logged_it) * cfg.batch_rays / max(now - logged_at, 1e-9)
                logged_at, logged_it = now, self.iteration
                bar.update(self.iteration - bar.n)
                bar.set_postfix(loss=f"{mse:.4f}", psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}",
                                rays_s=f"{rays_per_s:,.0f}", samples=int(stats.n_samples),
                                grid="x".join(map(str, self.field.grid_size)))
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iters:
                self.save(checkpoint_path, checkpoint=True)
                if on_checkpoint:
                    on_checkpoint(self.iteration)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


@dataclass
class CoarseStart:
    """Where a coarse stage leaves the next one: its box and its occupancy (DVGO's fine bbox and mask cache)."""

    aabb: torch.Tensor
    occupancy: OccupancyGrid


@torch.no_grad()
def coarse_start(field: Field, preset: Preset, margin: float) -> CoarseStart:
    """The box of ``field``'s grid points whose alpha passes the coarse preset's mask threshold, scaled by ``margin``
    about its centre, and the occupancy grid of the same test."""
    cfg = preset.train
    occupancy, box = build_occupancy(field, field.grid_size, field.step_size(cfg.step_ratio), cfg.alpha_mask_thres)
    if box is None:
        tqdm.write("vqrf train: the coarse stage found no geometry; the next stage keeps the whole box", file=sys.stderr)
        box = field.aabb
    centre, half = box.mean(0), (box[1] - box[0]) * (0.5 * margin)
    return CoarseStart(torch.stack([centre - half, centre + half]), occupancy)


@torch.no_grad()
def view_coverage(field: Field, pool: RayPool, settings: RenderSettings) -> torch.Tensor:
    """How many training views see each site of the field's first feature grid, over the most-seen site's count:
    [*shape, 1] in [0, 1] (DVGO's per-voxel learning rate).

    A view sees a site when its rays' samples give the site a summed interpolation weight above 1, as in DVGO. Rays
    are taken every ``stride`` pixels, the stride keeping them about a voxel apart at the box centre, and the
    threshold scaled by the pixels left out.
    """
    device = field.aabb.device
    shape = field.feature_grids()[0].shape
    cameras = pool.cameras
    distance = float((cameras.c2w[:, :, 3] - field.aabb.mean(0)).norm(dim=-1).mean())
    footprint = distance / float(cameras.fx.float().mean())
    stride = max(1, int(float(field.voxel_size().min()) / footprint))
    rows = torch.arange(stride // 2, pool.height, stride, device=device)
    cols = torch.arange(stride // 2, pool.width, stride, device=device)
    pixels = (rows[:, None] * pool.width + cols[None]).reshape(-1)
    everywhere = OccupancyGrid.full(field.aabb)
    counts = torch.zeros(shape, device=device)
    for view in range(len(cameras)):
        origins, directions, _ = pool.rays(view * pool.height * pool.width + pixels)
        start, end, inner = settings.span(field, origins, directions)
        xyz = march(origins, directions, start, end, settings.step, torch.zeros_like(start), everywhere,
                    settings.max_samples, inner)[0]
        seen = [torch.zeros(shape, dtype=torch.float64, device=device)]
        field.splat_importance(xyz, torch.ones(xyz.shape[0], device=device), seen)
        counts += seen[0] > 1.0 / stride**2
    return (counts / counts.max().clamp_min(1.0)).unsqueeze(-1)


def train(
    scene: Scene,
    preset: Preset,
    out_dir: Path,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Fit the preset's field to ``scene``; writes ``out_dir/model.safetensors`` and periodic checkpoints.

    A preset with a coarse stage trains it first into ``out_dir/coarse`` (reused by a resumed run once finished);
    its geometry sets this stage's box and initial occupancy. With ``resume``, continues from
    ``out_dir/checkpoint.safetensors`` when it exists. With ``max_seconds``, training stops once that much time
    (earlier resumed runs and the coarse stage included) has passed, and the field as it stands is the model.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoint.safetensors"
    if resume and checkpoint.is_file():
        ckpt = load_model(checkpoint, device)
        if "train" not in ckpt.extra:
            raise VqrfError(checkpoint, "not a training checkpoint")
        trainer = _Trainer(scene, ckpt.preset, device, out_dir)
        trainer.restore(ckpt)
    else:
        start = None
        coarse_seconds = 0.0
        if preset.coarse is not None:
            coarse = _coarse_stage(scene, preset.coarse, out_dir / "coarse", resume, device, progress, max_seconds)
            start = coarse_start(coarse.field, preset.coarse, preset.train.box_margin)
            coarse_seconds = coarse.seconds
        trainer = _Trainer(scene, preset, device, out_dir)
        trainer.elapsed = coarse_seconds
        trainer.fresh(start)
    dropped, total = trainer.dropped
    if progress and dropped:
        tqdm.write(f"vqrf train: {dropped:,} of {total:,} training pixels ({100 * dropped / total:.1f}%) miss the "
                   "scene box; they are not trained on and render as the background", file=sys.stderr)
    seconds = trainer.elapsed + trainer.run(progress, on_checkpoint, max_seconds)
    trainer.save(out_dir / "model.safetensors", checkpoint=False, seconds=seconds)
    checkpoint.unlink(missing_ok=True)
    return TrainResult(trainer.field, trainer.occupancy, seconds, trainer.iteration, trainer.train_psnr())


def _coarse_stage(scene: Scene, preset: Preset, out_dir: Path, resume: bool, device: torch.device, progress: bool,
                  max_seconds: float | None) -> TrainResult:
    """Train the coarse stage, or with ``resume`` reuse the one a previous run finished."""
    model_path = out_dir / "model.safetensors"
    if resume and model_path.is_file() and not (out_dir / "checkpoint.safetensors").is_file():
        model = load_model(model_path, device)
        trained = model.extra.get("trained", {})
        return TrainResult(model.field, model.occupancy, trained.get("seconds", 0.0), trained.get("iterations", 0),
                           trained.get("psnr") or math.nan)
    if progress:
        tqdm.write(f"vqrf train: coarse stage ({preset.train.iters} iterations) into {out_dir}", file=sys.stderr)
    return train(scene, preset, out_dir, resume, device, progress, None, max_seconds)
