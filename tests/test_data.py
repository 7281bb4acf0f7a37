"""Dataset readers and camera rays, on the real lego and fern scenes and on small fixtures written from lego frames."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_data import (
    lego_focal,
    lego_frames,
    write_blender,
    write_json,
    write_ngp,
    write_nsvf,
    write_png,
)
from vqrf.data import DATASET_KINDS, detect_kind, load_scene
from vqrf.data.nsvf import read_intrinsics
from vqrf.data.scene import Scene
from vqrf.errors import VqrfError
from vqrf.render.rays import camera_rays, camera_rays_at, ndc_rays

ATOL = 1e-5


@pytest.fixture(scope="session")
def lego8(lego_dir: Path) -> Scene:
    """lego train at downscale 8 (100x100): the camera every fixture is compared against."""
    return load_scene(lego_dir, "train", downscale=8)


@pytest.fixture(scope="session")
def small_lego(lego_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three lego train frames as 100x100 RGBA PNGs, to copy and break."""
    return write_blender(lego_dir, tmp_path_factory.mktemp("small") / "lego", n=3, shrink=8)


@pytest.fixture
def broken(small_lego: Path, tmp_path: Path) -> Path:
    """A private copy of ``small_lego`` a test may damage."""
    return Path(shutil.copytree(small_lego, tmp_path / "lego"))


def assert_same_views(scene: Scene, views: list[int], reference: Scene, reference_views: list[int]) -> None:
    """Same image size, rays and pixels for scene view views[k] and reference view reference_views[k]."""
    assert scene.hw == reference.hw
    for i, j in zip(views, reference_views):
        for got, want in zip(scene.rays(i), reference.rays(j)):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        assert torch.equal(scene.image(i), reference.image(j))


# ---------------------------------------------------------------------------------------------------------------------
# Blender (lego) and camera rays


@pytest.mark.parametrize("downscale", [1, 2, 4])
def test_lego_images_and_rays_agree_in_size(lego_dir: Path, downscale: int):
    scene = load_scene(lego_dir, "test", downscale=downscale)
    h = w = 800 // downscale
    assert scene.hw == (h, w) and len(scene) == 200 and scene.image_names[:2] == ["r_0", "r_1"]
    image = scene.image(0)
    assert image.shape == (h, w, 3) and image.dtype == torch.float32
    origins, directions = scene.rays(0)
    assert origins.shape == directions.shape == (h * w, 3)
    angle_x, _ = lego_frames(lego_dir, "test", 1)
    assert scene.cameras.fx[0].item() == pytest.approx(lego_focal(angle_x) / downscale)
    assert scene.cameras.cx[0].item() == scene.cameras.cy[0].item() == w / 2
    assert (scene.near, scene.far, scene.white_bg, scene.ndc) == (2.0, 6.0, True, False)
    assert torch.equal(scene.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))


def test_lego_image_equals_scorer_ground_truth(lego_dir: Path, data_root: Path):
    scorer = data_root.parent / "tools" / "score.py"
    if not scorer.is_file():
        pytest.skip(f"{scorer} not found next to VQRF_DATA")
    spec = importlib.util.spec_from_file_location("score", scorer)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    _, frames = lego_frames(lego_dir, "test", 9)
    scene = load_scene(lego_dir, "test", downscale=4)
    for i in (0, 8):
        truth = score.ground_truth(str(lego_dir), frames[i], (200, 200)).astype(np.float32)
        assert np.array_equal(scene.image(i).numpy(), truth)


def test_centre_ray_points_at_origin(lego8: Scene):
    cams = lego8.cameras
    views = torch.arange(5)
    # Pixel (cx - 0.5, cy - 0.5) has its centre exactly on the principal point.
    origins, directions = camera_rays_at(cams, views, cams.cy[views] - 0.5, cams.cx[views] - 0.5)
    assert torch.equal(origins, cams.c2w[views, :, 3])
    miss = torch.linalg.cross(-origins, directions).norm(dim=-1)  # distance from the world origin to the ray
    assert miss.max() < 1e-4
    assert torch.all((directions * -origins).sum(-1) > 0)  # towards the origin, not away from it


def test_camera_rays_layout_and_convention(lego8: Scene):
    cams = lego8.cameras
    origins, directions = camera_rays(cams, 3)
    h, w = lego8.hw
    assert torch.equal(origins, cams.c2w[3, :, 3].expand(h * w, 3))
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(h * w))
    local = directions @ cams.c2w[3, :, :3]  # back into the camera frame: x right, y up, looking along -z
    assert local[0, 0] < 0 and local[0, 1] > 0 and torch.all(local[:, 2] < 0)  # row-major from the top-left
    assert local[w - 1, 0] > 0 and local[(h - 1) * w, 1] < 0
    rows, cols = torch.randint(0, h, (50,)), torch.randint(0, w, (50,))
    o, d = camera_rays_at(cams, torch.full((50,), 3), rows, cols)
    torch.testing.assert_close(o, origins[rows * w + cols])
    torch.testing.assert_close(d, directions[rows * w + cols], atol=1e-6, rtol=0)


