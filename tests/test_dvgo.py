"""DVGO: the field, its two-stage training, and the same compression, file format and commands as TensoRF-VM."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from vqrf.checkpoint import load_model
from vqrf.cli import main
from vqrf.compress.codec import Precision, decode_field, encode_field
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.importance import grid_importance
from vqrf.compress.pipeline import compress_model
from vqrf.compress.vq import build_vq, rows
from vqrf.config import CompressConfig, DVGOConfig, FieldConfig, get_preset
from vqrf.data.synthetic import make_demo_scene
from vqrf.errors import VqrfError
from vqrf.evaluate import evaluate
from vqrf.fields import DVGO, TensorVM
from vqrf.fields.grid_kernel import grid_features_torch
from vqrf.step import RayPool
from vqrf.train import coarse_start, train
from fixtures_data import version_1_sections  # noqa: E402

BOX = torch.tensor([[-1.0, -0.8, -0.6], [1.0, 0.8, 0.6]])


def small_dvgo_preset():
    """The CPU preset shrunk to seconds: 32x32 demo views, a 20^3 coarse grid and a 32^3 fine one."""
    preset = get_preset("cpu", "dvgo")
    preset.coarse.train = dataclasses.replace(preset.coarse.train, iters=60, batch_rays=1024, n_voxel_init=20**3,
                                              n_voxel_final=20**3)
    preset.train = dataclasses.replace(preset.train, iters=200, batch_rays=1024, n_voxel_init=16**3,
                                       n_voxel_final=32**3, upsample_at=(20, 40, 60, 80))
    return preset


@pytest.fixture(scope="module")
def dvgo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dvgo")
    train(make_demo_scene("train", n_views=20, size=32), small_dvgo_preset(), out, progress=False)
    return out


# ---- the field ------------------------------------------------------------------------------------------------------
def random_dvgo(grid=(9, 7, 6), seed: int = 0) -> DVGO:
    torch.manual_seed(seed)
    field = DVGO(BOX, grid, DVGOConfig())
    with torch.no_grad():
        field.density_grid.normal_()
        field.k0.normal_()
    return field


def test_untrained_voxels_have_alpha_init_per_base_voxel():
    cfg = DVGOConfig(alpha_init=1e-3)
    field = DVGO(BOX, (10, 10, 10), cfg, base_voxels=20**3)
    sigma = field.density(torch.zeros(4, 3))
    base_voxel = float(((BOX[1] - BOX[0]).prod() / 20**3) ** (1 / 3))
    alpha = 1 - torch.exp(-sigma * base_voxel * field.distance_scale)
    torch.testing.assert_close(alpha, torch.full((4,), 1e-3), rtol=1e-4, atol=0)


def test_lookups_are_trilinear_in_the_box():
    """Density and (coarse) colour at a point equal a by-hand trilinear mix of the 8 surrounding grid points."""
    field = DVGO(BOX, (5, 4, 3), DVGOConfig(k0_dim=3, rgbnet=False))
    with torch.no_grad():
        field.density_grid.copy_(torch.randn(5, 4, 3, 1))
        field.k0.copy_(torch.randn(5, 4, 3, 3))
    point = torch.tensor([[0.3, -0.1, 0.2]])
    pos = ((point - BOX[0]) / (BOX[1] - BOX[0]) * torch.tensor([4.0, 3.0, 2.0]))[0]
    low = pos.floor().long()
    frac = pos - low
    raw = torch.zeros(1)
    rgb_logit = torch.zeros(3)
    for corner in range(8):
        offset = torch.tensor([(corner >> k) & 1 for k in range(3)])
        w = torch.prod(torch.where(offset == 1, frac, 1 - frac))
        x, y, z = (low + offset).tolist()
        raw += w * field.density_grid[x, y, z].detach()
        rgb_logit += w * field.k0[x, y, z].detach()
    torch.testing.assert_close(field.density(point), torch.nn.functional.softplus(raw + field.act_shift))
    torch.testing.assert_close(field.color(point, torch.tensor([[0.0, 0.0, 1.0]]))[0], torch.sigmoid(rgb_logit))


def test_importance_splat_is_the_gradient_of_the_lookup():
    """A voxel's importance is d/dv of sum(w * lookup(v)) over the samples (method-spec §5.2's pseudo grid)."""
    field = random_dvgo()
    gen = torch.Generator().manual_seed(3)
    xyz = BOX[0] + (BOX[1] - BOX[0]) * torch.rand(300, 3, generator=gen)
    weights = torch.rand(300, generator=gen)
    ones = torch.ones(*field.grid_size, 1, requires_grad=True)
    (grid_features_torch(ones, field.normalize(xyz))[:, 0] * weights).sum().backward()
    maps = [torch.zeros(field.grid_size, dtype=torch.float64)]
    field.splat_importance(xyz, weights, maps)
    torch.testing.assert_close(maps[0].float(), ones.grad[..., 0], rtol=1e-5, atol=1e-6)
    assert float(maps[0].sum()) == pytest.approx(float(weights.sum()), rel=1e-5)


def test_upsample_keeps_the_function_and_shrink_crops_it():
    field, before = random_dvgo((5, 5, 5)), random_dvgo((5, 5, 5))
    shift = float(field.act_shift)
    field.upsample([9, 9, 9])  # old grid point k is new grid point 2k, where trilinear resampling is exact
    assert field.grid_size == [9, 9, 9] and float(field.act_shift) == shift - field.cfg.shift_after_upsample
    torch.testing.assert_close(field.k0[2, 4, 6], before.k0[1, 2, 3].detach())
    torch.testing.assert_close(field.density_grid[8, 0, 2], before.density_grid[4, 0, 1].detach())
    box = torch.tensor([[-0.5, -0.4, -0.3], [0.5, 0.4, 0.3]])
    field.shrink(box)
    assert (field.aabb[0] <= box[0] + 1e-6).all() and (field.aabb[1] >= box[1] - 1e-6).all()
    assert field.grid_size == [5, 5, 5]
    torch.testing.assert_close(field.k0[0, 0, 0], before.k0[1, 1, 1].detach())


@pytest.mark.parametrize("field", [TensorVM(BOX, [8, 7, 6], FieldConfig()), random_dvgo()])
def test_every_parameter_is_in_a_feature_grid_or_has_a_storage_role(field):
    """The codec stores exactly these; a parameter in neither would be lost in a .vqrf."""
    in_grids = {id(t) for g in field.feature_grids() for t in g.tensors.values()}
    named = dict(field.named_parameters())
    roles = field.parameter_roles()
    for name, param in named.items():
        assert (id(param) in in_grids) != (name in roles), name
    assert set(roles.values()) <= {"line", "network"}


def test_dvgo_refuses_forward_facing_scenes(tmp_path):
    with pytest.raises(VqrfError, match="no llff preset"):
        get_preset("llff", "dvgo")
    scene = dataclasses.replace(make_demo_scene("train", n_views=2, size=8), ndc=True, ndc_focal=10.0)
    with pytest.raises(VqrfError, match="forward-facing"):
        train(scene, small_dvgo_preset(), tmp_path, progress=False)


# ---- training -------------------------------------------------------------------------------------------------------
def test_two_stage_training_fits_the_demo_scene(dvgo_run):
    coarse = load_model(dvgo_run / "coarse" / "model.safetensors")
    fine = load_model(dvgo_run / "model.safetensors")
    assert isinstance(fine.field, DVGO) and fine.field.rgbnet is not None and coarse.field.rgbnet is None
    assert fine.field.grid_size != coarse.field.grid_size
    # The fine box is the coarse geometry's box with a 5% margin, and each upsampling lowered the shift by 1.
    preset = small_dvgo_preset()
    start = coarse_start(coarse.field, preset.coarse, preset.train.box_margin)
    torch.testing.assert_close(fine.field.aabb, start.aabb)
    centre, half = start.aabb.mean(0), (start.aabb[1] - start.aabb[0]) / 2
    assert torch.equal(coarse_start(coarse.field, preset.coarse, 1.0).aabb.mean(0), centre)
    assert (half > 0).all()
    assert float(fine.field.act_shift) == pytest.approx(math.log(1 / (1 - 1e-2) - 1) - 4, abs=1e-5)
    test = make_demo_scene("test", n_views=3, size=32)
    assert evaluate(fine, test, use_lpips=False, progress=False)["psnr"] > 21.0
    assert fine.extra["trained"]["iterations"] == 200


def test_an_interrupted_fine_stage_resumes_to_the_same_parameters(tmp_path):
    preset = small_dvgo_preset()
    preset.train = dataclasses.replace(preset.train, iters=60, upsample_at=(10, 20), checkpoint_every=30)
    scene = make_demo_scene("train", n_views=12, size=24)
    whole = train(scene, preset, tmp_path / "whole", progress=False)
    (tmp_path / "part").mkdir()

    def stop(iteration: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(scene, preset, tmp_path / "part", progress=False, on_checkpoint=stop)
    assert (tmp_path / "part" / "checkpoint.safetensors").is_file()
    resumed = train(scene, preset, tmp_path / "part", resume=True, progress=False)
    for (name, a), b in zip(whole.field.state_dict().items(), resumed.field.state_dict().values()):
        assert torch.equal(a, b), name


# ---- compression and the file ---------------------------------------------------------------------------------------
def test_codec_rebuilds_the_quantised_dvgo_field(dvgo_run):
    model = load_model(dvgo_run / "model.safetensors")
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), "cpu")
    importance = grid_importance(model.field, model.occupancy, pool, model.render_settings(), progress=False)
    assert len(importance) == 1 and list(importance[0].shape) == model.field.grid_size
    state = build_vq(model.field, importance, 0.6, 0.999, lambda n: 32, progress=False)
    state.apply(model.field)
    code = state.grids[0]
    assert code.keep.any() and code.vq.any() and (~code.non_pruned).any()
    assert set(code.codebooks) == {"k0"}  # density is pruned and stored per voxel, never vector-quantised
    data = encode_field(model.field, state, model.occupancy, model.preset, model.scene, Precision())
    decoded = decode_field(data, "x.vqrf")
    assert isinstance(decoded.field, DVGO) and decoded.field.grid_size == model.field.grid_size
    np_mask, keep, vq = code.non_pruned.flatten(), code.keep.flatten(), code.vq.flatten()
    for kind in ("density", "k0"):
        got, want = rows(getattr(decoded.field, "density_grid" if kind == "density" else kind).detach()), \
            rows(getattr(model.field, "density_grid" if kind == "density" else kind).detach())
        assert (got[~np_mask] == 0).all()
        stored = np_mask if kind == "density" else keep
        step = want[stored].std(0, unbiased=False).max() / 15
        assert (got[stored] - want[stored]).abs().max() <= step / 2 + 1e-5
    torch.testing.assert_close(rows(decoded.field.k0.detach())[vq], code.codebooks["k0"][code.indices["k0"]],
                               atol=float(code.codebooks["k0"].abs().max()) / 30, rtol=0)
    assert torch.equal(decoded.field.act_shift, model.field.act_shift)
    assert torch.equal(decoded.field.voxel_size_base, model.field.voxel_size_base)
    scene = make_demo_scene("test", n_views=2, size=32)
    a = evaluate(model, scene, use_lpips=False, progress=False)["psnr"]
    b = evaluate(decoded, scene, use_lpips=False, progress=False)["psnr"]
    assert abs(a - b) < 0.3


def test_pipeline_and_rate_control_on_dvgo(dvgo_run):
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), "cpu")
    cfg = CompressConfig(keep=0.6, non_prune=0.999, codebook_size=64, finetune_iters=30, lr_scale=0.8)
    free = compress_model(load_model(dvgo_run / "model.safetensors"), pool, cfg, progress=False)
    budget = int(0.7 * len(free.data))
    result = compress_model(load_model(dvgo_run / "model.safetensors"), pool, cfg, budget=budget, progress=False)
    assert 0.9 * budget <= len(result.data) <= budget
    code = result.state.grids[0]
    for tensor in (result.model.field.density_grid, result.model.field.k0):
        assert (rows(tensor.detach())[~code.non_pruned.flatten()] == 0).all()  # pruned voxels stay pruned


@pytest.fixture(scope="module")
def dvgo_file(dvgo_run) -> bytes:
    model = load_model(dvgo_run / "model.safetensors")
    pool = RayPool(make_demo_scene("train", n_views=20, size=32), "cpu")
    importance = grid_importance(model.field, model.occupancy, pool, model.render_settings(), progress=False)
    state = build_vq(model.field, importance, 0.6, 0.999, lambda n: 16, progress=False)
    state.apply(model.field)
    return encode_field(model.field, state, model.occupancy, model.preset, model.scene,
                        Precision("int8", "int8", "int8"))


def test_dvgo_field_layer_rejects_inconsistent_files(dvgo_file):
    header, sections = decode_container(dvgo_file, "x")
    cases = {
        "type": ({**header, "field_type": "tensorf"}, sections, "inconsistent header"),
        "missing": (header, {k: v for k, v in sections.items() if k != "buffer.act_shift"}, "missing"),
        "values": (header, {**sections, "voxels.density.values": sections["voxels.density.values"][:-1]}, "expected"),
        "overlap": (header, {**sections, "voxels.vq_mask": sections["voxels.vq_mask"] | sections["voxels.keep_mask"]},
                    "both kept"),
    }
    for name, (h, s, message) in cases.items():
        with pytest.raises(VqrfError, match=message):
            decode_field(encode_container(h, s), "x.vqrf")


SECTION_EDITS = ["drop", "shape", "dtype", "values", "header"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_dvgo_sections_fail_cleanly(dvgo_file, data):
    """Valid containers with mutated field-layer content: each decodes or raises VqrfError, nothing else."""
    header, sections = decode_container(dvgo_file, "x")
    header = dict(header)
    names = sorted(sections)
    for _ in range(data.draw(st.integers(1, 3))):
        edit = data.draw(st.sampled_from(SECTION_EDITS))
        name = data.draw(st.sampled_from(names))
        arr = sections.get(name)
        if edit == "drop":
            sections.pop(name, None)
        elif arr is None:
            continue
        elif edit == "shape":
            sections[name] = arr.reshape(-1)[: max(0, arr.size - data.draw(st.integers(0, 3)))].copy()
        elif edit == "dtype":
            sections[name] = arr.astype(data.draw(st.sampled_from(["int8", "uint16", "float16", "float32", "bool"])))
        elif edit == "values" and arr.size:
            flat = arr.reshape(-1).copy()
            value = data.draw(st.sampled_from([0, 1, 127, 255, 65535, -1e30, float("nan"), float("inf")]))
            with warnings.catch_warnings():  # wrapping casts (255 as int8, NaN as an integer) are the point
                warnings.simplefilter("ignore", RuntimeWarning)
                flat[data.draw(st.integers(0, arr.size - 1))] = np.asarray(value).astype(flat.dtype)
            sections[name] = flat.reshape(arr.shape)
        elif edit == "header":
            key = data.draw(st.sampled_from(["grid", "aabb", "field_type", "preset", "scene", "occupancy_aabb"]))
            header[key] = data.draw(st.sampled_from([None, [], [2, 2, 2], "dvgo", {"field": {}}, [[0, 0, 0]], 7]))
    try:
        decode_field(encode_container(header, sections), "fuzz.vqrf")
    except VqrfError:
        pass


def test_version_1_tensorf_files_still_decode():
    """Files written before DVGO (field layer 1) name lines and network sections by hand; they decode unchanged."""
    field = TensorVM(BOX, [8, 7, 6], FieldConfig())
    from vqrf.checkpoint import SceneInfo
    from vqrf.config import Preset
    from vqrf.render.occupancy import OccupancyGrid

    maps = [torch.rand(g.shape, dtype=torch.float64) for g in field.feature_grids()]
    state = build_vq(field, maps, 0.5, 0.99, lambda n: 8, progress=False)
    state.apply(field)
    occupancy = OccupancyGrid.full(BOX)
    preset, scene = Preset("syn", "blender"), SceneInfo(2.0, 6.0, False, True)
    v2 = decode_field(encode_field(field, state, occupancy, preset, scene), "v2")
    header, sections = decode_container(encode_field(field, state, occupancy, preset, scene), "x")
    v1_sections = version_1_sections(sections)
    header = {k: v for k, v in header.items() if k != "field_type"}
    header.update(format="vqrf-tensorf-vq", version=1)
    header["preset"] = {k: v for k, v in header["preset"].items() if k not in ("field_type", "coarse")}
    v1 = decode_field(encode_container(header, v1_sections), "v1")
    for (name, a), b in zip(v2.field.state_dict().items(), v1.field.state_dict().values()):
        assert torch.equal(a, b), name


# ---- the commands -------------------------------------------------------------------------------------------------
def test_cli_runs_every_verb_on_a_dvgo_model(dvgo_run, tmp_path, capsys, monkeypatch):
    """compress, info, eval and render take a DVGO file through the same code path as a TensoRF one."""
    import vqrf.data

    scene = make_demo_scene("train", n_views=20, size=32)
    monkeypatch.setattr(vqrf.data, "load_scene", lambda *a, **k: scene if k.get("split", "train") == "train"
                        else make_demo_scene("test", n_views=2, size=32))
    model = dvgo_run / "model.safetensors"
    out = tmp_path / "dvgo.vqrf"
    assert main(["compress", str(model), "-o", str(out), "--data", "demo", "--finetune-iters", "10",
                 "--codebook-size", "32", "--quiet"]) == 0
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "dvgo" in info and "codebooks voxels" in info and "unpruned features" in info
    assert main(["info", str(model)]) == 0
    assert "dvgo" in capsys.readouterr().out
    assert main(["eval", str(out), "--data", "demo", "--no-lpips", "--quiet", "--out", str(tmp_path / "ev")]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["render", str(out), "--data", "demo", "--frames", "2", "--resolution", "24x24",
                 "-o", str(tmp_path / "v.mp4"), "--quiet"]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0


def test_cli_train_refuses_dvgo_llff(capsys):
    assert main(["train", "--field", "dvgo", "--preset", "llff", "--data", "x", "--out", "y"]) == 2
    err = capsys.readouterr().err
    assert "no llff preset" in err and "Traceback" not in err
