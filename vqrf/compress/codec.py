"""The field layer of a ``.vqrf`` file: which sections a compressed field holds, and back to a field.

One layout serves every field type: its feature grids (masks, codebooks, codes, kept and unpruned features), its
other parameters by their state-dict names (lines and network weights, each at its storage precision), its buffers.
Decoding gives the same :class:`~vqrf.checkpoint.LoadedModel` as a training checkpoint, so evaluation, videos and the
viewer have one code path. Section names and meanings are specified in docs/format.md ("Field layer").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqrf.checkpoint import LoadedModel, SceneInfo
from vqrf.compress.container import decode_container, encode_container
from vqrf.compress.header_check import check_header, check_layout, check_render
from vqrf.compress.quantize import Int8Tensor, quantize_affine, quantize_range
from vqrf.compress.vq import VQState, rows
from vqrf.config import CompressConfig, Preset
from vqrf.data.scene import CameraSet
from vqrf.errors import VqrfError
from vqrf.fields import Field, create_field
from vqrf.render.occupancy import OccupancyGrid

__all__ = ["FORMAT", "Precision", "encode_field", "decode_field"]

FORMAT = "vqrf-field-vq"
FIELD_VERSION = 3  # 3: the training cameras (header "views", sections "views.*"); 2: any field type
# Version 1 (TensoRF only) named the non-grid sections by hand; its files still decode, through these names.
_V1_FORMAT = "vqrf-tensorf-vq"
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


def _named_tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    """A parameter or buffer by its state-dict name."""
    owner, _, attr = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attr)


def encode_field(
    field: Field,
    state: VQState,
    occupancy: OccupancyGrid,
    preset: Preset,
    scene: SceneInfo,
    precision: Precision = Precision(),
    stats: dict[str, Any] | None = None,
) -> bytes:
    """The bytes of a ``.vqrf`` file for ``field`` tied to ``state`` (codes at vq sites, zero at pruned ones)."""
    sections: dict[str, np.ndarray] = {"occupancy": _np(occupancy.cells.bool())}
    for code, grid in zip(state.grids, field.feature_grids()):
        sections[f"{grid.name}.keep_mask"] = _np(code.keep)
        sections[f"{grid.name}.vq_mask"] = _np(code.vq)
        for kind, tensor in grid.tensors.items():
            prefix = f"{grid.name}.{kind}"
            flat = rows(tensor.detach())
            if kind not in grid.quantised:
                unpruned = flat[code.non_pruned.flatten().to(flat.device)]
                _put_int8(sections, f"{prefix}.values", quantize_affine(unpruned, precision.keep_steps_per_std))
                continue
            book = code.codebooks[kind]
            if book.shape[0] > 65536:
                raise ValueError("codebooks hold at most 65536 codes")
            _put_matrix(sections, f"{prefix}.codebook", book, precision.codebooks, precision.codebook_levels)
            sections[f"{prefix}.indices"] = _np(code.indices[kind].to(torch.uint16))
            kept = flat[code.keep.flatten().to(flat.device)]
            _put_int8(sections, f"{prefix}.keep", quantize_affine(kept, precision.keep_steps_per_std))
    for name, role in field.parameter_roles().items():
        value = _named_tensor(field, name).detach()
        if value.dim() == 1:
            sections[f"param.{name}"] = _np(value.half())  # biases: few and sensitive
        elif role == "network":  # [in, out]: one int8 range per output unit
            _put_matrix(sections, f"param.{name}", value.t(), precision.network)
        else:
            _put_matrix(sections, f"param.{name}", value, precision.lines)
    for name, value in field.named_buffers():
        if name != "aabb":
            sections[f"buffer.{name}"] = _np(value.float())
    views = {} if scene.views is None else {"views": _put_views(sections, scene.views)}
    header = {
        "format": FORMAT,
        "version": FIELD_VERSION,
        "field_type": field.field_type,
        "grid": field.grid_size,
        "aabb": field.aabb.cpu().tolist(),
        "occupancy_aabb": occupancy.aabb.cpu().tolist(),
        "preset": preset.to_dict(),
        "scene": scene.header(),
        "precision": asdict(precision),
        "stats": stats or {},
        **views,
    }
    return encode_container(header, sections)


def _put_views(sections: dict[str, np.ndarray], views: CameraSet) -> dict[str, Any]:
    """Store the training cameras (docs/format.md, "Training cameras"); returns the ``views`` header entry.

    Poses go in as float16 [N, 3, 4], about 2 KB for 100 views: their rounding (~5e-4 relative) moves a path or a
    jump to a training view by well under a pixel. float32 only when a pose is beyond float16's range.
    """
    c2w = views.cameras.c2w.detach().float().cpu()
    sections["views.c2w"] = _np(c2w.half() if bool(torch.isfinite(c2w.half()).all()) else c2w)
    meta = views.header()
    if "intrinsics" not in meta:  # the views do not share one set of intrinsics
        sections["views.intrinsics"] = _np(views.intrinsics())
    return meta


def _v1_names(sections: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sections of a version-1 (TensoRF) file under their version-2 names."""
    renames = {"basis": "param.basis.weight"}
    for i in range(3):
        for kind in ("density", "app"):
            renames[f"line{i}.{kind}"] = f"param.{kind}_lines.{i}"
        renames[f"mlp{i}.weight"] = f"param.mlp.{2 * i}.weight"
        renames[f"mlp{i}.bias"] = f"param.mlp.{2 * i}.bias"
    out = {}
    for name, arr in sections.items():
        stem, _, suffix = name.rpartition(".")
        if suffix in ("scale", "offset") and stem in renames:
            out[f"{renames[stem]}.{suffix}"] = arr
        else:
            out[renames.get(name, name)] = arr
    return out


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
    """A ``.vqrf`` file's bytes -> the model it encodes (a plain field of its type, with its occupancy grid)."""
    source = Path(source)
    header, sections = decode_container(data, source)
    checked = check_header(header, source, {_V1_FORMAT: range(1, 2), FORMAT: range(2, FIELD_VERSION + 1)})
    preset, scene, aabb, occupancy_aabb = checked.preset, checked.scene, checked.aabb, checked.occupancy_aabb
    if checked.version == 1:
        sections = _v1_names(sections)
    with torch.device("meta"):  # shapes only, checked before anything is allocated; every parameter is overwritten
        field = create_field(preset.field, aabb, checked.grid)
    check_layout(field, checked, sections, source)
    field = field.to_empty(device="cpu")
    read = _Reader(sections, source)
    with torch.no_grad():
        field.aabb.copy_(aabb)
        cells = read.get("occupancy", "bool", (None, None, None)).to(torch.uint8)
        for grid_spec in field.feature_grids():
            _read_grid(read, grid_spec, source)
        for name, role in field.parameter_roles().items():
            param = _named_tensor(field, name)
            if param.dim() == 1:
                param.copy_(read.get(f"param.{name}", "float16", tuple(param.shape)).float())
            elif role == "network":
                param.copy_(read.matrix(f"param.{name}", *param.t().shape).t())
            else:
                param.copy_(read.matrix(f"param.{name}", *param.shape))
        for name, buffer in field.named_buffers():
            if name != "aabb" and checked.version != 1:
                buffer.copy_(read.get(f"buffer.{name}", "float32", tuple(buffer.shape)))
    occupancy = OccupancyGrid(cells, occupancy_aabb)
    scene.views = _read_views(header, read, bool(scene.ndc), source)
    extra = {"compressed": {"bytes": len(data), "precision": header.get("precision", {}),
                            "stats": header.get("stats", {})}}
    model = LoadedModel(field, occupancy, preset, scene, extra)
    check_render(model, source)
    return model


