"""Synthetic-NSVF and Tanks&Temples reader (the NSVF layout).

A scene folder holds ``intrinsics.txt``, ``bbox.txt``, ``pose/{prefix}*.txt`` (4x4 camera-to-world, OpenCV
convention: x right, y down, z forward) and ``rgb/{prefix}*.png`` (RGBA or RGB). The prefix names the split: ``0_``
train, ``1_`` val, ``2_`` test (test falls back to ``1_`` when there is no ``2_`` file).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from vqrf.data import (
    IMAGE_SUFFIXES,
    ImageLoader,
    c2w_matrix,
    check_downscale,
    check_split,
    image_header,
    make_cameras,
    one_line,
    scaled_size,
)
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError

__all__ = ["load_nsvf", "read_intrinsics"]

NEAR_FAR = {"nsvf": (0.5, 6.0), "tt": (0.01, 6.0)}
TT_BBOX_SCALE = 1.2  # the reference scales the T&T box about the origin, not about its centre
_PREFIXES = {"train": ("0_",), "val": ("1_",), "test": ("2_", "1_")}
# The NSVF-hosted Ignatius/intrinsics.txt is in neither format; DirectVoxGO#4 published this replacement.
_IGNATIUS = ((1166.564936839068, 1166.564936839068, 960.0, 540.0), (1920, 1080))


def load_nsvf(root: str | Path, split: str = "train", downscale: float = 1.0, kind: str = "nsvf") -> Scene:
    """Read split ``split`` of a Synthetic-NSVF (``kind='nsvf'``) or Tanks&Temples (``kind='tt'``) scene.

    The intrinsics, given at the files' size W x H, scale by W'/W and H'/H where W' = int(W / downscale). Poses turn
    from OpenCV to OpenGL by negating their y and z axes. The box is the first 6 numbers of ``bbox.txt`` (min xyz,
    max xyz), times 1.2 for T&T. Near/far: 0.5/6 (nsvf), 0.01/6 (tt). RGBA images are composited onto white.
    """
    root = Path(root)
    if kind not in NEAR_FAR:
        raise VqrfError(root, f"unknown NSVF-layout kind '{kind}' (expected nsvf or tt)")
    check_split(split, root)
    downscale = check_downscale(downscale, root)
    pose_files = _split_files(root / "pose", split)
    paths = [_image_for(root, pose_file) for pose_file in pose_files]
    c2w = np.stack([_read_pose(pose_file) for pose_file in pose_files])
    c2w[:, :, 1:3] *= -1  # OpenCV (y down, z forward) -> OpenGL (y up, z backward)

    native_size, _ = image_header(paths[0])
    size = scaled_size(native_size, downscale, root)
    fx, fy, cx, cy = read_intrinsics(root / "intrinsics.txt", native_size)
    sx, sy = size[0] / native_size[0], size[1] / native_size[1]
    aabb = _read_bbox(root / "bbox.txt") * (TT_BBOX_SCALE if kind == "tt" else 1.0)
    near, far = NEAR_FAR[kind]
    return Scene(
        name=root.name,
        root=root,
        split=split,
        cameras=make_cameras(c2w, fx * sx, fy * sy, cx * sx, cy * sy, size),
        aabb=torch.from_numpy(aabb.astype(np.float32)),
        near=near,
        far=far,
        white_bg=True,
        load_image=ImageLoader(tuple(paths), native_size, size, white_bg=True),
        image_names=[p.stem for p in paths],
        downscale=downscale,
    )


def read_intrinsics(path: Path, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels from an NSVF ``intrinsics.txt`` for images of ``image_size`` (W, H).

    Accepted: a 3x3, 3x4 or 4x4 matrix (or its 9 or 16 numbers on one line), or a first line "f cx cy [0]" (the
    DeepVoxels style, fx = fy = f). A file in neither format is refused, except the known malformed Tanks&Temples
    ``Ignatius/intrinsics.txt`` (1920x1080 images), which is replaced by its published matrix with a warning.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise VqrfError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VqrfError(path, f"cannot read file ({one_line(e)})") from e
    parsed = _parse_intrinsics(text)
    if parsed is not None:
        return parsed
    if path.parent.name.lower() == "ignatius" and tuple(image_size) == _IGNATIUS[1]:
        warnings.warn(f"{path}: unreadable intrinsics, using the published Ignatius matrix", stacklevel=2)
        return _IGNATIUS[0]
    raise VqrfError(path, "not an intrinsics file (expected a 3x3 or 4x4 matrix, or a first line 'f cx cy 0')")


def _parse_intrinsics(text: str) -> tuple[float, float, float, float] | None:
    """(fx, fy, cx, cy) from the text of an intrinsics file, or None when it is in neither accepted format."""
    try:
        rows = [[float(token) for token in line.split()] for line in text.splitlines() if line.strip()]
    except ValueError:
        return None
    if len(rows) == 1 and len(rows[0]) in (9, 16):
        side = 3 if len(rows[0]) == 9 else 4
        rows = [rows[0][r * side : (r + 1) * side] for r in range(side)]
    if not rows:
        return None
    if len(rows) >= 3 and len({len(row) for row in rows}) == 1 and len(rows[0]) >= 3:
        values = (rows[0][0], rows[1][1], rows[0][2], rows[1][2])
    elif len(rows[0]) in (3, 4):
        values = (rows[0][0], rows[0][0], rows[0][1], rows[0][2])
    else:
        return None
    # Both a focal length and a principal point inside the image are positive; this also rejects a matrix's first
    # row ("fx 0 cx 0") misread as "f cx cy 0".
    return values if all(math.isfinite(v) and v > 0 for v in values) else None


def _split_files(pose_dir: Path, split: str) -> list[Path]:
    """The pose files of ``split``, sorted by name."""
    if not pose_dir.is_dir():
        raise VqrfError(pose_dir, "no such directory")
    files = sorted(p for p in pose_dir.iterdir() if p.suffix == ".txt")
    for prefix in _PREFIXES[split]:
        chosen = [p for p in files if p.name.startswith(prefix)]
        if chosen:
            return chosen
    wanted = " or ".join(f"'{p}'" for p in _PREFIXES[split])
    raise VqrfError(pose_dir, f"no pose files for split '{split}' (names starting with {wanted})")


def _image_for(root: Path, pose_file: Path) -> Path:
    """rgb/<stem>.png (or another image suffix) for pose/<stem>.txt."""
    for suffix in IMAGE_SUFFIXES:
        path = root / "rgb" / (pose_file.stem + suffix)
        if path.is_file():
            return path
    raise VqrfError(root / "rgb" / (pose_file.stem + ".png"), f"image file not found (for pose/{pose_file.name})")


def _read_pose(path: Path) -> np.ndarray:
    """Camera-to-world [3, 4] from a text file holding a 4x4 (or 3x4) matrix."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except Exception as e:  # numpy reports unreadable text with ValueError, OSError, UnicodeDecodeError, ...
        raise VqrfError(path, f"not a matrix of numbers ({one_line(e)})") from e
    return c2w_matrix(values, path)


def _read_bbox(path: Path) -> np.ndarray:
    """The box [2, 3]: min corner, max corner, from the first 6 numbers of ``bbox.txt``."""
    try:
        values = [float(token) for token in path.read_text().split()[:6]]
    except FileNotFoundError:
        raise VqrfError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise VqrfError(path, f"not a list of numbers ({one_line(e)})") from e
    box = np.array(values, dtype=np.float64)
    if len(box) < 6 or not np.isfinite(box).all() or (box[:3] >= box[3:]).any():
        raise VqrfError(path, "expected 6 finite numbers: min x y z, then a larger max x y z")
    return box.reshape(2, 3)
