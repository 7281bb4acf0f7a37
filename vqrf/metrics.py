"""Image quality metrics: PSNR, SSIM (mip-NeRF flavour) and LPIPS v0.1 (alex / vgg), all on [0, 1] RGB images.

Conventions, chosen to agree with the independent scorer `../shared/tools/score.py` and the published NeRF numbers:

* An image is a float tensor (or array) of shape [H, W, 3] with values in [0, 1].
* A dataset's PSNR / SSIM / LPIPS is the **mean of the per-image values** (not the PSNR of the pooled MSE);
  `ImageMetrics` does that bookkeeping.
* LPIPS weights are only ever read from a local file; nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqrf.errors import VqrfError

ImageLike = torch.Tensor | np.ndarray

# MSE floor in `psnr`, as in score.py: identical images give 120 dB, not +inf (which would poison dataset means).
_MIN_MSE = 1e-12

LPIPS_WEIGHTS_ENV = {"alex": "VQRF_LPIPS_WEIGHTS", "vgg": "VQRF_LPIPS_VGG_WEIGHTS"}
# Where the shared test data keeps the converted alex weights, relative to $VQRF_DATA.
_DATA_ALEX_WEIGHTS = Path("lpips") / "lpips_alex_v0.1_torch_state_dict.npz"


def _as_image_pair(pred: ImageLike, gt: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
    pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if not (pred.is_floating_point() and gt.is_floating_point()):
        # An 8-bit image here would be silently scored on a 0..255 scale.
        raise ValueError(f"images must be float in [0, 1], got {pred.dtype} and {gt.dtype}")
    return pred, gt.to(device=pred.device, dtype=pred.dtype)


def psnr(pred: ImageLike, gt: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB for one image pair with peak value 1: -10 log10(MSE).

    Args:
        pred, gt: [H, W, 3] (any equal shape) float images in [0, 1].

    The MSE is taken in float64 and clamped below at 1e-12 (so identical images give 120 dB, as score.py does).
    A dataset's PSNR is the mean of the per-image PSNRs, the NeRF convention.
    """
    pred, gt = _as_image_pair(pred, gt)
    mse = torch.mean((pred.double() - gt.double()) ** 2).item()
    return -10.0 * math.log10(max(mse, _MIN_MSE))


@functools.lru_cache(maxsize=8)
def _gaussian_taps(dtype: torch.dtype, device: torch.device, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).to(dtype=dtype, device=device)


def ssim(pred: ImageLike, gt: ImageLike, max_val: float = 1.0) -> float:
    """Structural similarity as in mip-NeRF (and score.py): mean SSIM over the 'valid' region and the channels.

    Args:
        pred, gt: [H, W, C] float images (float32 or float64) in [0, max_val], H and W at least 11.

    Local statistics use a separable 11-tap Gaussian (sigma 1.5) without padding, k1 = 0.01, k2 = 0.03. Variances
    are clamped at 0 and the covariance at +-sqrt(var_a var_b), which only matters for float round-off.
    """
    pred, gt = _as_image_pair(pred, gt)
    if pred.ndim != 3 or min(pred.shape[:2]) < 11:
        raise ValueError(f"ssim needs [H, W, C] images with H, W >= 11, got {tuple(pred.shape)}")
    channels = pred.shape[-1]
    a = pred.permute(2, 0, 1)
    b = gt.permute(2, 0, 1)
    # Blur the five moment maps of every channel in one grouped conv: [1, 5C, H, W].
    stack = torch.cat([a, b, a * a, b * b, a * b])[None]
    taps = _gaussian_taps(pred.dtype, pred.device)
    groups = stack.shape[1]
    stack = F.conv2d(stack, taps.view(1, 1, 11, 1).expand(groups, 1, 11, 1), groups=groups)
    stack = F.conv2d(stack, taps.view(1, 1, 1, 11).expand(groups, 1, 1, 11), groups=groups)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack[0].split(channels)

    var_a = (e_aa - mu_a**2).clamp_min(0)
    var_b = (e_bb - mu_b**2).clamp_min(0)
    cov = e_ab - mu_a * mu_b
    cov = torch.sign(cov) * torch.minimum(torch.sqrt(var_a * var_b), cov.abs())
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean().item()


# ---------------------------------------------------------------------------------------------------------------------
# LPIPS v0.1
# ---------------------------------------------------------------------------------------------------------------------


