"""The shared beer capture (COLMAP binary) rewritten in every other supported format, for the readers' tests.

Each writer describes the same cameras, posed in a different world frame (as the real tools write them), so the
readers must agree on the rays only because the canonical frame (vqrf.data.capture) undoes the difference.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fixtures_data import write_json
from vqrf.data.colmap_model import ColmapModel, quaternion_to_matrix, read_model

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])


def beer_model(beer_dir: Path) -> ColmapModel:
    return read_model(beer_dir / "sparse" / "0")


def link_images(beer_dir: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "images").symlink_to(beer_dir / "images", target_is_directory=True)


def write_colmap_text(model: ColmapModel, dst: Path, beer_dir: Path) -> Path:
    """COLMAP's text format of ``model`` (2D observations left empty), with the capture's images linked."""
    link_images(beer_dir, dst)
    sparse = dst / "sparse" / "0"
    sparse.mkdir(parents=True)
    lines = ["# Camera list", *(f"{k} {c.model} {c.width} {c.height} " + " ".join(repr(float(p)) for p in c.params)
                                for k, c in model.cameras.items())]
    (sparse / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for k, image in enumerate(model.images):
        values = " ".join(repr(float(v)) for v in (*image.qvec, *image.tvec))
        lines += [f"{k + 1} {values} {image.camera_id} {image.name}", ""]
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    points = [f"{k + 1} {float(x)!r} {float(y)!r} {float(z)!r} 128 128 128 0.5" for k, (x, y, z) in enumerate(model.points[:500])]
    (sparse / "points3D.txt").write_text("\n".join(points) + "\n")
    return dst


def opengl_poses(model: ColmapModel) -> tuple[list[str], np.ndarray]:
    """Image names (sorted) and their [N, 4, 4] OpenGL camera-to-world poses in COLMAP's world frame."""
    images = sorted(model.images, key=lambda image: image.name)
    poses = []
    for image in images:
        rotation = quaternion_to_matrix(image.qvec)
        c2w = np.eye(4)
        c2w[:3, :3] = rotation.T @ OPENCV_TO_OPENGL
        c2w[:3, 3] = -rotation.T @ image.tvec
        poses.append(c2w)
    return [image.name for image in images], np.stack(poses)


def _similarity(angle: float, axis: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross
    out = np.eye(4)
    out[:3, :3] = scale * rotation
    out[:3, 3] = shift
    return out


def _moved(transform: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    scale = np.linalg.norm(transform[:3, 0])
    out = transform @ c2w
    out[:, :3, :3] /= scale  # camera axes stay unit length; only the centres scale
    return out


def write_ngp_json(model: ColmapModel, dst: Path, beer_dir: Path, convention: str) -> Path:
    """``transforms.json`` of the capture.

    ``instant-ngp``: shared intrinsics and distortion at the top level, ``aabb_scale``, poses turned, shifted and
    scaled as instant-ngp's colmap2nerf leaves them. ``nerfstudio``: per-frame intrinsics, ``camera_model``,
    ``k1..k4``, poses in a world with permuted axes (nerfstudio's ``applied_transform``).
    """
    link_images(beer_dir, dst)
    names, c2w = opengl_poses(model)
    by_name = {image.name: model.cameras[image.camera_id] for image in model.images}
    first = by_name[names[0]]
    if convention == "instant-ngp":
        # Shared values at the top level (the first photo's), each photo's own focal, centre and k1 in its frame.
        moved = _moved(_similarity(0.7, np.array([1.0, 2.0, 0.5]), 2.5, np.array([0.3, -1.0, 0.8])), c2w)
        f, cx, cy, k = first.params
        meta = {"fl_x": f, "fl_y": f, "cx": cx, "cy": cy, "w": first.width, "h": first.height, "k1": k, "k2": 0.0,
                "p1": 0.0, "p2": 0.0, "aabb_scale": 4,
                "frames": [{"file_path": f"images/{name}", "transform_matrix": m.tolist(), "fl_x": by_name[name].params[0],
                            "fl_y": by_name[name].params[0], "cx": by_name[name].params[1],
                            "cy": by_name[name].params[2], "k1": by_name[name].params[3]}
                           for name, m in zip(names, moved)]}
    else:
        applied = np.eye(4)[[1, 0, 2, 3]]
        applied[2] *= -1  # nerfstudio's x/y swap and z flip of COLMAP's world
        moved = applied @ c2w
        frames = []
        for name, m in zip(names, moved):
            camera = by_name[name]
            f, cx, cy, k = camera.params
            frames.append({"file_path": f"./images/{name}", "transform_matrix": m.tolist(), "fl_x": f, "fl_y": f,
                           "cx": cx, "cy": cy, "w": camera.width, "h": camera.height, "k1": k, "k2": 0.0, "k3": 0.0,
                           "k4": 0.0, "p1": 0.0, "p2": 0.0})
        meta = {"camera_model": "OPENCV", "applied_transform": applied[:3].tolist(), "frames": frames}
    write_json(dst / "transforms.json", meta)
    return dst
