"""Checks on a ``.vqrf`` field header, before anything is built from it (docs/format.md, "Header limits").

Files travel, so a header is untrusted input: every value the decoder and the renderer use is checked here for
type, range and consistency with the sections, and a bad one is a one-line VqrfError naming the file instead of a
traceback (or a NaN image) somewhere downstream. The limits also bound what opening and rendering a file may cost:
the memory of the decoded field and the samples per ray. They are generous for every field vqrf trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqrf.checkpoint import LoadedModel, SceneInfo
from vqrf.config import DVGOConfig, FieldConfig, Preset, from_json, is_json_int, json_excerpt
from vqrf.errors import VqrfError
from vqrf.fields import Field

__all__ = ["FieldHeader", "check_header", "check_layout", "check_render"]

MAX_GRID = 4096
"""Grid points (and occupancy cells) along an axis."""
MAX_COORD = 1e5
"""Largest |coordinate| of a box (scenes are normalised to a few units; float32 positions need bounded ones)."""
MIN_EXTENT = 1e-5
"""Smallest side of a box, so voxel sizes and 1 / extent stay normal float32 numbers."""
MAX_FAR = 1e6
MAX_IMAGE_SIDE = 32768
MAX_CHANNELS = 1024
"""Components per plane, ``app_dim``, ``k0_dim``."""
MAX_WIDTH = 4096
"""Hidden width of a colour MLP."""
MAX_FREQS = 16
"""Positional-encoding frequencies."""
MAX_DENSITY_SHIFT = 1e4
STEP_RATIO = (0.01, 64.0)
MAX_FIELD_ELEMENTS = 2**28
"""Floats in the decoded field (1 GiB), checked before any is allocated."""
MAX_SAMPLES_PER_RAY = 2**15
"""Samples a ray may take across the box (``diagonal / step``): bounds rendering time per pixel."""
MAX_DISTANCE_SCALE = 1e6


@dataclass(frozen=True)
class FieldHeader:
    """The header values the decoder uses, checked and typed."""

    version: int
    preset: Preset
    scene: SceneInfo
    grid: list[int]
    aabb: torch.Tensor
    """[2, 3] float32."""
    occupancy_aabb: torch.Tensor
    """[2, 3] float32."""


def check_header(header: dict[str, Any], source: Path, versions: dict[str, range]) -> FieldHeader:
    """The checked values of a field header; ``versions`` maps each known ``format`` to its field-layer versions."""
    fmt, version = header.get("format"), header.get("version")
    if not isinstance(fmt, str) or fmt not in versions:
        raise VqrfError(source, f"not a compressed vqrf field (format {json_excerpt(fmt)})")
    if not is_json_int(version) or version < versions[fmt].start:
        raise VqrfError(source, f"unknown field version {json_excerpt(version)} for format {fmt!r}")
    if version >= versions[fmt].stop:
        raise VqrfError(source, f"written by a newer vqrf (field version {version}); upgrade vqrf")
    try:
        preset = Preset.from_dict(header.get("preset"))
        field_type = header.get("field_type", "tensorf")  # version 1 had TensoRF only, and no such key
        if field_type != preset.field_type:
            raise ValueError(f"field_type {json_excerpt(field_type)} but a {preset.field_type} preset")
        if version == 1 and field_type != "tensorf":  # version 1 stored no buffers: DVGO's would stay unset
            raise ValueError(f"field version 1 holds TensoRF fields only, not {json_excerpt(field_type)}")
        _check_preset(preset)
        values = FieldHeader(version, preset, _scene(header.get("scene")), _grid(header.get("grid")),
                             _box("aabb", header.get("aabb")), _box("occupancy_aabb", header.get("occupancy_aabb")))
        _check_precision(header.get("precision", {}))
        _check_stats(header.get("stats", {}))
    except ValueError as e:
        raise VqrfError(source, f"inconsistent header ({e})") from None
    return values


def check_layout(field: Field, header: FieldHeader, sections: dict[str, np.ndarray], source: Path) -> None:
    """Before the field is allocated: ``field`` (built on the meta device from ``header``) fits the limits and the
    sections' shapes, and no float section holds NaN or infinity."""
    if header.scene.ndc and not field.supports_ndc:
        raise VqrfError(source, f"inconsistent header (scene.ndc is true, but a {field.field_type} field has no NDC "
                                "form)")
    size = sum(p.numel() for p in field.parameters())
    if size > MAX_FIELD_ELEMENTS:
        raise VqrfError(source, f"inconsistent header (the field would hold {size:,} numbers, more than "
                                f"{MAX_FIELD_ELEMENTS:,})")
    cells = sections.get("occupancy")
    if cells is not None and not (cells.ndim == 3 and 1 <= min(cells.shape) and max(cells.shape) <= MAX_GRID):
        raise VqrfError(source, f"section 'occupancy' is {cells.dtype}{list(cells.shape)}, expected 3 axes of 1 to "
                                f"{MAX_GRID} cells")
    for grid in field.feature_grids():
        for mask in ("keep_mask", "vq_mask"):
            _expect_shape(sections, f"{grid.name}.{mask}", grid.shape, source)
        for kind, tensor in grid.tensors.items():
            stored = "codebook" if kind in grid.quantised else "values"
            _expect_shape(sections, f"{grid.name}.{kind}.{stored}", (None, tensor.shape[-1]), source)
    for name, arr in sections.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise VqrfError(source, f"section {name!r} holds NaN or infinite values")


