"""NeRF-Synthetic (Blender) reader: ``transforms_{split}.json`` plus RGBA PNGs composited onto white."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vqrf.data import (
    ImageLoader,
    c2w_matrix,
    check_downscale,
    find_image,
    image_header,
    json_get,
    make_cameras,
    read_json,
    scaled_size,
)
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError

__all__ = ["load_blender"]

AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
NEAR, FAR = 2.0, 6.0


def load_blender(root: str | Path, split: str = "train", downscale: float = 1.0) -> Scene:
    """Read split ``split`` of a NeRF-Synthetic scene.

    The focal length is ``0.5 * W / tan(0.5 * camera_angle_x)`` at the files' size W x H (read from the first image's
    header); at ``downscale`` the images are W' = int(W / downscale) wide, fx and fy scale by W'/W and H'/H, and the
    principal point is the image centre (W'/2, H'/2). Poses are used as given (OpenGL convention).
    """
    root = Path(root)
    downscale = check_downscale(downscale, root)
    meta_path = root / f"transforms_{split}.json"
    if not meta_path.is_file():
        found = sorted(p.name for p in root.glob("transforms_*.json"))
        raise VqrfError(meta_path, f"file not found: no split '{split}' here (found {', '.join(found) or 'none'})")
    meta = read_json(meta_path)
    frames = json_get(meta, "frames", list, meta_path)
    if not frames:
        raise VqrfError(meta_path, "'frames' is empty")
    angle_x = float(json_get(meta, "camera_angle_x", (int, float), meta_path))
    if not 0 < angle_x < math.pi:
        raise VqrfError(meta_path, f"camera_angle_x must be in (0, pi) radians, got {angle_x}")

    paths, poses = [], []
    for k, frame in enumerate(frames):
        where = f"frame {k}"
        paths.append(find_image(root, json_get(frame, "file_path", str, meta_path, where), meta_path))
        poses.append(c2w_matrix(json_get(frame, "transform_matrix", list, meta_path, where), meta_path, where))

    native_size, _ = image_header(paths[0])
    size = scaled_size(native_size, downscale, root)
    focal = 0.5 * native_size[0] / math.tan(0.5 * angle_x)
    fx, fy = focal * size[0] / native_size[0], focal * size[1] / native_size[1]
    return Scene(
        name=root.name,
        root=root,
        split=split,
        cameras=make_cameras(np.stack(poses), fx, fy, size[0] / 2, size[1] / 2, size),
        aabb=torch.tensor(AABB, dtype=torch.float32),
        near=NEAR,
        far=FAR,
        white_bg=True,
        load_image=ImageLoader(tuple(paths), native_size, size, white_bg=True),
        image_names=[p.stem for p in paths],
        downscale=downscale,
    )
