"""PSNR / SSIM / LPIPS: golden LPIPS values, agreement with the independent scorer, and weight-file errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqrf.errors import VqrfError
from vqrf.metrics import LPIPS, ImageMetrics, load_lpips, lpips, psnr, resolve_lpips_weights, ssim

TOL = 1e-4  # golden values are published to ~4 significant digits


def _read(path: Path) -> torch.Tensor:
    """[H, W, 3] float64 in [0, 1]; /255 then *2-1 equals the golden values' x/127.5-1 on 8-bit data."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0)


@pytest.fixture(scope="module")
def lpips_dir(data_root: Path) -> Path:
    return data_root / "lpips"


@pytest.fixture(scope="module")
def golden(lpips_dir: Path) -> dict:
    return json.loads((lpips_dir / "golden_values.json").read_text())["official_lpips_alex_v0.1"]


@pytest.fixture(scope="module")
def alex_path(lpips_dir: Path) -> Path:
    return lpips_dir / "lpips_alex_v0.1_torch_state_dict.npz"


@pytest.fixture(scope="module")
def alex(alex_path: Path) -> LPIPS:
    return load_lpips("alex", alex_path)


def _distance(model: LPIPS, a: torch.Tensor, b: torch.Tensor) -> float:
    with torch.no_grad():
        return model(a, b).item()


# --- golden LPIPS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["I03", "I04", "I06", "I08", "I19"])
def test_lpips_alex_matches_calibration_pairs(alex, lpips_dir, golden, name):
    expected = golden["pyiqa_ResultsCalibra_ref_vs_dist"][name]
    ref = _read(lpips_dir / "calibration" / "ref" / f"{name}.png")
    dist = _read(lpips_dir / "calibration" / "dist" / f"{name}.png")
    assert _distance(alex, dist, ref) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("key", ["ex_ref_vs_ex_p0", "ex_ref_vs_ex_p1"])
def test_lpips_alex_matches_lpips_package_examples(alex, lpips_dir, golden, key):
    # The lpips repo's example images (imgs/ex_ref.png, ex_p0.png, ex_p1.png) are not part of the shared data;
    # the test runs once someone drops them into $VQRF_DATA/lpips/.
    ref_path, dist_path = lpips_dir / "ex_ref.png", lpips_dir / f"{key.split('_vs_')[1]}.png"
    if not (ref_path.is_file() and dist_path.is_file()):
        pytest.skip(f"{ref_path.name}/{dist_path.name} not in {lpips_dir}")
    assert _distance(alex, _read(ref_path), _read(dist_path)) == pytest.approx(golden[key], abs=TOL)


# --- PSNR / SSIM -----------------------------------------------------------------------------------------------------


def test_psnr_constant_offset_is_20_db():
    gt = torch.rand(16, 20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.8
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-9)
    assert psnr(gt, gt) == pytest.approx(120.0)  # MSE clamped at 1e-12, as score.py does


def test_ssim_of_identical_images_is_one():
    img = torch.rand(40, 30, 3, generator=torch.Generator().manual_seed(1))
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)


def _score_module(data_root: Path):
    path = data_root.parent / "tools" / "score.py"
    if not path.is_file():
        pytest.fail(f"{path} missing: the independent scorer sits next to the shared data")
    spec = importlib.util.spec_from_file_location("vqrf_test_score", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ssim_agrees_with_independent_scorer(data_root, lpips_dir):
    score = _score_module(data_root)
    gen = torch.Generator().manual_seed(2)
    noisy = torch.rand(48, 56, 3, dtype=torch.float64, generator=gen)
    smooth = (noisy + 0.3 * torch.rand(48, 56, 3, dtype=torch.float64, generator=gen)).clamp(0, 1)
    # A real photo crop too; score.py's numpy blur is slow, so keep it small.
    ref = _read(lpips_dir / "calibration" / "ref" / "I04.png")[100:196, 200:328]
    dist = _read(lpips_dir / "calibration" / "dist" / "I04.png")[100:196, 200:328]
    for a, b in [(noisy, smooth), (dist, ref), (ref, ref)]:
        expected = score.ssim(a.numpy(), b.numpy())
        assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
        assert ssim(a.float(), b.float()) == pytest.approx(expected, abs=1e-4)


# --- LPIPS model and weights -----------------------------------------------------------------------------------------


def test_lpips_of_identical_images_is_zero(alex):
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert _distance(alex, img, img) == 0.0
    assert _distance(alex, img, img.flip(-1)) > 0.0


def test_lpips_accepts_hwc_and_nchw_alike(alex):
    img = torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(4))
    other = img.roll(5, dims=1)
    as_batch = _distance(alex, img.permute(2, 0, 1)[None], other.permute(2, 0, 1)[None])
    assert _distance(alex, img, other) == pytest.approx(as_batch, abs=1e-7)


def test_lpips_pth_state_dict_loads_like_npz(alex, alex_path, tmp_path):
    arrays = np.load(alex_path)
    state = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
    # A full lpips.LPIPS().state_dict() also carries the scaling buffers and the `lins.K` aliases of the heads.
    state["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    state.update({f"lins.{k}.model.1.weight": state[f"lin{k}.model.1.weight"] for k in range(5)})
    pth = tmp_path / "alex.pth"
    torch.save(state, pth)
    img = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(5))
    assert _distance(load_lpips("alex", pth), img, 1 - img) == _distance(alex, img, 1 - img)


