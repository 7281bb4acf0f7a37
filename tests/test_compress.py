"""Compression: importance, split, codebooks, fine-tuning, the .vqrf field layer, rate control and the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from vqrf.checkpoint import load_model
from vqrf.cli import main
from vqrf.compress.codebook import assign, fit_codebook, weighted_code_means
from vqrf.compress.codec import Precision, decode_field, encode_field
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.importance import grid_importance
from vqrf.compress.pipeline import compress_model
from vqrf.compress.quantize import quantize_affine, quantize_range
from vqrf.compress.rate import parse_size
from vqrf.compress.split import cdf_split
from vqrf.compress.vq import build_vq, rows
from vqrf.config import CompressConfig, demo_preset
from vqrf.data.synthetic import make_demo_scene
from vqrf.errors import VqrfError
from vqrf.fields.splat import splat_bilinear
from vqrf.evaluate import evaluate
from vqrf.render.volume import sample_weights
from vqrf.step import RayPool
from vqrf.train import train


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    cfg = dataclasses.replace(demo_preset().train, iters=200, batch_rays=1024, n_voxel_init=24**3,
                              n_voxel_final=40**3, upsample_at=(40, 80), alpha_mask_at=(30, 100))
    train(make_demo_scene("train", n_views=20, size=32), dataclasses.replace(demo_preset(), train=cfg), out,
          progress=False)
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def demo_importance(demo_model) -> list[torch.Tensor]:
    model = load_model(demo_model)
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), torch.device("cpu"))
    return grid_importance(model.field, model.occupancy, pool, model.render_settings(), progress=False)


def small_config(**kw) -> CompressConfig:
    return CompressConfig(**{"keep": 0.5, "non_prune": 0.9999, "codebook_size": 64, "finetune_iters": 30, **kw})


# ---- importance and split ---------------------------------------------------------------------------------------
def test_splat_is_the_gradient_of_bilinear_lookup():
    """The reference's definition: gradient of sum(w * grid_sample(ones)) w.r.t. the ones plane."""
    torch.manual_seed(0)
    h, w, n = 7, 11, 500
    uv = torch.rand(n, 2) * 2.2 - 1.1  # some points outside [-1, 1] clamp to the border
    weights = torch.rand(n)
    ones = torch.ones(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    grid = uv.clamp(-1, 1).double()[None, :, None, :]
    values = F.grid_sample(ones, grid, mode="bilinear", align_corners=True)[0, 0, :, 0]
    (values * weights.double()).sum().backward()
    target = torch.zeros(h, w, dtype=torch.float64)
    splat_bilinear(target, uv[:, 0].double(), uv[:, 1].double(), weights.double())
    torch.testing.assert_close(target, ones.grad[0, 0])


@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (9, 1), (2, 2)])
def test_splat_kernel_matches_the_pytorch_reference(shape, monkeypatch):
    g = torch.Generator().manual_seed(1)
    n = 20000
    u, v = (torch.rand(n, generator=g, dtype=torch.float64) * 2.4 - 1.2 for _ in range(2))  # some past the border
    u[:5] = torch.tensor([-1.0, 1.0, 0.0, 1.0, -1.0], dtype=torch.float64)  # exactly on the border
    weights = torch.rand(n, generator=g, dtype=torch.float64)
    fast = torch.full(shape, 0.5, dtype=torch.float64)  # adds to what is there
    splat_bilinear(fast, u, v, weights)
    monkeypatch.setenv("VQRF_KERNELS", "torch")
    reference = torch.full(shape, 0.5, dtype=torch.float64)
    splat_bilinear(reference, u, v, weights)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-9)
    assert abs(float(fast.sum()) - 0.5 * fast.numel() - float(weights.sum())) < 1e-6  # every weight lands once


