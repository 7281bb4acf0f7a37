"""The analytic demo scene: deterministic, well-formed, and fast enough for ``vqrf demo``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vqrf.data.synthetic import _pixel_rays, demo_rays, make_demo_scene
from vqrf.errors import VqrfError


def _misses_box(o: np.ndarray, d: np.ndarray, aabb: np.ndarray) -> np.ndarray:
    """[N] True where the ray o + t d (t >= 0; o, d [N, 3]) misses the box aabb [2, 3] (slab test)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (aabb[0] - o) / d, (aabb[1] - o) / d
    t_near = np.minimum(t1, t2).max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    return (t_near > t_far) | (t_far < 0)


def test_scene_metadata():
    scene = make_demo_scene()
    assert (scene.name, scene.split, len(scene), scene.hw) == ("demo", "train", 60, (64, 64))
    assert (scene.near, scene.far, scene.white_bg, scene.ndc) == (2.0, 6.0, True, False)
    assert torch.equal(scene.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    assert scene.image_names[:2] == ["r_0", "r_1"] and len(scene.image_names) == 60
    assert len(make_demo_scene("test")) == 8
    cams = scene.cameras
    assert cams.c2w.shape == (60, 3, 4) and cams.c2w.dtype == torch.float32
    # Cameras sit on the radius-4 sphere, above the ground, with orthonormal rotations looking at the origin.
    pos = cams.c2w[:, :, 3]
    assert torch.allclose(pos.norm(dim=-1), torch.full((60,), 4.0), atol=1e-5)
    elevation = torch.rad2deg(torch.asin(pos[:, 2] / 4))
    assert elevation.min() > 14 and elevation.max() < 61
    rot = cams.c2w[:, :, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(60, 3, 3), atol=1e-5)
    assert torch.allclose(-rot[:, :, 2], -pos / 4, atol=1e-5)  # -z axis points at the origin
    assert torch.allclose(cams.fx, torch.full((60,), 0.5 * 64 / torch.tan(torch.tensor(0.5 * 0.6911112))), atol=1e-3)
    assert torch.all(cams.cx == 32) and torch.all(cams.cy == 32)


def test_images_shape_range_and_determinism():
    a, b = make_demo_scene("test", size=32), make_demo_scene("test", size=32)
    for i in (0, 5):
        img = a.image(i)
        assert img.shape == (32, 32, 3) and img.dtype == torch.float32
        assert img.min() >= 0 and img.max() <= 1
        assert torch.equal(img, b.image(i))
    assert not torch.allclose(a.image(0), a.image(1), atol=0.05)  # two test views see different things
    other = make_demo_scene("test", size=32, seed=1)
    assert not torch.equal(other.cameras.c2w, a.cameras.c2w)


def test_train_and_test_cameras_differ():
    train, test = make_demo_scene("train"), make_demo_scene("test")
    gaps = torch.cdist(test.cameras.c2w[:, :, 3], train.cameras.c2w[:, :, 3])  # [8, 60]
    assert gaps.min() > 0.05


def test_background_white_and_centre_hits_object():
    # The aabb fills nearly the whole frame (as in NeRF-Synthetic), so few pixels miss it; count them over all views.
    scene = make_demo_scene("train", size=48)
    n_miss = 0
    for i in range(len(scene)):
        img = scene.image(i)
        o, d = (x.reshape(3, -1).T for x in _pixel_rays(scene.cameras, i))
        miss = torch.from_numpy(_misses_box(o, d, scene.aabb.numpy()).reshape(48, 48))
        n_miss += int(miss.sum())
        assert torch.all(img[miss] == 1.0)  # exactly white, not merely close
        assert torch.all(img[[0, 0, -1, -1], [0, -1, 0, -1]] == 1.0)  # the objects never reach the corners
        assert img[24, 24].min() < 0.9  # the view centre lands on an object
    assert n_miss > 100


def test_demo_rays_white_on_miss():
    gen = torch.Generator().manual_seed(0)
    o = torch.nn.functional.normalize(torch.randn(4096, 3, generator=gen), dim=-1) * 4
    d = torch.randn(4096, 3, generator=gen)
    miss = torch.from_numpy(_misses_box(o.numpy(), d.numpy(), np.array([[-1.5] * 3, [1.5] * 3])))
    assert miss.sum() > 1000
    rgb = demo_rays(o, d)
    assert rgb.shape == (4096, 3) and torch.all(rgb[miss] == 1.0)
    down = demo_rays(torch.tensor([[0.0, 0.0, 4.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert down.min() < 0.9  # straight down onto the plate


def test_pixel_rays_match_projection():
    """A world point projected with the Blender pinhole model lies on the ray through that pixel position."""
    scene = make_demo_scene("train", n_views=3, size=40)
    cams = scene.cameras
    for i in range(3):
        o, d = (torch.from_numpy(x[:, :, :, 0].copy()) for x in _pixel_rays(cams, i))  # [3, H, W]: pixel centres
        # Project the ray through pixel (u, v) = (7, 30) at depth 3 back to pixel coordinates.
        x = o[:, 30, 7] + 3 * d[:, 30, 7]
        xc = cams.c2w[i, :, :3].T @ (x - cams.c2w[i, :, 3])
        u = cams.fx[i] * xc[0] / -xc[2] + cams.cx[i]
        v = -cams.fy[i] * xc[1] / -xc[2] + cams.cy[i]
        assert torch.allclose(torch.stack([u, v]), torch.tensor([7.5, 30.5]), atol=1e-3)


def test_bad_arguments():
    with pytest.raises(VqrfError):
        make_demo_scene("val")
    with pytest.raises(VqrfError):
        make_demo_scene(n_views=0)


def test_default_scene_renders_fast():
    start = time.perf_counter()
    scene = make_demo_scene()
    for i in range(len(scene)):
        scene.image(i)
    assert time.perf_counter() - start < 10.0  # about 0.5 s on a 2-core CPU; vqrf demo has 5 minutes in all
