"""Dataset readers. Every reader returns a :class:`~vqrf.data.scene.Scene`.

``load_scene`` picks the reader from the folder layout:

- ``blender``: ``transforms_{train,val,test}.json`` (NeRF-Synthetic), :mod:`vqrf.data.blender`;
- ``llff``: ``poses_bounds.npy`` (forward-facing captures, NDC rays), :mod:`vqrf.data.llff`;
- ``nsvf`` / ``tt``: ``intrinsics.txt`` and ``pose/`` (Synthetic-NSVF, Tanks&Temples), :mod:`vqrf.data.nsvf`;
- ``colmap``: ``sparse/0/{cameras,images,points3D}.{bin,txt}`` with ``images/`` (COLMAP), :mod:`vqrf.data.colmap`;
- ``ngp``: ``transforms.json`` (instant-ngp / nerfstudio), :mod:`vqrf.data.ngp`.

Real captures (COLMAP, and ``transforms.json`` without a box) are put in a canonical frame from their cameras and
rendered unbounded (contracted) or, when forward-facing, with NDC: :mod:`vqrf.data.capture`.

Readers read only metadata and image headers; images are decoded when ``Scene.image(i)`` first asks for them. The
helpers below are shared by the readers: each turns bad input into a one-line :class:`VqrfError` naming the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqrf.data.scene import Cameras, Scene
from vqrf.errors import VqrfError

__all__ = ["DATASET_KINDS", "Cameras", "Scene", "detect_kind", "load_scene"]

DATASET_KINDS = ("blender", "llff", "nsvf", "tt", "ngp", "colmap")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_TT_SCENES = {"barn", "caterpillar", "family", "ignatius", "truck"}  # the NSVF-hosted Tanks&Temples release


def detect_kind(path: str | Path) -> str:
    """The dataset kind (one of ``DATASET_KINDS``) of the folder ``path``, from the files it holds.

    An NSVF-layout folder counts as Tanks&Temples (``tt``) when it is named after a T&T scene (Barn, Caterpillar,
    Family, Ignatius, Truck) or sits in a folder whose name contains "tanks"; pass ``kind`` to override.
    """
    root = _existing_dir(path)
    if any((root / f"transforms_{split}.json").is_file() for split in ("train", "val", "test")):
        return "blender"
    from vqrf.data.colmap import model_folder

    if model_folder(root) is not None:
        return "colmap"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    if (root / "intrinsics.txt").is_file() and (root / "pose").is_dir():
        tt = root.name.lower() in _TT_SCENES or "tanks" in root.resolve().parent.name.lower()
        return "tt" if tt else "nsvf"
    if (root / "transforms.json").is_file():
        return "ngp"
    raise VqrfError(
        root,
        "not a known dataset layout (expected transforms_train.json, sparse/0 from COLMAP, poses_bounds.npy, "
        "intrinsics.txt with pose/, or transforms.json)",
    )


def load_scene(path: str | Path, split: str = "train", downscale: float = 1.0, kind: str = "auto",
               scene: str = "auto") -> Scene:
    """Read one split of the dataset in folder ``path``.

    Args:
        path: the scene folder (e.g. ``nerf_synthetic/lego``).
        split: ``train``, ``val`` or ``test``.
        downscale: image size divisor; images are resized with LANCZOS and the intrinsics scaled to match. LLFF
            and COLMAP read ``images_{downscale}`` when it exists.
        kind: ``auto`` (detect from the files) or one of ``DATASET_KINDS``.
        scene: for captures (``colmap``, ``ngp``): ``auto``, ``bounded`` or ``unbounded`` (see
            :mod:`vqrf.data.capture`); the benchmark layouts are bounded (LLFF: NDC) and take only ``auto``.
    """
    root = _existing_dir(path)
    if kind == "auto":
        kind = detect_kind(root)
    if scene != "auto" and kind not in ("colmap", "ngp"):
        raise VqrfError(root, f"--scene {scene} applies to captures (COLMAP, transforms.json); a {kind} dataset "
                              "has a fixed scene box")
    if kind == "colmap":
        from vqrf.data.colmap import load_colmap

        return load_colmap(root, split, downscale, scene)
    if kind == "blender":
        from vqrf.data.blender import load_blender

        return load_blender(root, split, downscale)
    if kind == "llff":
        from vqrf.data.llff import load_llff

        return load_llff(root, split, downscale)
    if kind in ("nsvf", "tt"):
        from vqrf.data.nsvf import load_nsvf

        return load_nsvf(root, split, downscale, kind)
    if kind == "ngp":
        from vqrf.data.ngp import load_ngp

        return load_ngp(root, split, downscale, scene)
    raise VqrfError(None, f"unknown dataset kind '{kind}' (expected auto, {', '.join(DATASET_KINDS)})")


def _existing_dir(path: str | Path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise VqrfError(root, "not a directory" if root.exists() else "no such directory")
    return root


# ---------------------------------------------------------------------------------------------------------------------
# Shared by the readers.


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type name when it has no message)."""
    return " ".join(str(error).split()) or type(error).__name__


def check_split(split: str, root: Path) -> None:
    """Refuse a split other than train, val and test (for layouts whose splits are not files)."""
    if split not in ("train", "val", "test"):
        raise VqrfError(root, f"unknown split '{split}' (expected train, val or test)")


def check_downscale(downscale: float, root: Path) -> float:
    """``downscale`` as a float, refused unless positive and finite."""
    try:
        value = float(downscale)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise VqrfError(root, f"downscale must be a positive number, got {downscale!r}")
    return value


