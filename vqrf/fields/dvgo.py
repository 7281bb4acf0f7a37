"""DVGO (Direct Voxel Grid Optimization, method-spec §5.1): dense voxel grids of density and features.

A density grid [X, Y, Z, 1] and a feature grid k0 [X, Y, Z, C], read by trilinear interpolation
(``align_corners=True``: the grid points span the box corner to corner). Colour is either ``sigmoid(k0)`` with
C = 3 (the coarse stage) or a small MLP on [k0, view direction, its sine/cosine encoding] (DVGO's ``rgbnet_direct``).
Density is ``softplus(grid + shift)``, and a step of world length s has alpha ``1 - exp(-sigma * s / v0)``, v0
being the voxel size of the base grid: the shift makes an untrained voxel's alpha ``alpha_init`` per base voxel.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqrf.config import DVGOConfig
from vqrf.fields.base import FeatureGrid, Field, cpu_has_bf16, positional_encoding
from vqrf.fields.grid_kernel import grid_features, splat_trilinear

__all__ = ["DVGO"]


def _resample(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """[X, Y, Z, C] -> [*size, C], trilinear with the corners fixed (align_corners=True)."""
    volume = grid.permute(3, 0, 1, 2)[None]
    volume = F.interpolate(volume, size=tuple(size), mode="trilinear", align_corners=True)
    return volume[0].permute(1, 2, 3, 0).contiguous()


def _tv(grid: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbours along each axis of [X, Y, Z, C], summed over the axes."""
    return sum((grid.narrow(d, 1, grid.shape[d] - 1) - grid.narrow(d, 0, grid.shape[d] - 1)).pow(2).mean()
               for d in range(3) if grid.shape[d] > 1)


class DVGO(Field):
    """The dense DirectVoxGO model.

    Args:
        aabb: [2, 3] box the grid spans.
        grid: [X, Y, Z] grid points.
        cfg: architecture.
        base_voxels: voxel count whose voxel size is the unit of the alpha computation (DVGO's ``num_voxels_base``:
            the final grid of the schedule); default the grid's own.
    """

    field_type = "dvgo"
    supports_ndc = False  # the dense model of the reference; DVGO's MPI variant for LLFF is not built

    def __init__(self, aabb: torch.Tensor, grid: Sequence[int], cfg: DVGOConfig, base_voxels: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("aabb", aabb.detach().clone().float())
        base = base_voxels or math.prod(grid)
        self.register_buffer("voxel_size_base", ((self.aabb[1] - self.aabb[0]).prod() / base) ** (1.0 / 3.0))
        self.register_buffer("act_shift", torch.tensor(math.log(1.0 / (1.0 - cfg.alpha_init) - 1.0)))
        self.density_grid = nn.Parameter(torch.zeros(*grid, 1))
        self.k0 = nn.Parameter(torch.zeros(*grid, cfg.k0_dim))
        if cfg.rgbnet:
            width = cfg.rgbnet_width
            self.rgbnet = nn.Sequential(
                nn.Linear(cfg.k0_dim + 3 + 6 * cfg.view_pe, width),
                nn.ReLU(inplace=True),
                nn.Linear(width, width),
                nn.ReLU(inplace=True),
                nn.Linear(width, 3),
            )
            nn.init.constant_(self.rgbnet[-1].bias, 0.0)
        else:
            self.rgbnet = None

    # ---- geometry -------------------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> list[int]:
        return list(self.density_grid.shape[:3])

    @property
    def distance_scale(self) -> float:
        return float(1.0 / self.voxel_size_base)

    # ---- queries --------------------------------------------------------------------------------------------------
    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        raw = grid_features(self.density_grid, self.normalize(xyz))[:, 0]
        return F.softplus(raw + self.act_shift)

    def color(self, xyz: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        k0 = grid_features(self.k0, self.normalize(xyz))
        if self.rgbnet is None:
            return torch.sigmoid(k0)
        bf16 = self.cfg.bf16_mlp and xyz.device.type == "cpu" and cpu_has_bf16()
        with torch.autocast(xyz.device.type, dtype=torch.bfloat16, enabled=bf16):
            inputs = torch.cat([k0, viewdirs, positional_encoding(viewdirs, self.cfg.view_pe)], dim=-1)
            logits = self.rgbnet(inputs)
        return torch.sigmoid(logits.float())

    # ---- training -------------------------------------------------------------------------------------------------
    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.density_grid, self.k0]

    def network_parameters(self) -> list[nn.Parameter]:
        return list(self.rgbnet.parameters()) if self.rgbnet is not None else []

    def regularisation(self, l1: float, tv_density: float, tv_app: float) -> torch.Tensor | None:
        terms = [w * f() for w, f in ((l1, lambda: self.density_grid.abs().mean()),
                                      (tv_density, lambda: _tv(self.density_grid)), (tv_app, lambda: _tv(self.k0)))
                 if w > 0]
        return sum(terms) if terms else None

    @torch.no_grad()
    def upsample(self, grid: Sequence[int]) -> None:
        self.density_grid = nn.Parameter(_resample(self.density_grid, grid))
        self.k0 = nn.Parameter(_resample(self.k0, grid))
        self.act_shift -= self.cfg.shift_after_upsample

    @torch.no_grad()
    def shrink(self, new_aabb: torch.Tensor) -> None:
        lo, hi = self.crop_window(new_aabb)
        window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.density_grid = nn.Parameter(self.density_grid[window].contiguous())
        self.k0 = nn.Parameter(self.k0[window].contiguous())

    # ---- compression ----------------------------------------------------------------------------------------------
    def feature_grids(self) -> list[FeatureGrid]:
        """One grid of voxels: k0 is vector-quantised, density only pruned (method-spec §5.2)."""
        return [FeatureGrid("voxels", tuple(self.grid_size), {"density": self.density_grid, "k0": self.k0}, ("k0",))]

    def splat_importance(self, xyz: torch.Tensor, weights: torch.Tensor, maps: list[torch.Tensor]) -> None:
        maps[0] += splat_trilinear(tuple(self.grid_size), self.normalize(xyz), weights).to(maps[0].dtype)

    def parameter_roles(self) -> dict[str, str]:
        return {name: "network" for name, _ in self.named_parameters() if name.startswith("rgbnet.")}

    def extra_repr(self) -> str:
        return f"grid={self.grid_size}, k0={self.cfg.k0_dim}, aabb={[round(v, 3) for v in self.aabb.flatten().tolist()]}"