def splat_by_hand(target: np.ndarray, u: np.ndarray, v: np.ndarray, weights: np.ndarray) -> None:
    """Add each weight to the 4 texels of ``target`` [H, W] around (u along W, v along H), coords in [-1, 1]
    clamped to the border, align_corners=True; a corner past the last texel has coefficient 0 and is skipped."""
    height, width = target.shape
    x = (np.clip(u, -1, 1) + 1) / 2 * (width - 1)
    y = (np.clip(v, -1, 1) + 1) / 2 * (height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    for xs, wx in ((x0, 1 - fx), (x0 + 1, fx)):
        for ys, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            inside = (xs < width) & (ys < height)
            target += np.bincount(ys[inside] * width + xs[inside], (weights * wx * wy)[inside],
                                  minlength=target.size).reshape(target.shape)


def test_importance_carries_all_the_weight(demo_model, demo_importance):
    """Plane i's map is each sample's compositing weight splatted bilinearly at its projection on coords (0, 1),
    (0, 2), (1, 2) for i = 0, 1, 2 (the first along W): it matches a by-hand splat, is exactly 0 where no sample
    lands, and sums to the total weight of all rays."""
    model = load_model(demo_model)
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), torch.device("cpu"))
    want = [np.zeros(tuple(m.shape)) for m in demo_importance]
    total = 0.0
    with torch.no_grad():
        for idx in torch.arange(pool.colors.shape[0]).split(4096):
            o, d, _ = pool.rays(idx)
            samples = sample_weights(model.field, model.occupancy, o, d, model.render_settings())
            uvw = model.field.normalize(samples.xyz).double().numpy()
            weights = samples.weights.double().numpy()
            total += weights.sum()
            for target, (a, b) in zip(want, ((0, 1), (0, 2), (1, 2))):
                splat_by_hand(target, uvw[:, a], uvw[:, b], weights)
    assert total > 0
    for i, (got, ref) in enumerate(zip(demo_importance, want)):
        assert got.shape == model.field.density_planes[i].shape[:2] == ref.shape
        assert float(got.sum()) == pytest.approx(total, rel=1e-6)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-9 * total)
        assert (got.numpy()[ref == 0] == 0).all()


def test_cdf_split_fractions():
    torch.manual_seed(1)
    imp = torch.rand(40, 30) ** 6
    keep, vq = cdf_split(imp, 0.7, 0.99)
    total = float(imp.sum())
    assert not (keep & vq).any()
    assert float(imp[keep].sum()) >= 0.7 * total
    # minimal: dropping the least important kept texel falls below the fraction
    assert float(imp[keep].sum() - imp[keep].min()) < 0.7 * total
    assert float(imp[~(keep | vq)].sum()) <= 0.01 * total
    keep, vq = cdf_split(imp, 0.0, 1.0)
    assert not keep.any() and vq.all()


# ---- codebooks and quantisers -----------------------------------------------------------------------------------
def test_weighted_kmeans_finds_clusters_and_follows_weights():
    torch.manual_seed(2)
    centres = torch.randn(8, 5) * 10
    x = centres.repeat_interleave(50, 0) + 0.01 * torch.randn(400, 5)
    book, labels = fit_codebook(x, torch.ones(400), 8)
    assert book.shape == (8, 5)
    torch.testing.assert_close(book[labels], x, atol=0.05, rtol=0)
    # one code for two points: it sits at their weighted mean
    book, _ = fit_codebook(torch.tensor([[0.0], [1.0], [1.0]]), torch.tensor([3.0, 1.0, 0.0]), 1)
    assert float(book[0, 0]) == pytest.approx(0.25, abs=1e-3)  # a zero weight still counts a little


def test_unused_codes_are_dropped_and_assignment_is_nearest():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    book, labels = fit_codebook(x, torch.ones(3), 8)  # fewer distinct points than codes
    assert book.shape[0] == 2 and torch.equal(book[labels], x)
    torch.manual_seed(3)
    feats, codes = torch.randn(300, 4), torch.randn(17, 4)
    torch.testing.assert_close(assign(feats, codes), torch.cdist(feats, codes).argmin(1))
    means, total = weighted_code_means(torch.tensor([[1.0], [3.0], [7.0]]), torch.tensor([0, 0, 2]),
                                       torch.tensor([1.0, 3.0, 1.0]), 3)
    torch.testing.assert_close(means[:, 0], torch.tensor([2.5, 0.0, 7.0]))
    torch.testing.assert_close(total, torch.tensor([4.0, 0.0, 1.0]))


