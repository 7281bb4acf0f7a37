"""vqrf export-web and vqrf view --web: the site folder, its refusals, and the local server that hands it out."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from vqrf.cli import main
from vqrf.web import PAGE_FILES, SCENE_NAME


@pytest.fixture(scope="module")
def small_vqrf(tmp_path_factory) -> Path:
    """A real .vqrf (TensoRF on the demo scene, a few steps, a quick VQ), written by the field layer's encoder."""
    from vqrf.checkpoint import load_model
    from vqrf.compress.codec import encode_field
    from vqrf.compress.vq import build_vq
    from vqrf.config import demo_preset
    from vqrf.data.synthetic import make_demo_scene
    from vqrf.train import train

    out = tmp_path_factory.mktemp("export")
    cfg = dataclasses.replace(demo_preset().train, iters=4, batch_rays=256, n_voxel_init=16**3, n_voxel_final=16**3,
                              upsample_at=(), alpha_mask_at=(2,))
    train(make_demo_scene("train", n_views=4, size=16), dataclasses.replace(demo_preset(), train=cfg), out,
          progress=False)
    model = load_model(out / "model.safetensors")
    maps = [torch.rand(g.shape, generator=torch.Generator().manual_seed(0)) for g in model.field.feature_grids()]
    state = build_vq(model.field, maps, 0.5, 0.99, lambda n: 16, progress=False)
    path = out / "small.vqrf"
    path.write_bytes(encode_field(model.field, state, model.occupancy, model.preset, model.scene))
    return path


def test_export_writes_the_page_and_the_file(small_vqrf, tmp_path, capsys):
    site = tmp_path / "site"
    assert main(["export-web", str(small_vqrf), "-o", str(site)]) == 0
    assert sorted(p.name for p in site.iterdir()) == sorted([*PAGE_FILES, SCENE_NAME])
    assert (site / SCENE_NAME).read_bytes() == small_vqrf.read_bytes()
    assert {"index.html", "player.js", "container.js", "renderer.js"} <= set(PAGE_FILES)
    assert "python -m http.server" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]  # no staging folder left behind


def test_export_refuses_overwrite_checkpoints_and_broken_files(small_vqrf, demo_model, tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    (site / "keep.txt").write_text("mine")
    assert main(["export-web", str(small_vqrf), "-o", str(site)]) == 2
    assert (site / "keep.txt").read_text() == "mine"  # nothing a user had is lost without --force
    assert main(["export-web", str(small_vqrf), "-o", str(site), "--force"]) == 0
    assert not (site / "keep.txt").exists() and (site / SCENE_NAME).is_file()

    truncated = tmp_path / "truncated.vqrf"
    truncated.write_bytes(small_vqrf.read_bytes()[:-100])
    for bad, problem in ((demo_model, "not a .vqrf file"), (truncated, "truncated"), (tmp_path / "nope.vqrf", "no such")):
        capsys.readouterr()
        assert main(["export-web", str(bad), "-o", str(tmp_path / "other")]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "other").exists()


def test_view_web_serves_the_site(small_vqrf):
    proc = subprocess.Popen([sys.executable, "-m", "vqrf.cli", "view", str(small_vqrf), "--web", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert " at http://" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + SCENE_NAME, timeout=10) as response:
            assert response.read() == small_vqrf.read_bytes()
        with urllib.request.urlopen(url + "container.js", timeout=10) as response:
            assert "javascript" in response.headers["Content-Type"]  # ES modules need a script MIME type
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"player.js" in response.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
