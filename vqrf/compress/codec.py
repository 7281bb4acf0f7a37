"""The field layer of a ``.vqrf`` file: which sections a compressed TensoRF-VM holds, and back to a field.

Decoding gives the same :class:`~vqrf.checkpoint.LoadedModel` as a training checkpoint, so evaluation, videos and
the viewer have one code path. Section names and meanings are specified in docs/format.md ("Field layer").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqrf.checkpoint import LoadedModel, SceneInfo
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.quantize import Int8Tensor, quantize_affine, quantize_range
from vqrf.compress.vq import KINDS, VQState, plane_tensor
from vqrf.config import CompressConfig, Preset
from vqrf.errors import VqrfError
from vqrf.fields.tensorf import TensorVM
from vqrf.render.occupancy import OccupancyGrid

__all__ = ["FORMAT", "Precision", "encode_field", "decode_field"]

FORMAT = "vqrf-tensorf-vq"
FIELD_VERSION = 1
PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class Precision:
    """How the non-vector-quantised tensors are stored."""

    codebooks: str = "fp16"
    lines: str = "fp16"
    network: str = "fp16"
    keep_steps_per_std: float = 15.0
    """Kept plane features: int8 with step std/this per channel (the reference's 15)."""
    codebook_levels: int = 64
    """Levels per channel of int8 codebooks (<= 256)."""

    @staticmethod
    def from_config(cfg: "CompressConfig") -> "Precision":
        return Precision(cfg.codebook_precision, cfg.line_precision, cfg.network_precision, cfg.keep_steps_per_std,
                         cfg.codebook_levels)

    def __post_init__(self) -> None:
        for name in ("codebooks", "lines", "network"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name} precision must be one of {PRECISIONS}")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _put_int8(sections: dict[str, np.ndarray], name: str, q: Int8Tensor) -> None:
    sections[name] = _np(q.values)
    sections[f"{name}.scale"] = _np(q.scale.float())
    sections[f"{name}.offset"] = _np(q.offset.float())


def _put_matrix(sections: dict[str, np.ndarray], name: str, x: torch.Tensor, precision: str, levels: int = 256) -> None:
    """[N, C] as fp16, or int8 with a per-column range in ``levels`` steps."""
    if precision == "int8":
        _put_int8(sections, name, quantize_range(x, levels))
    else:
        sections[name] = _np(x.half())


def encode_field(
    field: TensorVM,
    state: VQState,
    occupancy: OccupancyGrid,
    preset: Preset,
    scene: SceneInfo,
    precision: Precision = Precision(),
    stats: dict[str, Any] | None = None,
) -> bytes:
    """The bytes of a ``.vqrf`` file for ``field`` tied to ``state`` (codes at vq texels, zero at pruned ones)."""
    sections: dict[str, np.ndarray] = {"occupancy": _np(occupancy.cells.bool())}
    for i, code in enumerate(state.planes):
        sections[f"plane{i}.keep_mask"] = _np(code.keep)
        sections[f"plane{i}.vq_mask"] = _np(code.vq)
        for kind in KINDS:
            prefix = f"plane{i}.{kind}"
            book = code.codebooks[kind]
            if book.shape[0] > 65536:
                raise ValueError("codebooks hold at most 65536 codes")
            _put_matrix(sections, f"{prefix}.codebook", book, precision.codebooks, precision.codebook_levels)
            sections[f"{prefix}.indices"] = _np(code.indices[kind].to(torch.uint16))
            plane = plane_tensor(field, kind, i)
            kept = plane.detach().reshape(-1, plane.shape[-1])[code.keep.flatten().to(plane.device)]
            _put_int8(sections, f"{prefix}.keep", quantize_affine(kept, precision.keep_steps_per_std))
    for kind, lines in (("density", field.density_lines), ("app", field.app_lines)):
        for i, line in enumerate(lines):
            _put_matrix(sections, f"line{i}.{kind}", line, precision.lines)
    _put_matrix(sections, "basis", field.basis.weight.t(), precision.network)
    for j, layer in enumerate(m for m in field.mlp if isinstance(m, torch.nn.Linear)):
        _put_matrix(sections, f"mlp{j}.weight", layer.weight.t(), precision.network)
        sections[f"mlp{j}.bias"] = _np(layer.bias.half())
    header = {
        "format": FORMAT,
        "version": FIELD_VERSION,
        "grid": field.grid_size,
        "aabb": field.aabb.cpu().tolist(),
        "occupancy_aabb": occupancy.aabb.cpu().tolist(),
        "preset": preset.to_dict(),
        "scene": asdict(scene),
        "precision": asdict(precision),
        "stats": stats or {},
    }
    return encode_container(header, sections)


class _Reader:
    """Typed access to decoded sections; any missing or mis-shaped section is a one-line VqrfError."""

    def __init__(self, sections: dict[str, np.ndarray], source: Path):
        self.sections, self.source = sections, source

    def get(self, name: str, dtype: str, shape: tuple[int | None, ...]) -> torch.Tensor:
        arr = self.sections.get(name)
        if arr is None:
            raise VqrfError(self.source, f"section {name!r} is missing")
        if arr.dtype != np.dtype(dtype) or arr.ndim != len(shape) or any(
            s is not None and s != a for s, a in zip(shape, arr.shape)
        ):
            raise VqrfError(self.source, f"section {name!r} is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}")
        return torch.from_numpy(np.array(arr))

    def matrix(self, name: str, rows: int | None, cols: int) -> torch.Tensor:
        """An fp16 or int8 [rows, cols] matrix written by ``_put_matrix``/``_put_int8`` -> float32."""
        arr = self.sections.get(name)
        if arr is not None and arr.dtype == np.int8:
            values = self.get(name, "int8", (rows, cols)).float()
            scale = self.get(f"{name}.scale", "float32", (cols,))
            offset = self.get(f"{name}.offset", "float32", (cols,))
            return values * scale + offset
        return self.get(name, "float16", (rows, cols)).float()


def decode_field(data: bytes, source: str | Path) -> LoadedModel:
    """A ``.vqrf`` file's bytes -> the model it encodes (a plain TensorVM with its occupancy grid)."""
    source = Path(source)
    header, sections = decode_container(data, source)
    if header.get("format") != FORMAT:
        raise VqrfError(source, f"not a compressed TensoRF-VM field (format {header.get('format')!r})")
    if not isinstance(header.get("version"), int) or header["version"] > FIELD_VERSION:
        raise VqrfError(source, f"written by a newer vqrf (field version {header.get('version')}); upgrade vqrf")
    try:
        preset = Preset.from_dict(header["preset"])
        scene = SceneInfo(**header["scene"])
        grid = [int(v) for v in header["grid"]]
        aabb = torch.tensor(header["aabb"], dtype=torch.float32).reshape(2, 3)
        occupancy_aabb = torch.tensor(header["occupancy_aabb"], dtype=torch.float32).reshape(2, 3)
        if len(grid) != 3 or min(grid) < 2 or max(grid) > 4096:
            raise ValueError(f"grid {grid}")
        with torch.device("meta"):  # shapes only: every parameter is overwritten below
            field = TensorVM(aabb, grid, preset.field)
        field = field.to_empty(device="cpu")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise VqrfError(source, f"inconsistent header ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    read = _Reader(sections, source)
    with torch.no_grad():
        field.aabb.copy_(aabb)
        cells = read.get("occupancy", "bool", (None, None, None)).to(torch.uint8)
        for i in range(3):
            h, w = field.density_planes[i].shape[:2]
            keep = read.get(f"plane{i}.keep_mask", "bool", (h, w)).flatten()
            vq = read.get(f"plane{i}.vq_mask", "bool", (h, w)).flatten()
            if bool((keep & vq).any()):
                raise VqrfError(source, f"plane {i}: a texel is both kept and vector-quantised")
            for kind in KINDS:
                prefix = f"plane{i}.{kind}"
                plane = plane_tensor(field, kind, i)
                channels = plane.shape[-1]
                book = read.matrix(f"{prefix}.codebook", None, channels)
                indices = read.get(f"{prefix}.indices", "uint16", (int(vq.sum()),)).long()
                if indices.numel() and int(indices.max()) >= book.shape[0]:
                    raise VqrfError(source, f"section {prefix}.indices: code {int(indices.max())} beyond the "
                                            f"{book.shape[0]}-code codebook")
                flat = torch.zeros(h * w, channels)
                flat[vq] = book[indices]
                flat[keep] = read.matrix(f"{prefix}.keep", int(keep.sum()), channels)
                plane.copy_(flat.reshape(h, w, channels))
        for kind, lines in (("density", field.density_lines), ("app", field.app_lines)):
            for i, line in enumerate(lines):
                line.copy_(read.matrix(f"line{i}.{kind}", *line.shape))
        field.basis.weight.copy_(read.matrix("basis", *field.basis.weight.t().shape).t())
        for j, layer in enumerate(m for m in field.mlp if isinstance(m, torch.nn.Linear)):
            layer.weight.copy_(read.matrix(f"mlp{j}.weight", *layer.weight.t().shape).t())
            layer.bias.copy_(read.get(f"mlp{j}.bias", "float16", tuple(layer.bias.shape)).float())
    occupancy = OccupancyGrid(cells, occupancy_aabb)
    extra = {"compressed": {"bytes": len(data), "precision": header.get("precision", {}),
                            "stats": header.get("stats", {})}}
    return LoadedModel(field, occupancy, preset, scene, extra)
