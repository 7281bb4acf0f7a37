"""The vector-quantised state of a TensoRF-VM field's planes, and the operations that keep a field tied to it.

Plane position i (xy, xz, yz) has one texel grid shared by its density and appearance planes, and one split of it
into pruned, vector-quantised and kept texels (method-spec §2.3). Each of the 6 planes then has its own codebook and
its own code per vq texel. Pruned texels are zero and own no code; kept texels keep their own features.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Callable

import torch
from tqdm import tqdm

from vqrf.compress.codebook import fit_codebook, weighted_code_means
from vqrf.compress.split import cdf_split
from vqrf.fields.tensorf import TensorVM

__all__ = ["KINDS", "PlaneCode", "VQState", "build_vq", "describe_tiers", "plane_tensor"]

KINDS = ("density", "app")


def plane_tensor(field: TensorVM, kind: str, i: int) -> torch.nn.Parameter:
    """The [H, W, C] parameter of ``kind`` ('density' or 'app') at plane position ``i``."""
    return (field.density_planes if kind == "density" else field.app_planes)[i]


@dataclass
class PlaneCode:
    """Plane position i: masks [H, W] shared by both kinds; per kind a codebook [K, C] and codes [n_vq] (raster order)."""

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
    planes: list[PlaneCode]
    weights: list[torch.Tensor]
    """Per plane position, the importance [H, W] used to weight code means."""

    @torch.no_grad()
    def apply(self, field: TensorVM) -> None:
        """Write the state into ``field``'s planes: codes at vq texels, zero at pruned ones, kept texels unchanged."""
        for i, code in enumerate(self.planes):
            for kind in KINDS:
                plane = plane_tensor(field, kind, i)
                flat = plane.data.view(-1, plane.shape[-1])
                flat[~code.non_pruned.flatten().to(flat.device)] = 0.0
                flat[code.vq.flatten().to(flat.device)] = code.codebooks[kind][code.indices[kind]].to(flat)

    @torch.no_grad()
    def sync(self, field: TensorVM) -> None:
        """Re-tie each code to the importance-weighted mean of its texels in ``field``, then write it back."""
        for i, code in enumerate(self.planes):
            vq = code.vq.flatten()
            w = self.weights[i].flatten()[vq].to(field.aabb.device).float()
            vq = vq.to(field.aabb.device)
            for kind in KINDS:
                plane = plane_tensor(field, kind, i)
                members = plane.data.view(-1, plane.shape[-1])[vq]
                book = code.codebooks[kind]
                means, total = weighted_code_means(members, code.indices[kind], w, book.shape[0])
                code.codebooks[kind] = torch.where(total[:, None] > 0, means, book.to(means))
        self.apply(field)

    def prune_gradients(self, field: TensorVM) -> list:
        """Hooks that zero the gradient of pruned texels, so with Adam they stay exactly zero; returns the handles."""
        handles = []
        for i, code in enumerate(self.planes):
            mask = code.non_pruned.to(field.aabb.device)[..., None].float()
            for kind in KINDS:
                handles.append(plane_tensor(field, kind, i).register_hook(lambda g, m=mask: g * m))
        return handles

    def counts(self) -> dict[str, int]:
        out = {"keep": 0, "vq": 0, "pruned": 0}
        for code in self.planes:
            for k, v in code.counts().items():
                out[k] += v
        return out


def describe_tiers(counts: dict[str, int]) -> str:
    """One line for ``VQState.counts()``: how many texels are kept, vector-quantised and pruned."""
    return f"{counts['keep']:,} kept, {counts['vq']:,} vector-quantised, {counts['pruned']:,} pruned"


def build_vq(
    field: TensorVM,
    importance: list[torch.Tensor],
    keep: float,
    non_prune: float,
    codebook_size: Callable[[int], dict[str, int]],
    seed: int = 0,
    kmeans_iters: int = 100,
    progress: bool = True,
) -> VQState:
    """Split every plane position by importance and fit its 2 codebooks (weighted k-means, at most ``kmeans_iters``
    Lloyd iterations) on the vq texels. Masks, codes and weights live on the field's device.

    ``codebook_size(n_vq)`` gives the codes per kind for a plane position with ``n_vq`` vq texels.
    """
    device = field.aabb.device
    planes = []
    bar = tqdm(total=3 * len(KINDS), disable=not progress, desc="codebooks", unit="plane", dynamic_ncols=True)
    for i, imp in enumerate(importance):
        imp = imp.cpu()
        keep_mask, vq_mask = cdf_split(imp, keep, non_prune)
        code = PlaneCode(keep_mask.to(device), vq_mask.to(device))
        w = imp.flatten()[vq_mask.flatten()]
        sizes = codebook_size(int(vq_mask.sum()))
        for kind in KINDS:
            plane = plane_tensor(field, kind, i).detach().cpu()
            members = plane.reshape(-1, plane.shape[-1])[vq_mask.flatten()]
            book, labels = fit_codebook(members, w, sizes[kind], seed=seed + i, max_iter=kmeans_iters)
            code.codebooks[kind], code.indices[kind] = book.to(device), labels.to(device)
            bar.update(1)
        planes.append(code)
    bar.close()
    return VQState(planes, [m.to(device) for m in importance])
