"""The renderer's empty-space skipping must not change what a field looks like."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vqrf.config import FieldConfig
from vqrf.fields.tensorf import TensorVM
from vqrf.render.march import march, ray_box
from vqrf.render.occupancy import OccupancyGrid, build_occupancy
from vqrf.render.volume import RenderSettings, render_image, render_rays

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def half_full_field() -> TensorVM:
    """A field that is empty for x < 0.2 and dense beyond (ReLU density, so empty means exactly zero)."""
    torch.manual_seed(0)
    field = TensorVM(AABB, [20, 18, 16], dataclasses.replace(FieldConfig(), density_act="relu"))
    with torch.no_grad():
        for line in field.density_lines:
            line.fill_(1.0)
        x = torch.linspace(-1, 1, 20)
        sign = torch.where(x > 0.2, 1.0, -1.0)
        field.density_planes[0].copy_(sign[None, :, None].expand_as(field.density_planes[0]) * 0.2)
        field.density_planes[1].copy_(sign[None, :, None].expand_as(field.density_planes[1]) * 0.2)
        field.density_planes[2].zero_()
    return field


def random_rays(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    targets = torch.rand(n, 3, generator=g) - 0.5
    return origins, torch.nn.functional.normalize(targets - origins, dim=-1)


def dense_render(field: TensorVM, origins: torch.Tensor, directions: torch.Tensor, s: RenderSettings) -> torch.Tensor:
    """Plain reference: every sample on the ray, colour everywhere, cumulative-product transmittance."""
    t_in, t_out = ray_box(origins, directions, field.aabb, s.near, s.far)
    t = t_in[:, None] + s.step * torch.arange(s.max_samples, dtype=torch.float32)[None]
    valid = t < t_out[:, None]
    xyz = origins[:, None] + t[..., None] * directions[:, None]
    sigma = field.density(xyz.reshape(-1, 3)).reshape(t.shape) * valid
    alpha = 1 - torch.exp(-sigma * s.step * field.cfg.distance_scale)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
    weights = alpha * trans
    color = field.color(xyz.reshape(-1, 3), directions[:, None].expand_as(xyz).reshape(-1, 3)).reshape(*t.shape, 3)
    rgb = (weights[..., None] * color).sum(1) + (1 - weights.sum(1))[:, None]
    return rgb.clamp(0, 1)


@torch.no_grad()
def test_render_matches_dense_reference_without_skipping():
    field = half_full_field()
    s = dataclasses.replace(RenderSettings.for_field(field, 0.1, 10.0, False, True), weight_thres=0.0)
    origins, directions = random_rays(300)
    ours = render_rays(field, OccupancyGrid.full(field.aabb), origins, directions, s)["rgb"]
    torch.testing.assert_close(ours, dense_render(field, origins, directions, s), atol=2e-5, rtol=0)


@torch.no_grad()
def test_occupancy_skipping_and_weight_threshold_change_little():
    field = half_full_field()
    s = RenderSettings.for_field(field, 0.1, 10.0, False, True)
    occupancy, box = build_occupancy(field, field.grid_size, field.step_size(0.5), 1e-4)
    assert 0.2 < occupancy.occupied_fraction() < 0.8  # the empty half was found
    assert box is not None and box[0, 0] > 0.0  # and the occupied box starts past x = 0
    origins, directions = random_rays(400, seed=2)
    skipped = render_rays(field, occupancy, origins, directions, s)
    full = render_rays(field, OccupancyGrid.full(field.aabb), origins, directions, s)
    assert skipped["n_samples"] < 0.8 * full["n_samples"]
    torch.testing.assert_close(skipped["rgb"], full["rgb"], atol=2e-3, rtol=0)
    reference = dense_render(field, origins, directions, s)
    torch.testing.assert_close(skipped["rgb"], reference, atol=2e-3, rtol=0)


def test_march_emits_only_occupied_samples_on_the_ray():
    field = half_full_field()
    occupancy, _ = build_occupancy(field, field.grid_size, field.step_size(0.5), 1e-4)
    origins, directions = random_rays(200, seed=3)
    t_in, t_out = ray_box(origins, directions, field.aabb, 0.1, 10.0)
    jitter = torch.rand(200)
    step = 0.05
    xyz, t, ray_ids, counts = march(origins, directions, t_in, t_out, step, jitter, occupancy, 1000)
    assert int(counts.sum()) == xyz.shape[0] == t.shape[0] == ray_ids.shape[0]
    assert torch.all(ray_ids[1:] >= ray_ids[:-1])
    torch.testing.assert_close(xyz, origins[ray_ids] + t[:, None] * directions[ray_ids])
    k = (t - t_in[ray_ids]) / step - jitter[ray_ids]
    torch.testing.assert_close(k, k.round(), atol=1e-3, rtol=0)  # on the jittered lattice
    assert torch.all(t < t_out[ray_ids]) and occupancy.query(xyz).all()


def test_render_image_chunks_agree_and_empty_rays_are_background():
    field = half_full_field()
    s = RenderSettings.for_field(field, 0.1, 10.0, False, True)
    origins, directions = random_rays(257, seed=4)
    directions[:10] = torch.tensor([0.0, 0.0, 1.0])  # these rays pass beside the box
    origins[:10] = torch.tensor([5.0, 5.0, 0.0])
    occupancy = OccupancyGrid.full(field.aabb)
    whole = render_image(field, occupancy, origins, directions, s, chunk=10_000)
    chunked = render_image(field, occupancy, origins, directions, s, chunk=64)
    torch.testing.assert_close(whole["rgb"], chunked["rgb"])
    assert torch.all(whole["rgb"][:10] == 1.0) and torch.all(whole["acc"][:10] == 0.0)


@pytest.mark.parametrize("grid", [[24, 20, 16], [9, 31, 12]])
def test_shrink_then_upsample_keeps_the_field(grid):
    torch.manual_seed(5)
    field = TensorVM(AABB, grid, FieldConfig(density_shift=0.0))
    points = torch.rand(500, 3) * 0.8 - 0.4
    before = field.density(points).detach()
    field.shrink(torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]))
    assert torch.all(field.aabb[0] <= -0.5 + 1e-6) and torch.all(field.aabb[1] >= 0.5 - 1e-6)
    torch.testing.assert_close(field.density(points).detach(), before, atol=1e-5, rtol=1e-5)
    field.upsample([2 * n for n in field.grid_size])
    # Bilinear upsampling of a bilinear field is not exact, but close on a smooth random field.
    assert (field.density(points).detach() - before).abs().mean() < 0.05 * before.abs().mean()


@torch.no_grad()
def test_ndc_depth_steps_step_half_a_voxel_in_depth_and_render_alike():
    # An NDC box as LLFF's and a uniform field.
    aabb = torch.tensor([[-1.5, -1.67, -1.0], [1.5, 1.67, 1.0]])
    field = TensorVM(aabb, [30, 34, 20], dataclasses.replace(FieldConfig(), density_act="relu"))
    with torch.no_grad():
        for tensor in [*field.density_planes, *field.density_lines]:
            tensor.fill_(0.03)  # optical depth about 2 across the box: acc about 0.9, not saturated
    diagonal = RenderSettings.for_field(field, 0.0, 1.0, True, True)
    depth = RenderSettings.for_field(field, 0.0, 1.0, True, True, ndc_depth_steps=True)
    voxel_z = float(field.voxel_size()[2])
    assert depth.max_samples == int(2.0 / (0.5 * voxel_z)) + 1  # 38 steps of half a z-voxel
    assert diagonal.max_samples > 2 * depth.max_samples  # the reference's count oversamples depth
    # NDC rays start on z = -1 and reach z = 1 at t = 1 (vqrf.render.rays.ndc_rays).
    g = torch.Generator().manual_seed(3)
    origins = torch.cat([torch.rand(64, 2, generator=g) - 0.5, -torch.ones(64, 1)], dim=1)
    directions = torch.cat([0.2 * (torch.rand(64, 2, generator=g) - 0.5), 2 * torch.ones(64, 1)], dim=1)
    full = OccupancyGrid.full(field.aabb)
    xyz, _, ray_ids, _ = march(origins, directions, *ray_box(origins, directions, aabb, 0.0, 1.0),
                               1.0 / depth.max_samples, torch.zeros(64), full, depth.max_samples)
    dz = xyz[1:, 2] - xyz[:-1, 2]
    same_ray = ray_ids[1:] == ray_ids[:-1]
    assert torch.allclose(dz[same_ray], torch.full_like(dz[same_ray], 2.0 / depth.max_samples), atol=1e-5)
    # Density is integrated step by step, so fewer steps change the image little.
    a = render_rays(field, full, origins, directions, dataclasses.replace(diagonal, weight_thres=0.0))
    b = render_rays(field, full, origins, directions, dataclasses.replace(depth, weight_thres=0.0))
    assert (a["acc"] - b["acc"]).abs().max() < 0.02
    assert (a["rgb"] - b["rgb"]).abs().max() < 0.02
