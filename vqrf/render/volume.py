"""Volume rendering of a field along rays: one code path for training, evaluation, videos and the viewer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vqrf.fields.base import Field
from vqrf.render.march import count_samples, march, ray_span
from vqrf.render.occupancy import OccupancyGrid

__all__ = ["RenderSettings", "Samples", "RenderCancelled", "hits_occupied", "sample_weights", "render_rays",
           "render_image"]


class RenderCancelled(Exception):
    """A render given up part-way because its caller no longer wants the result."""


@dataclass
class RenderSettings:
    """How rays are sampled and composited for one field."""

    step: float
    """Sample spacing along unit-direction rays (world units)."""
    max_samples: int
    """Samples per ray before skipping; for NDC rays the [near, far] range is cut into this many steps."""
    near: float
    far: float
    ndc: bool = False
    white_bg: bool = True
    weight_thres: float = 1e-4
    contract: bool = False
    """Unbounded scene: the field lives in contracted space and rays march in the contraction's parameter."""

    @staticmethod
    def for_field(field: Field, near: float, far: float, ndc: bool, white_bg: bool, step_ratio: float = 0.5,
                  weight_thres: float = 1e-4, contract: bool = False,
                  ndc_depth_steps: bool = False) -> "RenderSettings":
        """Settings for ``field``; ``ndc_depth_steps``: see :attr:`vqrf.config.TrainConfig.ndc_depth_steps`."""
        step = field.step_size(step_ratio)
        if ndc and ndc_depth_steps:
            # An NDC ray's z grows by 2 per unit t (vqrf.render.rays.ndc_rays): a step of step_ratio z-voxels.
            samples = int(2.0 * (far - near) / (float(field.voxel_size()[2]) * step_ratio)) + 1
        else:
            samples = int(float((field.aabb[1] - field.aabb[0]).norm()) / step) + 1
        return RenderSettings(step, samples, near, far, ndc, white_bg, weight_thres, contract)

    def span(self, field: Field, origins: torch.Tensor, directions: torch.Tensor):
        """:func:`vqrf.render.march.ray_span` of rays [R, 3] through ``field`` under these settings."""
        return ray_span(origins, directions, field.aabb, self.near, self.far, self.contract)


def hits_occupied(
    field: Field, occupancy: OccupancyGrid, origins: torch.Tensor, directions: torch.Tensor, settings: RenderSettings
) -> torch.Tensor:
    """[R] bool: which rays [R, 3] pass through at least one occupied cell (the others render as background)."""
    start, end, inner = settings.span(field, origins, directions)
    return count_samples(origins, directions, start, end, settings.step, occupancy, settings.max_samples, inner) > 0


@dataclass
class Samples:
    """The samples of a batch of rays that fall in occupied cells, with their compositing weights."""

    xyz: torch.Tensor  # [M, 3] positions (contracted in unbounded scenes)
    t: torch.Tensor  # [M] distances along the (unnormalised) ray directions
    ray_ids: torch.Tensor  # [M] which ray each sample belongs to, grouped by ray
    weights: torch.Tensor  # [M] alpha * transmittance


def sample_weights(
    field: Field,
    occupancy: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    settings: RenderSettings,
    jitter: bool = False,
) -> Samples:
    """March rays [R, 3] through the occupied cells and composite density only: weight w = alpha * T per sample."""
    n_rays = origins.shape[0]
    device = origins.device
    norms = directions.norm(dim=-1)
    t_start, t_end, inner = settings.span(field, origins, directions)
    step = (settings.far - settings.near) / settings.max_samples if settings.ndc else settings.step
    offsets = torch.rand(n_rays, device=device) if jitter else torch.zeros(n_rays, device=device)
    xyz, t, ray_ids, counts = march(origins, directions, t_start, t_end, step, offsets, occupancy, settings.max_samples,
                                    inner)
    if xyz.shape[0] == 0:
        return Samples(xyz, t, ray_ids, t.new_zeros(0))
    # Optical depth of each sample, laid out densely [R, S] so transmittance is a per-row cumulative sum.
    first = torch.cumsum(counts, 0) - counts
    column = torch.arange(xyz.shape[0], device=device) - first[ray_ids]
    sigma = field.density(xyz)
    tau = sigma * (step * field.distance_scale) * norms[ray_ids]
    dense = torch.zeros(n_rays, int(counts.max()), device=device).index_put((ray_ids, column), tau)
    transmittance = torch.exp(-(torch.cumsum(dense, dim=1) - dense))[ray_ids, column]
    return Samples(xyz, t, ray_ids, (1.0 - torch.exp(-tau)) * transmittance)