def test_int8_quantisers_bound_their_error():
    torch.manual_seed(4)
    x = torch.randn(1000, 6) * torch.tensor([1.0, 0.1, 5.0, 0.0, 2.0, 1e-3])
    q = quantize_range(x)
    assert ((q.dequantize() - x).abs() <= q.scale / 2 + 1e-6).all()
    x[0, 0] = 40.0  # a 40-std outlier: kept, at a coarser step for its channel only
    for steps in (15.0, 63.0):
        q = quantize_affine(x, steps)
        assert ((q.dequantize() - x).abs() <= q.scale / 2 + 1e-5).all()
        assert q.scale[0] > x[:, 0].std(unbiased=False) / steps
    # within ±8.5 std the step is the requested one (randn reaches ~3.3 std at 1000 samples)
    torch.testing.assert_close(quantize_affine(x, 15.0).scale[1], x[:, 1].std(unbiased=False) / 15)


def test_parse_size():
    assert parse_size("500KB") == 500_000 and parse_size("1MB") == 1_000_000
    assert parse_size("1.5MiB") == 1_572_864 and parse_size("362800") == 362_800
    for bad in ("", "abc", "5XB", "-1MB"):
        with pytest.raises(VqrfError):
            parse_size(bad)


# ---- the .vqrf field layer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", [Precision(), Precision("int8", "int8", "int8"), Precision("fp16")])
def test_decoded_field_is_the_quantised_field(demo_model, demo_importance, precision):
    model = load_model(demo_model)
    state = build_vq(model.field, demo_importance, 0.5, 0.99, lambda n: 32, progress=False)
    state.apply(model.field)
    data = encode_field(model.field, state, model.occupancy, model.preset, model.scene, precision)
    decoded = decode_field(data, "x.vqrf")
    assert decoded.field.grid_size == model.field.grid_size
    assert torch.equal(decoded.occupancy.cells, model.occupancy.cells)
    for code, got_grid, want_grid in zip(state.grids, decoded.field.feature_grids(), model.field.feature_grids()):
        for kind in want_grid.quantised:
            got = rows(got_grid.tensors[kind])
            want = rows(want_grid.tensors[kind].detach())
            pruned = ~code.non_pruned.flatten()
            assert (got[pruned] == 0).all()
            tol = 2e-3 if precision.codebooks == "fp16" else float((want.max() - want.min()) / (precision.codebook_levels - 1))
            assert (got[code.vq.flatten()] - want[code.vq.flatten()]).abs().max() <= tol
            kept_std = want[code.keep.flatten()].std(0, unbiased=False).max()
            assert (got[code.keep.flatten()] - want[code.keep.flatten()]).abs().max() <= kept_std / 15 / 2 + 1e-5
    scene = make_demo_scene("test", n_views=2, size=32)
    a = evaluate(model, scene, use_lpips=False, progress=False)["psnr"]
    b = evaluate(decoded, scene, use_lpips=False, progress=False)["psnr"]
    assert abs(a - b) < 0.2


def test_pipeline_keeps_quality_and_pruned_texels_stay_zero(demo_model, demo_importance):
    model = load_model(demo_model)
    scene = make_demo_scene("test", n_views=3, size=32)
    before = evaluate(model, scene, use_lpips=False, progress=False)["psnr"]
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), torch.device("cpu"))
    stages = []
    result = compress_model(model, pool, small_config(non_prune=0.99), demo_importance, progress=False,
                            on_stage=lambda name, f, st: stages.append(name))
    assert stages == ["original", "pruned", "vq", "finetuned", "packed"]
    after = evaluate(result.model, scene, use_lpips=False, progress=False)["psnr"]
    assert after > before - 1.5, (before, after)
    assert len(result.data) < 0.25 * demo_model.stat().st_size
    for code, grid in zip(result.state.grids, result.model.field.feature_grids()):
        assert (~code.non_pruned).any()
        for tensor in grid.tensors.values():
            assert (tensor[~code.non_pruned] == 0).all()
    tiers = result.info["tiers"]
    assert tiers["keep"] > 0 and tiers["vq"] > 0 and tiers["pruned"] > 0


