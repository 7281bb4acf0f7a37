"""Camera paths for videos: a 360-degree orbit around a bounded scene, or the LLFF spiral of a forward-facing one.

Both are computed from a :class:`~vqrf.data.scene.CameraSet`, which a dataset and a self-contained model file alike
provide, so a video comes out the same with or without the dataset.
"""

from __future__ import annotations

import math

import torch

from vqrf.data.scene import Z_UP, Cameras, CameraSet
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


def orbit_path(cameras: Cameras, n_frames: int, up: torch.Tensor | None = None) -> torch.Tensor:
    """[n_frames, 3, 4]: an orbit about the world's ``up`` axis [3] (default z) at the cameras' mean radius and
    elevation, looking at the origin and starting at the first camera's azimuth.

    Blender, NSVF and T&T scenes, and captures in their canonical frame, are centred at the origin with z up. Cameras
    all around go full circle; a capture that covers only an arc (its largest gap between camera azimuths over
    ``ARC_GAP_DEGREES``) sweeps that arc and back, never showing the side nobody photographed.
    """
    up = torch.tensor(Z_UP) if up is None else up.float().cpu()
    east, north = _horizontal_axes(up)
    positions = cameras.c2w[:, :, 3].float().cpu()
    radius = float(positions.norm(dim=-1).mean())
    elevation = float(torch.asin((positions @ up / positions.norm(dim=-1)).clamp(-1, 1)).mean())
    azimuths = torch.atan2(positions @ north, positions @ east).double()
    start = float(azimuths[0])
    lo, span = _covered_arc(azimuths)
    out = []
    for k in range(n_frames):
        phase = 2 * math.pi * k / n_frames
        if span is None:
            angle = start + phase
        else:  # back and forth over [lo, lo + span], starting at the first camera
            offset = math.acos(max(-1.0, min(1.0, 1 - 2 * ((start - lo) % (2 * math.pi)) / span)))
            angle = lo + span * 0.5 * (1 - math.cos(phase + offset))
        eye = radius * (math.cos(elevation) * (math.cos(angle) * east + math.sin(angle) * north)
                        + math.sin(elevation) * up)
        out.append(look_at(eye, torch.zeros(3), up))
    return torch.stack(out)


def _horizontal_axes(up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors [3] that span the plane normal to the unit vector ``up``, right-handed with it: x and y for
    z up, so azimuths keep their usual meaning there."""
    seed = torch.tensor([1.0, 0.0, 0.0]) if abs(float(up[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    east = seed - (seed @ up) * up
    east = east / east.norm()
    return east, torch.linalg.cross(up, east)


ARC_GAP_DEGREES = 60.0


def _covered_arc(azimuths: torch.Tensor) -> tuple[float, float | None]:
    """(start, span) of the arc of azimuths [N] the cameras cover, going counter-clockwise; span None when the
    largest gap between neighbouring cameras is under ``ARC_GAP_DEGREES`` (the cameras go all around)."""
    ordered = torch.sort(azimuths % (2 * math.pi)).values
    gaps = torch.diff(torch.cat([ordered, ordered[:1] + 2 * math.pi]))
    widest = int(gaps.argmax())
    if math.degrees(float(gaps[widest])) < ARC_GAP_DEGREES:
        return 0.0, None
    start = float(ordered[(widest + 1) % len(ordered)])
    return start, 2 * math.pi - float(gaps[widest])


def spiral_path(cameras: Cameras, depth_bounds: tuple[float, float], up: torch.Tensor, n_frames: int,
                rotations: float = 2.0, z_rate: float = 0.5) -> torch.Tensor:
    """[n_frames, 3, 4]: the LLFF spiral in front of forward-facing cameras (already recentred, so their mean pose is
    the identity), looking at a focus depth between the nearest and farthest content, as in the LLFF/NeRF code;
    ``up`` [3] is the cameras' mean up axis (:meth:`~vqrf.data.scene.Scene.camera_set`)."""
    positions = cameras.c2w[:, :, 3].float().cpu()
    radii = positions.abs().quantile(0.9, dim=0)
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


def path_poses(views: CameraSet, kind: str, n_frames: int) -> torch.Tensor:
    """[n_frames, 3, 4] along ``kind`` ("orbit" or "spiral") for the training cameras ``views`` (a dataset's or a
    model file's); a path that does not suit the scene is refused."""
    if kind == "orbit":
        if views.ndc:
            raise VqrfError(views.source, "an orbit needs a bounded (360-degree) scene; forward-facing scenes get "
                                          "--path spiral")
        return orbit_path(views.cameras, n_frames, views.up)
    if views.depth_bounds is None:
        raise VqrfError(views.source, "a spiral needs a forward-facing (LLFF) scene; bounded scenes get --path orbit")
    return spiral_path(views.cameras, views.depth_bounds, views.up, n_frames)


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
