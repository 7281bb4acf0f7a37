"""The optimisation loop: schedules, upsampling, occupancy updates, regularisers, checkpoints and resume."""

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
from vqrf.render.rays import camera_rays_at, ndc_rays
from vqrf.render.volume import RenderSettings, hits_occupied, render_rays

__all__ = ["RayPool", "TrainResult", "train", "scene_info"]

MAX_MASK_VOXELS = 256**3


def scene_info(scene: Scene) -> SceneInfo:
    return SceneInfo(scene.near, scene.far, scene.ndc, scene.white_bg, scene.ndc_focal, *scene.hw)


class RayPool:
    """Every training pixel of a scene: images held in memory, rays made per batch from (view, pixel) indices."""

    def __init__(self, scene: Scene, device: torch.device):
        self.scene = scene
        self.height, self.width = scene.hw
        self.colors = torch.stack([scene.image(i) for i in range(len(scene))]).reshape(-1, 3).to(device)
        self.valid = torch.arange(self.colors.shape[0])  # flat indices of the pixels still trained on
        self.device = device

    def rays(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat pixel indices [B] -> origins [B, 3], directions [B, 3], target colours [B, 3]."""
        pixels = self.height * self.width
        view, pix = idx // pixels, idx % pixels
        origins, directions = camera_rays_at(self.scene.cameras, view, pix // self.width, pix % self.width)
        if self.scene.ndc:
            origins, directions = ndc_rays(origins, directions, self.height, self.width, self.scene.ndc_focal)
        return origins.to(self.device), directions.to(self.device), self.colors[idx.to(self.device)]

    @torch.no_grad()
    def keep(self, predicate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int = 1 << 18) -> None:
        """Keep only the pixels whose rays satisfy ``predicate(origins, directions) -> [B] bool``."""
        kept = [idx[predicate(*self.rays(idx)[:2]).cpu()] for idx in self.valid.split(chunk)]
        self.valid = torch.cat(kept)


class _Sampler:
    """Random batches without replacement; a fresh permutation each epoch, reproducible from (seed, epoch)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, position: int = 0):
        self.n, self.seed, self.epoch, self.position = n, seed, epoch, position
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))

    def next(self, batch: int) -> torch.Tensor:
        if self.position + batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation()
        out = self._perm[self.position : self.position + batch]
        self.position += batch
        return out


@dataclass
class TrainResult:
    field: TensorVM
    occupancy: OccupancyGrid
    seconds: float
    iters: int


def _optimizer(field: TensorVM, preset: Preset, lr_factor: float) -> torch.optim.Adam:
    t = preset.train
    return torch.optim.Adam(
        [
            {"params": field.grid_parameters(), "lr": t.lr_grid * lr_factor},
            {"params": field.network_parameters(), "lr": t.lr_net * lr_factor},
        ],
        betas=(0.9, 0.99),
        fused=True,  # one pass over each tensor: 4x faster than the default on a CPU, and the grids are large
    )


