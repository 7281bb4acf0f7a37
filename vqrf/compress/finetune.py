"""Joint fine-tuning of a vector-quantised field (method-spec §2.7), with the reference's bugs fixed.

Each iteration is training's own step (:func:`vqrf.step.optimisation_step`) with the preset's loss terms (L1 and TV;
DVGO's entropy and per-sample colour terms) and its learning-rate decay; what is fine-tuning's own is the learning-rate scale, no jitter and no random background
(the reference's ``is_train=False``), and the VQ state: every ``sync_every`` iterations each code is re-tied to the
weighted mean of its texels. Pruned texels get no gradient, so they stay zero and never rejoin a code (the reference
re-filled them). Deliberate deviation: rays that cross no occupied cell are left out of the batches (they render the
background whatever the field holds, so they carry no gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from vqrf.compress.vq import VQState
from vqrf.config import Preset
from vqrf.fields.base import Field
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.volume import RenderSettings, hits_occupied
from vqrf.step import (LOG_EVERY, LossWeights, RayPool, Sampler, load_optimizer_tensors, make_optimizer,
                       optimisation_step, optimizer_tensors, restore_rng, rng_tensors, set_learning_rates)

__all__ = ["FinetuneProgress", "finetune"]


@dataclass
class FinetuneProgress:
    """Where an interrupted fine-tuning run stands: enough to continue it exactly."""

    iteration: int
    epoch: int
    position: int
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]


def finetune(
    field: Field,
    occupancy: OccupancyGrid,
    state: VQState,
    pool: RayPool,
    settings: RenderSettings,
    preset: Preset,
    iters: int,
    sync_every: int = 10,
    lr_scale: float = 0.25,
    progress: bool = True,
    resume: FinetuneProgress | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[FinetuneProgress], None] | None = None,
) -> list[float]:
    """Fine-tune ``field`` in place for ``iters`` steps, ending tied to ``state``; returns the MSE every
    ``LOG_EVERY`` steps.

    The learning rates start at ``lr_scale`` times the preset's and decay as in its training schedule
    (``lr_decay_ratio`` over the preset's ``iters``). With ``resume``, continues an interrupted run (``field`` and
    ``state`` as they were saved); every ``checkpoint_every`` steps ``on_checkpoint`` receives the progress to save.
    """
    cfg = preset.train
    device = field.aabb.device
    if resume is None:
        state.apply(field)
    if iters <= 0:
        return []
    if not settings.ndc:
        pool.keep(lambda o, d: hits_occupied(field, occupancy, o, d, settings))
    start = resume.iteration if resume else 0
    sampler = Sampler(len(pool.valid), cfg.seed + 1, *((resume.epoch, resume.position) if resume else (0, 0)),
                      device=device)
    decay = cfg.lr_decay_ratio ** (1.0 / cfg.iters)
    opt = make_optimizer(field, cfg, lr_scale)
    if resume:
        load_optimizer_tensors(opt, resume.optimizer)
        restore_rng(resume.rng, device)
    else:
        torch.manual_seed(cfg.seed + 1)  # the same run gives the same file
    handles = state.prune_gradients(field)
    losses = []
    bar = tqdm(total=iters, initial=start, disable=not progress, desc="fine-tune", unit="it", dynamic_ncols=True)
    try:
        for it in range(start, iters):
            factor = decay**it
            set_learning_rates(opt, cfg, lr_scale * factor)
            weights = LossWeights(cfg.l1_rest, cfg.tv_density * factor, cfg.tv_app * factor, cfg.entropy_last,
                                  cfg.rgbper)
            stats = optimisation_step(field, occupancy, opt, pool, sampler, cfg.batch_rays, settings, weights,
                                      jitter=False, random_background=False)
            if (it + 1) % sync_every == 0 or it + 1 == iters:
                state.sync(field)
            if (it + 1) % LOG_EVERY == 0 or it + 1 == iters:
                losses.append(float(stats.mse))
                bar.update(it + 1 - bar.n)
                bar.set_postfix(psnr=f"{-10 * math.log10(max(losses[-1], 1e-10)):.2f}")
            if on_checkpoint and checkpoint_every and (it + 1) % checkpoint_every == 0 and it + 1 < iters:
                on_checkpoint(FinetuneProgress(it + 1, sampler.epoch, sampler.position, optimizer_tensors(opt),
                                               rng_tensors(device)))
    finally:
        for h in handles:
            h.remove()
        bar.close()
    return losses
