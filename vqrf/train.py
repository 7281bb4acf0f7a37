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
from vqrf.fields.tensorf import TensorVM, grid_schedule, voxels_to_grid
from vqrf.render.march import ray_box
from vqrf.render.occupancy import OccupancyGrid, build_occupancy
from vqrf.render.volume import RenderSettings, hits_occupied
from vqrf.step import (LOG_EVERY, LossWeights, RayPool, Sampler, load_optimizer_tensors, make_optimizer,
                       optimisation_step, optimizer_tensors, restore_rng, rng_tensors, set_learning_rates)

__all__ = ["TrainResult", "train", "scene_info"]

MAX_MASK_VOXELS = 256**3


def scene_info(scene: Scene) -> SceneInfo:
    return SceneInfo(scene.near, scene.far, scene.ndc, scene.white_bg, scene.ndc_focal, *scene.hw)


@dataclass
class TrainResult:
    field: TensorVM
    occupancy: OccupancyGrid
    seconds: float
    iters: int
    """Iterations run: the schedule's, or fewer when a time limit stopped training."""


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
        self.elapsed = 0.0  # training seconds of earlier (resumed) runs

    # ---- setup --------------------------------------------------------------------------------------------------
    def fresh(self) -> None:
        torch.manual_seed(self.cfg.seed)
        aabb = self.scene.aabb.to(self.device)
        self.field = TensorVM(aabb, voxels_to_grid(self.cfg.n_voxel_init, aabb), self.preset.field).to(self.device)
        self.occupancy = OccupancyGrid.full(aabb)
        if not self.scene.ndc:  # rays that miss the box can never be fitted
            self.pool.keep(self._hits_box)
        self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, device=self.device)
        self.opt = make_optimizer(self.field, self.cfg, self.lr_factor)

    def restore(self, ckpt: LoadedModel) -> None:
        s = ckpt.extra["train"]
        self.field, self.occupancy = ckpt.field, ckpt.occupancy
        self.iteration, self.lr_factor, self.tv_factor = s["iteration"], s["lr_factor"], s["tv_factor"]
        self.l1_weight, self.mask_updates, self.elapsed = s["l1_weight"], s["mask_updates"], s["elapsed"]
        if not self.scene.ndc:
            self.pool.keep(self._hits_box)
            if "filter.cells" in ckpt.tensors:
                self.ray_filter = OccupancyGrid(ckpt.tensors["filter.cells"], ckpt.tensors["filter.aabb"])
                self.pool.keep(self._hits_filter)
        if len(self.pool.valid) != s["n_rays"]:
            raise VqrfError(self.out_dir / "checkpoint.safetensors",
                            "checkpoint does not match this dataset (different training rays); train with --force")
        self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, s["epoch"], s["position"], self.device)
        self.opt = make_optimizer(self.field, self.cfg, self.lr_factor)
        load_optimizer_tensors(self.opt, ckpt.tensors)
        restore_rng(ckpt.tensors, self.device)

    def _hits_box(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        t_in, t_out = ray_box(origins, directions, self.scene.aabb.to(self.device), self.scene.near, self.scene.far)
        return t_out > t_in

    def _hits_filter(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        return hits_occupied(self.field, self.ray_filter, origins, directions, self.settings())

    def settings(self) -> RenderSettings:
        return RenderSettings.for_field(self.field, self.scene.near, self.scene.far, self.scene.ndc,
                                        self.scene.white_bg, self.cfg.step_ratio, self.cfg.weight_thres)

    def loss_weights(self) -> LossWeights:
        return LossWeights(self.l1_weight, self.cfg.tv_density * self.tv_factor, self.cfg.tv_app * self.tv_factor)

    # ---- schedule events ----------------------------------------------------------------------------------------
    def update_occupancy(self) -> None:
        grid = self.field.grid_size
        if math.prod(grid) > MAX_MASK_VOXELS:
            scale = (MAX_MASK_VOXELS / math.prod(grid)) ** (1 / 3)
            grid = [max(2, int(n * scale)) for n in grid]
        occupancy, box = build_occupancy(self.field, grid, self.field.step_size(self.cfg.step_ratio),
                                         self.cfg.alpha_mask_thres)
        if box is None:
            # Too early in a short schedule: an empty mask would stop every ray, and the field could never recover.
            tqdm.write(f"vqrf train: iteration {self.iteration}: nothing is dense enough for an occupancy mask yet "
                       f"(alpha >= {self.cfg.alpha_mask_thres:g}); keeping the previous one", file=sys.stderr)
            return
        self.occupancy = occupancy
        self.mask_updates += 1
        if self.mask_updates == 1:
            self.field.shrink(box)
            self.opt = make_optimizer(self.field, self.cfg, self.lr_factor)
            self.l1_weight = self.cfg.l1_rest
        elif self.mask_updates == 2 and not self.scene.ndc:
            self.ray_filter = occupancy
            self.pool.keep(self._hits_filter)
            self.sampler = Sampler(len(self.pool.valid), self.cfg.seed, self.sampler.epoch + 1, device=self.device)

    def upsample(self, k: int) -> None:
        self.field.upsample(voxels_to_grid(self.voxel_targets[k], self.field.aabb))
        self.lr_factor = 1.0  # the reference restarts the learning rates at every upsampling
        self.opt = make_optimizer(self.field, self.cfg, self.lr_factor)

    def save(self, path: Path, checkpoint: bool) -> None:
        extra, tensors = {}, None
        if checkpoint:
            extra = {"train": {
                "iteration": self.iteration, "lr_factor": self.lr_factor, "tv_factor": self.tv_factor,
                "l1_weight": self.l1_weight, "mask_updates": self.mask_updates, "n_rays": len(self.pool.valid),
                "epoch": self.sampler.epoch, "position": self.sampler.position,
                "elapsed": self.elapsed + time.perf_counter() - self._run_start,
            }}
            tensors = {**optimizer_tensors(self.opt), **rng_tensors(self.device)}
            if self.ray_filter is not None:  # copies: while no later update replaced it, it is also the occupancy
                tensors.update({"filter.cells": self.ray_filter.cells.clone(),
                                "filter.aabb": self.ray_filter.aabb.clone()})
        save_model(path, self.field, self.occupancy, self.preset, scene_info(self.scene), extra, tensors)

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
                mse = float(stats.mse)  # the sync: everything queued so far has run
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
    """Fit a TensoRF-VM field to ``scene``; writes ``out_dir/model.safetensors`` and periodic checkpoints.

    With ``resume``, continues from ``out_dir/checkpoint.safetensors`` when it exists. With ``max_seconds``, training
    stops once that much time (earlier resumed runs included) has passed, and the field as it stands is the model.
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
        trainer = _Trainer(scene, preset, device, out_dir)
        trainer.fresh()
    seconds = trainer.elapsed + trainer.run(progress, on_checkpoint, max_seconds)
    trainer.save(out_dir / "model.safetensors", checkpoint=False)
    checkpoint.unlink(missing_ok=True)
    return TrainResult(trainer.field, trainer.occupancy, seconds, trainer.iteration)