def _optimizer_tensors(opt: torch.optim.Adam) -> dict[str, torch.Tensor]:
    out = {}
    for g, group in enumerate(opt.param_groups):
        for i, p in enumerate(group["params"]):
            for k, v in opt.state.get(p, {}).items():
                out[f"optim.{g}.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer_tensors(opt: torch.optim.Adam, tensors: dict[str, torch.Tensor]) -> None:
    for g, group in enumerate(opt.param_groups):
        for i, p in enumerate(group["params"]):
            state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{g}.{i}.")}
            if state:
                opt.state[p] = {k: v.to(p.device) if k != "step" else v.cpu() for k, v in state.items()}


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
        self.elapsed = 0.0  # training seconds of earlier (resumed) runs

    # ---- setup --------------------------------------------------------------------------------------------------
    def fresh(self) -> None:
        torch.manual_seed(self.cfg.seed)
        aabb = self.scene.aabb.to(self.device)
        self.field = TensorVM(aabb, voxels_to_grid(self.cfg.n_voxel_init, aabb), self.preset.field).to(self.device)
        self.occupancy = OccupancyGrid.full(aabb)
        if not self.scene.ndc:  # rays that miss the box can never be fitted
            self.pool.keep(lambda o, d: self._hits_box(o, d))
        self.sampler = _Sampler(len(self.pool.valid), self.cfg.seed)
        self.opt = _optimizer(self.field, self.preset, self.lr_factor)

    def restore(self, ckpt: LoadedModel) -> None:
        s = ckpt.extra["train"]
        self.field = ckpt.field.to(self.device)
        self.occupancy = ckpt.occupancy
        self.iteration, self.lr_factor, self.tv_factor = s["iteration"], s["lr_factor"], s["tv_factor"]
        self.l1_weight, self.mask_updates, self.elapsed = s["l1_weight"], s["mask_updates"], s["elapsed"]
        if not self.scene.ndc:
            self.pool.keep(lambda o, d: self._hits_box(o, d))
            if self.mask_updates >= 2:
                self.pool.keep(lambda o, d: self._hits_occupied(o, d))
        if len(self.pool.valid) != s["n_rays"]:
            raise VqrfError(self.out_dir / "checkpoint.safetensors",
                            "checkpoint does not match this dataset (different training rays); train with --force")
        self.sampler = _Sampler(len(self.pool.valid), self.cfg.seed, s["epoch"], s["position"])
        self.opt = _optimizer(self.field, self.preset, self.lr_factor)
        _load_optimizer_tensors(self.opt, ckpt.tensors)
        torch.set_rng_state(ckpt.tensors["rng"].to(torch.uint8))

    def _hits_box(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        t_in, t_out = ray_box(origins, directions, self.scene.aabb.to(self.device), self.scene.near, self.scene.far)
        return t_out > t_in

    def _hits_occupied(self, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        return hits_occupied(self.field, self.occupancy, origins, directions, self.settings())

    def settings(self) -> RenderSettings:
        return RenderSettings.for_field(self.field, self.scene.near, self.scene.far, self.scene.ndc,
                                        self.scene.white_bg, self.cfg.step_ratio, self.cfg.weight_thres)

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
            self.opt = _optimizer(self.field, self.preset, self.lr_factor)
            self.l1_weight = self.cfg.l1_rest
        elif self.mask_updates == 2 and not self.scene.ndc:
            self.pool.keep(lambda o, d: self._hits_occupied(o, d))
            self.sampler = _Sampler(len(self.pool.valid), self.cfg.seed, self.sampler.epoch + 1)

    def upsample(self, k: int) -> None:
        self.field.upsample(voxels_to_grid(self.voxel_targets[k], self.field.aabb))
        self.lr_factor = 1.0  # the reference restarts the learning rates at every upsampling
        self.opt = _optimizer(self.field, self.preset, self.lr_factor)

    def save(self, path: Path, checkpoint: bool) -> None:
        extra, tensors = {}, None
        if checkpoint:
            extra = {"train": {
                "iteration": self.iteration, "lr_factor": self.lr_factor, "tv_factor": self.tv_factor,
                "l1_weight": self.l1_weight, "mask_updates": self.mask_updates, "n_rays": len(self.pool.valid),
                "epoch": self.sampler.epoch, "position": self.sampler.position,
                "elapsed": self.elapsed + time.perf_counter() - self._run_start,
            }}
            tensors = {**_optimizer_tensors(self.opt), "rng": torch.get_rng_state()}
        save_model(path, self.field, self.occupancy, self.preset, scene_info(self.scene), extra, tensors)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def step(self, settings: RenderSettings) -> tuple[float, int]:
        idx = self.pool.valid[self.sampler.next(self.cfg.batch_rays)]
        origins, directions, target = self.pool.rays(idx)
        # Non-white scenes are composited on white half the time, which keeps empty space transparent.
        white = self.scene.white_bg or bool(torch.rand(()) < 0.5)
        out = render_rays(self.field, self.occupancy, origins, directions, settings, jitter=True, white_bg=white)
        mse = torch.mean((out["rgb"] - target) ** 2)
        loss = mse
        if self.l1_weight > 0:
            loss = loss + self.l1_weight * self.field.density_l1()
        if self.cfg.tv_density > 0:
            loss = loss + self.cfg.tv_density * self.tv_factor * self.field.density_tv()
        if self.cfg.tv_app > 0:
            loss = loss + self.cfg.tv_app * self.tv_factor * self.field.app_tv()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.lr_factor *= self.decay
        self.tv_factor *= self.decay
        for group in self.opt.param_groups:
            group["lr"] *= self.decay
        return float(mse.detach()), int(out["n_samples"])

    def run(self, progress: bool, on_checkpoint: Callable[[int], None] | None = None) -> float:
        cfg = self.cfg
        checkpoint_path = self.out_dir / "checkpoint.safetensors"
        settings = self.settings()
        start = self._run_start = time.perf_counter()
        bar = tqdm(total=cfg.iters, initial=self.iteration, disable=not progress, unit="it", dynamic_ncols=True,
                   desc="train")
        rays_per_s = 0.0
        while self.iteration < cfg.iters:
            it = self.iteration
            t0 = time.perf_counter()
            mse, n_samples = self.step(settings)
            rays_per_s = 0.9 * rays_per_s + 0.1 * cfg.batch_rays / (time.perf_counter() - t0) if it else 0.0
            if it in cfg.alpha_mask_at:
                self.update_occupancy()
                settings = self.settings()
            if it in cfg.upsample_at:
                self.upsample(cfg.upsample_at.index(it))
                settings = self.settings()
            self.iteration = it + 1
            bar.update(1)
            if it % 10 == 0:
                bar.set_postfix(loss=f"{mse:.4f}", psnr=f"{-10 * math.log10(max(mse, 1e-10)):.2f}",
                                rays_s=f"{rays_per_s:,.0f}", samples=n_samples, grid="x".join(map(str, self.field.grid_size)))
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iters:
                self.save(checkpoint_path, checkpoint=True)
                if on_checkpoint:
                    on_checkpoint(self.iteration)
        bar.close()
        return time.perf_counter() - start


def train(
    scene: Scene,
    preset: Preset,
    out_dir: Path,
    resume: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Fit a TensoRF-VM field to ``scene``; writes ``out_dir/model.safetensors`` and periodic checkpoints.

    With ``resume``, continues from ``out_dir/checkpoint.safetensors`` when it exists.
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
    seconds = trainer.elapsed + trainer.run(progress, on_checkpoint)
    trainer.save(out_dir / "model.safetensors", checkpoint=False)
    checkpoint.unlink(missing_ok=True)
    return TrainResult(trainer.field, trainer.occupancy, seconds, trainer.cfg.iters)
