"""The vector-quantised state of a field's feature grids, and the operations that keep a field tied to it.

Each feature grid (:class:`~vqrf.fields.base.FeatureGrid`: a TensoRF plane position, DVGO's voxel grid) has one
split of its sites into pruned, vector-quantised and kept ones (method-spec §2.3, §5.2). Each of its quantised kinds
then has its own codebook and its own code per vq site; its other kinds (DVGO's density) keep their own values at every
unpruned site. Pruned sites are zero and own no code; kept sites keep their own features.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Callable

import torch
from tqdm import tqdm

from vqrf.compress.codebook import fit_codebook, weighted_code_means
from vqrf.compress.split import cdf_split
from vqrf.fields.base import Field

__all__ = ["GridCode", "VQState", "build_vq", "describe_tiers", "rows"]


def rows(tensor: torch.Tensor) -> torch.Tensor:
    """A feature tensor [*sites, C] as [n_sites, C] (a view)."""
    return tensor.view(-1, tensor.shape[-1])


@dataclass
class GridCode:
    """One feature grid: masks [*shape] shared by its kinds; per quantised kind a codebook [K, C] and codes [n_vq]
    (raster order of the vq sites)."""

    keep: torch.Tensor
    vq: torch.Tensor
    codebooks: dict[str, torch.Tensor] = dc_field(default_factory=dict)
    indices: dict[str, torch.Tensor] = dc_field(default_factory=dict)

    @property
    def non_pruned(self) -> torch.Tensor:
        return self.keep | self.vq

    def counts(self) -> dict[str, int]:
        return {"keep": int(self.keep.sum()), "vq": int(self.vq.sum()),
                "pruned": int((~self.non_pruned).sum())}


@dataclass
class VQState:
    grids: list[GridCode]
    """One per feature grid of the field, in its order."""
    weights: list[torch.Tensor]
    """Per feature grid, the importance [*shape] used to weight code means."""

    @torch.no_grad()
    def apply(self, field: Field) -> None:
        """Write the state into ``field``: codes at vq sites, zero at pruned ones, everything else unchanged."""
        for code, grid in zip(self.grids, field.feature_grids()):
            for kind, tensor in grid.tensors.items():
                flat = rows(tensor.data)
                flat[~code.non_pruned.flatten().to(flat.device)] = 0.0
                if kind in code.codebooks:
                    flat[code.vq.flatten().to(flat.device)] = code.codebooks[kind][code.indices[kind]].to(flat)

    @torch.no_grad()
    def sync(self, field: Field) -> None:
        """Re-tie each code to the importance-weighted mean of its sites in ``field``, then write it back."""
        device = field.aabb.device
        for code, weights, grid in zip(self.grids, self.weights, field.feature_grids()):
            vq = code.vq.flatten()
            w = weights.flatten()[vq].to(device).float()
            vq = vq.to(device)
            for kind, book in code.codebooks.items():
                members = rows(grid.tensors[kind].data)[vq]
                means, total = weighted_code_means(members, code.indices[kind], w, book.shape[0])
                code.codebooks[kind] = torch.where(total[:, None] > 0, means, book.to(means))
        self.apply(field)

    def prune_gradients(self, field: Field) -> list:
        """Hooks that zero the gradient of pruned sites, so with Adam they stay exactly zero; returns the handles."""
        handles = []
        for code, grid in zip(self.grids, field.feature_grids()):
            mask = code.non_pruned.to(field.aabb.device)[..., None].float()
            for tensor in grid.tensors.values():
                handles.append(tensor.register_hook(lambda g, m=mask: g * m))
        return handles

    def counts(self) -> dict[str, int]:
        out = {"keep": 0, "vq": 0, "pruned": 0}
        for code in self.grids:
            for k, v in code.counts().items():
                out[k] += v
        return out


def describe_tiers(counts: dict[str, int]) -> str:
    """One line for ``VQState.counts()``: how many sites are kept, vector-quantised and pruned."""
    return f"{counts['keep']:,} kept, {counts['vq']:,} vector-quantised, {counts['pruned']:,} pruned"


def build_vq(
    field: Field,
    importance: list[torch.Tensor],
    keep: float,
    non_prune: float,
    codebook_size: Callable[[int], int],
    seed: int = 0,
    kmeans_iters: int = 100,
    progress: bool = True,
) -> VQState:
    """Split every feature grid by importance and fit a codebook per quantised kind (weighted k-means, at most
    ``kmeans_iters`` Lloyd iterations) on its vq sites. Masks, codes and weights live on the field's device.

    ``codebook_size(n_vq)`` gives the codes per codebook for a grid with ``n_vq`` vq sites.
    """
    device = field.aabb.device
    grids = field.feature_grids()
    codes = []
    bar = tqdm(total=sum(len(g.quantised) for g in grids), disable=not progress, desc="codebooks", unit="codebook",
               dynamic_ncols=True)
    for i, (imp, grid) in enumerate(zip(importance, grids)):
        imp = imp.cpu()
        keep_mask, vq_mask = cdf_split(imp, keep, non_prune)
        code = GridCode(keep_mask.to(device), vq_mask.to(device))
        w = imp.flatten()[vq_mask.flatten()]
        size = codebook_size(int(vq_mask.sum()))
        for kind in grid.quantised:
            members = rows(grid.tensors[kind].detach().cpu())[vq_mask.flatten()]
            book, labels = fit_codebook(members, w, size, seed=seed + i, max_iter=kmeans_iters)
            code.codebooks[kind], code.indices[kind] = book.to(device), labels.to(device)
            bar.update(1)
        codes.append(code)
    bar.close()
    return VQState(codes, [m.to(device) for m in importance])
