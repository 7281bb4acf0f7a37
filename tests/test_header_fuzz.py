"""Untrusted .vqrf headers: every bad value is a one-line VqrfError, and what decodes renders a finite image in time.

The mutator, the small base files and the decode-and-render check are the header fuzz benchmark's
(``benchmarks/fuzz_header.py``), run here on fewer copies and in-process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vqrf.checkpoint import LoadedModel, SceneInfo
from vqrf.compress.codec import decode_field
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.header_check import MAX_SAMPLES_PER_RAY, check_render
from vqrf.config import FieldConfig, Preset, TrainConfig
from vqrf.errors import VqrfError
from vqrf.fields import TensorVM
from vqrf.render.occupancy import OccupancyGrid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import fuzz_header  # noqa: E402  (the benchmark's mutator and checker)
from fuzz_container import split  # noqa: E402

SRC = "stranger.vqrf"
SECONDS_PER_FILE = 10.0
"""A copy slower than this to decode and render counts as a hang (the small files take milliseconds)."""
DELETE = object()


@pytest.fixture(scope="module")
def bases() -> dict[str, bytes]:
    files = fuzz_header.small_files()
    for data in files.values():
        assert fuzz_header.check_file(data) == ("rendered", "")  # also loads numba's kernels before any timing
    return files


def edited(data: bytes, path: str, value: Any) -> bytes:
    """``data`` with the header value at dotted ``path`` replaced by ``value`` (DELETE: removed)."""
    header = split(data)[0]["header"]
    *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = header
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return fuzz_header.with_header(data, header)


def refused(data: bytes, match: str) -> None:
    with pytest.raises(VqrfError, match=match) as info:
        decode_field(data, SRC)
    assert info.value.path == SRC and "\n" not in info.value.problem


# The 7 tracebacks the issue reports (lists for near / far / density_shift, None for distance_scale, schedules of the
# wrong kind), then every other class of bad value: types, ranges, consistency between keys and with the sections.
BAD_VALUES = [
    ("tensorf", "scene.near", [2.0], "scene.near must be a number"),
    ("tensorf", "scene.far", [6.0], "scene.far must be a number"),
    ("tensorf", "preset.field.density_shift", [0.0], "density_shift must be a number"),
    ("tensorf", "preset.field.distance_scale", None, "distance_scale must be a number"),
    ("dvgo", "preset.train.upsample_at", ["100"], "upsample_at must be a list of integers"),
    ("dvgo", "preset.coarse.train.alpha_mask_at", [[1]], "alpha_mask_at must be a list of integers"),
    ("tensorf", "preset.train.alpha_mask_at", 5, "alpha_mask_at must be a list of integers"),
    ("tensorf", "format", ["vqrf-field-vq"], "not a compressed vqrf field"),
    ("tensorf", "version", True, "unknown field version true"),
    ("dvgo", "version", 1, "unknown field version 1"),  # a version-1 reader would skip the buffers
    ("tensorf", "version", 99, "newer vqrf"),
    ("tensorf", "field_type", "dvgo", "field_type"),
    ("tensorf", "grid", [True, 9, 8], "grid must be a list of 3 integers"),
    ("tensorf", "grid", [2**70, 9, 8], "grid must be in"),
    ("tensorf", "grid", [10, 9, 9], "expected"),
    ("tensorf", "aabb", [[1, 1, 1], [0, 0, 0]], "aabb must have max - min"),
    ("tensorf", "aabb.1.0", fuzz_header.INFINITE, "aabb must be in"),
    ("tensorf", "occupancy_aabb", [[0, 0, 0]], "occupancy_aabb must be"),
    ("tensorf", "scene", {"near": 2.0}, "scene has an unknown key|scene.far is missing"),
    ("tensorf", "scene.near", 7.0, "scene.near must be in"),
    ("tensorf", "scene.far", -fuzz_header.INFINITE, "scene.far must be a finite number"),
    ("tensorf", "scene.white_bg", 1, "scene.white_bg must be true or false"),
    ("tensorf", "scene.height", 1.5, "scene.height must be an integer"),
    ("tensorf", "scene.views", 1, "unknown key"),
    ("tensorf-ndc", "scene.contract", True, "both true"),
    ("tensorf-ndc", "scene.width", 0, "scene.width must be in"),
    ("tensorf-ndc", "scene.ndc_focal", 0.0, "scene.ndc_focal must be in"),
    ("dvgo", "scene", {"near": 0, "far": 1, "ndc": True, "white_bg": False, "ndc_focal": 30.0, "height": 24,
                       "width": 32}, "no NDC form"),
    ("tensorf", "preset", DELETE, "preset must be an object"),
    ("tensorf", "preset.name", DELETE, "preset.name is missing"),
    ("tensorf", "preset.train.unknown", 1, "unknown key"),
    ("tensorf", "preset.downscale", 0, "preset.downscale must be in"),
    ("tensorf", "preset.train.step_ratio", 1e-4, "step_ratio must be in"),
    ("tensorf", "preset.train.weight_thres", 1.0, "weight_thres must be in"),
    ("tensorf", "preset.train.iters", 2**70 + 0.5, "iters must be an integer"),
    ("tensorf", "preset.field.density_comps", [2, 3], "list of 3 integers"),
    ("tensorf", "preset.field.density_comps", [2**40, 3, 2], "density_comps must be in"),
    ("tensorf", "preset.field.app_comps", [3, 2, 5], "expected"),  # consistent with the header, not the sections
    ("tensorf", "preset.field.mlp_width", 0, "mlp_width must be in"),
    ("tensorf", "preset.field.view_pe", 40, "view_pe must be in"),
    ("tensorf", "preset.field.density_act", "tanh", "density_act must be softplus or relu"),
    ("tensorf", "preset.field.density_shift", 1e30, "density_shift must be in"),
    ("tensorf", "preset.field.distance_scale", 0.0, "distance scale"),
    ("tensorf", "preset.field.distance_scale", 1e300, "distance scale"),
    ("tensorf", "preset.field.bf16_mlp", "yes", "bf16_mlp must be true or false"),
    ("dvgo", "preset.field.rgbnet", False, "k0_dim must be 3 without rgbnet"),
    ("dvgo", "preset.field.alpha_init", 1.0, "alpha_init must be in"),
    ("dvgo", "preset.field.k0_dim", 5, "expected"),
    ("dvgo", "preset.coarse.field.view_pe", -1, "preset.coarse.field.view_pe must be in"),
    ("dvgo", "preset.coarse.coarse", {"name": "x"}, "no coarse stage of its own"),
    ("tensorf", "views.width", True, "stored cameras"),
    ("tensorf-ndc", "views.depth_bounds", None, "stored cameras"),
    ("tensorf", "precision", [], "precision must be an object"),
    ("tensorf", "precision.codebook_levels", "64", "codebook_levels must be an integer"),
    ("tensorf", "stats.psnr", "high", "stats.psnr must be a finite number"),
    ("tensorf", "stats.tiers", {"keep": 1}, "stats.tiers must hold integers"),
]


@pytest.mark.parametrize("base, path, value, match", BAD_VALUES, ids=[f"{b}:{p}" for b, p, _, _ in BAD_VALUES])
def test_bad_header_values_are_one_line_errors(bases, base, path, value, match):
    refused(edited(bases[base], path, value), match)


def test_version_1_holds_tensorf_only(bases):
    """Version 1 (TensoRF's first format) stored no buffers, so a DVGO field under it would keep uninitialised ones."""
    refused(edited(edited(bases["dvgo"], "format", "vqrf-tensorf-vq"), "version", 1), "TensoRF fields only")


def test_older_and_default_values_still_decode(bases):
    """Field version 2 (no cameras) and keys that older writers left out (their defaults apply)."""
    for data in (edited(bases["tensorf"], "version", 2), edited(bases["tensorf"], "scene.contract", DELETE),
                 edited(bases["dvgo"], "preset.train.masks_shrink_only", DELETE),
                 edited(bases["dvgo"], "preset.coarse", DELETE), edited(bases["tensorf"], "stats", DELETE),
                 edited(bases["tensorf"], "scene.near", 2)):
        assert fuzz_header.check_file(data) == ("rendered", "")


def test_bad_sections_are_refused_before_the_field_is_built(bases):
    header, sections = decode_container(bases["dvgo"], SRC)
    codebook = sections["voxels.k0.codebook.scale"].copy()
    codebook[1] = np.nan
    refused(encode_container(header, {**sections, "voxels.k0.codebook.scale": codebook}), "NaN or infinite")
    refused(encode_container(header, {**sections, "occupancy": np.zeros((4, 0, 3), bool)}), "3 axes of 1 to")
    # A field of 2^32 numbers from a few bytes of header: refused before any of it is allocated.
    huge = split(bases["tensorf"])[0]["header"]
    huge["grid"] = [4096, 4096, 4096]
    huge["preset"]["field"].update(density_comps=[1024] * 3, app_comps=[1024] * 3)
    refused(fuzz_header.with_header(bases["tensorf"], huge), "would hold")


def test_the_samples_per_ray_are_bounded():
    """A long thin box with many grid points along it and a small step: too many samples to render."""
    field = TensorVM(torch.tensor([[0.0, 0.0, 0.0], [1000.0, 1.0, 1.0]]), [4000, 2, 2],
                     FieldConfig(density_comps=(1, 1, 1), app_comps=(1, 1, 1), app_dim=1, mlp_width=1))
    preset = Preset("p", "blender", field=field.cfg, train=TrainConfig(step_ratio=0.01))
    model = LoadedModel(field, OccupancyGrid.full(field.aabb), preset, SceneInfo(0.0, 2000.0, False, True))
    assert model.render_settings().max_samples > MAX_SAMPLES_PER_RAY
    with pytest.raises(VqrfError, match="samples across the box"):
        check_render(model, Path(SRC))


def test_random_header_mutations_decode_and_render_or_fail_cleanly(bases):
    rng = np.random.default_rng(12)
    names = sorted(bases)
    outcomes = {"rendered": 0, "VqrfError": 0}
    for i in range(160):
        base = names[i % len(names)]
        header, edits = fuzz_header.mutate_header(split(bases[base])[0]["header"], rng)
        start = time.perf_counter()
        outcome, detail = fuzz_header.check_file(fuzz_header.with_header(bases[base], header))
        assert outcome in outcomes, (base, edits, outcome, detail)
        assert time.perf_counter() - start < SECONDS_PER_FILE, (base, edits)
        outcomes[outcome] += 1
    assert min(outcomes.values()) > 20, outcomes  # both outcomes are exercised