def check_render(model: LoadedModel, source: Path) -> None:
    """The decoded field's alpha scale and the samples per ray its step gives are within the limits."""
    scale = model.field.distance_scale  # TensoRF: the preset's; DVGO: 1 / buffer.voxel_size_base
    if not 0 < scale <= MAX_DISTANCE_SCALE:
        raise VqrfError(source, f"inconsistent header (distance scale {scale:g} is outside (0, "
                                f"{MAX_DISTANCE_SCALE:g}])")
    samples = model.render_settings().max_samples
    if samples > MAX_SAMPLES_PER_RAY:
        raise VqrfError(source, f"inconsistent header (preset.train.step_ratio {model.preset.train.step_ratio:g} "
                                f"gives {samples:,} samples across the box, more than {MAX_SAMPLES_PER_RAY:,})")


def _expect_shape(sections: dict[str, np.ndarray], name: str, shape: tuple[int | None, ...], source: Path) -> None:
    """A present section has ``shape`` (None: any size); a missing one is left for the reader to report."""
    arr = sections.get(name)
    if arr is not None and (arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape))):
        wanted = ", ".join("*" if s is None else str(s) for s in shape)
        raise VqrfError(source, f"section {name!r} is {arr.dtype}{list(arr.shape)}, expected [{wanted}]")