def test_lpips_vgg_names_and_loading(tmp_path):
    model = LPIPS("vgg")
    keys = set(model.state_dict())
    conv_indices = [(0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)]  # torchvision vgg16().features
    trunk = {f"net.slice{s}.{i}.{p}" for s, idx in enumerate(conv_indices, 1) for i in idx for p in ("weight", "bias")}
    heads = {f"lin{k}.model.1.weight" for k in range(5)}
    assert keys == trunk | heads | {"scaling_layer.shift", "scaling_layer.scale"}
    path = tmp_path / "vgg.pth"
    torch.save(model.state_dict(), path)
    loaded = load_lpips("vgg", path)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    assert _distance(loaded, img, img) == 0.0
    assert _distance(loaded, img, img.flip(-2)) == pytest.approx(_distance(model.eval(), img, img.flip(-2)), rel=1e-6)
    with pytest.raises(VqrfError, match="vgg.pth.*not LPIPS-alex weights"):
        load_lpips("alex", path)


def test_lpips_weights_resolution(alex_path, data_root, monkeypatch, tmp_path):
    monkeypatch.delenv("VQRF_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("VQRF_LPIPS_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("VQRF_DATA", str(data_root))
    assert resolve_lpips_weights("alex") == data_root / "lpips" / "lpips_alex_v0.1_torch_state_dict.npz"
    assert resolve_lpips_weights("vgg") is None
    monkeypatch.setenv("VQRF_LPIPS_WEIGHTS", str(tmp_path / "mine.npz"))
    assert resolve_lpips_weights("alex") == tmp_path / "mine.npz"
    assert resolve_lpips_weights("alex", alex_path) == alex_path


def test_missing_weights_raise_with_instructions(monkeypatch, tmp_path):
    monkeypatch.delenv("VQRF_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("VQRF_LPIPS_VGG_WEIGHTS", raising=False)
    monkeypatch.setenv("VQRF_DATA", str(tmp_path))
    with pytest.raises(VqrfError, match="--lpips-weights.*VQRF_LPIPS_WEIGHTS") as err:
        load_lpips("alex")
    assert "\n" not in str(err.value)
    with pytest.raises(VqrfError, match="VQRF_LPIPS_VGG_WEIGHTS"):
        lpips(torch.zeros(32, 32, 3), torch.zeros(32, 32, 3), net="vgg")


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("absent.npz", None, "not found"),
        ("garbage.npz", b"not a zip archive", "cannot read"),
        ("garbage.pth", b"\x00\x01 definitely not torch", "cannot read"),
        ("heads_only.npz", "heads", "missing net.slice1.0.weight"),
        ("not_a_dict.pth", "tensor", "not a state dict"),
    ],
)
def test_bad_weights_file_raises_naming_it(alex_path, tmp_path, name, content, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "heads":  # like the lpips package's own alex.pth: linear heads only, no trunk
        arrays = np.load(alex_path)
        np.savez(path, **{k: arrays[k] for k in arrays.files if k.startswith("lin")})
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    with pytest.raises(VqrfError, match=problem) as err:
        load_lpips("alex", path)
    assert err.value.path == str(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --- convenience helpers ---------------------------------------------------------------------------------------------


def test_lpips_function_and_image_metrics(alex, alex_path, lpips_dir):
    # A float32 crop keeps this quick (float64 convs are slow on CPU).
    ref = _read(lpips_dir / "calibration" / "ref" / "I06.png")[:128, :160].float()
    dist = _read(lpips_dir / "calibration" / "dist" / "I06.png")[:128, :160].float()
    expected = _distance(alex, dist, ref)
    assert lpips(dist, ref, weights=alex_path) == pytest.approx(expected, abs=1e-6)

    metrics = ImageMetrics(lpips_weights=alex_path)
    row = metrics(dist, ref)
    assert row == pytest.approx({"psnr": psnr(dist, ref), "ssim": ssim(dist, ref), "lpips_alex": expected}, abs=1e-6)
    metrics(ref, ref)
    mean = metrics.mean()
    assert mean["psnr"] == pytest.approx((row["psnr"] + 120.0) / 2)  # mean of per-image PSNRs
    assert mean["lpips_alex"] == pytest.approx(expected / 2, abs=1e-6)
    assert set(ImageMetrics(use_lpips=False)(ref, ref)) == {"psnr", "ssim"}


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_names_the_smallest_image_it_takes(net):
    model = LPIPS(net).eval()
    side = model.MIN_SIDE[net]
    assert model(torch.rand(side, side + 7, 3), torch.rand(side, side + 7, 3)).shape == (1,)
    with pytest.raises(ValueError, match=f"at least {side} px a side, got {side - 1}x{side + 7}"):
        model(torch.rand(side - 1, side + 7, 3), torch.rand(side - 1, side + 7, 3))
    # The bound is the trunk's own: one pixel less really does pool down to nothing.
    model.MIN_SIDE = {net: 1}
    with pytest.raises(RuntimeError, match="too small"):
        model(torch.rand(side - 1, side + 7, 3), torch.rand(side - 1, side + 7, 3))


def test_image_metrics_leave_lpips_out_for_images_too_small_for_it(alex_path, capsys):
    metrics = ImageMetrics(lpips_weights=alex_path)
    tiny = torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0))
    row = metrics(tiny, tiny.flip(0))
    assert set(row) == {"psnr", "ssim"} and row["psnr"] == pytest.approx(psnr(tiny, tiny.flip(0)))
    assert "LPIPS left out: 24x24 images are below the 31 px" in capsys.readouterr().err
    metrics(tiny, tiny)
    assert set(metrics.mean()) == {"psnr", "ssim"}