def scaled_size(size: tuple[int, int], downscale: float, root: Path) -> tuple[int, int]:
    """(W, H) divided by ``downscale`` and truncated, as the reference code does; refused when it leaves no pixel."""
    w, h = int(size[0] / downscale), int(size[1] / downscale)
    if w < 1 or h < 1:
        raise VqrfError(root, f"downscale {downscale:g} leaves no pixel of the {size[0]}x{size[1]} images")
    return w, h


def read_json(path: Path) -> Any:
    """The parsed JSON file ``path``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VqrfError(path, "file not found") from None
    except OSError as e:
        raise VqrfError(path, f"cannot read file ({e.strerror})") from e
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise VqrfError(path, f"not valid JSON (line {e.lineno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise VqrfError(path, "not valid JSON (not UTF-8 text)") from e


def json_get(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    """``obj[key]``, checked to exist and to be of type ``kind``; ``where`` locates ``obj`` in the file."""
    prefix = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise VqrfError(path, f"{prefix}expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise VqrfError(path, f"{prefix}missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise VqrfError(path, f"{prefix}'{key}' has the wrong type ({type(value).__name__})")
    return value


def c2w_matrix(value: Any, path: Path, where: str = "") -> np.ndarray:
    """A camera-to-world pose given as a 4x4 or 3x4 nested list or array: [3, 4] float64, finite."""
    prefix = f"{where}: " if where else ""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise VqrfError(path, f"{prefix}pose is not a matrix of numbers") from None
    if matrix.shape not in ((4, 4), (3, 4)):
        raise VqrfError(path, f"{prefix}pose must be a 4x4 matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise VqrfError(path, f"{prefix}pose has NaN or infinite values")
    return matrix[:3]


def find_image(base: Path, file_path: str, listed_in: Path) -> Path:
    """The image ``base / file_path``, trying the usual suffixes when ``file_path`` has none that exists."""
    candidate = base / file_path
    if candidate.is_file():
        return candidate
    for suffix in IMAGE_SUFFIXES:
        with_suffix = candidate.with_name(candidate.name + suffix)
        if with_suffix.is_file():
            return with_suffix
    missing = candidate if candidate.suffix in IMAGE_SUFFIXES else candidate.with_name(candidate.name + ".png")
    raise VqrfError(missing, f"image file not found (listed in {listed_in.name})")


def image_header(path: Path) -> tuple[tuple[int, int], bool]:
    """(W, H) and whether the image has an alpha channel, from the file header alone (no decoding)."""
    try:
        with Image.open(path) as image:
            return image.size, image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    except Exception as e:  # PIL reports unreadable files with several exception types
        raise _image_error(path, e) from e


def _decode(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)  # convert() decodes the pixels, so corrupt data fails here
    except Exception as e:  # PIL reports corrupt data with OSError, SyntaxError, zlib.error, ValueError, ...
        raise _image_error(path, e) from e


def _image_error(path: Path, error: Exception) -> VqrfError:
    if isinstance(error, FileNotFoundError):
        return VqrfError(path, "image file not found")
    if isinstance(error, UnidentifiedImageError):  # its message repeats the path
        return VqrfError(path, "not a readable image (unknown format or corrupt header)")
    return VqrfError(path, f"not a readable image ({one_line(error)})")


@dataclass(frozen=True)
class ImageLoader:
    """Decodes view ``i`` on demand, as ``Scene.load_image`` expects: [H, W, 3] float32 in [0, 1].

    Every file must be ``native_size``; it is resized with LANCZOS to ``size`` (the cameras' size) before the alpha
    composite, as the reference code and the scorer build ground truth. Picklable, so scenes can cross processes.
    """

    paths: tuple[Path, ...]
    native_size: tuple[int, int]  # (W, H) of the files
    size: tuple[int, int]  # (W, H) of the cameras
    white_bg: bool  # composite RGBA onto white; otherwise drop any alpha

    def __call__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        image = _decode(path, "RGBA" if self.white_bg else "RGB")
        if image.size != self.native_size:
            (w, h), (nw, nh) = image.size, self.native_size
            raise VqrfError(path, f"image is {w}x{h} but the other images of this split are {nw}x{nh}")
        if image.size != self.size:
            image = image.resize(self.size, Image.LANCZOS)
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        if self.white_bg:
            pixels = pixels[..., :3] * pixels[..., 3:] + (1.0 - pixels[..., 3:])
        return pixels.astype(np.float32)


HOLD_EVERY = 8  # layouts without split files hold out views 0, 8, 16, ... as test (and val)


def split_views(n: int, split: str) -> np.ndarray:
    """Indices of ``split`` among ``n`` views: every 8th view (0, 8, ...) for test and val, the rest for train."""
    held_out = np.arange(n) % HOLD_EVERY == 0
    return np.flatnonzero(held_out if split != "train" else ~held_out)


def make_cameras(
    c2w: np.ndarray,  # [N, 3, 4]
    fx: float | np.ndarray,  # scalar or [N]
    fy: float | np.ndarray,
    cx: float | np.ndarray,
    cy: float | np.ndarray,
    size: tuple[int, int],  # (W, H)
    distortion: np.ndarray | None = None,  # [N, 5] OpenCV (k1, k2, p1, p2, k3); all zero or None: none
) -> Cameras:
    """:class:`Cameras` (float32 tensors) from numpy poses and per-view or shared intrinsics in pixels."""
    n = c2w.shape[0]

    def per_view(value: float | np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(np.asarray(value, dtype=np.float32), (n,)).copy())

    return Cameras(
        c2w=torch.from_numpy(np.ascontiguousarray(c2w, dtype=np.float32)),
        fx=per_view(fx),
        fy=per_view(fy),
        cx=per_view(cx),
        cy=per_view(cy),
        width=size[0],
        height=size[1],
        distortion=torch.from_numpy(distortion.astype(np.float32)) if distortion is not None and np.any(distortion)
        else None,
    )