def _read_grid(read: _Reader, grid, source: Path) -> None:
    """Fill one feature grid's tensors from its sections (docs/format.md, "Rebuilding a feature grid")."""
    n_sites = int(np.prod(grid.shape))
    keep = read.get(f"{grid.name}.keep_mask", "bool", grid.shape).flatten()
    vq = read.get(f"{grid.name}.vq_mask", "bool", grid.shape).flatten()
    if bool((keep & vq).any()):
        raise VqrfError(source, f"{grid.name}: a site is both kept and vector-quantised")
    for kind, tensor in grid.tensors.items():
        prefix = f"{grid.name}.{kind}"
        channels = tensor.shape[-1]
        flat = torch.zeros(n_sites, channels)
        if kind not in grid.quantised:
            unpruned = keep | vq
            flat[unpruned] = read.matrix(f"{prefix}.values", int(unpruned.sum()), channels)
        else:
            book = read.matrix(f"{prefix}.codebook", None, channels)
            indices = read.get(f"{prefix}.indices", "uint16", (int(vq.sum()),)).long()
            if indices.numel() and int(indices.max()) >= book.shape[0]:
                raise VqrfError(source, f"section {prefix}.indices: code {int(indices.max())} beyond the "
                                        f"{book.shape[0]}-code codebook")
            flat[vq] = book[indices]
            flat[keep] = read.matrix(f"{prefix}.keep", int(keep.sum()), channels)
        tensor.copy_(flat.reshape(tensor.shape))


def _read_views(header: dict[str, Any], read: _Reader, ndc: bool, source: Path) -> CameraSet | None:
    """The stored training cameras (field version 3), or None when the file has none (versions 1 and 2)."""
    meta = header.get("views")
    if meta is None:
        return None
    stored = read.sections.get("views.c2w")
    c2w = read.get("views.c2w", "float32" if stored is not None and stored.dtype == np.float32 else "float16",
                   (None, 3, 4))
    intrinsics = read.get("views.intrinsics", "float32", (None, 4)) if "views.intrinsics" in read.sections else None
    return CameraSet.from_stored(meta, c2w, intrinsics, ndc, source)