def _alex_slices() -> list[nn.Sequential]:
    """AlexNet conv trunk cut after each ReLU group, module indices as in torchvision's `alexnet().features`."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    ]  # fmt: skip
    return _cut(layers, [2, 5, 8, 10, 12])


def _vgg16_slices() -> list[nn.Sequential]:
    """VGG16 `features` cut at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, module indices as in torchvision."""
    layers: list[nn.Module] = []
    in_ch = 3
    for block, (out_ch, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if block:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(convs):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU()]
            in_ch = out_ch
    return _cut(layers, [4, 9, 16, 23, 30])


def _cut(layers: list[nn.Module], ends: list[int]) -> list[nn.Sequential]:
    # Keep each module's global index as its name inside its slice, so state-dict keys read `net.slice2.3.weight`.
    slices, start = [], 0
    for end in ends:
        block = nn.Sequential()
        for i in range(start, end):
            block.add_module(str(i), layers[i])
        slices.append(block)
        start = end
    return slices


class _Trunk(nn.Module):
    def __init__(self, slices: list[nn.Sequential]):
        super().__init__()
        for k, block in enumerate(slices, start=1):
            self.add_module(f"slice{k}", block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self.children():
            x = block(x)
            taps.append(x)
        return taps


class _Lin(nn.Module):
    # `model.1` mirrors the lpips package (Dropout at index 0, unused at eval), so its weight names load as is.
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class LPIPS(nn.Module):
    """LPIPS v0.1 perceptual distance (Zhang et al. 2018) with an 'alex' or 'vgg' trunk, in plain torch.nn.

    Parameter names equal the `lpips` package's state dict (`net.sliceK.I.weight/bias`, `linK.model.1.weight`,
    `scaling_layer.shift/scale`). A fresh instance holds random weights; use `load_lpips` to get the trained metric.

    forward(pred, gt): images in [0, 1], [H, W, 3] or [N, 3, H, W] -> distances [N] (0 for identical images).
    Inputs are cast to the weights' dtype, so `model.double()` gives a float64 evaluation.
    """

    CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
    # Smaller images pool down to nothing before the last tap (alex: stride-4 conv and two 3x3/2 pools; vgg: 4 pools).
    MIN_SIDE = {"alex": 31, "vgg": 16}

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in self.CHANNELS:
            raise ValueError(f"LPIPS net must be one of {sorted(self.CHANNELS)}, got {net!r}")
        self.net_name = net
        self.scaling_layer = _ScalingLayer()
        self.net = _Trunk(_alex_slices() if net == "alex" else _vgg16_slices())
        for k, channels in enumerate(self.CHANNELS[net]):
            self.add_module(f"lin{k}", _Lin(channels))

    @property
    def min_side(self) -> int:
        """The smallest image side, in pixels, the trunk takes."""
        return self.MIN_SIDE[self.net_name]

    def accepts(self, height: int, width: int) -> bool:
        return min(height, width) >= self.min_side

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim == 3:
            x = x.permute(2, 0, 1)[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects [H, W, 3] or [N, 3, H, W] images, got {tuple(x.shape)}")
        if not self.accepts(*x.shape[-2:]):
            raise ValueError(f"LPIPS-{self.net_name} needs images of at least {self.min_side} px a side, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        x = x.to(self.lin0.model[1].weight)
        feats = self.net(self.scaling_layer(x * 2 - 1))
        # Unit length along channels, eps added to the norm exactly as lpips' normalize_tensor does.
        return [f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + 1e-10) for f in feats]

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        if pred.shape != gt.shape:
            raise ValueError(f"image shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
        total = 0
        for k, (fa, fb) in enumerate(zip(self._features(pred), self._features(gt))):
            lin = getattr(self, f"lin{k}")
            total = total + lin((fa - fb) ** 2).mean(dim=(2, 3))
        return total[:, 0]


def resolve_lpips_weights(net: str = "alex", weights: str | Path | None = None) -> Path | None:
    """The weights file `load_lpips` would use, or None when none is configured.

    Order: the explicit `weights`; the env var VQRF_LPIPS_WEIGHTS (alex) / VQRF_LPIPS_VGG_WEIGHTS (vgg);
    for alex, $VQRF_DATA/lpips/lpips_alex_v0.1_torch_state_dict.npz if that file exists. An explicit path or env
    var is returned even if the file is missing, so the loader can name it in its error.
    """
    if net not in LPIPS_WEIGHTS_ENV:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_WEIGHTS_ENV)}, got {net!r}")
    if weights is not None:
        return Path(weights)
    env = os.environ.get(LPIPS_WEIGHTS_ENV[net])
    if env:
        return Path(env)
    data = os.environ.get("VQRF_DATA")
    if net == "alex" and data and (Path(data) / _DATA_ALEX_WEIGHTS).is_file():
        return Path(data) / _DATA_ALEX_WEIGHTS
    return None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise VqrfError(path, "LPIPS weights file not found")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure means the same thing to the user: this file is not usable weights
        detail = " ".join(str(exc).split())[:200]
        raise VqrfError(path, f"cannot read LPIPS weights ({type(exc).__name__}: {detail})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VqrfError(path, "LPIPS weights file is not a state dict of tensors")
    return state


def load_lpips(net: str = "alex", weights: str | Path | None = None) -> LPIPS:
    """An eval-mode, frozen `LPIPS` with trained weights read from a local file (never downloaded).

    Args:
        net: 'alex' or 'vgg'.
        weights: an `.npz` of arrays or a torch state-dict file (`.pth`/`.pt`, read with weights_only=True) holding
            the full model under the lpips package's names: trunk `net.sliceK.I.weight/bias` and heads
            `linK.model.1.weight`. Extra keys (`scaling_layer.*`, `lins.*`) are ignored. None: see
            `resolve_lpips_weights`.

    Raises:
        VqrfError: no weights configured, or the file is missing, unreadable, or lacks / misshapes a needed tensor.
    """
    path = resolve_lpips_weights(net, weights)
    if path is None:
        raise VqrfError(
            None,
            f"no LPIPS-{net} weights found: pass --lpips-weights FILE or set {LPIPS_WEIGHTS_ENV[net]} "
            "to an .npz/.pth with the lpips package's state-dict names",
        )
    state = _read_state_dict(path)
    model = LPIPS(net)
    # The scaling constants are fixed by the method, so files need not carry them.
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith("scaling_layer.")}
    missing = [k for k in wanted if k not in state]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise VqrfError(path, f"not LPIPS-{net} weights: missing {', '.join(missing[:3])}{more}")
    for key, ref in wanted.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise VqrfError(
                path, f"not LPIPS-{net} weights: {key} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    model.load_state_dict({k: state[k].float() for k in wanted}, strict=False)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _cached_lpips(net: str, path: Path) -> LPIPS:
    return load_lpips(net, path)


def lpips(pred: ImageLike, gt: ImageLike, net: str = "alex", weights: str | Path | None = None) -> float:
    """LPIPS distance of one pair ([H, W, 3] in [0, 1]), or the mean over a batch ([N, 3, H, W]).

    The model is loaded once per (net, resolved weights path) and cached; it runs on the images' device.
    """
    path = resolve_lpips_weights(net, weights)
    model = _cached_lpips(net, path) if path is not None else load_lpips(net)  # load_lpips raises the right error
    pred, gt = _as_image_pair(pred, gt)
    with torch.no_grad():
        return model.to(pred.device)(pred, gt).mean().item()


class ImageMetrics:
    """Scores image pairs and keeps the per-image rows; `mean()` gives the dataset figures (means of per-image values).

    Keys: "psnr", "ssim", and "lpips_alex" when LPIPS-alex weights are available (given, or found as in
    `resolve_lpips_weights`). Explicitly given but unusable weights raise VqrfError rather than being skipped; images
    too small for LPIPS-alex (under 31 px a side) leave it out, with a note on stderr.

        metrics = ImageMetrics()
        for pred, gt in pairs:       # [H, W, 3] in [0, 1]
            metrics(pred, gt)
        metrics.mean()               # {"psnr": ..., "ssim": ..., "lpips_alex": ...}
    """

    def __init__(self, lpips_weights: str | Path | None = None, use_lpips: bool = True):
        path = resolve_lpips_weights("alex", lpips_weights) if use_lpips else None
        self.lpips_model = _cached_lpips("alex", path) if path is not None else None
        self.rows: list[dict[str, float]] = []

    def __call__(self, pred: ImageLike, gt: ImageLike) -> dict[str, float]:
        row = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        if self.lpips_model is not None:
            pred_t, gt_t = _as_image_pair(pred, gt)
            if self.lpips_model.accepts(*pred_t.shape[:2]):
                with torch.no_grad():
                    row["lpips_alex"] = self.lpips_model.to(pred_t.device)(pred_t, gt_t).item()
            else:
                print(f"LPIPS left out: {pred_t.shape[0]}x{pred_t.shape[1]} images are below the "
                      f"{self.lpips_model.min_side} px a side LPIPS-alex needs", file=sys.stderr)
                self.lpips_model = None
        self.rows.append(row)
        return row

    def mean(self) -> dict[str, float]:
        """Mean of each metric every scored image has ({} before any image)."""
        if not self.rows:
            return {}
        return {k: float(np.mean([row[k] for row in self.rows])) for k in self.rows[0] if k in self.rows[-1]}
