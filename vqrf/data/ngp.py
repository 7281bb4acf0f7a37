"""instant-ngp / nerfstudio reader: one ``transforms.json`` listing every frame (OpenGL camera-to-world poses)."""

from __future__ import annotations

import math
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqrf.data import (
    ImageLoader,
    c2w_matrix,
    check_downscale,
    check_split,
    find_image,
    image_header,
    json_get,
    make_cameras,
    read_json,
    scaled_size,
    split_views,
)
from vqrf.data.capture import CaptureViews, capture_scene, check_scene_kind
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError

__all__ = ["load_ngp"]

DEFAULT_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
DEFAULT_NEAR, DEFAULT_FAR = 2.0, 6.0
_NUMBER = (int, float)


def load_ngp(root: str | Path, split: str = "train", downscale: float = 1.0, scene: str = "auto") -> Scene:
    """Read split ``split`` of a scene described by ``root/transforms.json``.

    Intrinsics come from each frame or, failing that, the top level: ``fl_x``/``fl_y`` (or ``camera_angle_x``/
    ``camera_angle_y``; fl_y defaults to fl_x), ``cx``/``cy`` (default: the image centre), ``w``/``h`` (default:
    the first image's size) and OpenCV distortion ``k1``, ``k2``, ``k3``, ``p1``, ``p2`` (fisheye models are
    refused). ``file_path`` is relative to the json, with or without its suffix.

    Split: nerfstudio's ``{split}_filenames`` lists when the json has them; otherwise every 8th frame (0, 8, 16, ...)
    is held out as ``test`` (and ``val``) and the rest is ``train``.

    Scene (``scene``):

    - a json with ``aabb`` ([min xyz, max xyz]), or whose images have alpha (a masked object), is bounded in its own
      units: the ``aabb``, else instant-ngp's box from ``aabb_scale`` (the unit cube about ``offset``, divided by
      ``scale``, grown ``aabb_scale`` times), else [-1.5, 1.5]^3; near/far from the json or 2/6 (Blender's);
    - any other json is a real capture (:mod:`vqrf.data.capture`): unbounded in its canonical frame with ``auto``
      or ``unbounded``, or bounded in that frame's [-1, 1]^3 with ``bounded``. ``unbounded`` also overrides a box.
    """
    root = Path(root)
    check_split(split, root)
    check_scene_kind(scene)
    downscale = check_downscale(downscale, root)
    meta_path = root / "transforms.json"
    meta = read_json(meta_path)
    frames = json_get(meta, "frames", list, meta_path)
    if not frames:
        raise VqrfError(meta_path, "'frames' is empty")
    first_path = find_image(root, json_get(frames[0], "file_path", str, meta_path, "frame 0"), meta_path)
    first_size, has_alpha = image_header(first_path)
    own_box = "aabb" in meta or has_alpha or (scene == "bounded" and "aabb_scale" in meta)
    if scene == "unbounded" or not own_box:
        return _capture(root, meta, frames, split, downscale, scene, meta_path, first_size, has_alpha)
    chosen = _split_frames(meta, frames, split, meta_path)
    paths, poses = _frames(root, chosen, meta_path)
    intrinsics = [_intrinsics(meta, frame, first_size, meta_path, f"frame {k}") for k, frame in chosen]
    native_size = _one_size(intrinsics, meta_path, f"frames of split '{split}'")
    size = scaled_size(native_size, downscale, root)
    sx, sy = size[0] / native_size[0], size[1] / native_size[1]
    fx, fy, cx, cy = np.array([k[2:] for k in intrinsics]).T
    aabb = _aabb(meta, meta_path)
    default_near, default_far = (DEFAULT_NEAR, DEFAULT_FAR) if "aabb_scale" not in meta or "aabb" in meta else (
        0.0, float((aabb[1] - aabb[0]).norm()))
    near, far = _number(meta, "near", default_near, meta_path), _number(meta, "far", default_far, meta_path)
    if near >= far:
        raise VqrfError(meta_path, f"'near' ({near:g}) must be smaller than 'far' ({far:g})")
    distortion = np.array([_distortion(meta, frame, meta_path, f"frame {k}") for k, frame in chosen])
    cameras = make_cameras(np.stack(poses), fx * sx, fy * sy, cx * sx, cy * sy, size, distortion)
    return Scene(
        name=root.name,
        root=root,
        split=split,
        cameras=cameras,
        aabb=aabb,
        near=near,
        far=far,
        white_bg=has_alpha,
        load_image=ImageLoader(tuple(paths), native_size, size, white_bg=has_alpha),
        image_names=[p.stem for p in paths],
        downscale=downscale,
    )