def _within(where: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    """Refuse ``value`` outside the interval from ``lo`` to ``hi`` (closed unless said open)."""
    if not lo <= value <= hi or (lo_open and value == lo) or (hi_open and value == hi):  # NaN fails too
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{where} must be in {interval}, got {json_excerpt(value)}")


def _check_preset(preset: Preset, where: str = "preset") -> None:
    """Ranges of the architecture and of the rendering keys, in the preset and its coarse stage (the types are
    checked by ``Preset.from_dict``; the other training keys are used by training only)."""
    _within(f"{where}.downscale", preset.downscale, 0, 1024, lo_open=True)
    _within(f"{where}.train.step_ratio", preset.train.step_ratio, *STEP_RATIO)
    _within(f"{where}.train.weight_thres", preset.train.weight_thres, 0, 1, hi_open=True)
    if isinstance(preset.field, DVGOConfig):
        _check_dvgo(preset.field, f"{where}.field")
    else:
        _check_tensorf(preset.field, f"{where}.field")
    if preset.coarse is not None:
        _check_preset(preset.coarse, f"{where}.coarse")


def _check_dvgo(cfg: DVGOConfig, where: str) -> None:
    _within(f"{where}.k0_dim", cfg.k0_dim, 1, MAX_CHANNELS)
    _within(f"{where}.rgbnet_width", cfg.rgbnet_width, 1, MAX_WIDTH)
    _within(f"{where}.view_pe", cfg.view_pe, 0, MAX_FREQS)
    # The activation's initial shift is log(alpha / (1 - alpha)): finite only well inside (0, 1).
    _within(f"{where}.alpha_init", cfg.alpha_init, 1e-12, 1 - 1e-6)
    if not cfg.rgbnet and cfg.k0_dim != 3:
        raise ValueError(f"{where}.k0_dim must be 3 without rgbnet (k0 is the colour), got {cfg.k0_dim}")


def _check_tensorf(cfg: FieldConfig, where: str) -> None:
    for name in ("density_comps", "app_comps"):
        for comps in getattr(cfg, name):
            _within(f"{where}.{name}", comps, 1, MAX_CHANNELS)
    _within(f"{where}.app_dim", cfg.app_dim, 1, MAX_CHANNELS)
    _within(f"{where}.mlp_width", cfg.mlp_width, 1, MAX_WIDTH)
    _within(f"{where}.view_pe", cfg.view_pe, 0, MAX_FREQS)
    _within(f"{where}.fea_pe", cfg.fea_pe, 0, MAX_FREQS)
    _within(f"{where}.density_shift", cfg.density_shift, -MAX_DENSITY_SHIFT, MAX_DENSITY_SHIFT)
    if cfg.density_act not in ("softplus", "relu"):
        raise ValueError(f"{where}.density_act must be softplus or relu, got {json_excerpt(cfg.density_act)}")


def _scene(values: Any) -> SceneInfo:
    scene = from_json(SceneInfo, values, "scene")
    _within("scene.far", scene.far, 0, MAX_FAR, lo_open=True)
    _within("scene.near", scene.near, 0, scene.far, hi_open=True)
    _within("scene.height", scene.height, 0, MAX_IMAGE_SIDE)
    _within("scene.width", scene.width, 0, MAX_IMAGE_SIDE)
    if scene.ndc:  # NDC rays are warped with the training images' focal length and size
        if scene.contract:
            raise ValueError("scene.ndc and scene.contract are both true")
        _within("scene.ndc_focal", scene.ndc_focal, 0, MAX_FAR, lo_open=True)
        _within("scene.height", scene.height, 1, MAX_IMAGE_SIDE)
        _within("scene.width", scene.width, 1, MAX_IMAGE_SIDE)
    return scene


def _grid(values: Any) -> list[int]:
    if not (isinstance(values, list) and len(values) == 3 and all(is_json_int(v) for v in values)):
        raise ValueError(f"grid must be a list of 3 integers, got {json_excerpt(values)}")
    for n in values:
        _within("grid", n, 2, MAX_GRID)
    return values


def _box(where: str, values: Any) -> torch.Tensor:
    """[[xmin, ymin, zmin], [xmax, ymax, zmax]] -> [2, 3] float32, finite, bounded, min < max on every axis."""
    if not (isinstance(values, list) and len(values) == 2
            and all(isinstance(row, list) and len(row) == 3 for row in values)):
        raise ValueError(f"{where} must be [[xmin, ymin, zmin], [xmax, ymax, zmax]], got {json_excerpt(values)}")
    for row in values:
        for v in row:
            if not (is_json_int(v) or isinstance(v, float)):
                raise ValueError(f"{where} must hold numbers, got {json_excerpt(v)}")
            _within(where, v, -MAX_COORD, MAX_COORD)
    box = torch.tensor(values, dtype=torch.float32)
    extent = (box[1] - box[0]).min()
    if not extent >= MIN_EXTENT:
        raise ValueError(f"{where} must have max - min >= {MIN_EXTENT:g} on every axis, got {float(extent):g}")
    return box


def _check_precision(values: Any) -> None:
    """The storage precisions are informative (the sections' dtypes decide), but tools show them."""
    if not isinstance(values, dict):
        raise ValueError(f"precision must be an object, got {json_excerpt(values)}")
    for key in ("codebooks", "lines", "network"):
        if key in values and not isinstance(values[key], str):
            raise ValueError(f"precision.{key} must be a string, got {json_excerpt(values[key])}")
    if "codebook_levels" in values and not is_json_int(values["codebook_levels"]):
        raise ValueError(f"precision.codebook_levels must be an integer, got {json_excerpt(values['codebook_levels'])}")
    if "keep_steps_per_std" in values:
        _number("precision.keep_steps_per_std", values["keep_steps_per_std"])


def _check_stats(values: Any) -> None:
    """Stats are informative; the ones tools format (site tiers, recorded PSNR) must have their types."""
    if not isinstance(values, dict):
        raise ValueError(f"stats must be an object, got {json_excerpt(values)}")
    if "tiers" in values:
        tiers = values["tiers"]
        if not (isinstance(tiers, dict) and all(is_json_int(tiers.get(k)) for k in ("keep", "vq", "pruned"))):
            raise ValueError(f"stats.tiers must hold integers keep, vq and pruned, got {json_excerpt(tiers)}")
    if "psnr" in values:
        _number("stats.psnr", values["psnr"])


def _number(where: str, value: Any) -> None:
    if not ((is_json_int(value) and abs(value) < 2**53) or (isinstance(value, float) and math.isfinite(value))):
        raise ValueError(f"{where} must be a finite number, got {json_excerpt(value)}")