def test_rate_control_lands_under_budget(demo_model, demo_importance):
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), torch.device("cpu"))
    free = compress_model(load_model(demo_model), pool, small_config(finetune_iters=0), demo_importance,
                          progress=False)
    budget = int(0.6 * len(free.data))
    result = compress_model(load_model(demo_model), pool, small_config(), demo_importance, budget=budget,
                            progress=False)
    assert 0.95 * budget <= len(result.data) <= budget, (len(result.data), budget)
    assert result.info["rate"]["codebook_size"] > 0
    with pytest.raises(VqrfError, match="target-size"):
        compress_model(load_model(demo_model), pool, small_config(), demo_importance, budget=1000, progress=False)


# ---- bad files ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_file(demo_model, demo_importance) -> bytes:
    model = load_model(demo_model)
    state = build_vq(model.field, demo_importance, 0.5, 0.99, lambda n: 16, progress=False)
    state.apply(model.field)
    return encode_field(model.field, state, model.occupancy, model.preset, model.scene, Precision("int8", "int8", "int8"))


def test_field_layer_rejects_inconsistent_files(small_file):
    header, sections = decode_container(small_file, "x")
    cases = {
        "format": ({**header, "format": "other"}, sections, "not a compressed"),
        "version": ({**header, "version": 99}, sections, "newer vqrf"),
        "missing": (header, {k: v for k, v in sections.items() if k != "plane1.app.indices"}, "missing"),
        "shape": (header, {**sections, "plane0.keep_mask": np.zeros((3, 3), bool)}, "expected"),
        "grid": ({**header, "grid": [1, -5, 3]}, sections, "inconsistent header"),
        "index": (header, {**sections, "plane0.density.indices":
                           np.full_like(sections["plane0.density.indices"], 60000)}, "beyond"),
    }
    for name, (h, s, message) in cases.items():
        with pytest.raises(VqrfError, match=message):
            decode_field(encode_container(h, s), "x.vqrf")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_fail_cleanly(small_file, data):
    blob = bytearray(small_file)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if kind == "flip" and blob:
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif blob:
            del blob[pos:pos + data.draw(st.integers(1, 8))]
    try:
        decode_field(bytes(blob), "fuzz.vqrf")
    except VqrfError:
        pass


# ---- command line -----------------------------------------------------------------------------------------------
def test_cli_compress_info_eval_on_real_lego(lego_dir, tmp_path, capsys):
    """Real data, scaled down: a small lego model compressed, described and evaluated through the CLI."""
    from vqrf.config import get_preset
    from vqrf.data import load_scene

    preset = get_preset("cpu")
    preset.train = dataclasses.replace(preset.train.scaled_to(200), batch_rays=1024, n_voxel_init=24**3,
                                       n_voxel_final=48**3)
    train(load_scene(lego_dir, "train", downscale=16), preset, tmp_path / "run", progress=False)
    model = tmp_path / "run" / "model.safetensors"
    out = tmp_path / "lego.vqrf"
    args = ["--data", str(lego_dir), "--downscale", "16", "--finetune-iters", "20", "--codebook-size", "256", "--quiet"]
    assert main(["compress", str(model), "-o", str(out), *args, "--eval-every", "100"]) == 0
    printed = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes" in printed
    assert (tmp_path / "run" / "model.importance.safetensors").is_file()  # cached for the next run
    assert main(["compress", str(model), "-o", str(out), *args]) == 2  # no overwrite without --force
    assert "already exists" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "vector-quantised" in info and "indices" in info and "perplexity" in info
    assert "PSNR" in info and "2 test views" in info  # recorded by --eval-every
    assert main(["eval", str(out), "--data", str(lego_dir), "--downscale", "16", "--every", "50", "--no-lpips",
                 "--quiet", "--out", str(tmp_path / "ev")]) == 0
    assert "PSNR" in capsys.readouterr().out and (tmp_path / "ev" / "metrics.json").is_file()
    for content in (out.read_bytes()[:100], b"\x89VQRF\r\n\x1a" + b"\x00" * 40, out.read_bytes()[:-7]):
        bad = tmp_path / "bad.vqrf"
        bad.write_bytes(content)
        for verb in (["info", str(bad)], ["eval", str(bad), "--data", str(lego_dir), "--no-lpips", "--quiet"]):
            assert main(verb) == 2
            err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
            assert len(err) == 1 and "bad.vqrf" in err[0], err


