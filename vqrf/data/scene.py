"""The one scene type every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vqrf.errors import VqrfError


# The box an unbounded (contracted) scene's field spans: all of space, contracted (vqrf.render.contraction).
CONTRACTED_AABB = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))


@dataclass
class Cameras:
    """Pinhole cameras of one split, all of one image size, with optional lens distortion.

    Convention (Blender / OpenGL): camera x right, y up, the camera looks along -z.
    Pixel (u, v) has its centre at (u + 0.5, v + 0.5).
    ``distortion`` holds OpenCV's (k1, k2, p1, p2, k3) per view, applied to image-plane coordinates with y down
    (as COLMAP, OpenCV and instant-ngp define them); None means none.
    """

    c2w: torch.Tensor  # [N, 3, 4] float32 camera-to-world
    fx: torch.Tensor  # [N] float32, pixels
    fy: torch.Tensor  # [N]
    cx: torch.Tensor  # [N]
    cy: torch.Tensor  # [N]
    width: int
    height: int
    distortion: torch.Tensor | None = None  # [N, 5] float32 (k1, k2, p1, p2, k3)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: str | torch.device) -> "Cameras":
        distortion = None if self.distortion is None else self.distortion.to(device)
        return Cameras(self.c2w.to(device), self.fx.to(device), self.fy.to(device), self.cx.to(device),
                       self.cy.to(device), self.width, self.height, distortion)


# Bounded scenes and captures are read into a z-up world (Blender's convention); vqrf.data's readers ensure it.
Z_UP = (0.0, 0.0, 1.0)


@dataclass
class CameraSet:
    """The training cameras and what camera paths and the viewer need besides them.

    A dataset's :class:`Scene` gives one (:meth:`Scene.camera_set`), and so does a model file that stores its cameras
    (``SceneInfo.views``), so videos along an orbit or spiral and the viewer's camera list need no dataset.
    """

    cameras: Cameras  # the training views; their lens distortion (if any) is not used here and never stored
    up: torch.Tensor  # [3] unit vector: the world's up for orbits, spirals and the viewer
    ndc: bool = False  # forward-facing (LLFF): spiral paths only
    depth_bounds: tuple[float, float] | None = None  # forward-facing: nearest and farthest content depth
    source: str | Path | None = None  # the dataset or model file they came from, for error messages

    def shared_intrinsics(self) -> list[float] | None:
        """[fx, fy, cx, cy] when every view has the same ones (the usual case), else None."""
        k = self.intrinsics()
        return k[0].tolist() if bool((k == k[0]).all()) else None

    def intrinsics(self) -> torch.Tensor:
        """[N, 4] float32: fx, fy, cx, cy of each view, in pixels."""
        c = self.cameras
        return torch.stack([c.fx, c.fy, c.cx, c.cy], dim=1).float().cpu()

    def header(self) -> dict[str, Any]:
        """The JSON facts of a stored set (docs/format.md, "Training cameras"); the poses, and per-view intrinsics when
        the views do not share them, are stored as arrays."""
        meta: dict[str, Any] = {"width": self.cameras.width, "height": self.cameras.height,
                                "up": self.up.float().cpu().tolist(),
                                "depth_bounds": None if self.depth_bounds is None else list(self.depth_bounds)}
        shared = self.shared_intrinsics()
        if shared is not None:
            meta["intrinsics"] = shared
        return meta

    @staticmethod
    def from_stored(meta: Any, c2w: torch.Tensor, intrinsics: torch.Tensor | None, ndc: bool,
                    source: str | Path) -> "CameraSet":
        """A set back from its :meth:`header` and arrays: ``c2w`` [N, 3, 4], and ``intrinsics`` [N, 4] unless the
        header holds shared ones. Every value is checked: a bad one is a one-line VqrfError naming ``source``."""

        def bad(problem: str) -> VqrfError:
            return VqrfError(source, f"stored cameras: {problem}")

        if not isinstance(meta, dict):
            raise bad("the 'views' header entry is not an object")
        size = [meta.get("width"), meta.get("height")]
        if not all(type(v) is int and 1 <= v <= 65536 for v in size):
            raise bad(f"image size {size} is not two integers in [1, 65536]")
        if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (3, 4) or c2w.shape[0] == 0:
            raise bad(f"poses of shape {list(c2w.shape)}, expected [N, 3, 4] with N >= 1")
        n, c2w = c2w.shape[0], c2w.float().cpu()  # a checkpoint may have been loaded onto a GPU
        if "intrinsics" in meta:
            intrinsics = _numbers(meta["intrinsics"], 4, "intrinsics", bad)[None].expand(n, 4)
        elif intrinsics is None:
            raise bad("neither shared nor per-view intrinsics")
        intrinsics = intrinsics.float().cpu()
        if tuple(intrinsics.shape) != (n, 4):
            raise bad(f"intrinsics of shape {list(intrinsics.shape)} for {n} poses")
        if not bool(torch.isfinite(c2w).all() & torch.isfinite(intrinsics).all()):
            raise bad("poses or intrinsics are not finite")
        if not bool((intrinsics[:, :2] > 0).all()):
            raise bad("a focal length is not positive")
        up = _numbers(meta.get("up"), 3, "up", bad)
        if abs(float(up.norm()) - 1) > 1e-3:
            raise bad(f"up {up.tolist()} is not a unit vector")
        bounds = meta.get("depth_bounds")
        if bounds is not None:
            near, far = _numbers(bounds, 2, "depth_bounds", bad).tolist()
            if not 0 < near < far:
                raise bad(f"depth bounds {bounds} are not 0 < near < far")
            bounds = (near, far)
        elif ndc:
            raise bad("a forward-facing scene without depth bounds")
        fx, fy, cx, cy = intrinsics.unbind(1)
        return CameraSet(Cameras(c2w, fx, fy, cx, cy, *size), up.float(), ndc, bounds, source)


def _numbers(value: Any, n: int, name: str, bad: Callable[[str], VqrfError]) -> torch.Tensor:
    """[n] float64: ``value`` when it is a list of ``n`` JSON numbers under 1e30 in size (so float32 holds them;
    NaN, infinities and booleans are refused, and huge integers are compared, never converted)."""
    if not (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e30 for v in value)):
        raise bad(f"{name} {value!r} is not {n} finite numbers")
    return torch.tensor(value, dtype=torch.float64)


@dataclass
class Scene:
    """Images, cameras and bounds of one split of a dataset.

    Images load lazily through ``load_image`` and are cached once loaded; ``image(i)`` always returns RGB with the
    background already composited (white for RGBA datasets), at the size of ``cameras``.
    """

    name: str
    root: Path
    split: str
    cameras: Cameras
    aabb: torch.Tensor  # [2, 3] float32: min corner, max corner (NDC box when ndc)
    near: float
    far: float
    white_bg: bool
    load_image: Callable[[int], np.ndarray]  # i -> [H, W, 3] float32 in [0, 1]
    image_names: list[str]  # one per view, used to name per-view outputs
    ndc: bool = False
    contract: bool = False  # unbounded: samples are contracted into ``aabb`` = [-2, 2]^3 (vqrf.render.contraction)
    ndc_focal: float = 0.0  # focal length in pixels at this downscale, used by the NDC ray transform
    downscale: float = 1.0
    depth_bounds: tuple[float, float] | None = None  # forward-facing scenes: nearest and farthest content depth
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def hw(self) -> tuple[int, int]:
        return self.cameras.height, self.cameras.width

    def image(self, i: int) -> torch.Tensor:
        """[H, W, 3] float32 in [0, 1]."""
        if i not in self._cache:
            self._cache[i] = torch.from_numpy(np.ascontiguousarray(self.load_image(i), dtype=np.float32))
        return self._cache[i]

    def camera_set(self) -> CameraSet:
        """The training cameras with their up direction and depth bounds, for camera paths and the viewer."""
        if self.ndc:  # forward-facing: the cameras' mean up axis (LLFF poses are recentred about the identity)
            up = self.cameras.c2w[:, :, 1].float().mean(0).cpu()
            up = up / up.norm()
        else:
            up = torch.tensor(Z_UP)
        return CameraSet(self.cameras, up, self.ndc, self.depth_bounds, self.root)

    def rays(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through every pixel of view i, row-major: origins [H*W, 3], directions [H*W, 3].

        World rays have unit directions; NDC rays (``ndc``) are in NDC space and not normalised.
        """
        from vqrf.render.rays import camera_rays, ndc_rays

        origins, directions = camera_rays(self.cameras, i)
        if self.ndc:
            origins, directions = ndc_rays(origins, directions, self.cameras.height, self.cameras.width, self.ndc_focal)
        return origins, directions
