"""Real captures (COLMAP, ``transforms.json`` without a box): a canonical frame from the cameras, and the choice of
bounded, unbounded (contracted) or forward-facing (NDC) rendering.

The frame depends on the cameras alone, so the same capture read from COLMAP or from any ``transforms.json``
convention ends up with the same rays:

- **up** is the cameras' mean up vector, turned to +z;
- **centre** is the point nearest to every camera's optical axis (the subject they look at);
- **heading**: turned about z so the first camera sits on the -y side of the centre;
- **scale**: the cameras fill the cube [-1, 1]^3 (the contraction's inner cube, see :mod:`vqrf.render.contraction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqrf.data import ImageLoader, make_cameras, scaled_size, split_views
from vqrf.data.scene import CONTRACTED_AABB, Scene
from vqrf.errors import VqrfError

__all__ = ["SCENE_KINDS", "CaptureViews", "canonical_frame", "apply_frame", "is_forward_facing", "capture_scene",
           "check_scene_kind"]

SCENE_KINDS = ("auto", "bounded", "unbounded")
FORWARD_CONE_DEGREES = 40.0  # every camera looks within this angle of the mean direction: forward-facing
NEAR = 0.1  # in the canonical frame, where the cameras fill [-1, 1]^3: no floaters on the lenses
UNBOUNDED_FAR = 1e4
BOUNDED_BOX = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


@dataclass
class CaptureViews:
    """Every view of a capture, before splitting: poses and intrinsics at the files' resolution."""

    c2w: np.ndarray  # [N, 3, 4] OpenGL camera-to-world
    fx: np.ndarray  # [N] pixels at native_size
    fy: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    distortion: np.ndarray | None  # [N, 5] OpenCV (k1, k2, p1, p2, k3), or None
    paths: list[Path]
    native_size: tuple[int, int]  # (W, H)
    has_alpha: bool = False


def canonical_frame(c2w: np.ndarray) -> np.ndarray:
    """[4, 4] similarity taking world points into the canonical frame (see the module's docstring)."""
    centres, forward = c2w[:, :, 3], -c2w[:, :, 2]
    up = _unit(c2w[:, :, 1].mean(0))
    # The point nearest all optical axes: sum over cameras of (I - d d^T)(x - c) = 0.
    projectors = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]
    system = projectors.sum(0)
    if np.linalg.cond(system) < 1e6:
        centre = np.linalg.solve(system, (projectors @ centres[:, :, None]).sum(0))[:, 0]
    else:  # parallel axes (a pure translation sweep): no focus point
        centre = centres.mean(0)
    rotation = _rotation_to_z(up)
    first = rotation @ (centres[0] - centre)
    heading = -math.pi / 2 - math.atan2(first[1], first[0])
    c, s = math.cos(heading), math.sin(heading)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rotation
    extent = np.abs((centres - centre) @ rotation.T).max()
    scale = 1.0 / extent if extent > 0 else 1.0
    transform = np.eye(4)
    transform[:3, :3] = scale * rotation
    transform[:3, 3] = -scale * rotation @ centre
    return transform


def apply_frame(transform: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Poses [N, 3, 4] moved by the similarity ``transform`` (rotation columns stay unit length)."""
    scale = np.linalg.norm(transform[:3, 0])
    rotation = transform[:3, :3] / scale
    out = np.empty_like(c2w)
    out[:, :, :3] = rotation @ c2w[:, :, :3]
    out[:, :, 3] = c2w[:, :, 3] @ transform[:3, :3].T + transform[:3, 3]
    return out


def is_forward_facing(c2w: np.ndarray) -> bool:
    """Whether every camera looks within ``FORWARD_CONE_DEGREES`` of the cameras' mean viewing direction."""
    forward = -c2w[:, :, 2] / np.linalg.norm(c2w[:, :, 2], axis=1, keepdims=True)
    mean = _unit(forward.sum(0))
    return bool(np.degrees(np.arccos(np.clip(forward @ mean, -1, 1))).max() < FORWARD_CONE_DEGREES)


def capture_scene(root: Path, views: CaptureViews, split: str, downscale: float, scene_kind: str,
                  source: Path, chosen: np.ndarray | None = None) -> Scene:
    """The ``split`` of a capture in its canonical frame, ``bounded`` in [-1, 1]^3 or ``unbounded`` (contracted);
    ``auto`` picks unbounded (forward-facing captures with depth bounds take NDC instead, in the readers).

    ``chosen``: the views of ``split``; by default every 8th view (0, 8, ...) is test and val, the rest train.
    """
    check_scene_kind(scene_kind)
    c2w = apply_frame(canonical_frame(views.c2w), views.c2w)
    if chosen is None:
        chosen = split_views(len(c2w), split)
    if len(chosen) == 0:
        raise VqrfError(source, f"no views for split '{split}' ({len(c2w)} views in all)")
    size = scaled_size(views.native_size, downscale, root)
    sx, sy = size[0] / views.native_size[0], size[1] / views.native_size[1]
    unbounded = scene_kind in ("auto", "unbounded")
    distortion = None if views.distortion is None else views.distortion[chosen]
    cameras = make_cameras(c2w[chosen], views.fx[chosen] * sx, views.fy[chosen] * sy, views.cx[chosen] * sx,
                           views.cy[chosen] * sy, size, distortion)
    paths = tuple(views.paths[k] for k in chosen)
    return Scene(
        name=root.name,
        root=root,
        split=split,
        cameras=cameras,
        aabb=torch.tensor(CONTRACTED_AABB if unbounded else BOUNDED_BOX, dtype=torch.float32),
        near=NEAR,
        far=UNBOUNDED_FAR if unbounded else 2 * math.sqrt(3),
        white_bg=views.has_alpha,
        load_image=ImageLoader(paths, views.native_size, size, white_bg=views.has_alpha),
        image_names=[p.stem for p in paths],
        downscale=downscale,
        contract=unbounded,
    )


def check_scene_kind(scene_kind: str) -> None:
    if scene_kind not in SCENE_KINDS:
        raise VqrfError(None, f"unknown scene kind '{scene_kind}' (expected {', '.join(SCENE_KINDS)})")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotation_to_z(up: np.ndarray) -> np.ndarray:
    """[3, 3] rotation taking the unit vector ``up`` to +z (Rodrigues' formula about up x z)."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(up, z)
    sin, cos = np.linalg.norm(axis), float(up @ z)
    if sin < 1e-9:
        return np.eye(3) if cos > 0 else np.diag([1.0, -1.0, -1.0])
    k = axis / sin
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + sin * cross + (1 - cos) * cross @ cross
