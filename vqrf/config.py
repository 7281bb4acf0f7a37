"""Typed configs and per-dataset presets, per field type.

TensoRF-VM presets carry the reference hyperparameters (method-spec §1.2) for ``syn``, ``nsvf``, ``tt`` and ``llff``;
DVGO presets (§5.1) those for ``syn``, ``nsvf`` and ``tt`` (the reference has no DVGO path for LLFF). Both field types
have ``cpu``: a scaled schedule for a 2-core CPU on NeRF-Synthetic at 200×200. Schedule points (upsampling, alpha-mask
updates) are given for the preset's own iteration count and scale with ``--iters``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field as dc_field
from typing import Any

from vqrf.errors import VqrfError


FIELD_TYPES = ("tensorf", "dvgo")


@dataclass
class FieldConfig:
    """TensoRF-VM architecture."""

    density_comps: tuple[int, int, int] = (16, 16, 16)
    """Components per plane/line pair of the density tensor."""
    app_comps: tuple[int, int, int] = (48, 48, 48)
    """Components per plane/line pair of the appearance tensor."""
    app_dim: int = 27
    """Width of the appearance feature after the basis matrix."""
    view_pe: int = 2
    """Positional-encoding frequencies of the view direction."""
    fea_pe: int = 2
    """Positional-encoding frequencies of the appearance feature."""
    mlp_width: int = 128
    """Hidden width of the shading MLP."""
    density_shift: float = -10.0
    """Added to the density feature before softplus, so a fresh grid starts nearly empty."""
    density_act: str = "softplus"
    """'softplus' (bounded scenes) or 'relu' (LLFF)."""
    distance_scale: float = 25.0
    """Multiplies sample spacing in the alpha computation."""
    bf16_mlp: bool = False
    """Run the basis matrix and shading MLP in bfloat16 on CPUs with native bf16 (about 3x faster matmuls there)."""


@dataclass
class DVGOConfig:
    """DVGO architecture (method-spec §5.1): a dense density grid and a dense feature grid k0."""

    k0_dim: int = 12
    """Channels of the feature grid; 3 with ``rgbnet=False`` (the coarse stage: k0 is the colour before a sigmoid)."""
    rgbnet: bool = True
    """Colour from a small MLP on [k0, view direction, its encoding] (DVGO's ``rgbnet_direct``)."""
    rgbnet_width: int = 128
    view_pe: int = 4
    """Positional-encoding frequencies of the view direction (k = 0 .. view_pe - 1)."""
    alpha_init: float = 1e-2
    """Alpha of an untrained voxel at one base-voxel step: sets the density activation's shift."""
    shift_after_upsample: float = 1.0
    """Subtracted from the activation shift at every upsampling (DVGO's ``decay_after_scale``)."""
    bf16_mlp: bool = False
    """Run the colour MLP in bfloat16 on CPUs with native bf16."""


@dataclass
class TrainConfig:
    """Optimisation schedule and regularisers."""

    iters: int = 30000
    batch_rays: int = 4096
    n_voxel_init: int = 128**3
    n_voxel_final: int = 300**3
    upsample_at: tuple[int, ...] = (2000, 3000, 4000, 5500, 7000)
    """Iterations after which the grid is upsampled (log-linear in voxel count up to n_voxel_final)."""
    alpha_mask_at: tuple[int, ...] = (2000, 4000)
    """Iterations after which the occupancy mask is rebuilt; the first also shrinks the box, the second filters rays."""
    lr_grid: float = 0.02
    lr_net: float = 1e-3
    lr_decay_ratio: float = 0.1
    """The learning rates fall by this factor over ``iters`` (and restart at every upsampling)."""
    l1_init: float = 8e-5
    l1_rest: float = 4e-5
    tv_density: float = 0.0
    tv_app: float = 0.0
    entropy_last: float = 0.0
    """Weight of the entropy of each ray's background share (pushes rays to be either empty or opaque; DVGO)."""
    rgbper: float = 0.0
    """Weight of the per-sample colour error, each sample's squared error weighted by its rendering weight (DVGO)."""
    skip_zero_grad: bool = False
    """Adam leaves grid entries with a zero gradient untouched (DVGO's MaskedAdam), so unseen voxels never drift."""
    pervoxel_lr: bool = False
    """Scale each voxel's learning rate by how many training views see it (DVGO's coarse stage)."""
    masks_shrink_only: bool = False
    """A mask update treats space outside the current mask as empty (DVGO: voxels it skipped keep their initial
    alpha of 1e-2 and would otherwise come back)."""
    box_margin: float = 1.05
    """After a coarse stage, this stage's box is the coarse geometry's box scaled by this about its centre."""
    step_ratio: float = 0.5
    """Sample spacing in voxels."""
    ndc_depth_steps: bool = False
    """NDC rays (which run along z, from z = -1 to 1) step ``step_ratio`` z-voxels at a time. False: the box diagonal
    over the mean-voxel step sets their sample count, as the reference does, which oversamples z 2.5x on LLFF."""
    alpha_mask_thres: float = 1e-4
    weight_thres: float = 1e-4
    """Colour is evaluated only at samples whose rendering weight exceeds this."""
    checkpoint_every: int = 1000
    seed: int = 0

    def scaled_to(self, iters: int) -> "TrainConfig":
        """The same schedule stretched to ``iters`` iterations."""
        if iters <= 0:
            raise VqrfError(None, f"--iters must be positive, got {iters}")
        ratio = iters / self.iters

        def scale(points: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(max(1, round(p * ratio)) for p in points)

        return dataclasses.replace(
            self,
            iters=iters,
            upsample_at=scale(self.upsample_at),
            alpha_mask_at=scale(self.alpha_mask_at),
            checkpoint_every=max(1, min(self.checkpoint_every, iters)),
        )


def json_excerpt(value: Any) -> str:
    """A short, one-line description of a JSON value for an error message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no integer


def _parse(annotation: str, value: Any, where: str) -> Any:
    """``value`` as a field annotated ``annotation`` wants it (bool, int, finite float, str, tuple of ints)."""
    if annotation == "bool" and isinstance(value, bool):
        return value
    if annotation == "int" and is_json_int(value):
        return value
    if annotation == "str" and isinstance(value, str):
        return value
    if annotation == "float" and (is_json_int(value) or isinstance(value, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any double
            number = math.inf
        if math.isfinite(number):
            return number
        raise ValueError(f"{where} must be a finite number, got {json_excerpt(value)}")
    if annotation.startswith("tuple[int") and isinstance(value, (list, tuple)) and all(is_json_int(v) for v in value):
        length = None if "..." in annotation else annotation.count("int")
        if length is None or len(value) == length:
            return tuple(value)
        raise ValueError(f"{where} must be a list of {length} integers, got {len(value)}")
    wanted = {"bool": "true or false", "int": "an integer", "str": "a string", "float": "a number"}
    raise ValueError(f"{where} must be {wanted.get(annotation, 'a list of integers')}, got {json_excerpt(value)}")


def from_json(cls: type, values: Any, where: str, **nested: Any) -> Any:
    """``cls(**values, **nested)`` for a dataclass, each JSON value checked against its field's annotation.

    Files are untrusted input: a missing, unknown or mistyped key is a ValueError naming it (``where``, e.g.
    ``preset.train``), never a TypeError later in whatever uses the value. Fields whose annotation is not a JSON
    scalar or a tuple of integers come only through ``nested``. Missing keys with defaults take them (older files).
    """
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object, got {json_excerpt(values)}")
    parsers = {f.name: f.type for f in dataclasses.fields(cls)
               if f.type in ("bool", "int", "float", "str") or f.type.startswith("tuple[int")}
    kwargs = dict(nested)
    for key, value in values.items():
        if key not in parsers:
            raise ValueError(f"{where} has an unknown key {json_excerpt(key)}")
        kwargs[key] = _parse(parsers[key], value, f"{where}.{key}")
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}.{f.name} is missing")
    return cls(**kwargs)


@dataclass
class Preset:
    """Everything a training run needs besides the data path."""

    name: str
    dataset: str
    """Expected dataset kind (blender, nsvf, tt, llff); used for defaults and a warning, not enforced."""
    downscale: float = 1.0
    field: FieldConfig | DVGOConfig = dc_field(default_factory=FieldConfig)
    train: TrainConfig = dc_field(default_factory=TrainConfig)
    coarse: "Preset | None" = None
    """A stage trained first whose geometry sets this one's box and initial occupancy (DVGO's coarse stage)."""

    @property
    def field_type(self) -> str:
        return "dvgo" if isinstance(self.field, DVGOConfig) else "tensorf"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["field_type"] = self.field_type
        d["coarse"] = self.coarse.to_dict() if self.coarse is not None else None
        return d

    @staticmethod
    def from_dict(d: Any, where: str = "preset") -> "Preset":
        """The inverse of :meth:`to_dict`; every value is type-checked (:func:`from_json`), a bad one is a
        ValueError naming its key."""
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be an object, got {json_excerpt(d)}")
        field_type = d.get("field_type", "tensorf")  # files from before DVGO hold TensoRF fields
        if field_type not in FIELD_TYPES:
            raise ValueError(f"{where}.field_type must be one of {', '.join(FIELD_TYPES)}, "
                             f"got {json_excerpt(field_type)}")
        coarse = d.get("coarse")
        if coarse is not None and where.endswith(".coarse"):
            # Two stages at most (DVGO's); also keeps a hostile file's nesting from recursing deeply.
            raise ValueError(f"{where}.coarse must be null: a coarse stage has no coarse stage of its own")
        scalars = {k: v for k, v in d.items() if k not in ("field_type", "field", "train", "coarse")}
        return from_json(
            Preset, scalars, where,
            field=from_json(DVGOConfig if field_type == "dvgo" else FieldConfig, d.get("field"), f"{where}.field"),
            train=from_json(TrainConfig, d.get("train"), f"{where}.train"),
            coarse=None if coarse is None else Preset.from_dict(coarse, f"{where}.coarse"),
        )


def _syn() -> Preset:
    return Preset("syn", "blender")


def _nsvf() -> Preset:
    return Preset("nsvf", "nsvf")


def _tt() -> Preset:
    return Preset("tt", "tt", train=TrainConfig(l1_init=0.0, l1_rest=0.0, tv_density=0.1, tv_app=0.01))


def _llff() -> Preset:
    return Preset(
        "llff",
        "llff",
        downscale=4.0,
        field=FieldConfig(density_comps=(16, 4, 4), app_comps=(48, 12, 12), view_pe=0, fea_pe=0, density_act="relu"),
        train=TrainConfig(
            iters=25000,
            n_voxel_final=640**3,
            upsample_at=(2000, 3000, 4000, 5500),
            alpha_mask_at=(2500,),
            l1_init=0.0,
            l1_rest=0.0,
            tv_density=1.0,
            tv_app=1.0,
        ),
    )


def _llff_cpu() -> Preset:
    # Forward-facing scenes at images_8 on 2 cores: the llff architecture on a CPU-sized grid, NDC rays that step
    # half a voxel in depth (the reference's count oversamples z 2.5x), colour only above weight 1e-3, a bf16 MLP.
    preset = _llff()
    preset.name, preset.downscale = "llff-cpu", 8.0
    preset.field.bf16_mlp = True
    # Masks at the reference's point (a tenth of the way) and twice more on the final grid (from iteration 440): the
    # first one, taken on the early coarse grid, leaves 80% of fern's NDC box occupied; a final-grid one 59%.
    preset.train = dataclasses.replace(preset.train.scaled_to(2000), n_voxel_init=64**3, n_voxel_final=128**3,
                                       alpha_mask_at=(200, 600, 1200), weight_thres=1e-3, ndc_depth_steps=True,
                                       checkpoint_every=500)
    return preset


def _cpu() -> Preset:
    # NeRF-Synthetic at 200x200 on 2 cores: a coarse start, early occupancy masks so empty space is skipped from the
    # first few hundred iterations on, and a final grid matched to the image resolution.
    return Preset(
        "cpu",
        "blender",
        downscale=4.0,
        field=FieldConfig(bf16_mlp=True),
        train=TrainConfig(
            iters=3000,
            n_voxel_init=32**3,
            n_voxel_final=160**3,
            upsample_at=(300, 600, 900, 1350, 1800),
            alpha_mask_at=(100, 600, 1400),
            weight_thres=1e-3,
            checkpoint_every=500,
        ),
    )


def _custom() -> Preset:
    # A real capture (COLMAP or transforms.json) on a GPU: TensoRF-VM over the contracted cube, whose inner half (the
    # cameras and the subject) gets 160 voxels across; T&T's regularisers for real images.
    return Preset(
        "custom",
        "capture",
        downscale=2.0,
        train=TrainConfig(iters=30000, n_voxel_final=320**3, l1_init=0.0, l1_rest=0.0, tv_density=0.1, tv_app=0.01),
    )


def _custom_cpu() -> Preset:
    # A real capture on 2 cores in about 15 minutes: images at 1/8 (a phone's 720x1280 becomes 90x160), a grid of 128
    # voxels across the contracted cube, samples a voxel apart (nothing is empty in an unbounded scene).
    return Preset(
        "custom-cpu",
        "capture",
        downscale=8.0,
        field=FieldConfig(bf16_mlp=True),
        train=TrainConfig(
            iters=3000,
            batch_rays=2048,
            n_voxel_init=32**3,
            n_voxel_final=128**3,
            upsample_at=(300, 600, 900, 1350, 1800),
            alpha_mask_at=(600, 1400),
            l1_init=0.0,
            l1_rest=0.0,
            tv_density=0.1,
            tv_app=0.01,
            step_ratio=1.0,
            weight_thres=1e-3,
            checkpoint_every=500,
        ),
    )


def demo_preset() -> Preset:
    """The built-in analytic scene of ``vqrf demo``: 64x64 views, a couple of minutes on 2 cores."""
    return Preset(
        "demo",
        "demo",
        field=FieldConfig(bf16_mlp=True),
        train=TrainConfig(
            iters=1500,
            batch_rays=2048,
            n_voxel_init=32**3,
            n_voxel_final=96**3,
            upsample_at=(150, 300, 450, 700),
            alpha_mask_at=(100, 350, 800),
            weight_thres=1e-3,
            checkpoint_every=500,
        ),
    )


def _dvgo(name: str, dataset: str, coarse_iters: int = 5000, fine_iters: int = 20000, batch: int = 8192,
          coarse_voxels: int = 100**3, fine_voxels: int = 160**3, coarse_alpha_init: float = 1e-6,
          weight_thres: float = 1e-4, mask_at: tuple[int, ...] = (), checkpoint_every: int = 1000,
          bf16: bool = False) -> Preset:
    """DVGO's coarse and fine stages (method-spec §5.1).

    The learning rates decay by 0.1 every 20k iterations in both stages, whatever their length; the fine stage's
    progressive scaling happens at 5%, 10%, 15% and 20% of it (DVGO's [1000, 2000, 3000, 4000] of 20k).
    """
    coarse = Preset(
        f"{name}-coarse", dataset,
        field=DVGOConfig(k0_dim=3, rgbnet=False, alpha_init=coarse_alpha_init),
        train=TrainConfig(
            iters=coarse_iters, batch_rays=batch, n_voxel_init=coarse_voxels, n_voxel_final=coarse_voxels,
            upsample_at=(), alpha_mask_at=(), lr_grid=0.1, lr_net=1e-3, lr_decay_ratio=0.1 ** (coarse_iters / 20000),
            l1_init=0.0, l1_rest=0.0, entropy_last=0.01, rgbper=0.1, pervoxel_lr=True, alpha_mask_thres=1e-3,
            weight_thres=1e-7, checkpoint_every=checkpoint_every,
        ),
    )
    return Preset(
        name, dataset,
        field=DVGOConfig(bf16_mlp=bf16),
        train=TrainConfig(
            iters=fine_iters, batch_rays=batch, n_voxel_init=fine_voxels // 16, n_voxel_final=fine_voxels,
            upsample_at=tuple(round(p * fine_iters / 20000) for p in (1000, 2000, 3000, 4000)), alpha_mask_at=mask_at,
            lr_grid=0.1, lr_net=1e-3, lr_decay_ratio=0.1 ** (fine_iters / 20000), l1_init=0.0, l1_rest=0.0,
            entropy_last=1e-3, rgbper=1e-2, skip_zero_grad=True, alpha_mask_thres=1e-3, masks_shrink_only=True,
            weight_thres=weight_thres,
            checkpoint_every=checkpoint_every,
        ),
        coarse=coarse,
    )


def _dvgo_cpu() -> Preset:
    # NeRF-Synthetic at 200x200 on 2 cores: shorter stages, smaller batches, grids matched to the images. The coarse
    # stage starts at alpha 1e-4, not 1e-6: at 1e-6 a voxel's gradient (~1e-9) is far below Adam's eps and the
    # density does not move for hundreds of iterations (measured: PSNR 9.4 after 150 iterations, 24.4 at 1e-4).
    # DVGO keeps the coarse stage's occupancy throughout; here it is rebuilt from the fine field as it sharpens
    # (as TensoRF's cpu preset does), which keeps the samples per ray from growing with the grid.
    # Samples cost most here, so both stages step a whole voxel (DVGO: half) and the colour MLP is 64 wide.
    preset = _dvgo("cpu", "blender", coarse_iters=300, fine_iters=2000, batch=4096, coarse_voxels=64**3,
                   fine_voxels=110**3, coarse_alpha_init=1e-4, weight_thres=1e-3, mask_at=(170, 470, 930, 1470),
                   checkpoint_every=500, bf16=True)
    preset.field.rgbnet_width = 64
    preset.coarse.train.batch_rays = 2048
    for stage in (preset, preset.coarse):
        stage.downscale = 4.0
        stage.train.step_ratio = 1.0
    return preset


PRESETS = {
    "tensorf": {"syn": _syn, "nsvf": _nsvf, "tt": _tt, "llff": _llff, "llff-cpu": _llff_cpu, "cpu": _cpu,
                "custom": _custom, "custom-cpu": _custom_cpu},
    "dvgo": {"syn": lambda: _dvgo("syn", "blender"), "nsvf": lambda: _dvgo("nsvf", "nsvf"),
             "tt": lambda: _dvgo("tt", "tt"), "cpu": _dvgo_cpu},
}
PRESET_NAMES = sorted({name for per_field in PRESETS.values() for name in per_field})


def get_preset(name: str, field: str = "tensorf") -> Preset:
    """The preset ``name`` for field type ``field`` ('tensorf' or 'dvgo')."""
    if field not in PRESETS:
        raise VqrfError(None, f"unknown field type '{field}' (choose from {', '.join(PRESETS)})")
    if name not in PRESETS[field]:
        if field == "dvgo" and name == "llff":
            raise VqrfError(None, "--field dvgo has no llff preset: DVGO here is the dense bounded-scene model, "
                                  "as in the reference; train forward-facing scenes with --field tensorf")
        raise VqrfError(None, f"unknown {field} preset '{name}' (choose from {', '.join(PRESETS[field])})")
    return PRESETS[field][name]()


def preset_with(name: str, iters: int | None = None, grid_init: int | None = None, grid_final: int | None = None,
                batch_rays: int | None = None, checkpoint_every: int | None = None, field: str = "tensorf") -> Preset:
    """``get_preset(name, field)`` with the command line's overrides (None keeps the preset's): ``iters`` stretches
    the whole schedule (the final stage's); ``grid_init`` / ``grid_final`` are grids of about N^3 voxels."""
    preset = get_preset(name, field)
    train = preset.train
    if iters is not None:
        preset.train = train = train.scaled_to(iters)
    if grid_init is not None:
        train.n_voxel_init = grid_init**3
    if grid_final is not None:
        train.n_voxel_final = grid_final**3
    if batch_rays is not None:
        train.batch_rays = batch_rays
    if checkpoint_every is not None:
        train.checkpoint_every = checkpoint_every
    return preset


@dataclass
class CompressConfig:
    """VQRF compression of a trained field (method-spec §2): split, codebooks, fine-tuning, storage precision."""

    keep: float = 0.7
    """Texels carrying this fraction of the importance keep their own features (int8)."""
    non_prune: float = 0.999
    """Texels up to this cumulative importance are kept or vector-quantised; the rest are pruned. 1.0: no pruning."""
    codebook_size: int = 4096
    """Codes per codebook at most; see ``members_per_code``."""
    members_per_code: int = 4
    """A plane with few vq texels gets at most (its vq texels / this) codes, so no codebook outweighs its data."""
    kmeans_iters: int = 100
    finetune_iters: int | None = None
    """Joint fine-tuning steps; None: a third of the preset's training iterations (the reference's 10k for 30k)."""
    sync_every: int = 10
    """Re-tie every code to the mean of its texels every this many fine-tuning steps."""
    lr_scale: float = 0.25
    """Fine-tuning learning rates relative to training's (the reference's 0.25)."""
    codebook_precision: str = "int8"
    line_precision: str = "fp16"
    network_precision: str = "fp16"
    codebook_levels: int = 64
    """int8 codebooks use this many levels per channel: clustering error dominates, so coarse levels cost ~0.01 dB."""
    keep_steps_per_std: float = 15.0
    seed: int = 0

    def finetune_steps(self, preset: "Preset") -> int:
        return self.finetune_iters if self.finetune_iters is not None else preset.train.iters // 3


def compress_defaults(dataset: str, field: str = "tensorf", contracted: bool = False) -> CompressConfig:
    """The reference's settings per field type and dataset kind.

    TensoRF: keep 0.7, prune past 0.999 (nsvf and llff prune nothing), fine-tuning at 0.25 of the initial learning
    rates. DVGO (§5.2): keep 0.6, prune past 0.999, fine-tuning at 5x the final learning rates of its 20k-iteration
    schedule (restarted at iteration 4000, so 0.1^0.8 of the initial at the end): 0.79 of the initial ones.
    A ``contracted`` (unbounded) scene prunes nothing: its background is spread thin over most texels, each of
    little importance (on the beer capture the last 0.1% of importance held 73% of the texels, and pruning them
    cost 0.19 dB on held-out views).
    """
    keep_all = contracted or dataset in ("nsvf", "llff")
    if field == "dvgo":
        return CompressConfig(keep=0.6, non_prune=1.0 if contracted else 0.999, lr_scale=5 * 0.1**0.8)
    return CompressConfig(non_prune=1.0) if keep_all else CompressConfig()
