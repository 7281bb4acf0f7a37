"""A small analytic scene for ``vqrf demo``: exact ray tracing of a few primitives, no dataset needed.

The scene follows the NeRF-Synthetic (Blender) convention: world z is up, objects sit inside [-1.5, 1.5]^3, cameras
look at the origin from a sphere of radius 4 on the upper hemisphere, and the background is white. On a round
beige plate stand a red sphere, a blue/yellow checkered cube turned 30 degrees and a green cylinder with light
bands. Shading is Lambertian from one directional light plus ambient, with hard shadows; colour does not depend on
the viewing direction, so a radiance field can learn it quickly.

The tracer is plain single-threaded numpy: on these small arrays torch's intra-op threads gain nothing and, when
the CPU is shared with other work, their spin-waiting made rendering 20-40x slower.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vqrf.data.scene import Cameras, Scene
from vqrf.errors import VqrfError

_RADIUS = 4.0  # camera distance from the origin, as in NeRF-Synthetic
_CAMERA_ANGLE_X = 0.6911112070083618  # NeRF-Synthetic's horizontal field of view, radians
_TRAIN_ELEVATION = (math.radians(15.0), math.radians(60.0))
_TEST_ELEVATION = math.radians(30.0)
_DEFAULT_VIEWS = {"train": 60, "test": 8}


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


_LIGHT = _f32(0.5, 0.3, 0.8) / np.float32(math.sqrt(0.5**2 + 0.3**2 + 0.8**2))  # unit vector towards the light
_AMBIENT = 0.35
_EPS = 1e-4  # minimum hit distance, so shadow rays do not re-hit their own surface

# Geometry (world units). Top of the plate is at z = -0.45; everything else rests on it.
_PLATE_XY, _PLATE_R, _PLATE_Z = (0.0, 0.0), 1.15, (-0.55, -0.45)
_SPHERE_C, _SPHERE_R = _f32(-0.5, -0.3, 0.05), 0.5
_BOX_C, _BOX_H = _f32(0.45, -0.3, -0.1), 0.35
_COS30, _SIN30 = math.cos(math.pi / 6), math.sin(math.pi / 6)
_BOX_ROT = np.array([[_COS30, _SIN30, 0], [-_SIN30, _COS30, 0], [0, 0, 1]], dtype=np.float32)  # world -> box frame
_CYL_XY, _CYL_R, _CYL_Z = (0.05, 0.55), 0.28, (-0.45, 0.85)


# Internally a set of N vectors is a [3, N] array (components first): every operation is then a contiguous
# elementwise pass, far faster in numpy than reducing over a short trailing axis.


def _rotate(x: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """rot [3, 3] applied to every column of x [3, ...]; spelled out so no threaded BLAS call is made."""
    shape = (3,) + (1,) * (x.ndim - 1)
    return rot[:, 0].reshape(shape) * x[0] + rot[:, 1].reshape(shape) * x[1] + rot[:, 2].reshape(shape) * x[2]


def _col(v: np.ndarray) -> np.ndarray:
    """A single vector [3] as a column [3, 1] that broadcasts against [3, N]."""
    return v[:, None]


def _nonzero(x: np.ndarray) -> np.ndarray:
    """x with exact zeros replaced by a tiny value, so ray-plane divisions give +-big instead of 0/0."""
    return np.where(x == 0, np.float32(1e-12), x)


def _hit_sphere(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays o + t d (d unit, [3, N]) with the sphere: t [N] (inf on a miss), normal [3, N]."""
    oc = o - _col(_SPHERE_C)
    b = (oc * d).sum(0)
    disc = b * b - ((oc * oc).sum(0) - _SPHERE_R**2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf).astype(np.float32)
    normal = (oc + np.where(np.isfinite(t), t, 0) * d) / np.float32(_SPHERE_R)
    return t, normal


