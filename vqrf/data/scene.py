"""The one scene type every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch


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

    def rays(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays through every pixel of view i, row-major: origins [H*W, 3], directions [H*W, 3].

        World rays have unit directions; NDC rays (``ndc``) are in NDC space and not normalised.
        """
        from vqrf.render.rays import camera_rays, ndc_rays

        origins, directions = camera_rays(self.cameras, i)
        if self.ndc:
            origins, directions = ndc_rays(origins, directions, self.cameras.height, self.cameras.width, self.ndc_focal)
        return origins, directions