@pytest.mark.parametrize("flags, message", [
    (["--keep", "1.5"], "--keep"), (["--codebook-size", "100000"], "--codebook-size"),
    (["--target-size", "lots"], "--target-size"), (["--sync-every", "0"], "--sync-every"),
])
def test_cli_compress_refuses_bad_flags(capsys, tmp_path, demo_model, flags, message):
    code = main(["compress", str(demo_model), "--data", str(tmp_path), "-o", str(tmp_path / "x.vqrf"), *flags])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.vqrf").exists()


def test_cli_compress_refuses_a_compressed_input(capsys, tmp_path, small_file):
    path = tmp_path / "in.vqrf"
    path.write_bytes(small_file)
    assert main(["compress", str(path), "--data", str(tmp_path), "-o", str(tmp_path / "out.vqrf")]) == 2
    assert "already compressed" in capsys.readouterr().err


def test_keeping_everything_still_prunes():
    imp = torch.tensor([[5.0, 3.0], [1e-9, 0.0]])
    keep, vq = cdf_split(imp, 1.0, 0.99)
    assert keep.tolist() == [[True, True], [False, False]] and not vq.any()


def test_fit_budget_moves_the_least_important_kept_texels_to_codes(demo_model, demo_importance):
    from vqrf.compress.rate import fit_budget

    model = load_model(demo_model)
    state = build_vq(model.field, demo_importance, 0.6, 0.99, lambda n: 32, progress=False)
    state.apply(model.field)
    before = [c.keep.clone() for c in state.grids]

    def encode(st):
        return encode_field(model.field, st, model.occupancy, model.preset, model.scene)

    budget = len(encode(state)) - 3000
    data, moved = fit_budget(model, state, encode, budget)
    assert len(data) <= budget and moved > 0
    assert sum(int((b & ~c.keep).sum()) for b, c in zip(before, state.grids)) == moved
    for i, (code, grid) in enumerate(zip(state.grids, model.field.feature_grids())):
        assert not (code.keep & ~before[i]).any()  # nothing is promoted
        assert not (code.keep & code.vq).any()
        for kind in grid.quantised:
            plane = rows(grid.tensors[kind].detach())
            assert code.indices[kind].numel() == int(code.vq.sum())
            torch.testing.assert_close(plane[code.vq.flatten()], code.codebooks[kind][code.indices[kind]])
    demoted_importance = max(float(demo_importance[i][b & ~c.keep].max()) for i, (b, c) in
                             enumerate(zip(before, state.grids)) if (b & ~c.keep).any())
    still_kept = min(float(demo_importance[i][c.keep].min()) for i, c in enumerate(state.grids) if c.keep.any())
    assert demoted_importance <= still_kept


def test_interrupted_compression_resumes_to_the_same_file(demo_model, demo_importance, tmp_path, monkeypatch):
    import vqrf.compress.pipeline as pipeline

    def pool():
        return RayPool(make_demo_scene("train", n_views=20, size=32), torch.device("cpu"))

    cfg = small_config(finetune_iters=30)
    whole = compress_model(load_model(demo_model), pool(), cfg, demo_importance, progress=False)

    checkpoint = tmp_path / "x.vqrf.partial.safetensors"
    save = pipeline._save_progress

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_save_progress", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        compress_model(load_model(demo_model), pool(), cfg, demo_importance, progress=False, checkpoint=checkpoint,
                       checkpoint_every=10)
    monkeypatch.setattr(pipeline, "_save_progress", save)
    assert checkpoint.is_file()
    saved_at: list[int] = []
    resumed = compress_model(load_model(demo_model), pool(), cfg, None, progress=False, checkpoint=checkpoint,
                             checkpoint_every=10, on_checkpoint=saved_at.append)
    assert not checkpoint.exists()
    assert resumed.data == whole.data  # byte for byte: optimiser, sampler and RNG continue exactly
    assert saved_at == [20]  # continued from step 10; no save after the last step
