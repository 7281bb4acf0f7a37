"""Camera paths for videos: a 360-degree orbit around a bounded scene, or the LLFF spiral of a forward-facing one."""

from __future__ import annotations

import math

import torch

from vqrf.data.scene import Cameras, Scene
from vqrf.errors import VqrfError

__all__ = ["look_at", "orbit_path", "spiral_path", "path_poses", "resized"]


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [3, 4] (OpenGL: x right, y up, looking along -z) at ``eye`` looking at ``target``."""
    back = eye - target
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    return torch.stack([right, true_up, back, eye], dim=1)


def orbit_path(cameras: Cameras, n_frames: int) -> torch.Tensor:
    """[n_frames, 3, 4]: a full circle about the world z axis at the cameras' mean radius and elevation.

    Blender, NSVF and T&T scenes are centred at the origin with z up, as their cameras' orbit shows.
    """
    positions = cameras.c2w[:, :, 3]
    radius = float(positions.norm(dim=-1).mean())
    elevation = float(torch.asin((positions[:, 2] / positions.norm(dim=-1)).clamp(-1, 1)).mean())
    start = math.atan2(float(positions[0, 1]), float(positions[0, 0]))
    up = torch.tensor([0.0, 0.0, 1.0])
    out = []
    for k in range(n_frames):
        angle = start + 2 * math.pi * k / n_frames
        eye = radius * torch.tensor([math.cos(elevation) * math.cos(angle), math.cos(elevation) * math.sin(angle),
                                     math.sin(elevation)])
        out.append(look_at(eye, torch.zeros(3), up))
    return torch.stack(out)


def spiral_path(cameras: Cameras, depth_bounds: tuple[float, float], n_frames: int, rotations: float = 2.0,
                z_rate: float = 0.5) -> torch.Tensor:
    """[n_frames, 3, 4]: the LLFF spiral in front of forward-facing cameras (already recentred, so their mean pose is
    the identity), looking at a focus depth between the nearest and farthest content, as in the LLFF/NeRF code."""
    positions = cameras.c2w[:, :, 3]
    radii = positions.abs().quantile(0.9, dim=0)
    up = cameras.c2w[:, :, 1].mean(0)
    up = up / up.norm()
    close, far = 0.9 * depth_bounds[0], 5.0 * depth_bounds[1]
    focus = 1.0 / (0.25 / close + 0.75 / far)  # weighted towards the near content
    centre = positions.mean(0)
    target = centre + torch.tensor([0.0, 0.0, -focus])  # the mean pose looks along -z
    out = []
    for k in range(n_frames):
        theta = 2 * math.pi * rotations * k / n_frames
        offset = torch.tensor([math.cos(theta), -math.sin(theta), -math.sin(theta * z_rate)]) * radii
        out.append(look_at(centre + offset, target, up))
    return torch.stack(out)


def path_poses(scene: Scene, kind: str, n_frames: int) -> torch.Tensor:
    """[n_frames, 3, 4] along ``kind`` ("orbit" or "spiral") for the training cameras of ``scene``; a path that does
    not suit the scene is refused."""
    if kind == "orbit":
        if scene.ndc:
            raise VqrfError(scene.root, "an orbit needs a bounded (360-degree) scene; forward-facing scenes get "
                                        "--path spiral")
        return orbit_path(scene.cameras, n_frames)
    if scene.depth_bounds is None:
        raise VqrfError(scene.root, "a spiral needs a forward-facing (LLFF) scene; bounded scenes get --path orbit")
    return spiral_path(scene.cameras, scene.depth_bounds, n_frames)


def resized(cameras: Cameras, c2w: torch.Tensor, width: int | None = None, height: int | None = None) -> Cameras:
    """Cameras along ``c2w`` [N, 3, 4] with the intrinsics of ``cameras``' first view, optionally rescaled."""
    width = width or cameras.width
    height = height or cameras.height
    sx, sy = width / cameras.width, height / cameras.height
    n = c2w.shape[0]

    def rep(v: torch.Tensor, s: float) -> torch.Tensor:
        return torch.full((n,), float(v[0]) * s)

    return Cameras(c2w.float(), rep(cameras.fx, sx), rep(cameras.fy, sy), rep(cameras.cx, sx), rep(cameras.cy, sy),
                   width, height)
