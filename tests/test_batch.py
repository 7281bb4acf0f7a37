"""vqrf batch: whole datasets as Ray tasks, on the real lego and fern scaled far down, with 2 local Ray workers."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_data import write_nsvf
from vqrf.batch import Budget, discover_scenes, run_scene, scene_job
from vqrf.cli import main
from vqrf.errors import VqrfError

# Small enough for a 2-core machine (lego at 25x25, fern at 126x94), large enough to learn both scenes: a shorter
# schedule moves the first occupancy update so early that it empties fern.
BUDGET = ["--preset", "cpu", "--iters", "500", "--grid-init", "16", "--grid-final", "24", "--batch-rays", "1024",
          "--downscale", "32", "--finetune-iters", "20", "--eval-every", "100", "--no-lpips", "--workers", "2",
          "--quiet"]
COLUMNS = ["psnr_raw", "psnr_vqrf", "ssim_raw", "ssim_vqrf", "lpips_raw", "lpips_vqrf", "raw_bytes", "vqrf_bytes",
           "ratio", "train_s", "compress_s", "eval_s"]


@pytest.fixture(scope="module")
def ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray missing in CI: it is in the test extra")
        pytest.skip("ray is not installed (pip install 'vqrf[batch]')")


def scene_root(tmp_path: Path, lego_dir: Path, fern_dir: Path, broken: bool = False) -> Path:
    """A dataset root holding lego and fern (links to the shared data) and, if asked, a malformed scene."""
    root = tmp_path / "scenes"
    root.mkdir()
    (root / "lego").symlink_to(lego_dir)
    (root / "fern").symlink_to(fern_dir)
    if broken:
        (root / "broken").mkdir()
        (root / "broken" / "transforms_train.json").write_text('{"frames": [')
    return root


def batch_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vqrf.cli", "batch", "--dataset", "custom", "--root", str(root), "--out", str(out),
            *BUDGET, *extra]


def check_tables(out: Path, scenes: list[str]) -> dict:
    """summary.json has a sensible row per scene; summary.csv and summary.md say the same; returns summary.json."""
    summary = json.loads((out / "summary.json").read_text())
    assert [row["scene"] for row in summary["scenes"]] == scenes
    for row in summary["scenes"]:
        folder = out / row["scene"]
        result = json.loads((folder / "result.json").read_text())
        metrics = json.loads((folder / "eval_vqrf" / "metrics.json").read_text())
        assert row["psnr_vqrf"] == result["vqrf"]["psnr"] == metrics["psnr"]
        assert row["psnr_raw"] > 18.0 and row["psnr_vqrf"] > 18.0, row  # a blank image scores about 5-10 dB here
        assert abs(row["psnr_raw"] - row["psnr_vqrf"]) < 3.0, row
        assert 0.3 < row["ssim_vqrf"] <= 1.0 and row["lpips_raw"] is None and row["lpips_vqrf"] is None
        assert row["raw_bytes"] == (folder / "model.safetensors").stat().st_size
        assert row["vqrf_bytes"] == (folder / f"{row['scene']}.vqrf").stat().st_size < row["raw_bytes"]
        assert row["ratio"] == pytest.approx(row["raw_bytes"] / row["vqrf_bytes"])
        assert row["train_s"] > 0 and row["compress_s"] > 0 and row["eval_s"] > 0
        assert list((folder / "eval_vqrf" / "renders").glob("*.png")) and list((folder / "eval_raw").glob("*/*.png"))
        assert not (folder / "checkpoint.safetensors").exists() and not list(folder.glob("*.partial.safetensors"))
    mean = summary["mean"]
    for key in ("psnr_raw", "psnr_vqrf", "raw_bytes", "train_s"):
        assert mean[key] == pytest.approx(sum(row[key] for row in summary["scenes"]) / len(scenes))

    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["scene"] for r in rows] == scenes + ["mean"]
    for got, want in zip(rows, summary["scenes"] + [mean]):
        for key in COLUMNS:
            assert (got[key] == "") if want[key] is None else float(got[key]) == pytest.approx(want[key]), key

    md = (out / "summary.md").read_text()
    for row in summary["scenes"] + [mean]:
        name = row["scene"] if row is not mean else "**mean**"
        cells = (f"| {name} | {row['psnr_raw']:.2f} | {row['psnr_vqrf']:.2f} | {row['ssim_raw']:.4f} | "
                 f"{row['ssim_vqrf']:.4f} |  |  | {row['raw_bytes']:,.0f} | {row['vqrf_bytes']:,.0f} | "
                 f"{row['ratio']:.1f}x |")
        assert cells in md, (cells, md)
    return summary


def test_batch_over_lego_and_fern_reports_a_failing_scene_and_finishes_the_others(ray_installed, tmp_path, lego_dir,
                                                                                   fern_dir):
    root = scene_root(tmp_path, lego_dir, fern_dir, broken=True)
    out = tmp_path / "out"
    done = subprocess.run(batch_command(root, out), capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # a scene failed

    summary = check_tables(out, ["fern", "lego"])
    error = (out / "broken" / "error.txt").read_text().splitlines()[0]
    assert error.startswith(f"{root / 'broken' / 'transforms_train.json'}: not valid JSON")
    assert summary["failed"] == [{"scene": "broken", "error": error}]
    assert f"broken: FAILED: {error}" in done.stdout and f"- broken: {error}" in (out / "summary.md").read_text()
    assert re.search(r"^lego: done: PSNR [\d.]+ dB raw", done.stdout, re.M)
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert f"wrote {out / name}" in done.stdout
    assert f"{out / 'lego' / 'lego.vqrf'}" in done.stdout and f"see {out / 'broken' / 'error.txt'}" in done.stdout


def test_killed_batch_resumes_without_redoing_finished_work(ray_installed, tmp_path, lego_dir, fern_dir):
    root = scene_root(tmp_path, lego_dir, fern_dir)
    out = tmp_path / "out"
    cmd = batch_command(root, out, "--checkpoint-every", "100")
    log = tmp_path / "first.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def finished() -> list[str]:
        return [s for s in ("lego", "fern") if (out / s / "result.json").exists()]

    def mid_training() -> list[str]:
        return [s for s in ("lego", "fern")
                if (out / s / "checkpoint.safetensors").exists() and not (out / s / "model.safetensors").exists()]

    # Kill the whole run (driver and local Ray) once one scene is finished and the other is part-way through its
    # training: the rerun must skip the first and continue the second from its checkpoint.
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not (finished() and mid_training()):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(finished()) == 1 and len(mid_training()) == 1, log.read_text()[-3000:]
    done_scene, resumed = finished()[0], mid_training()[0]

    # The workers die with the killed Ray instance, so nothing keeps writing behind the rerun's back.
    workers = {int(pid) for pid in re.findall(r"\(\w+ pid=(\d+)\)", log.read_text())}
    assert len(workers) == 2, log.read_text()[-3000:]

    def alive(pid: int) -> bool:
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    give_up = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < give_up:
        time.sleep(0.2)
    assert not [pid for pid in workers if alive(pid)], "Ray workers outlived the killed batch"
    result_before = (out / done_scene / "result.json").read_bytes()
    result_mtime = (out / done_scene / "result.json").stat().st_mtime_ns

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"{done_scene}: finished earlier, skipped" in rerun.stdout
    assert "1 of 2 custom scenes to run" in rerun.stdout
    assert re.search(rf"\({resumed} pid=\d+\).* training: .* \(resuming\)", rerun.stdout), rerun.stdout[-3000:]
    assert (out / done_scene / "result.json").read_bytes() == result_before
    assert (out / done_scene / "result.json").stat().st_mtime_ns == result_mtime
    assert re.search(rf"^{resumed}: done: PSNR", rerun.stdout, re.M)
    check_tables(out, ["fern", "lego"])


def test_gpu_request_without_gpus_is_refused_not_left_waiting(ray_installed, tmp_path, lego_dir, fern_dir):
    root = scene_root(tmp_path, lego_dir, fern_dir)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vqrf.cli", "batch", "--dataset", "syn", "--root", str(root), "--out", str(out),
           "--workers", "1", "--gpus-per-scene", "1", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().count("\n") == 0
    assert "--gpus-per-scene 1: the local Ray instance has no GPU" in done.stderr
    assert not (out / "lego").exists() and not (out / "summary.json").exists()


def test_an_address_where_nothing_listens_is_refused_at_once(ray_installed, tmp_path, lego_dir, fern_dir):
    with socket.socket() as probe:  # a free port: nothing listens there once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = scene_root(tmp_path, lego_dir, fern_dir)
    cmd = [sys.executable, "-m", "vqrf.cli", "batch", "--dataset", "syn", "--root", str(root), "--out",
           str(tmp_path / "out"), "--address", f"127.0.0.1:{port}", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # Ray itself would retry for minutes
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-3000:]
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port} (nothing answers there" in done.stderr


# ---- no Ray needed ----------------------------------------------------------------------------------------------
def test_scenes_are_found_by_layout(tmp_path, lego_dir, fern_dir):
    root = scene_root(tmp_path, lego_dir, fern_dir)
    (root / "notes").mkdir()  # not a dataset: ignored
    assert [(s.name, s.kind) for s in discover_scenes("custom", root)] == [("fern", "llff"), ("lego", "blender")]
    assert [s.name for s in discover_scenes("syn", root)] == ["lego"]
    assert [s.name for s in discover_scenes("llff", root)] == ["fern"]
    assert [s.name for s in discover_scenes("custom", root, ["lego", "fern"])] == ["lego", "fern"]


def test_nsvf_layout_scenes_for_nsvf_and_tt(tmp_path, lego_dir):
    root = tmp_path / "nsvf"
    write_nsvf(lego_dir, root / "Bike", matrix_intrinsics=False)
    assert [(s.name, s.kind) for s in discover_scenes("nsvf", root)] == [("Bike", "nsvf")]
    assert [(s.name, s.kind) for s in discover_scenes("tt", root)] == [("Bike", "tt")]  # read as Tanks&Temples
    with pytest.raises(VqrfError, match="no syn scenes here"):
        discover_scenes("syn", root)


@pytest.mark.parametrize("flags, message", [
    (["--scenes", "lego,chair"], "no custom scene named chair here (scenes: fern, lego)"),
    (["--scenes", " , "], "--scenes must name at least one scene"),
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--target-size", "lots"], "--target-size: cannot read 'lots'"),
    (["--workers", "2", "--address", "ray://head:10001"], "--workers sets the size of a local Ray instance"),
])
def test_bad_flags_are_one_line(capsys, tmp_path, lego_dir, fern_dir, flags, message):
    root = scene_root(tmp_path, lego_dir, fern_dir)
    code = main(["batch", "--dataset", "custom", "--root", str(root), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_missing_root_and_a_root_without_scenes(capsys, tmp_path, lego_dir):
    assert main(["batch", "--dataset", "syn", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    assert main(["batch", "--dataset", "syn", "--root", str(lego_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no syn scenes here" in err and "this folder is one scene" in err and err.strip().count("\n") == 0


def test_without_ray_batch_says_how_to_install_it(capsys, monkeypatch, tmp_path, lego_dir, fern_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    root = scene_root(tmp_path, lego_dir, fern_dir)
    assert main(["batch", "--dataset", "syn", "--root", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'vqrf[batch]'" in err and err.strip().count("\n") == 0


def lego_job(tmp_path: Path, lego_dir: Path, fern_dir: Path, **budget) -> tuple:
    root = scene_root(tmp_path, lego_dir, fern_dir)
    source = discover_scenes("syn", root)[0]
    job = scene_job(source, Budget(preset="cpu", **budget), tmp_path / "out", None, 1)
    return job, Path(job.out_dir)


def test_an_unfinished_scene_is_not_resumed_with_other_settings(tmp_path, lego_dir, fern_dir):
    job, folder = lego_job(tmp_path, lego_dir, fern_dir, iters=100)
    folder.mkdir(parents=True)
    (folder / "stages.json").write_text(json.dumps({"settings": {**job.settings(), "iters": 50}}))
    outcome = run_scene(job)
    assert "iters 50 -> 100" in outcome["error"] and "delete the folder" in outcome["error"]
    assert (folder / "error.txt").read_text().splitlines()[0] == outcome["error"]
    assert not (folder / "model.safetensors").exists()


def test_a_scene_being_worked_on_is_not_touched_by_a_second_batch(tmp_path, lego_dir, fern_dir):
    job, folder = lego_job(tmp_path, lego_dir, fern_dir, iters=100)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        outcome = run_scene(job)
    assert outcome["error"] == f"{folder}: another vqrf batch is working on this scene"
    assert not (folder / "stages.json").exists()
