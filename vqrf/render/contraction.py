"""Scene contraction for unbounded captures: all of space in a bounded cube, and ray samples that thin out with distance.

Points with ``|x|_inf <= 1`` stay where they are; farther ones map to ``(2 - 1 / |x|_inf) x / |x|_inf``, so the whole
world fits in [-2, 2]^3 (mip-NeRF 360's contraction with the L-infinity norm, as nerfstudio uses for grids, so the
field's cube is filled). Captures are normalised so the cameras and the subject lie in the inner cube [-1, 1]^3.

Along a ray, samples are evenly spaced in a parameter ``s`` (the marcher's step is a contracted voxel):
``t = s`` for ``s <= T`` and ``t = T^2 / (2T - s)`` beyond, where ``T`` is where the ray leaves the inner cube (at least
``MIN_INNER``). The map is smooth at ``T`` and reaches infinity as ``s -> 2T``, with samples thinning out like the
contracted space does (about even contracted spacing far away).
"""

from __future__ import annotations

import torch

from vqrf.data.scene import CONTRACTED_AABB

__all__ = ["CONTRACTED_AABB", "MIN_INNER", "contract", "inner_span", "s_to_t", "t_to_s"]

MIN_INNER = 0.5  # a camera on the inner cube's face looking out still gets half a unit of linear samples


def contract(xyz: torch.Tensor) -> torch.Tensor:
    """[..., 3] world points -> [..., 3] points in [-2, 2]^3."""
    norm = xyz.abs().amax(-1, keepdim=True)
    far = norm > 1
    safe = torch.where(far, norm, torch.ones_like(norm))
    return torch.where(far, (2 - 1 / safe) * (xyz / safe), xyz)


def inner_span(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[R] distance at which each ray [R, 3] (unit directions) leaves the cube [-1, 1]^3, at least ``MIN_INNER``."""
    safe = torch.where(directions == 0, torch.full_like(directions, 1e-6), directions)
    exit_t = torch.maximum((1 - origins) / safe, (-1 - origins) / safe).amin(-1)
    return exit_t.clamp_min(MIN_INNER)


def s_to_t(s: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Ray distance t of sample parameter s (both [R] or broadcastable), for rays with inner span ``inner``."""
    beyond = inner * inner / (2 * inner - s).clamp_min(1e-12)
    return torch.where(s <= inner, s, beyond)


def t_to_s(t: float | torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`s_to_t`: the sample parameter of ray distance ``t`` (``t`` may be ``inf``)."""
    t = torch.as_tensor(t, dtype=inner.dtype, device=inner.device)
    beyond = 2 * inner - inner * inner / t.clamp_min(1e-12)
    return torch.where(t <= inner, t.expand_as(inner), beyond)
