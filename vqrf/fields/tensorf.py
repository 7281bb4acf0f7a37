"""TensoRF-VM: a radiance field as three plane/line tensor pairs plus a small shading MLP.

Parameters and point queries only; sampling and compositing live in :mod:`vqrf.render`, optimisation in
:mod:`vqrf.train`. Planes are stored channels-last, ``[H, W, C]``, which is what the fused CPU kernel reads.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqrf.config import FieldConfig
from vqrf.fields.base import FeatureGrid, Field, cpu_has_bf16, positional_encoding
from vqrf.fields.splat import splat_bilinear
from vqrf.fields.vm_kernel import MAT_MODE, VEC_MODE, vm_features

__all__ = ["TensorVM", "grid_schedule", "voxels_to_grid"]


def voxels_to_grid(n_voxels: int, aabb: torch.Tensor) -> list[int]:
    """Grid size [X, Y, Z] with about ``n_voxels`` cubic voxels filling ``aabb`` ([2, 3])."""
    extent = aabb[1] - aabb[0]
    voxel = (extent.prod() / n_voxels) ** (1.0 / 3.0)
    return [int(v) for v in (extent / voxel).long().tolist()]


def _tensor_pairs(grid: Sequence[int], comps: Sequence[int], scale: float) -> tuple[nn.ParameterList, nn.ParameterList]:
    planes, lines = [], []
    for (a, b), c, n in zip(MAT_MODE, VEC_MODE, comps):
        planes.append(nn.Parameter(scale * torch.randn(grid[b], grid[a], n)))
        lines.append(nn.Parameter(scale * torch.randn(grid[c], n)))
    return nn.ParameterList(planes), nn.ParameterList(lines)


class TensorVM(Field):
    """The TensoRF-VM field of method-spec §1.1.

    Args:
        aabb: [2, 3] box the grid spans (world units, or NDC for forward-facing scenes).
        grid: [X, Y, Z] grid size.
        cfg: architecture.
    """

    field_type = "tensorf"

    def __init__(self, aabb: torch.Tensor, grid: Sequence[int], cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.density_planes, self.density_lines = _tensor_pairs(grid, cfg.density_comps, 0.1)
        self.app_planes, self.app_lines = _tensor_pairs(grid, cfg.app_comps, 0.1)
        self.basis = nn.Linear(sum(cfg.app_comps), cfg.app_dim, bias=False)
        in_dim = 3 + cfg.app_dim + 2 * cfg.fea_pe * cfg.app_dim + 2 * cfg.view_pe * 3
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, cfg.mlp_width),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.mlp_width, cfg.mlp_width),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.mlp_width, 3),
        )
        nn.init.constant_(self.mlp[-1].bias, 0.0)

    # ---- geometry of the grid -------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> list[int]:
        """[X, Y, Z]."""
        sizes = [0, 0, 0]
        for line, c in zip(self.density_lines, VEC_MODE):
            sizes[c] = line.shape[0]
        return sizes

    @property
    def distance_scale(self) -> float:
        return self.cfg.distance_scale

    @property
    def mask_distance_scale(self) -> float:
        return 1.0  # the reference's alpha mask leaves the distance scale out: deliberately generous

    # ---- queries --------------------------------------------------------------------------------------------------
    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        """Volume density sigma >= 0 at world points [N, 3] -> [N]."""
        feature = vm_features(list(self.density_planes), list(self.density_lines), self.normalize(xyz), reduce=True)
        if self.cfg.density_act == "relu":
            return F.relu(feature)
        return F.softplus(feature + self.cfg.density_shift)

    def color(self, xyz: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] at world points [N, 3] seen along unit directions [N, 3] -> [N, 3]."""
        products = vm_features(list(self.app_planes), list(self.app_lines), self.normalize(xyz), reduce=False)
        with torch.autocast(xyz.device.type, dtype=torch.bfloat16, enabled=self._use_bf16(xyz.device)):
            feature = self.basis(products)
            parts = [feature, viewdirs.to(feature.dtype)]
            if self.cfg.fea_pe:
                parts.append(positional_encoding(feature, self.cfg.fea_pe))
            if self.cfg.view_pe:
                parts.append(positional_encoding(viewdirs, self.cfg.view_pe).to(feature.dtype))
            logits = self.mlp(torch.cat(parts, dim=-1))
        return torch.sigmoid(logits.float())

    def _use_bf16(self, device: torch.device) -> bool:
        return self.cfg.bf16_mlp and device.type == "cpu" and cpu_has_bf16()

    # ---- parameter groups and regularisers ------------------------------------------------------------------------
    def grid_parameters(self) -> list[nn.Parameter]:
        return [*self.density_planes, *self.density_lines, *self.app_planes, *self.app_lines]

    def network_parameters(self) -> list[nn.Parameter]:
        return [*self.basis.parameters(), *self.mlp.parameters()]

    def regularisation(self, l1: float, tv_density: float, tv_app: float) -> torch.Tensor | None:
        terms = [w * f() for w, f in ((l1, self.density_l1), (tv_density, self.density_tv), (tv_app, self.app_tv))
                 if w > 0]
        return sum(terms) if terms else None

    def density_l1(self) -> torch.Tensor:
        """Sum over pairs of mean |plane| + mean |line| of the density tensor."""
        return sum(p.abs().mean() + l.abs().mean() for p, l in zip(self.density_planes, self.density_lines))

    def density_tv(self) -> torch.Tensor:
        return sum(PlaneTV.apply(p) for p in self.density_planes) * 1e-2

    def app_tv(self) -> torch.Tensor:
        return sum(PlaneTV.apply(p) for p in self.app_planes) * 1e-2

    # ---- resolution changes ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def upsample(self, grid: Sequence[int]) -> None:
        """Resample every plane and line to grid [X, Y, Z] (bilinear, align_corners=True)."""
        for planes, lines in ((self.density_planes, self.density_lines), (self.app_planes, self.app_lines)):
            for i, ((a, b), c) in enumerate(zip(MAT_MODE, VEC_MODE)):
                plane = planes[i].permute(2, 0, 1)[None]
                plane = F.interpolate(plane, size=(grid[b], grid[a]), mode="bilinear", align_corners=True)
                planes[i] = nn.Parameter(plane[0].permute(1, 2, 0).contiguous())
                line = lines[i].t()[None, :, :, None]
                line = F.interpolate(line, size=(grid[c], 1), mode="bilinear", align_corners=True)
                lines[i] = nn.Parameter(line[0, :, :, 0].t().contiguous())

    @torch.no_grad()
    def shrink(self, new_aabb: torch.Tensor) -> None:
        """Crop the grid to the grid points covering ``new_aabb`` ([2, 3]); the box snaps to those grid points."""
        lo, hi = self.crop_window(new_aabb)
        for planes, lines in ((self.density_planes, self.density_lines), (self.app_planes, self.app_lines)):
            for i, ((a, b), c) in enumerate(zip(MAT_MODE, VEC_MODE)):
                planes[i] = nn.Parameter(planes[i][lo[b] : hi[b], lo[a] : hi[a]].contiguous())
                lines[i] = nn.Parameter(lines[i][lo[c] : hi[c]].contiguous())

    # ---- compression ----------------------------------------------------------------------------------------------
    def feature_grids(self) -> list[FeatureGrid]:
        """Plane position i (xy, xz, yz): its density and appearance planes share one texel grid and one split."""
        return [FeatureGrid(f"plane{i}", tuple(d.shape[:2]), {"density": d, "app": a}, ("density", "app"))
                for i, (d, a) in enumerate(zip(self.density_planes, self.app_planes))]

    def splat_importance(self, xyz: torch.Tensor, weights: torch.Tensor, maps: list[torch.Tensor]) -> None:
        coords = self.normalize(xyz).double()
        for target, (a, b) in zip(maps, MAT_MODE):
            splat_bilinear(target, coords[:, a], coords[:, b], weights.double())

    def parameter_roles(self) -> dict[str, str]:
        roles = {f"{kind}_lines.{i}": "line" for kind in ("density", "app") for i in range(3)}
        roles.update({name: "network" for name, _ in self.named_parameters() if name.startswith(("basis.", "mlp."))})
        return roles

    def extra_repr(self) -> str:
        return f"grid={self.grid_size}, aabb={[round(v, 3) for v in self.aabb.flatten().tolist()]}"


