"""Model files and training checkpoints: safetensors (no pickle, nothing executes on load) with a JSON header.

A model file holds the field's tensors, its occupancy grid and everything needed to render it (config, near/far, NDC,
background). A training checkpoint adds the optimiser moments, the RNG state and the loop's progress.
Every write goes to a temporary file first and is renamed into place, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field as dc_field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqrf.config import Preset
from vqrf.data.scene import CameraSet
from vqrf.errors import VqrfError
from vqrf.fields import Field, create_field
from vqrf.render.occupancy import OccupancyGrid
from vqrf.render.volume import RenderSettings

__all__ = ["FORMAT", "SceneInfo", "LoadedModel", "save_model", "load_model", "atomic_write"]

FORMAT = "vqrf-field"
VERSION = 1


@dataclass
class SceneInfo:
    """What a renderer needs to know about the scene a field was trained on."""

    near: float
    far: float
    ndc: bool
    white_bg: bool
    ndc_focal: float = 0.0
    height: int = 0
    width: int = 0
    contract: bool = False  # unbounded: the field lives in contracted space (vqrf.render.contraction)
    views: CameraSet | None = None  # the training cameras, for orbits, spirals and the viewer; None in older files

    def header(self) -> dict[str, Any]:
        """The JSON facts (every field but ``views``, which files store beside them as arrays)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "views"}


@dataclass
class LoadedModel:
    field: Field
    occupancy: OccupancyGrid
    preset: Preset
    scene: SceneInfo
    extra: dict[str, Any] = dc_field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = dc_field(default_factory=dict)
    """Tensors beyond the field's and the occupancy's (optimiser state in checkpoints)."""

    def to(self, device: str | torch.device) -> "LoadedModel":
        """Move the field and its occupancy grid to ``device`` (in place; returns self)."""
        self.field = self.field.to(device)
        self.occupancy = self.occupancy.to(device)
        return self

    def render_settings(self) -> RenderSettings:
        t = self.preset.train
        return RenderSettings.for_field(self.field, self.scene.near, self.scene.far, self.scene.ndc,
                                        self.scene.white_bg, t.step_ratio, t.weight_thres, self.scene.contract,
                                        t.ndc_depth_steps)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(
    path: Path,
    field: Field,
    occupancy: OccupancyGrid,
    preset: Preset,
    scene: SceneInfo,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a model (or, with ``extra``/``tensors``, a checkpoint) atomically; the scene's training cameras, when
    known, go in as float32 ``views.*`` tensors and a ``views`` header entry (the .vqrf layout, at full precision)."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "field_type": field.field_type,
        "grid": field.grid_size,
        "preset": preset.to_dict(),
        "scene": scene.header(),
        "extra": extra or {},
    }
    payload = {f"field.{k}": v.detach().cpu().contiguous() for k, v in field.state_dict().items()}
    if scene.views is not None:
        header["views"] = scene.views.header()
        payload["views.c2w"] = scene.views.cameras.c2w.float().cpu().contiguous()
        if "intrinsics" not in header["views"]:
            payload["views.intrinsics"] = scene.views.intrinsics().contiguous()
    payload["occupancy.cells"] = occupancy.cells.cpu().contiguous()
    payload["occupancy.aabb"] = occupancy.aabb.cpu().contiguous()
    for k, v in (tensors or {}).items():
        payload[f"extra.{k}"] = v.detach().cpu().contiguous()
    atomic_write(Path(path), lambda tmp: save_file(payload, str(tmp), metadata={"vqrf": json.dumps(header)}))


def _read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, read without touching the tensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise VqrfError(path, "not a vqrf model file (too short)")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > 100_000_000 or n > path.stat().st_size - 8:
            raise VqrfError(path, "not a vqrf model file (bad header length: not safetensors, or truncated)")
        try:
            meta = json.loads(f.read(n)).get("__metadata__") or {}
            return json.loads(meta["vqrf"])
        except (ValueError, KeyError, AttributeError):
            raise VqrfError(path, "not a vqrf model file (no vqrf header)") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a model or checkpoint written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise VqrfError(path, "no such model file")
    header = _read_header(path)
    if header.get("format") != FORMAT:
        raise VqrfError(path, f"not a vqrf field (format {header.get('format')!r})")
    if header.get("version", 0) > VERSION:
        raise VqrfError(path, f"written by a newer vqrf (format version {header['version']}); upgrade vqrf")
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise VqrfError(path, f"corrupt or truncated model file ({str(e).splitlines()[0]})") from None
    try:
        preset = Preset.from_dict(header["preset"])
        scene = SceneInfo(**header["scene"])
        field = create_field(preset.field, torch.zeros(2, 3), header["grid"]).to(device)
        state = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
        field.load_state_dict(state)
        occupancy = OccupancyGrid(tensors["occupancy.cells"], tensors["occupancy.aabb"].float())
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise VqrfError(path, f"inconsistent model file ({str(e).splitlines()[0]})") from None
    views = header.get("views")  # absent in models trained before cameras were stored
    scene.views = None if views is None else CameraSet.from_stored(
        views, tensors.get("views.c2w", torch.zeros(0)), tensors.get("views.intrinsics"), scene.ndc, path)
    extra_tensors = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return LoadedModel(field, occupancy, preset, scene, header.get("extra", {}), extra_tensors)
