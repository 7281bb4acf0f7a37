"""Joint fine-tuning of a vector-quantised field (method-spec §2.7), with the reference's bugs fixed.

All parameters train on the rendering loss; every ``sync_every`` iterations each code is re-tied to the weighted mean
of its texels. Pruned texels get no gradient, so they stay zero and never rejoin a code (the reference re-filled them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from vqrf.compress.vq import VQState
from vqrf.config import Preset
from vqrf.fields.tensorf import TensorVM
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.volume import RenderSettings, hits_occupied, render_rays
from vqrf.train import RayPool, _Sampler, _load_optimizer_tensors, _optimizer_tensors

__all__ = ["FinetuneProgress", "finetune"]


@dataclass
class FinetuneProgress:
    """Where an interrupted fine-tuning run stands: enough to continue it exactly."""

    iteration: int
    epoch: int
    position: int
    optimizer: dict[str, torch.Tensor]
    rng: torch.Tensor


def finetune(
    field: TensorVM,
    occupancy: OccupancyGrid,
    state: VQState,
    pool: RayPool,
    settings: RenderSettings,
    preset: Preset,
    iters: int,
    sync_every: int = 10,
    lr_scale: float = 0.25,
    decay_iters: int = 30000,
    progress: bool = True,
    resume: FinetuneProgress | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[FinetuneProgress], None] | None = None,
) -> list[float]:
    """Fine-tune ``field`` in place for ``iters`` steps, ending tied to ``state``; returns the per-step MSE.

    With ``resume``, continues an interrupted run (``field`` and ``state`` as they were saved); every
    ``checkpoint_every`` steps ``on_checkpoint`` receives the progress to save.
    """
    cfg = preset.train
    if resume is None:
        state.apply(field)
    if iters <= 0:
        return []
    if not settings.ndc:  # rays through empty space have nothing to learn
        pool.keep(lambda o, d: hits_occupied(field, occupancy, o, d, settings))
    start = resume.iteration if resume else 0
    sampler = _Sampler(len(pool.valid), cfg.seed + 1, *((resume.epoch, resume.position) if resume else (0, 0)))
    decay = cfg.lr_decay_ratio ** (1.0 / decay_iters)
    opt = torch.optim.Adam(
        [{"params": field.grid_parameters(), "lr": cfg.lr_grid * lr_scale * decay**start},
         {"params": field.network_parameters(), "lr": cfg.lr_net * lr_scale * decay**start}],
        betas=(0.9, 0.99), fused=True,
    )
    if resume:
        _load_optimizer_tensors(opt, resume.optimizer)
        torch.set_rng_state(resume.rng)
    else:
        torch.manual_seed(cfg.seed + 1)  # jitter and backgrounds: the same run gives the same file
    handles = state.prune_gradients(field)
    losses = []
    bar = tqdm(range(start, iters), initial=start, total=iters, disable=not progress, desc="fine-tune", unit="it",
               dynamic_ncols=True)
    try:
        for it in bar:
            origins, directions, target = pool.rays(pool.valid[sampler.next(cfg.batch_rays)])
            white = pool.scene.white_bg or bool(torch.rand(()) < 0.5)
            out = render_rays(field, occupancy, origins, directions, settings, jitter=True, white_bg=white)
            mse = torch.mean((out["rgb"] - target) ** 2)
            loss = mse + cfg.l1_rest * field.density_l1() if cfg.l1_rest > 0 else mse
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for group in opt.param_groups:
                group["lr"] *= decay
            if (it + 1) % sync_every == 0 or it + 1 == iters:
                state.sync(field)
            losses.append(float(mse.detach()))
            if it % 10 == 0:
                bar.set_postfix(psnr=f"{-10 * math.log10(max(losses[-1], 1e-10)):.2f}")
            if on_checkpoint and checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < iters:
                on_checkpoint(FinetuneProgress(it + 1, sampler.epoch, sampler.position, _optimizer_tensors(opt),
                                               torch.get_rng_state()))
    finally:
        for h in handles:
            h.remove()
    return losses
