"""Training really fits scenes, checkpoints resume after a hard kill, and model files round-trip."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from vqrf.checkpoint import load_model
from vqrf.config import Preset, TrainConfig, demo_preset, get_preset
from vqrf.data import load_scene
from vqrf.data.synthetic import make_demo_scene
from vqrf.evaluate import evaluate
from vqrf.render.volume import render_image
from vqrf.train import train

SMALL = TrainConfig(
    iters=240, batch_rays=1024, n_voxel_init=24**3, n_voxel_final=48**3, upsample_at=(40, 80, 120),
    alpha_mask_at=(30, 100), checkpoint_every=1000,
)


def test_demo_scene_is_learned(tmp_path):
    preset = dataclasses.replace(demo_preset(), train=SMALL)
    result = train(make_demo_scene("train", n_views=30, size=32), preset, tmp_path, progress=False)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "checkpoint.safetensors").exists()
    model = load_model(tmp_path / "model.safetensors")
    metrics = evaluate(model, make_demo_scene("test", n_views=3, size=32), use_lpips=False, progress=False)
    assert metrics["psnr"] > 20.0, metrics
    assert model.occupancy.occupied_fraction() < 0.6  # most of the box is skipped
    assert result.iters == SMALL.iters and result.seconds > 0


def test_an_occupancy_update_before_anything_is_dense_is_skipped(tmp_path, capsys):
    """A short schedule puts the first mask update at a field that is still empty everywhere; installing that empty
    mask would stop every ray for good (the model came out blank, then NaN)."""
    preset = dataclasses.replace(demo_preset(), train=dataclasses.replace(SMALL, alpha_mask_at=(2, 100)))
    train(make_demo_scene("train", n_views=30, size=32), preset, tmp_path, progress=False)
    assert "iteration 2: nothing is dense enough for an occupancy mask yet" in capsys.readouterr().err
    model = load_model(tmp_path / "model.safetensors")
    metrics = evaluate(model, make_demo_scene("test", n_views=3, size=32), use_lpips=False, progress=False)
    assert metrics["psnr"] > 20.0, metrics
    assert 0.0 < model.occupancy.occupied_fraction() < 0.6  # the update at 100 did take effect


def test_a_time_limit_ends_training_early_with_a_model(tmp_path):
    preset = dataclasses.replace(demo_preset(), train=SMALL)
    result = train(make_demo_scene("train", n_views=10, size=24), preset, tmp_path, progress=False, max_seconds=1.0)
    assert 0 < result.iters < SMALL.iters
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "checkpoint.safetensors").exists()


def test_model_file_round_trip_renders_identically(tmp_path):
    preset = dataclasses.replace(demo_preset(), train=dataclasses.replace(SMALL, iters=60))
    result = train(make_demo_scene("train", n_views=10, size=24), preset, tmp_path, progress=False)
    model = load_model(tmp_path / "model.safetensors")
    origins, directions = make_demo_scene("test", n_views=1, size=24).rays(0)
    before = render_image(result.field, result.occupancy, origins, directions, model.render_settings())["rgb"]
    after = render_image(model.field, model.occupancy, origins, directions, model.render_settings())["rgb"]
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    assert model.field.grid_size == result.field.grid_size


def test_lego_small_fits(lego_dir, tmp_path):
    """Real data, scaled down: lego at 50x50 for a few hundred iterations."""
    preset = get_preset("cpu")
    preset.train = dataclasses.replace(SMALL, iters=300, batch_rays=2048)
    train(load_scene(lego_dir, "train", downscale=16), preset, tmp_path, progress=False)
    scene = load_scene(lego_dir, "test", downscale=16)
    metrics = evaluate(load_model(tmp_path / "model.safetensors"), scene, every=50, use_lpips=False, progress=False)
    assert metrics["views"] == 4 and metrics["psnr"] > 19.0, metrics


def _checkpoint_iteration(path) -> int | None:
    """The iteration a checkpoint was written at (header only), or None while there is none."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["vqrf"])["extra"]["train"]["iteration"]
    except (OSError, SafetensorError):
        return None


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(lego_dir, tmp_path):
    """Killed with SIGKILL after its third occupancy update (which the ray filter and the schedule depend on), then
    resumed: the final parameters equal, bit for bit, those of a run that was never interrupted."""
    def command(out):
        return [sys.executable, "-m", "vqrf.cli", "train", "--data", str(lego_dir), "--preset", "cpu", "--downscale",
                "16", "--iters", "400", "--grid-final", "64", "--batch-rays", "1024", "--checkpoint-every", "40",
                "--device", "cpu", "--out", str(out), "--quiet"]

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "checkpoint.safetensors"
    deadline = time.time() + 300
    while (_checkpoint_iteration(checkpoint) or 0) < 200 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = _checkpoint_iteration(checkpoint)
    assert saved is not None and 200 <= saved < 400 and saved % 40 == 0, proc.communicate()[1].decode()[-2000:]
    assert not (out / "model.safetensors").exists()

    done = subprocess.run(command(out) + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    assert (out / "model.safetensors").is_file() and not checkpoint.exists()
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    resumed, uninterrupted = (load_file(str(d / "model.safetensors")) for d in (out, tmp_path / "whole"))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    again = subprocess.run(command(out), capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_llff_cpu_is_the_llff_recipe_at_cpu_scale():
    llff, cpu = get_preset("llff"), get_preset("llff-cpu")
    assert cpu.field == dataclasses.replace(llff.field, bf16_mlp=True)
    assert cpu.downscale == 8.0 and cpu.train.ndc_depth_steps and not llff.train.ndc_depth_steps
    t = cpu.train
    assert (t.tv_density, t.tv_app, t.l1_init, t.lr_grid) == (llff.train.tv_density, llff.train.tv_app,
                                                             llff.train.l1_init, llff.train.lr_grid)
    assert max(t.alpha_mask_at) > max(t.upsample_at)  # a mask taken on the final grid
    assert Preset.from_dict(cpu.to_dict()) == cpu  # files carry it through the strict header check


@pytest.mark.parametrize("name", ["syn", "nsvf", "tt", "llff", "cpu"])
def test_presets_carry_the_reference_schedules(name):
    preset = get_preset(name)
    t = preset.train
    assert list(t.upsample_at) == sorted(t.upsample_at) and max(t.upsample_at) < t.iters
    if name == "llff":
        assert preset.field.density_act == "relu" and preset.field.app_comps == (48, 12, 12) and t.tv_density == 1.0
    if name == "syn":
        assert t.iters == 30000 and t.n_voxel_final == 300**3 and t.l1_init == 8e-5
    scaled = t.scaled_to(t.iters // 10)
    assert scaled.upsample_at[0] == round(t.upsample_at[0] / 10)