def test_ndc_rays_map_world_rays_onto_ndc_rays():
    gen = torch.Generator().manual_seed(0)
    origins = torch.randn(100, 3, generator=gen) * 0.3
    directions = torch.nn.functional.normalize(torch.randn(100, 3, generator=gen) * 0.2 + torch.tensor([0, 0, -1.0]))
    h, w, focal = 30, 40, 35.0
    o, d = ndc_rays(origins, directions, h, w, focal)
    torch.testing.assert_close(o[:, 2], torch.full((100,), -1.0))
    torch.testing.assert_close(d[:, 2] + o[:, 2], torch.ones(100))  # t' = 1 reaches the far plane z' = 1
    point = origins + 3.0 * directions  # a world point on each ray, in front of the near plane
    projected = torch.stack(
        [-2 * focal / w * point[:, 0] / point[:, 2], -2 * focal / h * point[:, 1] / point[:, 2], 1 + 2 / point[:, 2]],
        dim=-1,
    )
    off_ray = torch.linalg.cross(projected - o, torch.nn.functional.normalize(d)).norm(dim=-1)
    assert off_ray.max() < 1e-5
    o2, d2 = ndc_rays(origins, 5 * directions, h, w, focal)  # does not depend on the directions' length
    torch.testing.assert_close((o2, d2), (o, d))


# ---------------------------------------------------------------------------------------------------------------------
# LLFF (fern)


def test_fern_split_size_recentring_and_ndc(fern_dir: Path):
    train, test = load_scene(fern_dir, "train", downscale=8), load_scene(fern_dir, "test", downscale=8)
    assert (len(train), len(test)) == (17, 3)
    assert test.image_names == ["image000", "image008", "image016"]
    assert "image008" not in train.image_names and train.image_names[0] == "image001"
    assert train.hw == (378, 504) and train.image(0).shape == (378, 504, 3)
    assert train.cameras.fx[0].item() == pytest.approx(3260.526333 / 8, rel=1e-6) == train.ndc_focal
    assert (train.ndc, train.near, train.far, train.white_bg) == (True, 0.0, 1.0, False)
    centres = torch.cat([train.cameras.c2w, test.cameras.c2w])[:, :, 3]
    assert centres.mean(0).abs().max() < 1e-5
    origins, directions = test.rays(1)
    assert origins.shape == directions.shape == (378 * 504, 3)
    torch.testing.assert_close(origins[:, 2], torch.full((378 * 504,), -1.0))
    assert detect_kind(fern_dir) == "llff"


def test_fern_image_folders(fern_dir: Path):
    assert load_scene(fern_dir, downscale=4).hw == (756, 1008)
    resized = load_scene(fern_dir, "test", downscale=16)  # from images_8, with LANCZOS
    assert resized.hw == (189, 252) and resized.image(0).shape == (189, 252, 3)
    assert resized.cameras.fx[0].item() == pytest.approx(3260.526333 / 16, rel=1e-6)
    with pytest.raises(VqrfError, match="no image folder for downscale 1") as err:
        load_scene(fern_dir, downscale=1)
    assert str(fern_dir) in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# NSVF, Tanks&Temples and instant-ngp layouts, against the Blender reader


@pytest.mark.parametrize("scene_name, kind", [("Bike", "nsvf"), ("Truck", "tt")])
def test_nsvf_layouts_match_blender(lego_dir: Path, lego8: Scene, tmp_path: Path, scene_name: str, kind: str):
    root = write_nsvf(lego_dir, tmp_path / scene_name, matrix_intrinsics=kind == "tt")
    assert detect_kind(root) == kind
    train = load_scene(root, "train", downscale=8)
    assert len(train) == 3 and train.image_names == ["0_0000", "0_0001", "0_0002"]
    assert_same_views(train, [0, 1, 2], lego8, [0, 1, 2])
    test = load_scene(root, "test", downscale=8)  # no 2_ files: the test split falls back to 1_
    assert test.image_names == ["1_0000", "1_0001"]
    assert_same_views(test, [0, 1], load_scene(lego_dir, "val", downscale=8), [0, 1])
    box = 1.5 * (1.2 if kind == "tt" else 1.0)
    torch.testing.assert_close(train.aabb, torch.tensor([[-box] * 3, [box] * 3]))
    assert (train.near, train.far, train.white_bg) == ((0.01, 6.0, True) if kind == "tt" else (0.5, 6.0, True))


