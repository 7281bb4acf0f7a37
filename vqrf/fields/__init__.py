"""Field types behind one interface (:class:`~vqrf.fields.base.Field`), and how to make one from its config."""

from __future__ import annotations

from typing import Sequence

import torch

from vqrf.config import DVGOConfig, FieldConfig
from vqrf.fields.base import FeatureGrid, Field
from vqrf.fields.dvgo import DVGO
from vqrf.fields.tensorf import TensorVM

__all__ = ["FeatureGrid", "Field", "DVGO", "TensorVM", "create_field"]


def create_field(cfg: FieldConfig | DVGOConfig, aabb: torch.Tensor, grid: Sequence[int],
                 base_voxels: int | None = None) -> Field:
    """A fresh field of the type ``cfg`` configures. ``base_voxels``: DVGO's alpha unit (ignored by TensoRF)."""
    if isinstance(cfg, DVGOConfig):
        return DVGO(aabb, grid, cfg, base_voxels)
    return TensorVM(aabb, grid, cfg)
