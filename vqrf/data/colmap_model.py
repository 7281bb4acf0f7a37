"""COLMAP sparse models (``cameras``, ``images``, ``points3D`` as ``.bin`` or ``.txt``) read into plain arrays.

Only what a radiance field needs is kept: each camera's model, size and parameters; each registered image's
world-to-camera pose (OpenCV axes: x right, y down, z forward), camera and file name; the 3D points. The binary layout
is COLMAP's documented one (little-endian; see ``colmap/src/colmap/scene/reconstruction_io.cc``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqrf.errors import VqrfError

__all__ = ["CAMERA_MODELS", "ColmapCamera", "ColmapImage", "ColmapModel", "read_model", "quaternion_to_matrix"]

# COLMAP's camera models: id -> (name, number of parameters).
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
_PARAM_COUNT = {name: n for name, n in CAMERA_MODELS.values()}


@dataclass
class ColmapCamera:
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, COLMAP's order for ``model``


@dataclass
class ColmapImage:
    name: str
    camera_id: int
    qvec: np.ndarray  # [4] (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # [3] world-to-camera translation


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]  # registered images, in file order
    points: np.ndarray  # [P, 3] float64 world positions


def read_model(folder: Path) -> ColmapModel:
    """The model in ``folder`` (``sparse/0``): the ``.bin`` files when present, else the ``.txt`` ones."""
    binary = all((folder / f"{name}.bin").is_file() for name in ("cameras", "images"))
    text = all((folder / f"{name}.txt").is_file() for name in ("cameras", "images"))
    if not (binary or text):
        raise VqrfError(folder, "no COLMAP model here (expected cameras.bin and images.bin, or cameras.txt and "
                                "images.txt)")
    if binary:
        cameras = _read_cameras_bin(folder / "cameras.bin")
        images = _read_images_bin(folder / "images.bin")
        points_path = folder / "points3D.bin"
        points = _read_points_bin(points_path) if points_path.is_file() else np.zeros((0, 3))
    else:
        cameras = _read_cameras_txt(folder / "cameras.txt")
        images = _read_images_txt(folder / "images.txt")
        points_path = folder / "points3D.txt"
        points = _read_points_txt(points_path) if points_path.is_file() else np.zeros((0, 3))
    if not images:
        raise VqrfError(folder, "the COLMAP model has no registered images")
    for image in images:
        if image.camera_id not in cameras:
            raise VqrfError(folder, f"image '{image.name}' refers to camera {image.camera_id}, which is not in the model")
    return ColmapModel(cameras, images, points)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """[3, 3] rotation of the quaternion ``q`` = (w, x, y, z) (normalised first)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# ---- binary -----------------------------------------------------------------------------------------------------