def render_rays(
    field: Field,
    occupancy: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    settings: RenderSettings,
    jitter: bool = False,
    white_bg: bool | None = None,
    per_sample: bool = False,
) -> dict[str, torch.Tensor]:
    """Render rays [R, 3] through ``field``.

    Density is evaluated only at samples in occupied cells; colour only where the sample's weight exceeds
    ``settings.weight_thres``.

    Args:
        jitter: one random offset per ray (training).
        white_bg: composite onto white; defaults to ``settings.white_bg``.
        per_sample: also return the shaded samples' ``sample_rgb`` [S, 3], ``sample_weights`` [S] and
            ``sample_ray_ids`` [S] (for per-sample losses).

    Returns:
        ``rgb`` [R, 3] in [0, 1], ``depth`` [R], ``acc`` [R] (opacity), ``n_samples`` (scalar, density queries),
        ``foreground`` [R, 3] (the colour before any background is composited).
    """
    n_rays = origins.shape[0]
    device = origins.device
    samples = sample_weights(field, occupancy, origins, directions, settings, jitter)
    xyz, ray_ids, weights = samples.xyz, samples.ray_ids, samples.weights
    viewdirs = directions / directions.norm(dim=-1, keepdim=True)

    rgb = torch.zeros(n_rays, 3, device=device)
    depth = torch.zeros(n_rays, device=device)
    acc = torch.zeros(n_rays, device=device)
    colors = torch.zeros(0, 3, device=device)
    shaded_ids, shaded_weights = torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    if xyz.shape[0] > 0:
        shade = (weights > settings.weight_thres).nonzero().squeeze(1)  # once: boolean indexing repeats it
        shaded_ids, shaded_weights = ray_ids[shade], weights[shade]
        acc = acc.index_add(0, ray_ids, weights)
        colors = field.color(xyz[shade], viewdirs[shaded_ids])
        rgb = rgb.index_add(0, shaded_ids, shaded_weights[:, None] * colors)
        # The few unshaded samples' weight goes to the shaded ones in proportion (instead of counting as black),
        # so a higher threshold costs little quality; at threshold 0 this is exactly the usual sum.
        shaded_mass = torch.zeros_like(acc).index_add(0, shaded_ids, shaded_weights)
        rgb = rgb * (acc / shaded_mass.clamp_min(1e-10))[:, None]
        depth = depth.index_add(0, ray_ids, weights * samples.t)

    foreground = rgb
    if settings.white_bg if white_bg is None else white_bg:
        rgb = rgb + (1.0 - acc)[:, None]
    out = {"rgb": rgb.clamp(0.0, 1.0), "depth": depth, "acc": acc, "n_samples": torch.tensor(xyz.shape[0]),
           "foreground": foreground}
    if per_sample:
        out.update(sample_rgb=colors, sample_weights=shaded_weights, sample_ray_ids=shaded_ids)
    return out


@torch.no_grad()
def render_image(
    field: Field,
    occupancy: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    settings: RenderSettings,
    chunk: int = 16384,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Render many rays in bounded-memory chunks (no gradients): ``rgb`` [R, 3], ``depth`` [R], ``acc`` [R].

    Each chunk is rendered on the field's device; the results come back on the device of ``origins``.
    ``cancelled`` is asked before each chunk; when it answers True the render stops with ``RenderCancelled`` (the
    viewer drops a frame whose camera has already moved on).
    """
    device = field.aabb.device
    parts = []
    for o, d in zip(origins.split(chunk), directions.split(chunk)):
        if cancelled is not None and cancelled():
            raise RenderCancelled
        out = render_rays(field, occupancy, o.to(device), d.to(device), settings)
        parts.append({k: out[k].to(origins.device) for k in ("rgb", "depth", "acc")})
    return {k: torch.cat([p[k] for p in parts]) for k in ("rgb", "depth", "acc")}