def test_ngp_layout_matches_blender(lego_dir: Path, lego8: Scene, tmp_path: Path):
    root = write_ngp(lego_dir, tmp_path / "ngp", n=9)
    assert detect_kind(root) == "ngp"
    train, test = load_scene(root, "train", downscale=8), load_scene(root, "test", downscale=8)
    assert train.image_names == [f"frame_{k:03d}" for k in range(1, 8)]  # every 8th frame is held out
    assert test.image_names == ["frame_000", "frame_008"]
    assert_same_views(train, [0, 5], lego8, [1, 6])
    assert_same_views(test, [0, 1], lego8, [0, 8])
    assert (train.near, train.far, train.white_bg) == (2.0, 6.0, True)
    torch.testing.assert_close(train.aabb, torch.tensor([[-1.5] * 3, [1.5] * 3]))


def test_ngp_camera_angle_split_lists_and_box(lego_dir: Path, lego8: Scene, tmp_path: Path):
    angle_x, _ = lego_frames(lego_dir, "train", 1)
    root = write_ngp(lego_dir, tmp_path / "ngp", n=3, camera_angle_x=angle_x)  # no w/h: read from the image
    meta = json.loads((root / "transforms.json").read_text())
    meta.update(aabb=[[-1, -2, -3], [1, 2, 3]], near=0.1, far=9, train_filenames=["images/frame_002.png"],
                test_filenames=["./images/frame_000.png", "images/frame_001"])
    write_json(root / "transforms.json", meta)
    train, test = load_scene(root, "train", downscale=8), load_scene(root, "test", downscale=8)
    assert train.image_names == ["frame_002"] and test.image_names == ["frame_000", "frame_001"]
    assert_same_views(train, [0], lego8, [2])
    assert (train.near, train.far) == (0.1, 9.0)
    assert torch.equal(train.aabb, torch.tensor([[-1.0, -2, -3], [1, 2, 3]]))
    with pytest.raises(VqrfError, match="missing key 'val_filenames'"):
        load_scene(root, "val")


@pytest.mark.parametrize(
    "text",
    [
        "875.5 400 300 0.\n0. 0. 0.\n1.\n600 800\n",  # DeepVoxels style
        "875.5 400 300 0.\n",
        "875.5 0 400 0\n0 875.5 300 0\n0 0 1 0\n0 0 0 1\n",  # 4x4
        "875.5 0 400\n0 875.5 300\n0 0 1\n",  # 3x3
        "875.5 0 400 0 0 875.5 300 0 0 0 1 0 0 0 0 1\n",  # 4x4 on one line
    ],
)
def test_intrinsics_formats(tmp_path: Path, text: str):
    (tmp_path / "intrinsics.txt").write_text(text)
    assert read_intrinsics(tmp_path / "intrinsics.txt", (800, 600)) == (875.5, 875.5, 400.0, 300.0)


@pytest.mark.parametrize(
    "text", ["", "focal: 875\n", "875 400\n", "875 0 400 0\n0 875 300\n0 0 1 0\n", "nan 400 400 0\n"]
)
def test_intrinsics_malformed(tmp_path: Path, text: str):
    path = tmp_path / "Barn" / "intrinsics.txt"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(VqrfError, match="not an intrinsics file") as err:
        read_intrinsics(path, (1920, 1080))
    assert str(path) in str(err.value)


