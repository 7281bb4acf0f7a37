"""The one small interface every field type offers; rendering, training, compression and the codec use only this.

A field is a box ``aabb`` with feature grids inside it and a network on top. Rendering asks it for density and
colour at points; training for its parameter groups and regularisers, and to change resolution; compression for its
*feature grids*: sites (plane texels for TensoRF, voxels for DVGO) that share one importance map and one
prune / vector-quantise / keep split, each carrying one or more feature tensors ``[*sites, C]``.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

__all__ = ["FeatureGrid", "Field", "cpu_has_bf16", "positional_encoding"]


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Native bfloat16 matmuls (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """[N, D] -> [N, 2 * n_freqs * D]: sin(x 2^k) for all k, then cos(x 2^k)."""
    freqs = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)
    scaled = (x[..., None] * freqs).flatten(-2)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


@dataclass(frozen=True)
class FeatureGrid:
    """Sites sharing one importance map and one split, and the feature tensors that live on them.

    ``tensors[kind]`` is a parameter ``[*shape, C_kind]``. The kinds in ``quantised`` are vector-quantised (a codebook
    per kind); the others are only pruned, their unpruned sites stored as they are (int8 in a file).
    """

    name: str
    shape: tuple[int, ...]
    tensors: dict[str, nn.Parameter]
    quantised: tuple[str, ...]


class Field(nn.Module, metaclass=abc.ABCMeta):
    """Base class of field types. Subclasses hold a ``aabb`` buffer [2, 3] and implement the abstract methods."""

    field_type: ClassVar[str]
    supports_ndc: ClassVar[bool] = True
    """Whether the field can be trained on forward-facing scenes in NDC space."""
    aabb: torch.Tensor

    # ---- geometry -------------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def grid_size(self) -> list[int]:
        """[X, Y, Z] grid points along each axis."""
        ...

    def voxel_size(self) -> torch.Tensor:
        """[3] spacing between grid points."""
        grid = torch.tensor(self.grid_size, dtype=torch.float32, device=self.aabb.device)
        return (self.aabb[1] - self.aabb[0]) / (grid - 1)

    def step_size(self, step_ratio: float) -> float:
        """Ray-marching step: ``step_ratio`` times the mean voxel size."""
        return float(self.voxel_size().mean()) * step_ratio

    def normalize(self, xyz: torch.Tensor) -> torch.Tensor:
        """[N, 3] world points -> [N, 3] in [-1, 1] over the box."""
        return (xyz - self.aabb[0]) * (2.0 / (self.aabb[1] - self.aabb[0])) - 1.0

    def crop_window(self, new_aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid-point index range [lo, hi) per axis ([3] int64 each) covering ``new_aabb`` [2, 3], and set ``aabb`` to
        the box those grid points span (for :meth:`shrink`, which crops every grid to it)."""
        grid = torch.tensor(self.grid_size, device=self.aabb.device)
        units = self.voxel_size()
        # Outward to the enclosing grid points (a rounding error's slack, so a box already on grid points stays put).
        lo = ((new_aabb[0] - self.aabb[0]) / units + 1e-4).floor().long().clamp(min=0)
        hi = torch.minimum(((new_aabb[1] - self.aabb[0]) / units - 1e-4).ceil().long() + 1, grid)
        old = self.aabb.clone()
        self.aabb[0] = old[0] + lo.float() * units
        self.aabb[1] = old[0] + (hi - 1).float() * units
        return lo, hi

    @property
    @abc.abstractmethod
    def distance_scale(self) -> float:
        """Alpha of a step of length s is 1 - exp(-sigma * s * distance_scale)."""
        ...

    @property
    def mask_distance_scale(self) -> float:
        """The same factor for the occupancy mask's alpha test (TensoRF's reference leaves it out: a generous mask)."""
        return self.distance_scale

    # ---- queries --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """Volume density sigma >= 0 at world points [N, 3] -> [N]."""
        ...

    @abc.abstractmethod
    def color(self, xyz: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] at world points [N, 3] seen along unit directions [N, 3] -> [N, 3]."""
        ...

    # ---- training -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def grid_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at the grid learning rate."""
        ...

    @abc.abstractmethod
    def network_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at the network learning rate."""
        ...

    @abc.abstractmethod
    def regularisation(self, l1: float, tv_density: float, tv_app: float) -> torch.Tensor | None:
        """Weighted parameter regularisers (sparsity of density, total variation); None when all weights are 0."""
        ...

    @abc.abstractmethod
    def upsample(self, grid: Sequence[int]) -> None:
        """Resample every feature grid to ``grid`` [X, Y, Z] grid points."""
        ...

    @abc.abstractmethod
    def shrink(self, new_aabb: torch.Tensor) -> None:
        """Crop to the grid points covering ``new_aabb`` [2, 3] (the box snaps to them)."""
        ...

    # ---- compression ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def feature_grids(self) -> list[FeatureGrid]:
        """The sites compression splits, in a fixed order (the current parameters: call again after a change)."""
        ...

    @abc.abstractmethod
    def splat_importance(self, xyz: torch.Tensor, weights: torch.Tensor, maps: list[torch.Tensor]) -> None:
        """Add each sample's weight [M] at world points [M, 3] to ``maps`` (one float64 tensor per feature grid,
        of its ``shape``), spread over the sites exactly as a feature lookup at that point reads them."""
        ...

    @abc.abstractmethod
    def parameter_roles(self) -> dict[str, str]:
        """State-dict names of the parameters outside the feature grids -> 'line' or 'network' (storage class)."""
        ...

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