def _capture(root: Path, meta: dict, frames: list, split: str, downscale: float, scene: str, meta_path: Path,
             first_size: tuple[int, int], has_alpha: bool) -> Scene:
    """A real capture: every frame in the canonical frame of :mod:`vqrf.data.capture`."""
    every = list(enumerate(frames))
    paths, poses = _frames(root, every, meta_path)
    intrinsics = [_intrinsics(meta, frame, first_size, meta_path, f"frame {k}") for k, frame in every]
    native_size = _one_size(intrinsics, meta_path, "frames")
    fx, fy, cx, cy = np.array([k[2:] for k in intrinsics]).T
    distortion = np.array([_distortion(meta, frame, meta_path, f"frame {k}") for k, frame in every])
    views = CaptureViews(np.stack(poses), fx, fy, cx, cy, distortion if np.any(distortion) else None, paths,
                         native_size, has_alpha)
    chosen = np.array([k for k, _ in _split_frames(meta, frames, split, meta_path)])
    return capture_scene(root, views, split, downscale, scene, meta_path, chosen)


def _frames(root: Path, chosen: list[tuple[int, Any]], meta_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """Image paths and [3, 4] poses of the frames ``chosen``."""
    paths, poses = [], []
    for k, frame in chosen:
        where = f"frame {k}"
        paths.append(find_image(root, json_get(frame, "file_path", str, meta_path, where), meta_path))
        poses.append(c2w_matrix(json_get(frame, "transform_matrix", list, meta_path, where), meta_path, where))
    return paths, poses


def _one_size(intrinsics: list[tuple], meta_path: Path, what: str) -> tuple[int, int]:
    sizes = sorted({(w, h) for w, h, *_ in intrinsics})
    if len(sizes) > 1:
        (w0, h0), (w1, h1) = sizes[:2]
        raise VqrfError(meta_path, f"{what} have different image sizes ({w0}x{h0} and {w1}x{h1})")
    return sizes[0]


_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")


def _distortion(meta: dict, frame: dict, meta_path: Path, where: str) -> list[float]:
    """OpenCV (k1, k2, p1, p2, k3) of a frame (frame keys win over top-level ones; missing keys are 0)."""
    model = str(frame.get("camera_model", meta.get("camera_model", "OPENCV")))
    fisheye = bool(frame.get("is_fisheye", meta.get("is_fisheye", False))) or "FISHEYE" in model.upper()
    if fisheye or float(frame.get("k4", meta.get("k4", 0)) or 0) != 0:
        raise VqrfError(meta_path, f"{where}: fisheye cameras are not supported; undistort the images first")
    out = []
    for key in _DISTORTION_KEYS:
        source = frame if key in frame else meta
        value = float(json_get(source, key, _NUMBER, meta_path, where)) if key in source else 0.0
        if not math.isfinite(value):
            raise VqrfError(meta_path, f"{where}: '{key}' must be a finite number")
        out.append(value)
    return out


def _split_frames(meta: dict, frames: list, split: str, meta_path: Path) -> list[tuple[int, Any]]:
    """(index in the json, frame) of the frames of ``split``."""
    if any(f"{name}_filenames" in meta for name in ("train", "val", "test")):
        listed = {_normalized(str(name)) for name in json_get(meta, f"{split}_filenames", list, meta_path)}
        file_paths = [json_get(frame, "file_path", str, meta_path, f"frame {k}") for k, frame in enumerate(frames)]
        chosen = [(k, frames[k]) for k, file_path in enumerate(file_paths) if _normalized(file_path) in listed]
    else:
        chosen = [(int(k), frames[k]) for k in split_views(len(frames), split)]
    if not chosen:
        raise VqrfError(meta_path, f"no frames for split '{split}'")
    return chosen


def _normalized(file_path: str) -> str:
    """A relative file path compared without './' and without its suffix (file_path may omit it)."""
    return posixpath.splitext(posixpath.normpath(file_path))[0]


def _intrinsics(
    meta: dict, frame: dict, default_size: tuple[int, int], meta_path: Path, where: str
) -> tuple[int, int, float, float, float, float]:
    """(w, h, fx, fy, cx, cy) of one frame; frame keys win over top-level ones, then (w, h) = ``default_size``."""

    def get(key: str) -> Any:
        return frame.get(key, meta.get(key))

    def number(key: str) -> float:
        source = frame if key in frame else meta
        value = float(json_get(source, key, _NUMBER, meta_path, where))
        if not (math.isfinite(value) and value > 0):
            raise VqrfError(meta_path, f"{where}: '{key}' must be a positive number, got {value}")
        return value

    if get("w") is not None and get("h") is not None:
        w, h = int(number("w")), int(number("h"))
    else:
        w, h = default_size
    if get("fl_x") is not None:
        fx = number("fl_x")
    elif get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * number("camera_angle_x"))
    else:
        raise VqrfError(meta_path, f"{where}: no focal length ('fl_x' or 'camera_angle_x')")
    if get("fl_y") is not None:
        fy = number("fl_y")
    elif get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * number("camera_angle_y"))
    else:
        fy = fx
    if not (fx > 0 and fy > 0):  # a field of view of pi or more gives no focal length
        raise VqrfError(meta_path, f"{where}: the field of view must be below pi radians")
    cx = number("cx") if get("cx") is not None else w / 2
    cy = number("cy") if get("cy") is not None else h / 2
    return w, h, fx, fy, cx, cy


