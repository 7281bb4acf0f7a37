"""COLMAP reader: photos posed by COLMAP (``sparse/0`` plus ``images/``, optionally ``images_2/4/8``).

Camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV; distortion is applied when rays are made.
360-degree captures are put in the canonical frame of :mod:`vqrf.data.capture` and rendered unbounded (contracted);
forward-facing ones (``--scene auto``) get LLFF's NDC treatment, with depth bounds from the sparse points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqrf.data import check_downscale, check_split, image_header, scaled_size
from vqrf.data.capture import CaptureViews, capture_scene, is_forward_facing
from vqrf.data.colmap_model import ColmapCamera, ColmapModel, quaternion_to_matrix, read_model
from vqrf.data.llff import forward_facing_scene, image_folders
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError

__all__ = ["load_colmap", "model_folder", "colmap_views"]

SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
DEPTH_PERCENTILES = (0.1, 99.9)  # LLFF's near / far bounds from the sparse points' depths


def model_folder(root: Path) -> Path | None:
    """``root/sparse/0`` (or ``root/sparse``) when it holds a COLMAP model, else None."""
    for folder in (root / "sparse" / "0", root / "sparse"):
        if any((folder / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return folder
    return None


def load_colmap(root: str | Path, split: str = "train", downscale: float = 1.0, scene: str = "auto") -> Scene:
    """Read split ``split`` of a COLMAP capture; images sorted by name, every 8th (0, 8, ...) held out as test/val.

    ``scene``: ``auto`` (forward-facing captures: NDC; others: unbounded), ``bounded`` or ``unbounded``.
    """
    root = Path(root)
    check_split(split, root)
    downscale = check_downscale(downscale, root)
    folder = model_folder(root)
    if folder is None:
        raise VqrfError(root, "no COLMAP model (expected sparse/0/cameras.bin or cameras.txt)")
    model = read_model(folder)
    views, size = colmap_views(root, folder, model, downscale)
    if scene == "auto" and is_forward_facing(views.c2w):
        bounds = _depth_bounds(views.c2w, model.points, folder)
        return forward_facing_scene(root, split, views.c2w.copy(), bounds, views.fx, views.fy, views.cx, views.cy,
                                    views.distortion, views.paths, views.native_size, size, downscale)
    return capture_scene(root, views, split, downscale, scene, folder)


def colmap_views(root: Path, folder: Path, model: ColmapModel, downscale: float) -> tuple[CaptureViews, tuple[int, int]]:
    """Every registered image of ``model`` (sorted by name) as :class:`CaptureViews` at the resolution of the image
    folder that serves ``downscale``, and the (W, H) to render at."""
    images = sorted(model.images, key=lambda image: image.name)
    cameras = [model.cameras[image.camera_id] for image in images]
    sizes = sorted({(c.width, c.height) for c in cameras})
    if len(sizes) > 1:
        raise VqrfError(folder, f"cameras of different image sizes ({sizes[0][0]}x{sizes[0][1]} and "
                                f"{sizes[1][0]}x{sizes[1][1]}); vqrf needs one size")
    full_size = sizes[0]
    image_dir, factor = _image_folder(root, downscale)
    paths = [image_dir / image.name for image in images]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise VqrfError(missing, f"image file not found (listed in {folder.name}/images)")
    native_size, has_alpha = image_header(paths[0])
    size = native_size if factor == downscale else scaled_size(full_size, downscale, root)
    intrinsics = np.array([_intrinsics(c, folder) for c in cameras])  # [N, 9]: fx fy cx cy k1 k2 p1 p2 k3
    ratio = np.array([native_size[0] / full_size[0], native_size[1] / full_size[1]])
    c2w = np.stack([_opengl_c2w(image.qvec, image.tvec) for image in images])
    views = CaptureViews(
        c2w=c2w,
        fx=intrinsics[:, 0] * ratio[0],
        fy=intrinsics[:, 1] * ratio[1],
        cx=intrinsics[:, 2] * ratio[0],
        cy=intrinsics[:, 3] * ratio[1],
        distortion=intrinsics[:, 4:] if np.any(intrinsics[:, 4:]) else None,
        paths=paths,
        native_size=native_size,
        has_alpha=has_alpha,
    )
    return views, size


def _image_folder(root: Path, downscale: float) -> tuple[Path, int]:
    """The image folder with the largest downscale factor not above ``downscale`` (``images`` is 1)."""
    folders = image_folders(root)
    usable = [factor for factor in folders if factor <= downscale]
    if not usable:
        found = ", ".join(folders[f].name for f in sorted(folders)) or "none"
        raise VqrfError(root, f"no image folder for downscale {downscale:g} (found {found})")
    factor = max(usable)
    return folders[factor], factor


def _intrinsics(camera: ColmapCamera, folder: Path) -> list[float]:
    """(fx, fy, cx, cy, k1, k2, p1, p2, k3) of a camera of one of the supported models."""
    p = camera.params
    if camera.model == "SIMPLE_PINHOLE":
        return [p[0], p[0], p[1], p[2], 0, 0, 0, 0, 0]
    if camera.model == "PINHOLE":
        return [p[0], p[1], p[2], p[3], 0, 0, 0, 0, 0]
    if camera.model == "SIMPLE_RADIAL":
        return [p[0], p[0], p[1], p[2], p[3], 0, 0, 0, 0]
    if camera.model == "RADIAL":
        return [p[0], p[0], p[1], p[2], p[3], p[4], 0, 0, 0]
    if camera.model == "OPENCV":
        return [p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], 0]
    raise VqrfError(folder, f"camera model {camera.model} is not supported (supported: {', '.join(SUPPORTED_MODELS)}); "
                            "undistort the images first with `colmap image_undistorter`")


def _opengl_c2w(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """[3, 4] OpenGL camera-to-world from COLMAP's world-to-camera (OpenCV axes: y down, z forward)."""
    rotation = quaternion_to_matrix(qvec)
    c2w = np.concatenate([rotation.T, (-rotation.T @ tvec)[:, None]], axis=1)
    c2w[:, 1:3] *= -1  # OpenCV (x right, y down, z forward) -> OpenGL (x right, y up, z back)
    return c2w


def _depth_bounds(c2w: np.ndarray, points: np.ndarray, folder: Path) -> np.ndarray:
    """[N, 2] near and far content depth of each view from the sparse points in front of it (LLFF's percentiles)."""
    if len(points) == 0:
        raise VqrfError(folder, "a forward-facing capture needs the sparse points (points3D) for its depth bounds; "
                                "or train it with --scene unbounded")
    bounds = []
    for pose in c2w:
        depth = (points - pose[:, 3]) @ -pose[:, 2]
        depth = depth[depth > 0]
        if len(depth) == 0:
            raise VqrfError(folder, "a camera sees none of the sparse points; train with --scene unbounded")
        bounds.append(np.percentile(depth, DEPTH_PERCENTILES))
    return np.array(bounds)