class PlaneTV(torch.autograd.Function):
    """2 * (mean squared difference along H + along W) of one [H, W, C] plane (TensoRF's TVLoss), with its gradient
    written out: half the time of autograd's chain of slices and temporaries, which on LLFF (TV on every plane, every
    step) took 9% of a training step."""

    @staticmethod
    def forward(ctx, plane: torch.Tensor) -> torch.Tensor:
        dh = (plane[1:] - plane[:-1]).reshape(-1)
        dw = (plane[:, 1:] - plane[:, :-1]).reshape(-1)
        ctx.save_for_backward(dh, dw)
        ctx.shape = plane.shape
        ctx.scales = (4.0 / max(dh.numel(), 1), 4.0 / max(dw.numel(), 1))  # d/dx of 2 * mean(x^2)
        return 0.5 * (ctx.scales[0] * torch.dot(dh, dh) + ctx.scales[1] * torch.dot(dw, dw))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        dh, dw = ctx.saved_tensors
        h, w, c = ctx.shape
        grad = dh.new_zeros(ctx.shape)
        gh = (dh * (ctx.scales[0] * grad_out)).reshape(h - 1, w, c)
        grad[1:] += gh
        grad[:-1] -= gh
        gw = (dw * (ctx.scales[1] * grad_out)).reshape(h, w - 1, c)
        grad[:, 1:] += gw
        grad[:, :-1] -= gw
        return grad


def grid_schedule(n_init: int, n_final: int, n_steps: int) -> list[int]:
    """Voxel counts after each of ``n_steps`` upsamplings, log-linear from n_init to n_final."""
    if n_steps == 0:
        return []
    logs = torch.linspace(math.log(n_init), math.log(n_final), n_steps + 1)
    return [int(round(math.exp(v))) for v in logs[1:].tolist()]
