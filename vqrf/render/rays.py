"""Camera rays: pixels to world rays (Blender / OpenGL pinhole cameras) and the forward-facing NDC warp.

Camera frame: x right, y up, the camera looks along -z. Pixel (x, y) (column, row) has its centre at (x + 0.5, y + 0.5),
so the ray through pixel (x, y) has the camera-space direction ((x + 0.5 - cx) / fx, -(y + 0.5 - cy) / fy, -1).
Cameras with lens distortion first undistort those image-plane coordinates (OpenCV's model, solved by Newton).
"""

from __future__ import annotations

import torch

from vqrf.data.scene import Cameras

__all__ = ["camera_rays", "camera_rays_at", "ndc_rays", "distort", "undistort"]

_NEWTON_STEPS = 10


def distort(x: torch.Tensor, y: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's lens model on image-plane points [R] (y down): coeffs [R, 5] or [5] = (k1, k2, p1, p2, k3)."""
    k1, k2, p1, p2, k3 = coeffs.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort(xd: torch.Tensor, yd: torch.Tensor, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The points (x, y) that :func:`distort` maps to (xd, yd): Newton's method from (xd, yd), in float64."""
    k1, k2, p1, p2, k3 = coeffs.double().unbind(-1)
    xd64, yd64 = xd.double(), yd.double()
    x, y = xd64, yd64
    for _ in range(_NEWTON_STEPS):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        d_radial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
        ex = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd64
        ey = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd64
        # The 2x2 Jacobian of (ex, ey) in (x, y).
        exx = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        exy = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        eyy = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = exx * eyy - exy * exy  # the Jacobian is symmetric: d ex / dy = d ey / dx
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x = x - (ex * eyy - ey * exy) / det
        y = y - (ey * exx - ex * exy) / det
    return x.to(xd.dtype), y.to(yd.dtype)


def _camera_directions(
    pix_x: torch.Tensor,  # [R]
    pix_y: torch.Tensor,  # [R]
    fx: torch.Tensor,  # [R] or []
    fy: torch.Tensor,
    cx: torch.Tensor,
    cy: torch.Tensor,
    distortion: torch.Tensor | None = None,  # [R, 5] or [5]
) -> torch.Tensor:
    """Unnormalised camera-space directions [R, 3] through the centres of pixels (pix_x, pix_y)."""
    x = (pix_x + 0.5 - cx) / fx
    y = (pix_y + 0.5 - cy) / fy  # image rows go down
    if distortion is not None:
        x, y = undistort(x, y, distortion)
    return torch.stack([x, -y, -torch.ones_like(x)], dim=-1)  # camera y goes up


def camera_rays(cameras: Cameras, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the centres of every pixel of view ``i``, row-major (index = row * W + column).

    Args:
        cameras: the cameras of one split.
        i: view index in [0, len(cameras)).

    Returns:
        origins: Tensor with shape (H*W, 3), the camera centre ``c2w[i, :, 3]`` repeated.
        directions: Tensor with shape (H*W, 3), unit length, in world space.
    """
    if not 0 <= i < len(cameras):
        raise IndexError(f"view {i} out of range for {len(cameras)} cameras")
    device = cameras.c2w.device
    rows, cols = torch.meshgrid(
        torch.arange(cameras.height, device=device, dtype=torch.float32),
        torch.arange(cameras.width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    distortion = None if cameras.distortion is None else cameras.distortion[i]
    local = _camera_directions(
        cols.reshape(-1), rows.reshape(-1), cameras.fx[i], cameras.fy[i], cameras.cx[i], cameras.cy[i], distortion
    )
    c2w = cameras.c2w[i]  # [3, 4]
    directions = torch.nn.functional.normalize(local @ c2w[:, :3].T, dim=-1)
    return c2w[:, 3].expand_as(directions).contiguous(), directions


def camera_rays_at(
    cameras: Cameras,
    view_idx: torch.Tensor,  # [R] integer
    pix_y: torch.Tensor,  # [R]
    pix_x: torch.Tensor,  # [R]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays for a batch of (view, pixel) pairs, without building whole images; for random training batches.

    Args:
        cameras: the cameras of one split.
        view_idx: Tensor with shape (R,), integer view indices.
        pix_y: Tensor with shape (R,), pixel rows; integers, or floats for sub-pixel positions (the ray passes
            through ``pix_y + 0.5``).
        pix_x: Tensor with shape (R,), pixel columns, likewise.

    Returns:
        origins: Tensor with shape (R, 3), camera centres.
        directions: Tensor with shape (R, 3), unit length, in world space.

    Examples:
        >>> o, d = camera_rays_at(cams, torch.tensor([0, 3]), torch.tensor([10, 20]), torch.tensor([5, 7]))
        >>> o.shape, d.shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """
    view_idx = view_idx.to(cameras.c2w.device, torch.long)
    pix_x = pix_x.to(cameras.c2w.device, torch.float32)
    pix_y = pix_y.to(cameras.c2w.device, torch.float32)
    distortion = None if cameras.distortion is None else cameras.distortion[view_idx]
    local = _camera_directions(
        pix_x, pix_y, cameras.fx[view_idx], cameras.fy[view_idx], cameras.cx[view_idx], cameras.cy[view_idx],
        distortion,
    )
    c2w = cameras.c2w[view_idx]  # [R, 3, 4]
    directions = torch.nn.functional.normalize(torch.einsum("rij,rj->ri", c2w[:, :, :3], local), dim=-1)
    return c2w[:, :, 3].contiguous(), directions


def ndc_rays(
    origins: torch.Tensor,  # [R, 3]
    directions: torch.Tensor,  # [R, 3]
    height: int,
    width: int,
    focal: float,
    near: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp world rays of a forward-facing capture into normalised device coordinates (NeRF's NDC, OpenGL camera).

    Each origin is first moved along its ray onto the plane z = -near, then both are projected:

    .. math::

        o' = \\left(-\\frac{2f}{W}\\frac{o_x}{o_z},\\ -\\frac{2f}{H}\\frac{o_y}{o_z},\\ 1 + \\frac{2n}{o_z}\\right),

        d' = \\left(-\\frac{2f}{W}\\Big(\\frac{d_x}{d_z} - \\frac{o_x}{o_z}\\Big),\\
                    -\\frac{2f}{H}\\Big(\\frac{d_y}{d_z} - \\frac{o_y}{o_z}\\Big),\\ -\\frac{2n}{o_z}\\right)

    so NDC origins lie on z' = -1 and the world ray's points at depth z in (-inf, -near] map to t' in [0, 1).
    The result does not depend on the length of ``directions``.

    Args:
        origins: Tensor with shape (R, 3), world-space ray origins.
        directions: Tensor with shape (R, 3), world-space ray directions (any non-zero length, d_z != 0).
        height: image height H in pixels.
        width: image width W in pixels.
        focal: focal length f in pixels at this image size.
        near: depth n of the near plane.

    Returns:
        origins: Tensor with shape (R, 3), NDC origins (z = -1).
        directions: Tensor with shape (R, 3), NDC directions, not normalised: o' + t' d' reaches z' = 1 at t' = 1.
    """
    t = -(near + origins[:, 2]) / directions[:, 2]
    o = origins + t[:, None] * directions
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = directions.unbind(-1)
    sx, sy = -2.0 * focal / width, -2.0 * focal / height
    ndc_o = torch.stack([sx * ox / oz, sy * oy / oz, 1.0 + 2.0 * near / oz], dim=-1)
    ndc_d = torch.stack([sx * (dx / dz - ox / oz), sy * (dy / dz - oy / oz), -2.0 * near / oz], dim=-1)
    return ndc_o, ndc_d
