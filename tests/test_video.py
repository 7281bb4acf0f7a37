"""Videos: camera paths, mp4 frame counts, frames equal to single renders, and the render CLI's bad input."""

from __future__ import annotations


import imageio_ffmpeg
import numpy as np
import torch

from vqrf.checkpoint import load_model
from vqrf.cli import main
from vqrf.data.synthetic import make_demo_scene
from vqrf.render.paths import look_at, orbit_path, resized, spiral_path
from vqrf.video import render_frame, write_video


def test_look_at_points_the_camera_at_the_target():
    c2w = look_at(torch.tensor([0.0, -4.0, 2.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    forward = -c2w[:, 2]  # OpenGL cameras look along -z
    torch.testing.assert_close(forward, -c2w[:, 3] / c2w[:, 3].norm())
    torch.testing.assert_close(c2w[:, :3].t() @ c2w[:, :3], torch.eye(3), atol=1e-6, rtol=0)


def test_orbit_keeps_radius_and_elevation():
    cameras = make_demo_scene("train", n_views=12, size=16).cameras
    path = orbit_path(cameras, 30)
    radius = cameras.c2w[:, :, 3].norm(dim=-1).mean()
    torch.testing.assert_close(path[:, :, 3].norm(dim=-1), radius.expand(30), atol=1e-4, rtol=0)
    assert torch.allclose(path[:, 2, 3], path[0, 2, 3])  # constant height: one elevation
    angles = torch.atan2(path[:, 1, 3], path[:, 0, 3])
    steps = torch.remainder(angles.diff(), 2 * torch.pi)
    torch.testing.assert_close(steps, torch.full_like(steps, 2 * torch.pi / 30), atol=1e-4, rtol=0)


def test_video_has_every_frame_and_matches_single_renders(demo_model, tmp_path):
    model = load_model(demo_model)
    scene = make_demo_scene("train", n_views=12, size=24)
    cameras = resized(scene.cameras, orbit_path(scene.cameras, 6), 32, 24)
    paths = write_video(model, cameras, tmp_path / "orbit.mp4", fps=10, progress=False)
    assert [p.name for p in paths] == ["orbit.mp4", "orbit_depth.mp4"]
    assert not list(tmp_path.glob(".*partial*"))
    for p in paths:
        assert imageio_ffmpeg.count_frames_and_secs(str(p))[0] == 6
    reader = imageio_ffmpeg.read_frames(str(paths[0]))
    meta = next(reader)
    assert tuple(meta["size"]) == (32, 24)
    frames = [np.frombuffer(f, np.uint8).reshape(24, 32, 3) for f in reader]
    for k in (0, 3, 5):
        want = render_frame(model, cameras, k)[0].astype(np.float64)
        mse = np.mean((frames[k].astype(np.float64) - want) ** 2) / 255**2
        assert frames[k].shape == (24, 32, 3) and -10 * np.log10(mse) > 30  # equal up to H.264 loss


def test_render_cli_and_its_bad_input(demo_model, lego_dir, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    args = ["render", str(demo_model), "--data", str(lego_dir), "--downscale", "16", "--frames", "4", "--quiet"]
    assert main([*args, "-o", str(out)]) == 0
    assert out.is_file() and (tmp_path / "v_depth.mp4").is_file()
    capsys.readouterr()
    for extra, message in ((["-o", str(out)], "already exists"), (["-o", str(tmp_path / "x.avi")], ".mp4"),
                           (["-o", str(tmp_path / "y.mp4"), "--resolution", "big"], "--resolution")):
        assert main([*args, *extra]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
        assert len(err) == 1 and message in err[0], err
    assert main([*args, "--path", "test", "--every", "100", "-o", str(tmp_path / "t.mp4")]) == 0
    assert imageio_ffmpeg.count_frames_and_secs(str(tmp_path / "t.mp4"))[0] == 2


def test_spiral_stays_in_front_of_fern(fern_dir):
    from vqrf.data import load_scene

    scene = load_scene(fern_dir, "train", downscale=8)
    near, far = scene.depth_bounds
    assert 0 < near < far
    path = spiral_path(scene.cameras, scene.depth_bounds, scene.camera_set().up, 40)
    positions, spread = path[:, :, 3], scene.cameras.c2w[:, :, 3].abs().quantile(0.9, dim=0)
    assert (positions - scene.cameras.c2w[:, :, 3].mean(0)).abs().le(spread + 1e-5).all()
    assert (path[:, 2, 2] > 0.9).all()  # back axis ~ +z: every frame looks forward (-z), like the captured views
    torch.testing.assert_close(path[:, :3, :3].transpose(1, 2) @ path[:, :3, :3], torch.eye(3).expand(40, 3, 3),
                               atol=1e-5, rtol=0)


def test_render_cli_rounds_odd_sizes_for_h264(demo_model, lego_dir, tmp_path, capsys):
    out = tmp_path / "odd.mp4"
    assert main(["render", str(demo_model), "--data", str(lego_dir), "--frames", "2", "--resolution", "33x25",
                 "--quiet", "-o", str(out)]) == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    assert tuple(next(reader)["size"]) == (32, 24)
    assert main(["render", str(demo_model), "--data", str(lego_dir), "--path", "spiral", "-o",
                 str(tmp_path / "s.mp4")]) == 2
    assert "forward-facing" in capsys.readouterr().err