class _Reader:
    """Sequential little-endian reads from a file's bytes; running past the end is a one-line error."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise VqrfError(path, f"cannot read file ({e.strerror})") from None
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise VqrfError(self.path, "truncated COLMAP binary file")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + size > len(self.data):
            raise VqrfError(self.path, "truncated COLMAP binary file")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def name(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise VqrfError(self.path, "truncated COLMAP binary file (unterminated image name)")
        raw, self.pos = self.data[self.pos:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise VqrfError(self.path, "an image name is not UTF-8 text") from None

    def count(self) -> int:
        """An entry count; every entry takes at least a byte, so a count beyond the bytes left is refused up front."""
        (n,) = self.take("Q")
        if n > len(self.data) - self.pos:
            raise VqrfError(self.path, f"truncated or corrupt COLMAP binary file ({n} entries announced, "
                                       f"{len(self.data) - self.pos} bytes left)")
        return n


def _camera(path: Path, camera_id: int, model: str, width: int, height: int, params: np.ndarray) -> ColmapCamera:
    if width <= 0 or height <= 0 or not np.isfinite(params).all():
        raise VqrfError(path, f"camera {camera_id} has a bad size or parameters")
    return ColmapCamera(model, int(width), int(height), np.asarray(params, dtype=np.float64))


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    cameras = {}
    for _ in range(r.count()):
        camera_id, model_id, width, height = r.take("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise VqrfError(path, f"camera {camera_id} has unknown model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        cameras[camera_id] = _camera(path, camera_id, name, width, height, r.array(np.float64, n_params))
    return cameras


_POINT2D = np.dtype([("xy", "<f8", 2), ("id", "<i8")])


def _read_images_bin(path: Path) -> list[ColmapImage]:
    r = _Reader(path)
    images = []
    for _ in range(r.count()):
        _, qw, qx, qy, qz, tx, ty, tz, camera_id = r.take("idddddddi")
        name = r.name()
        r.array(_POINT2D, r.count())  # the 2D observations are not needed
        images.append(_image(path, name, camera_id, (qw, qx, qy, qz), (tx, ty, tz)))
    return images


def _image(path: Path, name: str, camera_id: int, q: tuple, t: tuple) -> ColmapImage:
    qvec, tvec = np.array(q, dtype=np.float64), np.array(t, dtype=np.float64)
    if not (np.isfinite(qvec).all() and np.isfinite(tvec).all()) or np.linalg.norm(qvec) == 0:
        raise VqrfError(path, f"image '{name}' has a bad pose")
    return ColmapImage(name, int(camera_id), qvec, tvec)


def _read_points_bin(path: Path) -> np.ndarray:
    r = _Reader(path)
    points = []
    for _ in range(r.count()):
        _, x, y, z, _, _, _, _ = r.take("QdddBBBd")
        r.array(np.dtype("<i4"), 2 * r.count())  # the track
        points.append((x, y, z))
    out = np.array(points, dtype=np.float64).reshape(-1, 3)
    return out[np.isfinite(out).all(axis=1)]


# ---- text -------------------------------------------------------------------------------------------------------


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every line that is not blank or a comment."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise VqrfError(path, f"cannot read file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise VqrfError(path, "not a COLMAP text file (not UTF-8)") from None
    return [(k + 1, line.split()) for k, line in enumerate(text.splitlines()) if line.strip()
            and not line.lstrip().startswith("#")]


def _numbers(path: Path, line: int, fields: list[str], kind: type = float) -> list:
    try:
        return [kind(f) for f in fields]
    except ValueError:
        raise VqrfError(path, f"line {line}: expected numbers, got '{' '.join(fields)}'") from None


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line, fields in _lines(path):
        if len(fields) < 4 or fields[1] not in _PARAM_COUNT:
            raise VqrfError(path, f"line {line}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...' with a COLMAP "
                                  "camera model")
        camera_id, width, height = _numbers(path, line, [fields[0], fields[2], fields[3]], int)
        params = np.array(_numbers(path, line, fields[4:]))
        if len(params) != _PARAM_COUNT[fields[1]]:
            raise VqrfError(path, f"line {line}: {fields[1]} takes {_PARAM_COUNT[fields[1]]} parameters, got "
                                  f"{len(params)}")
        cameras[camera_id] = _camera(path, camera_id, fields[1], width, height, params)
    return cameras


def _read_images_txt(path: Path) -> list[ColmapImage]:
    # Each image takes two lines; the second (its 2D points) may be empty, so count raw lines, not kept ones.
    try:
        raw = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    except OSError as e:
        raise VqrfError(path, f"cannot read file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise VqrfError(path, "not a COLMAP text file (not UTF-8)") from None
    images = []
    for k in range(0, len(raw), 2):
        fields = raw[k].split()
        if not fields:
            continue
        if len(fields) < 10:
            raise VqrfError(path, f"image entry {k // 2 + 1}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                                  "NAME'")
        values = _numbers(path, k + 1, fields[1:8])
        camera_id = _numbers(path, k + 1, fields[8:9], int)[0]
        images.append(_image(path, " ".join(fields[9:]), camera_id, tuple(values[:4]), tuple(values[4:])))
    return images


def _read_points_txt(path: Path) -> np.ndarray:
    points = [_numbers(path, line, fields[1:4]) for line, fields in _lines(path) if len(fields) >= 4]
    out = np.array(points, dtype=np.float64).reshape(-1, 3)
    return out[np.isfinite(out).all(axis=1)]