def _hit_box(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit with the turned cube (slab test in its frame): t [N], normal [3, N], face axis [N] (0, 1, 2)."""
    ol = _rotate(o - _col(_BOX_C), _BOX_ROT)
    dl = _nonzero(_rotate(d, _BOX_ROT))
    t1, t2 = (-_BOX_H - ol) / dl, (_BOX_H - ol) / dl
    t_enter = np.minimum(t1, t2)
    axis = t_enter.argmax(0)
    t_near = t_enter.max(0)
    t_far = np.maximum(t1, t2).min(0)
    t = np.where((t_near <= t_far) & (t_near > _EPS), t_near, np.inf).astype(np.float32)
    # The face normal points against the ray along the axis whose slab was entered last.
    normal_local = -np.sign(dl) * (np.arange(3)[:, None] == axis)
    return t, _rotate(normal_local.astype(np.float32), _BOX_ROT.T), axis


def _hit_cylinder(
    o: np.ndarray, d: np.ndarray, xy: tuple[float, float], r: float, z: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit with a capped cylinder along world z: t [N] (inf on a miss), normal [3, N]."""
    ox, oy = o[0] - np.float32(xy[0]), o[1] - np.float32(xy[1])
    a = np.maximum(d[0] ** 2 + d[1] ** 2, 1e-12)  # vertical rays never hit the side; this keeps them finite
    b = ox * d[0] + oy * d[1]
    disc = b * b - a * (ox * ox + oy * oy - r * r)
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    z_side = o[2] + t_side * d[2]
    t_side = np.where((disc >= 0) & (t_side > _EPS) & (z_side >= z[0]) & (z_side <= z[1]), t_side, np.inf)

    dz = _nonzero(d[2])
    ts = [t_side]
    for zc in z:
        t_cap = (zc - o[2]) / dz
        inside = (ox + t_cap * d[0]) ** 2 + (oy + t_cap * d[1]) ** 2 <= r * r
        ts.append(np.where(inside & (t_cap > _EPS), t_cap, np.inf))
    ts = np.stack(ts).astype(np.float32)
    which = ts.argmin(0)  # 0 side, 1 bottom cap, 2 top cap

    on_side = which == 0
    t_finite = np.where(np.isfinite(t_side), t_side, 0).astype(np.float32)
    normal = np.stack(
        [
            np.where(on_side, (ox + t_finite * d[0]) / r, 0),
            np.where(on_side, (oy + t_finite * d[1]) / r, 0),
            np.select([which == 1, which == 2], [-1.0, 1.0], 0.0),
        ]
    ).astype(np.float32)
    return ts.min(0), normal


def _trace(o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit over all objects for rays [3, N]: t [N] (inf on a miss), object id [N] (0 plate, 1 sphere,
    2 box, 3 cylinder), normal [3, N], box face axis [N]."""
    t_plate, n_plate = _hit_cylinder(o, d, _PLATE_XY, _PLATE_R, _PLATE_Z)
    t_sphere, n_sphere = _hit_sphere(o, d)
    t_box, n_box, box_axis = _hit_box(o, d)
    t_cyl, n_cyl = _hit_cylinder(o, d, _CYL_XY, _CYL_R, _CYL_Z)
    ts = np.stack([t_plate, t_sphere, t_box, t_cyl])
    obj = ts.argmin(0)
    normal = np.choose(obj, [n_plate, n_sphere, n_box, n_cyl])  # picks per ray, broadcasting over components
    return ts.min(0), obj, normal, box_axis


def _albedo(p: np.ndarray, obj: np.ndarray, normal: np.ndarray, box_axis: np.ndarray) -> np.ndarray:
    """Surface colour [3, N] at hit points p [3, N] of objects obj [N]."""
    # Plate: beige, darkening towards the rim.
    rim = (p[0] ** 2 + p[1] ** 2) / _PLATE_R**2
    plate = _col(_f32(0.85, 0.78, 0.62)) * (1 - 0.25 * rim)
    # Sphere: red at the bottom shading to orange at the top.
    up = (normal[2] + 1) / 2
    sphere = _col(_f32(0.85, 0.08, 0.08)) * (1 - up) + _col(_f32(0.98, 0.45, 0.1)) * up
    # Box: 3x3 checkerboard on each face, from the two in-face coordinates of the box frame.
    cell = np.clip(np.floor((_rotate(p - _col(_BOX_C), _BOX_ROT) + _BOX_H) / (2 * _BOX_H) * 3), 0, 2)
    odd = (cell * (np.arange(3)[:, None] != box_axis)).sum(0) % 2
    box = _col(_f32(0.15, 0.3, 0.85)) * (1 - odd) + _col(_f32(0.95, 0.85, 0.2)) * odd
    # Cylinder: green with four pale bands up its side; the caps stay green (a cap lies on a band boundary).
    band = (np.floor((p[2] - _CYL_Z[0]) / (_CYL_Z[1] - _CYL_Z[0]) * 9) % 2) * (normal[2] == 0)
    cyl = _col(_f32(0.1, 0.65, 0.25)) * (1 - band) + _col(_f32(0.75, 0.95, 0.75)) * band
    return np.choose(obj, [plate, sphere, box, cyl]).astype(np.float32)


def _shade(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Colour [3, N] float32 along rays o + t d ([3, N] float32, d unit); exactly 1.0 where a ray hits nothing."""
    rgb = np.ones_like(o)
    t, obj, normal, box_axis = _trace(o, d)
    hit = np.isfinite(t)
    o, d, t, obj, normal, box_axis = o[:, hit], d[:, hit], t[hit], obj[hit], normal[:, hit], box_axis[hit]
    p = o + t * d
    # Hard shadow: light reaches p only if a ray towards it (started just off the surface) hits nothing.
    light = np.broadcast_to(_col(_LIGHT), p.shape)
    lit = ~np.isfinite(_trace(p + np.float32(1e-3) * normal, light)[0])
    shade = _AMBIENT + (1 - _AMBIENT) * np.maximum((normal * light).sum(0), 0) * lit
    rgb[:, hit] = np.clip(_albedo(p, obj, normal, box_axis) * shade, 0, 1)
    return rgb


def demo_rays(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Colour of the demo scene along world rays.

    Args:
        origins: [N, 3] ray origins.
        directions: [N, 3] ray directions (need not be unit).

    Returns:
        [N, 3] float32 RGB in [0, 1]; exactly 1.0 (white) where a ray hits nothing.
    """
    o = np.ascontiguousarray(origins.detach().cpu().reshape(-1, 3).to(torch.float32).numpy().T)
    d = np.ascontiguousarray(directions.detach().cpu().reshape(-1, 3).to(torch.float32).numpy().T)
    d /= np.sqrt((d * d).sum(0))
    return torch.from_numpy(np.ascontiguousarray(_shade(o, d).T))


def _pixel_rays(cameras: Cameras, i: int, sub: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World rays of view i on a sub x sub grid inside every pixel.

    Pixel (u, v) spans [u, u+1] x [v, v+1] (centre at +0.5); camera x right, y up, looking along -z.
    Returns float32 origins and unit directions, components first: [3, H, W, sub*sub] each.
    """
    offsets = (np.arange(sub, dtype=np.float32) + 0.5) / sub  # sub=1 gives the pixel centre
    v, u, sv, su = np.meshgrid(
        np.arange(cameras.height, dtype=np.float32),
        np.arange(cameras.width, dtype=np.float32),
        offsets,
        offsets,
        indexing="ij",
    )
    x = (u + su - cameras.cx[i].item()) / cameras.fx[i].item()
    y = -(v + sv - cameras.cy[i].item()) / cameras.fy[i].item()  # image rows go down, camera y goes up
    d_cam = np.stack([x, y, -np.ones_like(x)]).reshape(3, cameras.height, cameras.width, sub * sub)
    c2w = cameras.c2w[i].numpy()
    d = _rotate(d_cam, c2w[:, :3])
    d /= np.sqrt((d * d).sum(0))
    return np.broadcast_to(c2w[:, 3].reshape(3, 1, 1, 1), d.shape), d


def _look_at_origin(azimuth: np.ndarray, elevation: np.ndarray) -> torch.Tensor:
    """Camera-to-world [N, 3, 4] for cameras at distance 4 with the given angles (radians), looking at the origin."""
    pos = _RADIUS * np.stack(
        [np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1
    )
    back = pos / np.linalg.norm(pos, axis=-1, keepdims=True)  # camera +z points away from what it looks at
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(back, right)
    return torch.from_numpy(np.stack([right, up, back, pos], -1)).float()


def make_demo_scene(split: str = "train", n_views: int | None = None, size: int = 64, seed: int = 0) -> Scene:
    """The analytic demo scene, rendered lazily with 2x2 supersampling per pixel.

    Args:
        split: 'train' (views on a Fibonacci spiral over elevations 15-60 degrees) or 'test' (an even orbit at
            30 degrees elevation, half a step off in azimuth).
        n_views: number of views; default 60 for train, 8 for test.
        size: image width and height in pixels.
        seed: turns the whole camera layout (both splits alike) about the vertical axis.

    Returns:
        A Scene named 'demo' with [size, size, 3] images, aabb [-1.5, 1.5]^3, near 2, far 6, white background.
    """
    if split not in _DEFAULT_VIEWS:
        raise VqrfError(None, f"the demo scene has no split {split!r} (use 'train' or 'test')")
    n = _DEFAULT_VIEWS[split] if n_views is None else n_views
    if n < 1 or size < 1:
        raise VqrfError(None, f"the demo scene needs at least one view and one pixel (got n_views={n}, size={size})")

    turn = np.random.default_rng(seed).uniform(0, 2 * math.pi)
    k = np.arange(n)
    if split == "train":
        # Equal-area steps in sin(elevation) with golden-angle azimuths spread views evenly over the band.
        lo, hi = (math.sin(e) for e in _TRAIN_ELEVATION)
        elevation = np.arcsin(lo + (hi - lo) * (k + 0.5) / n)
        azimuth = turn + k * math.pi * (3 - math.sqrt(5))
    else:
        elevation = np.full(n, _TEST_ELEVATION)
        azimuth = turn + 2 * math.pi * (k + 0.5) / n

    focal = 0.5 * size / math.tan(0.5 * _CAMERA_ANGLE_X)
    cameras = Cameras(
        c2w=_look_at_origin(azimuth, elevation),
        fx=torch.full((n,), focal),
        fy=torch.full((n,), focal),
        cx=torch.full((n,), size / 2),
        cy=torch.full((n,), size / 2),
        width=size,
        height=size,
    )

    def load_image(i: int) -> np.ndarray:
        origins, directions = _pixel_rays(cameras, i, sub=2)
        rgb = _shade(np.ascontiguousarray(origins).reshape(3, -1), directions.reshape(3, -1))
        return rgb.reshape(3, size, size, 4).mean(-1).transpose(1, 2, 0)  # average the 2x2 sub-pixel rays

    return Scene(
        name="demo",
        root=Path("<demo>"),
        split=split,
        cameras=cameras,
        aabb=torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]),
        near=2.0,
        far=6.0,
        white_bg=True,
        load_image=load_image,
        image_names=[f"r_{j}" for j in range(n)],
    )
