"""Small datasets written into a test's tmp folder from a few real lego frames, one per supported layout.

Every fixture describes the same cameras as the lego ``transforms_{split}.json`` frames it copies, so each reader
can be checked against the Blender reader: same rays, same images.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

OPENCV_FROM_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # flips the camera's y and z axes (self-inverse)


def lego_frames(lego_dir: Path, split: str, n: int) -> tuple[float, list[dict]]:
    """camera_angle_x and the first ``n`` frames of lego's ``transforms_{split}.json``."""
    meta = json.loads((lego_dir / f"transforms_{split}.json").read_text())
    return meta["camera_angle_x"], meta["frames"][:n]


def lego_image(lego_dir: Path, frame: dict) -> Path:
    return lego_dir / (frame["file_path"].removeprefix("./") + ".png")


def lego_focal(angle_x: float, width: int = 800) -> float:
    return 0.5 * width / math.tan(0.5 * angle_x)


def write_blender(lego_dir: Path, dst: Path, n: int = 3, shrink: int = 1) -> Path:
    """A Blender scene of lego's first ``n`` train frames, images shrunk by ``shrink`` (LANCZOS, RGBA)."""
    angle_x, frames = lego_frames(lego_dir, "train", n)
    (dst / "train").mkdir(parents=True)
    for frame in frames:
        target = dst / (frame["file_path"].removeprefix("./") + ".png")
        if shrink == 1:
            shutil.copyfile(lego_image(lego_dir, frame), target)
        else:
            with Image.open(lego_image(lego_dir, frame)) as image:
                image.resize((800 // shrink, 800 // shrink), Image.LANCZOS).save(target)
    write_json(dst / "transforms_train.json", {"camera_angle_x": angle_x, "frames": frames})
    return dst


def write_nsvf(lego_dir: Path, dst: Path, matrix_intrinsics: bool, n_train: int = 3, n_val: int = 2) -> Path:
    """An NSVF-layout scene: lego train frames as ``0_*``, val frames as ``1_*`` (no ``2_``), OpenCV poses.

    ``matrix_intrinsics`` writes ``intrinsics.txt`` as a 4x4 matrix (as T&T does), otherwise in the "f cx cy 0."
    style.
    """
    (dst / "pose").mkdir(parents=True)
    (dst / "rgb").mkdir()
    for prefix, split, n in (("0_", "train", n_train), ("1_", "val", n_val)):
        angle_x, frames = lego_frames(lego_dir, split, n)
        for k, frame in enumerate(frames):
            c2w_opencv = np.array(frame["transform_matrix"]) @ OPENCV_FROM_OPENGL
            np.savetxt(dst / "pose" / f"{prefix}{k:04d}.txt", c2w_opencv, fmt="%.17g")
            shutil.copyfile(lego_image(lego_dir, frame), dst / "rgb" / f"{prefix}{k:04d}.png")
    f = lego_focal(angle_x)
    if matrix_intrinsics:
        text = f"{f!r} 0 400 0\n0 {f!r} 400 0\n0 0 1 0\n0 0 0 1\n"
    else:
        text = f"{f!r} 400. 400. 0.\n0. 0. 0.\n1.\n800 800\n"
    (dst / "intrinsics.txt").write_text(text)
    (dst / "bbox.txt").write_text("-1.5 -1.5 -1.5 1.5 1.5 1.5 0.01\n")
    return dst


def write_ngp(lego_dir: Path, dst: Path, n: int = 9, **top_level: object) -> Path:
    """A ``transforms.json`` scene of lego's first ``n`` train frames; alternate frames omit the file suffix.

    ``top_level`` keys replace the default shared intrinsics (fl_x, fl_y, cx, cy, w, h) when given.
    """
    angle_x, frames = lego_frames(lego_dir, "train", n)
    (dst / "images").mkdir(parents=True)
    written = []
    for k, frame in enumerate(frames):
        shutil.copyfile(lego_image(lego_dir, frame), dst / "images" / f"frame_{k:03d}.png")
        file_path = f"images/frame_{k:03d}" + (".png" if k % 2 else "")
        written.append({"file_path": file_path, "transform_matrix": frame["transform_matrix"]})
    f = lego_focal(angle_x)
    intrinsics = top_level or {"fl_x": f, "fl_y": f, "cx": 400.0, "cy": 400.0, "w": 800, "h": 800}
    write_json(dst / "transforms.json", {**intrinsics, "frames": written})
    return dst


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=1))


def write_png(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    """A plain grey image of ``size`` (W, H)."""
    Image.new(mode, size, (128,) * len(mode)).save(path)


def version_1_sections(sections: dict) -> dict:
    """A TensoRF file's sections under the names field version 1 gave them (it stored no cameras)."""
    old_names = {"param.basis.weight": "basis"}
    for i in range(3):
        for kind in ("density", "app"):
            old_names[f"param.{kind}_lines.{i}"] = f"line{i}.{kind}"
        old_names[f"param.mlp.{2 * i}.weight"] = f"mlp{i}.weight"
        old_names[f"param.mlp.{2 * i}.bias"] = f"mlp{i}.bias"
    v1_sections = {}
    for name, arr in sections.items():
        stem, _, suffix = name.rpartition(".")
        if suffix in ("scale", "offset") and stem in old_names:
            v1_sections[f"{old_names[stem]}.{suffix}"] = arr
        elif not name.startswith("views."):
            v1_sections[old_names.get(name, name)] = arr
    return v1_sections
