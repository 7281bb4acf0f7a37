"""LLFF reader: forward-facing captures (``poses_bounds.npy`` plus ``images_{k}/``), rendered with NDC rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vqrf.data import (
    IMAGE_SUFFIXES,
    ImageLoader,
    check_downscale,
    check_split,
    image_header,
    make_cameras,
    one_line,
    scaled_size,
    split_views,
)
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError

__all__ = ["load_llff", "forward_facing_scene", "recenter_poses", "image_folders"]

AABB = ((-1.5, -1.67, -1.0), (1.5, 1.67, 1.0))  # in NDC


def load_llff(root: str | Path, split: str = "train", downscale: float = 1.0) -> Scene:
    """Read split ``split`` of an LLFF scene.

    Images come from ``images_{downscale}/`` (``images/`` at 1) when that folder exists; otherwise the folder with the
    largest factor below ``downscale`` is resized with LANCZOS to int(W / downscale) x int(H / downscale). The focal
    length of ``poses_bounds.npy`` (full resolution W x H) scales by the ratio of the image size to W and H, and the
    principal point is the image centre.

    Poses go from LLFF's [down, right, back] columns to [right, up, back] (OpenGL), are recentred on their average
    pose, and divided, with the depth bounds, by 0.75 * (smallest near bound), so the nearest content sits beyond
    the NDC near plane z = -1. Every 8th view (0, 8, 16, ...) is held out: ``test`` and ``val`` are those views,
    ``train`` the rest.
    """
    root = Path(root)
    check_split(split, root)
    downscale = check_downscale(downscale, root)
    npy = root / "poses_bounds.npy"
    c2w, full_hwf, bounds = _read_poses_bounds(npy)
    paths, native_size, size = _images(root, downscale, len(c2w))
    full_h, full_w, focal = full_hwf
    fx, fy = focal * native_size[0] / full_w, focal * native_size[1] / full_h
    n = len(c2w)
    return forward_facing_scene(root, split, c2w, bounds, np.full(n, fx), np.full(n, fy),
                                np.full(n, native_size[0] / 2), np.full(n, native_size[1] / 2), None, paths,
                                native_size, size, downscale)


def forward_facing_scene(
    root: Path,
    split: str,
    c2w: np.ndarray,  # [N, 3, 4] OpenGL, every view
    bounds: np.ndarray,  # [N, 2] nearest and farthest content depth of each view
    fx: np.ndarray,  # [N] pixels at native_size
    fy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    distortion: np.ndarray | None,  # [N, 5] OpenCV coefficients, or None
    paths: list[Path],
    native_size: tuple[int, int],  # (W, H) of the files
    size: tuple[int, int],  # (W, H) to render at
    downscale: float,
) -> Scene:
    """One split of a forward-facing capture, with LLFF's recentring and scaling, rendered with NDC rays."""
    c2w = recenter_poses(c2w)
    scale = 0.75 * bounds.min()
    c2w[:, :, 3] /= scale
    sx, sy = size[0] / native_size[0], size[1] / native_size[1]
    views = split_views(len(c2w), split)
    chosen = tuple(paths[v] for v in views)
    cameras = make_cameras(c2w[views], fx[views] * sx, fy[views] * sy, cx[views] * sx, cy[views] * sy, size,
                           None if distortion is None else distortion[views])
    return Scene(
        name=root.name,
        root=root,
        split=split,
        cameras=cameras,
        aabb=torch.tensor(AABB, dtype=torch.float32),
        near=0.0,
        far=1.0,
        white_bg=False,
        load_image=ImageLoader(chosen, native_size, size, white_bg=False),
        image_names=[p.stem for p in chosen],
        ndc=True,
        ndc_focal=float(fx[0] * sx),
        downscale=downscale,
        depth_bounds=(float(bounds.min() / scale), float(bounds.max() / scale)),
    )


def recenter_poses(c2w: np.ndarray) -> np.ndarray:
    """Poses [N, 3, 4] (OpenGL) expressed in the frame of their average pose, so that frame becomes the identity.

    The average pose sits at the mean camera centre, looks along the normalised mean z axis, with the mean y axis
    (made orthogonal) as up.
    """
    centre = c2w[:, :, 3].mean(0)
    z = _normalize(c2w[:, :, 2].sum(0))
    x = _normalize(np.cross(c2w[:, :, 1].sum(0), z))
    y = np.cross(z, x)
    average = _homogeneous(np.stack([x, y, z, centre], axis=1)[None])[0]
    return (np.linalg.inv(average) @ _homogeneous(c2w))[:, :3]


def _read_poses_bounds(npy: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Poses [N, 3, 4] in OpenGL column order, full-resolution (H, W, focal) and depth bounds [N, 2]."""
    try:
        table = np.load(npy, allow_pickle=False)
    except FileNotFoundError:
        raise VqrfError(npy, "file not found") from None
    except Exception as e:  # numpy reports a bad .npy with ValueError, OSError, EOFError, ...
        raise VqrfError(npy, f"not a readable .npy array ({one_line(e)})") from e
    if table.ndim != 2 or table.shape[1] != 17 or len(table) == 0 or not np.issubdtype(table.dtype, np.number):
        raise VqrfError(npy, f"expected an N x 17 array of numbers, got shape {table.shape} ({table.dtype})")
    table = table.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if len(bad):
        raise VqrfError(npy, f"row {bad[0]} has NaN or infinite values")
    poses = table[:, :15].reshape(-1, 3, 5)
    bounds = table[:, 15:]
    if bounds.min() <= 0:
        raise VqrfError(npy, f"depth bounds must be positive, smallest is {bounds.min():g}")
    h, w, focal = poses[0, :, 4]
    if min(h, w, focal) <= 0:
        raise VqrfError(npy, f"row 0 has a non-positive image size or focal length ({h:g}, {w:g}, {focal:g})")
    down, right, back, centre = (poses[:, :, k] for k in range(4))
    c2w = np.stack([right, -down, back, centre], axis=-1)  # [down, right, back] -> [right, up, back]
    return c2w, (h, w, focal), bounds


def _images(root: Path, downscale: float, n_poses: int) -> tuple[list[Path], tuple[int, int], tuple[int, int]]:
    """Image files of the folder that serves ``downscale``, their (W, H) and the (W, H) to resize them to."""
    folders = image_folders(root)
    usable = [factor for factor in folders if factor <= downscale]
    if not usable:
        found = ", ".join(folders[f].name for f in sorted(folders)) or "none"
        raise VqrfError(
            root, f"no image folder for downscale {downscale:g} (found {found}; images are never upsampled)"
        )
    factor = max(usable)
    folder = folders[factor]
    paths = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(paths) != n_poses:
        raise VqrfError(folder, f"{len(paths)} images but poses_bounds.npy has {n_poses} poses")
    native_size, _ = image_header(paths[0])
    size = native_size if factor == downscale else scaled_size(native_size, downscale / factor, root)
    return paths, native_size, size


def image_folders(root: Path) -> dict[int, Path]:
    """Image folders by downscale factor: ``images`` is 1, ``images_k`` is k."""
    folders = {1: root / "images"} if (root / "images").is_dir() else {}
    for path in root.glob("images_*"):
        factor = path.name.removeprefix("images_")
        if path.is_dir() and factor.isdigit() and int(factor) > 0:
            folders[int(factor)] = path
    return folders


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _homogeneous(c2w: np.ndarray) -> np.ndarray:
    """[N, 3, 4] -> [N, 4, 4] with the row (0, 0, 0, 1) appended."""
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(c2w), 1, 4))
    return np.concatenate([c2w, bottom], axis=1)