def test_ignatius_intrinsics_fallback(tmp_path: Path):
    root = tmp_path / "TanksAndTemple" / "Ignatius"
    (root / "pose").mkdir(parents=True)
    (root / "rgb").mkdir()
    for name in ("0_0000", "1_0000"):
        np.savetxt(root / "pose" / f"{name}.txt", np.eye(4))
        write_png(root / "rgb" / f"{name}.png", (1920, 1080))
    (root / "intrinsics.txt").write_text("1166.56 960 540\n0 0\n<garbage>\n")
    (root / "bbox.txt").write_text("-1 -1 -1 1 1 1 0.01\n")
    assert detect_kind(root) == "tt"
    with pytest.warns(UserWarning, match="published Ignatius matrix"):
        scene = load_scene(root, "train", downscale=2)
    assert scene.hw == (540, 960)
    expected = torch.tensor([1166.564936839068 / 2, 1166.564936839068 / 2, 480, 270])
    cams = scene.cameras
    torch.testing.assert_close(torch.stack([cams.fx[0], cams.fy[0], cams.cx[0], cams.cy[0]]), expected)
    assert scene.image(0).shape == (540, 960, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one VqrfError naming the offending file


def raises_naming(path: Path, match: str = ""):
    """pytest.raises(VqrfError) that also checks the message starts with ``path`` and contains ``match``."""
    return pytest.raises(VqrfError, match=f"^{re.escape(str(path))}: .*{match}")


def test_lazy_loading_and_corrupt_image(broken: Path):
    (broken / "train" / "r_1.png").write_bytes(b"\x89PNG not really an image")
    scene = load_scene(broken)  # headers of other files only: constructing decodes nothing
    assert scene.image(0).shape == (100, 100, 3)
    with raises_naming(broken / "train" / "r_1.png", "not a readable image"):
        scene.image(1)


def test_truncated_image(broken: Path):
    path = broken / "train" / "r_2.png"
    path.write_bytes(path.read_bytes()[:2000])
    with raises_naming(path, "not a readable image"):
        load_scene(broken).image(2)


def test_missing_image(broken: Path):
    (broken / "train" / "r_1.png").unlink()
    with raises_naming(broken / "train" / "r_1.png", "image file not found"):
        load_scene(broken)


def test_inconsistent_image_sizes(broken: Path):
    write_png(broken / "train" / "r_2.png", (50, 50), "RGBA")
    scene = load_scene(broken)
    with raises_naming(broken / "train" / "r_2.png", "image is 50x50 but the other images of this split are 100x100"):
        scene.image(2)


def test_missing_split_json(broken: Path):
    with raises_naming(broken / "transforms_test.json", "no split 'test'"):
        load_scene(broken, "test")


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"camera_angle_x": 0.69,\n "frames": [\n {"file_path": "./train/r_0"}\n ', "not valid JSON \\(line 4:"),
        ("[1, 2]", "expected a JSON object"),
        ('{"camera_angle_x": 0.69}', "missing key 'frames'"),
        ('{"camera_angle_x": 0.69, "frames": [{"file_path": "./train/r_0"}]}', "frame 0: missing key 'transform_"),
        ('{"camera_angle_x": 0.69, "frames": [{"file_path": 3}]}', "frame 0: 'file_path' has the wrong type"),
        ('{"camera_angle_x": -1, "frames": [{"file_path": "./train/r_0"}]}', "camera_angle_x must be in"),
    ],
)
def test_malformed_json(broken: Path, text: str, problem: str):
    (broken / "transforms_train.json").write_text(text)
    with raises_naming(broken / "transforms_train.json", problem):
        load_scene(broken)


def test_nan_pose_blender(broken: Path):
    meta = json.loads((broken / "transforms_train.json").read_text())
    meta["frames"][1]["transform_matrix"][0][3] = math.nan
    write_json(broken / "transforms_train.json", meta)  # json writes NaN, and reads it back
    with raises_naming(broken / "transforms_train.json", "frame 1: pose has NaN or infinite values"):
        load_scene(broken)


def test_nan_pose_llff(fern_dir: Path, tmp_path: Path):
    table = np.load(fern_dir / "poses_bounds.npy")
    table[3, 7] = np.nan
    np.save(tmp_path / "poses_bounds.npy", table)
    with raises_naming(tmp_path / "poses_bounds.npy", "row 3 has NaN"):
        load_scene(tmp_path, downscale=8)


def test_nan_pose_nsvf(lego_dir: Path, tmp_path: Path):
    root = write_nsvf(lego_dir, tmp_path / "Bike", matrix_intrinsics=False, n_train=2, n_val=1)
    (root / "pose" / "0_0001.txt").write_text("1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with raises_naming(root / "pose" / "0_0001.txt", "NaN"):
        load_scene(root)


def test_unknown_layout(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with raises_naming(tmp_path, "not a known dataset layout"):
        load_scene(tmp_path)
    with raises_naming(tmp_path / "absent", "no such directory"):
        load_scene(tmp_path / "absent")


def test_bad_arguments(broken: Path):
    with raises_naming(broken, "downscale must be a positive number"):
        load_scene(broken, downscale=0)
    with pytest.raises(VqrfError, match="unknown dataset kind 'mipnerf'"):
        load_scene(broken, kind="mipnerf")
    with raises_naming(broken, "no COLMAP model"):
        load_scene(broken, kind="colmap")
    with raises_naming(broken, "unknown split 'all'"):
        load_scene(broken, "all", kind="ngp")
    with pytest.raises(VqrfError, match="unknown scene kind 'open'"):
        load_scene(broken, kind="ngp", scene="open")
    assert set(DATASET_KINDS) == {"blender", "llff", "nsvf", "tt", "ngp", "colmap"}
