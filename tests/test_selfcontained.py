"""A self-contained .vqrf: its training cameras travel in the file (field version 3), so orbits, spirals and the viewer
need no dataset; older files still open and say that their paths need --data; bad camera entries are clean errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vqrf.checkpoint import LoadedModel, load_model, save_model
from vqrf.cli import _video_cameras, build_parser, main
from vqrf.compress.codec import FIELD_VERSION, Precision, decode_field, encode_field
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.vq import build_vq
from vqrf.data import load_scene
from vqrf.data.scene import CameraSet
from vqrf.data.synthetic import make_demo_scene
from vqrf.errors import VqrfError
from vqrf.metrics import psnr
from vqrf.models import open_model
from vqrf.render.paths import path_poses
from vqrf.video import render_frame


def encode(model: LoadedModel) -> bytes:
    """``model`` as a .vqrf (a quick VQ from a fixed random importance: only the cameras matter here)."""
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(g.shape, generator=generator, dtype=torch.float64) for g in model.field.feature_grids()]
    state = build_vq(model.field, maps, 0.5, 0.99, lambda n: 16, progress=False)
    state.apply(model.field)
    return encode_field(model.field, state, model.occupancy, model.preset, model.scene,
                        Precision("int8", "int8", "int8"))


def as_version_2(data: bytes) -> bytes:
    """The same file in the previous layout: no ``views`` header entry or sections, field version 2."""
    header, sections = decode_container(data, "x")
    header = {**{k: v for k, v in header.items() if k != "views"}, "version": 2}
    return encode_container(header, {k: v for k, v in sections.items() if not k.startswith("views.")})


def with_views(demo_model: Path, views: CameraSet, **scene) -> LoadedModel:
    """The demo model as if trained on ``views`` (the field is the demo's: what it shows does not matter here)."""
    model = load_model(demo_model)
    model.scene = dataclasses.replace(model.scene, views=views, **scene)
    return model


def video_cameras(model_path: Path, *extra: str):
    args = build_parser().parse_args(["render", str(model_path), *extra, "-o", "unused.mp4"])
    return _video_cameras(args, open_model(model_path), (32, 32))


@pytest.fixture(scope="module")
def lego_files(demo_model, lego_dir, tmp_path_factory) -> dict[str, Path]:
    """The demo field with lego's 100 training cameras (downscale 16): a version-3 file and its version-2 twin."""
    out = tmp_path_factory.mktemp("selfcontained")
    data = encode(with_views(demo_model, load_scene(lego_dir, "train", downscale=16).camera_set(), width=50,
                             height=50))
    files = {"new": out / "lego.vqrf", "old": out / "lego_v2.vqrf"}
    files["new"].write_bytes(data)
    files["old"].write_bytes(as_version_2(data))
    return files


def test_orbit_without_the_dataset_equals_the_orbit_with_it(lego_files, lego_dir, tmp_path):
    new, old = lego_files["new"], lego_files["old"]
    data = ["--data", str(lego_dir), "--downscale", "16"]
    alone, given = video_cameras(new), video_cameras(new, *data)
    for name in ("c2w", "fx", "fy", "cx", "cy"):  # the file's cameras win: --data changes nothing
        assert torch.equal(getattr(alone, name), getattr(given, name)), name
    model = open_model(new)
    for k in (0, 60):
        assert np.array_equal(render_frame(model, alone, k)[0], render_frame(model, given, k)[0])
    # and the file's orbit is the dataset's orbit, but for the poses' float16 rounding
    dataset = video_cameras(old, *data)
    torch.testing.assert_close(alone.c2w, dataset.c2w, atol=2e-4, rtol=0)
    assert torch.equal(alone.fx, dataset.fx) and (alone.width, alone.height) == (dataset.width, dataset.height)
    assert psnr(render_frame(model, alone, 30)[0] / 255.0, render_frame(model, dataset, 30)[0] / 255.0) > 40
    out = tmp_path / "orbit.mp4"
    assert main(["render", str(new), "--path", "orbit", "--frames", "2", "--resolution", "16x16", "--quiet",
                 "-o", str(out)]) == 0
    assert out.is_file() and (tmp_path / "orbit_depth.mp4").is_file()


def test_forward_facing_spiral_without_the_dataset(demo_model, fern_dir, tmp_path, capsys):
    views = load_scene(fern_dir, "train", downscale=8).camera_set()
    path = tmp_path / "fern.vqrf"
    path.write_bytes(encode(with_views(demo_model, views, ndc=True, near=0.0, far=1.0,
                                       ndc_focal=float(views.cameras.fx[0]))))
    decoded = decode_field(path.read_bytes(), path).scene.views
    assert decoded.ndc and decoded.depth_bounds == views.depth_bounds and torch.equal(decoded.up, views.up)
    torch.testing.assert_close(path_poses(decoded, "spiral", 30), path_poses(views, "spiral", 30), atol=2e-4, rtol=0)
    alone = video_cameras(path, "--path", "spiral")
    given = video_cameras(path, "--path", "spiral", "--data", str(fern_dir))
    assert torch.equal(alone.c2w, given.c2w) and torch.equal(alone.fx, given.fx)
    assert main(["render", str(path), "--path", "orbit", "-o", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--path spiral" in err[0], err


def test_older_files_open_and_their_paths_ask_for_the_dataset(lego_files, tmp_path, capsys):
    old = lego_files["old"]
    model = open_model(old)
    assert model.scene.views is None and model.field.grid_size == open_model(lego_files["new"]).field.grid_size
    capsys.readouterr()
    for path, needs in (("orbit", "--path orbit needs --data"), ("spiral", "--path spiral needs --data"),
                        ("test", "--data")):
        assert main(["render", str(old), "--path", path, "-o", str(tmp_path / f"{path}.mp4")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and needs in err[0] and "Traceback" not in err[0], err
    assert main(["info", str(old)]) == 0
    assert "none stored" in capsys.readouterr().out
    assert main(["info", str(lego_files["new"])]) == 0
    assert "100 training views at 50x50" in capsys.readouterr().out


def test_viewer_lists_the_files_own_cameras(lego_files):
    from vqrf.viewer import Viewer

    model = open_model(lego_files["new"])
    viewer = Viewer(model, lego_files["new"], port=0)
    try:
        assert len(viewer.training) == 100
        np.testing.assert_array_equal(viewer._up, [0.0, 0.0, 1.0])
        torch.testing.assert_close(viewer._home[0][:, :3], model.scene.views.cameras.c2w[0][:, :3])
    finally:
        viewer.close()


def test_checkpoints_carry_the_training_cameras_at_full_precision(demo_model, tmp_path):
    model = load_model(demo_model)
    want = make_demo_scene("train", n_views=12, size=24).camera_set()
    got = model.scene.views
    assert torch.equal(got.cameras.c2w, want.cameras.c2w) and torch.equal(got.intrinsics(), want.intrinsics())
    assert torch.equal(got.up, want.up) and (got.cameras.width, got.cameras.height) == (24, 24)
    # views with their own intrinsics keep them, in a checkpoint and in a .vqrf
    want.cameras.fx = want.cameras.fx.clone()
    want.cameras.fx[3] *= 1.5
    model.scene.views = want
    save_model(tmp_path / "m.safetensors", model.field, model.occupancy, model.preset, model.scene)
    assert torch.equal(load_model(tmp_path / "m.safetensors").scene.views.intrinsics(), want.intrinsics())
    data = encode(model)
    header, sections = decode_container(data, "x")
    assert header["version"] == FIELD_VERSION == 3 and "intrinsics" not in header["views"]
    assert sections["views.intrinsics"].shape == (12, 4)
    assert torch.equal(decode_field(data, "x").scene.views.intrinsics(), want.intrinsics())


@pytest.fixture(scope="module")
def demo_file(demo_model) -> bytes:
    return encode(load_model(demo_model))


def _header_case(change):
    def apply(header, sections):
        views = dict(header["views"])
        change(views)
        return {**header, "views": views}, sections
    return apply


CORRUPT = {
    "not an object": (lambda h, s: ({**h, "views": [1, 2]}, s), "not an object"),
    "width": (_header_case(lambda v: v.update(width=0)), "image size"),
    "height a bool": (_header_case(lambda v: v.update(height=True)), "image size"),
    "up not unit": (_header_case(lambda v: v.update(up=[0.0, 0.0, 2.0])), "unit vector"),
    "up text": (_header_case(lambda v: v.update(up="z")), "finite numbers"),
    "up huge": (_header_case(lambda v: v.update(up=[0.0, 1e300, 10**400])), "finite numbers"),
    "intrinsics length": (_header_case(lambda v: v.update(intrinsics=[1.0, 2.0])), "intrinsics"),
    "focal": (_header_case(lambda v: v.update(intrinsics=[-5.0, 5.0, 1.0, 1.0])), "focal length"),
    "no intrinsics": (_header_case(lambda v: v.pop("intrinsics")), "intrinsics"),
    "depth bounds": (_header_case(lambda v: v.update(depth_bounds=[5.0, 1.0])), "near < far"),
    "pose dtype": (lambda h, s: (h, {**s, "views.c2w": s["views.c2w"].astype(np.int16)}), "expected"),
    "pose shape": (lambda h, s: (h, {**s, "views.c2w": s["views.c2w"][:, :, :3].copy()}), "expected"),
    "no poses": (lambda h, s: (h, {**s, "views.c2w": s["views.c2w"][:0].copy()}), "N >= 1"),
    "pose missing": (lambda h, s: (h, {k: v for k, v in s.items() if k != "views.c2w"}), "missing"),
    "pose NaN": (lambda h, s: (h, {**s, "views.c2w": np.full_like(s["views.c2w"], np.nan)}), "finite"),
    "per-view rows": (lambda h, s: (_header_case(lambda v: v.pop("intrinsics"))(h, s)[0],
                                    {**s, "views.intrinsics": np.ones((2, 4), np.float32)}), "intrinsics of shape"),
    "forward-facing without bounds": (lambda h, s: ({**h, "scene": {**h["scene"], "ndc": True, "ndc_focal": 30.0}}, s),
                                      "depth bounds"),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_camera_entries_are_one_line_errors(demo_file, case):
    mutate, message = CORRUPT[case]
    header, sections = decode_container(demo_file, "x")
    header, sections = mutate(header, sections)
    with pytest.raises(VqrfError) as err:
        decode_field(encode_container(header, sections), "bad.vqrf")
    text = str(err.value)
    assert text.startswith("bad.vqrf: ") and message in text and "\n" not in text, text


def test_cameras_add_under_one_percent(demo_model, lego_dir, fern_dir):
    """lego: 100 views; fern: 17. The budget is 1% of a 350 KB file."""
    added = {}
    for name, root, downscale in (("lego", lego_dir, 16), ("fern", fern_dir, 8)):
        views = load_scene(root, "train", downscale=downscale).camera_set()
        data = encode(with_views(demo_model, views))
        added[name] = len(data) - len(as_version_2(data))
    assert added["lego"] <= 2500 and added["fern"] <= 800, added
