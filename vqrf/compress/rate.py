"""Rate control: choose codebook size, keep fraction and precision so the file fits a byte budget.

For each candidate codebook size, codebooks are fitted once on all unpruned sites (a short k-means), then the keep
fraction is bisected against the exact byte count of the encoded file; each candidate's quality is measured by
rendering a fixed batch of training rays, and the best one is compressed for real. If fine-tuning leaves the file over
budget, the least important kept sites are moved to their nearest code until it fits.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm import tqdm

from vqrf.checkpoint import LoadedModel
from vqrf.compress.codebook import assign, fit_codebook
from vqrf.compress.codec import Precision, encode_field
from vqrf.compress.split import cdf_split
from vqrf.compress.vq import GridCode, VQState, rows
from vqrf.config import CompressConfig
from vqrf.errors import VqrfError
from vqrf.render.volume import render_rays
from vqrf.step import RayPool

__all__ = ["RatePlan", "plan_for_budget", "fit_budget", "parse_size"]

CANDIDATE_SIZES = (4096, 2048, 1024, 512, 256, 128, 64, 32, 16)
SEARCH_KMEANS_ITERS = 20
PROBE_RAYS = 1 << 15
AIM = 0.995  # of the budget: fine-tuning moves the entropy a little, and fit_budget demotes kept sites if it is over
# When even keep 0.99 fits, the spare bytes buy precision, cheapest quality first.
UPGRADES = ({"keep": 1.0}, {"codebook_levels": 256}, {"network_precision": "fp16"}, {"line_precision": "fp16"},
            {"keep_steps_per_std": 31.0}, {"keep_steps_per_std": 63.0}, {"codebook_precision": "fp16"})


def parse_size(text: str) -> int:
    """'500KB', '1MB', '1.5MiB', '362800' -> bytes (KB/MB are powers of 1000, KiB/MiB of 1024)."""
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30, "k": 10**3,
             "m": 10**6}
    s = text.strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise VqrfError(None, f"--target-size: cannot read {text!r} (examples: 500KB, 1MB, 1.5MiB, 362800)") from None
    if value < 1:
        raise VqrfError(None, f"--target-size must be positive, got {text!r}")
    return int(value)


@dataclass
class RatePlan:
    cfg: CompressConfig
    """The configuration chosen (keep fraction, codebook size, precision)."""
    predicted_bytes: int
    candidates: list[dict[str, Any]]
    """Every candidate tried: codebook size, keep fraction, bytes, probe MSE."""


def _state_for(field, importance, books: list[dict[str, torch.Tensor]], keep: float, non_prune: float) -> VQState:
    """Split at ``keep`` and assign every vq site to its nearest code of ``books`` (no refit)."""
    codes = []
    for imp, grid, grid_books in zip(importance, field.feature_grids(), books):
        keep_mask, vq_mask = cdf_split(imp.cpu(), keep, non_prune)
        code = GridCode(keep_mask, vq_mask)
        for kind, book in grid_books.items():
            tensor = grid.tensors[kind].detach()
            members = rows(tensor)[vq_mask.flatten().to(tensor.device)]
            book = book.to(tensor.device)
            code.codebooks[kind], code.indices[kind] = book, assign(members, book)
        codes.append(code)
    return VQState(codes, [m.cpu() for m in importance])


@torch.no_grad()
def _probe_mse(model: LoadedModel, state: VQState, rays: tuple[torch.Tensor, ...]) -> float:
    field = copy.deepcopy(model.field)
    state.apply(field)
    origins, directions, target = rays
    out = render_rays(field, model.occupancy, origins, directions, model.render_settings())
    return float(torch.mean((out["rgb"] - target) ** 2))


def plan_for_budget(
    model: LoadedModel,
    pool: RayPool,
    importance: list[torch.Tensor],
    cfg: CompressConfig,
    budget: int,
    progress: bool = True,
) -> RatePlan:
    """Pick the configuration with the lowest probe error whose file is predicted to fit ``AIM * budget`` bytes."""
    field = model.field
    base = replace(cfg, codebook_precision="int8", line_precision="int8", network_precision="int8", codebook_levels=32)
    generator = torch.Generator().manual_seed(cfg.seed)
    probe_idx = pool.valid[torch.randperm(len(pool.valid), generator=generator)[:PROBE_RAYS]]
    rays = pool.rays(probe_idx)
    goal = int(AIM * budget)

    unpruned = [cdf_split(m.cpu(), 0.0, cfg.non_prune)[1] for m in importance]
    n_unpruned = min(int(m.sum()) for m in unpruned)
    sizes = [k for k in CANDIDATE_SIZES if k <= max(cfg.codebook_size, CANDIDATE_SIZES[-1])
             and k <= max(n_unpruned // max(cfg.members_per_code, 1), CANDIDATE_SIZES[-1])]
    candidates, best, worse, best_size_at = [], None, 0, None
    for k in tqdm(sizes, disable=not progress, desc="rate control", unit="size", dynamic_ncols=True):
        books = []
        for i, (mask, grid) in enumerate(zip(unpruned, field.feature_grids())):
            w = importance[i].cpu().flatten()[mask.flatten()]
            books.append({kind: fit_codebook(rows(grid.tensors[kind].detach().cpu())[mask.flatten()], w, k,
                                             cfg.seed + i, SEARCH_KMEANS_ITERS)[0] for kind in grid.quantised})

        def size_at(keep: float, precision: Precision = Precision.from_config(base), books=books) -> int:
            state = _state_for(field, importance, books, keep, cfg.non_prune)
            return len(encode_field(field, state, model.occupancy, model.preset, model.scene, precision))

        low, low_size = 0.0, size_at(0.0)
        if low_size > goal:
            candidates.append({"codebook_size": k, "keep": 0.0, "bytes": low_size, "fits": False})
            continue
        high, high_size = 0.99, size_at(0.99)
        if high_size <= goal:
            low, low_size = high, high_size
        else:
            for _ in range(10):  # keep fraction to ~0.001
                mid = 0.5 * (low + high)
                mid_size = size_at(mid)
                if mid_size <= goal:
                    low, low_size = mid, mid_size
                else:
                    high = mid
        state = _state_for(field, importance, books, low, cfg.non_prune)
        row = {"codebook_size": k, "keep": round(low, 4), "bytes": low_size, "fits": True,
               "probe_mse": _probe_mse(model, state, rays)}
        candidates.append(row)
        if best is None or row["probe_mse"] < best["probe_mse"]:
            best, worse, best_size_at = row, 0, size_at
        else:
            worse += 1
            if worse == 2:  # error grows steadily as codebooks shrink past the best size
                break
    if best is None:
        smallest = min(c["bytes"] for c in candidates)
        raise VqrfError(None, f"--target-size {budget:,} bytes is below the smallest file this model compresses to "
                              f"(about {smallest:,} bytes with {candidates[-1]['codebook_size']}-code books, "
                              f"nothing kept)")
    chosen = replace(base, keep=best["keep"], codebook_size=best["codebook_size"], members_per_code=1)
    predicted = best["bytes"]
    if best["keep"] >= 0.99:  # everything that matters is kept and bytes are left: spend them on precision
        for change in UPGRADES:
            trial = replace(chosen, **change)
            size = best_size_at(trial.keep, Precision.from_config(trial))
            if size <= goal:
                chosen, predicted = trial, size
                candidates.append({"codebook_size": chosen.codebook_size, "keep": chosen.keep, "bytes": size,
                                   "fits": True, "upgrade": change})
    return RatePlan(chosen, predicted, candidates)


def fit_budget(model: LoadedModel, state: VQState, encode, budget: int) -> tuple[bytes, int]:
    """Move the least important kept sites into the vq tier (nearest code) until ``encode(state)`` fits ``budget``.

    ``model.field`` and ``state`` are updated in place. Returns the bytes and the number of sites moved.
    """
    data = encode(state)
    if len(data) <= budget:
        return data, 0
    field = model.field
    device = field.aabb.device
    kept = [(float(state.weights[i].flatten()[t]), i, t) for i, code in enumerate(state.grids)
            for t in code.keep.flatten().nonzero().flatten().tolist()]
    kept.sort()
    original = copy.deepcopy(state.grids)

    def demote(n: int) -> None:
        state.grids = copy.deepcopy(original)
        for _, i, t in kept[:n]:
            state.grids[i].keep.view(-1)[t] = False
            state.grids[i].vq.view(-1)[t] = True
        for code, was, grid in zip(state.grids, original, field.feature_grids()):
            vq, was_vq = code.vq.flatten().to(device), was.vq.flatten().to(device)
            moved = vq & was.keep.flatten().to(device)
            for kind, book in code.codebooks.items():
                flat = rows(grid.tensors[kind].detach())
                full = torch.full((flat.shape[0],), -1, dtype=torch.long, device=device)
                full[was_vq] = was.indices[kind]
                full[moved] = assign(flat[moved], book)
                code.indices[kind] = full[vq]

    low, high = 0, len(kept)
    while low < high:  # smallest n that fits
        mid = (low + high) // 2
        demote(mid)
        if len(encode(state)) <= budget:
            high = mid
        else:
            low = mid + 1
    demote(low)
    state.apply(field)
    data = encode(state)
    if len(data) > budget:
        raise VqrfError(None, f"cannot fit {budget:,} bytes even with no kept sites ({len(data):,} bytes)")
    return data, low