def _aabb(meta: dict, meta_path: Path) -> torch.Tensor:
    if "aabb" not in meta and "aabb_scale" in meta:
        return _ngp_box(meta, meta_path)
    if "aabb" not in meta:
        return torch.tensor(DEFAULT_AABB, dtype=torch.float32)
    try:
        box = np.asarray(meta["aabb"], dtype=np.float64)
    except (TypeError, ValueError):
        box = np.zeros(0)
    if box.shape != (2, 3) or not np.isfinite(box).all() or (box[0] >= box[1]).any():
        raise VqrfError(meta_path, "'aabb' must be [[min x, y, z], [max x, y, z]] with min < max")
    return torch.from_numpy(box.astype(np.float32))


def _ngp_box(meta: dict, meta_path: Path) -> torch.Tensor:
    """instant-ngp's box in the json's units: the unit cube about 0.5 grown ``aabb_scale`` times, mapped back through
    its ``scale`` (default 0.33) and ``offset`` (default 0.5 on each axis)."""
    grow = float(json_get(meta, "aabb_scale", _NUMBER, meta_path))
    scale = float(json_get(meta, "scale", _NUMBER, meta_path)) if "scale" in meta else 0.33
    offset = np.asarray(meta.get("offset", [0.5, 0.5, 0.5]), dtype=np.float64)
    if not (grow > 0 and scale > 0 and math.isfinite(grow) and math.isfinite(scale)) or offset.shape != (3,):
        raise VqrfError(meta_path, "'aabb_scale' and 'scale' must be positive numbers and 'offset' three numbers")
    box = np.stack([(0.5 - grow / 2 - offset) / scale, (0.5 + grow / 2 - offset) / scale])
    return torch.from_numpy(box.astype(np.float32))


def _number(meta: dict, key: str, default: float, meta_path: Path) -> float:
    value = float(json_get(meta, key, _NUMBER, meta_path)) if key in meta else default
    if not (math.isfinite(value) and value >= 0):
        raise VqrfError(meta_path, f"'{key}' must be a non-negative number, got {value}")
    return value
