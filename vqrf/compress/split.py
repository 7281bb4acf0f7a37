"""Cumulative-importance split of texels into prune / vector-quantise / keep (method-spec §2.3)."""

from __future__ import annotations

import torch

__all__ = ["cdf_threshold", "cdf_split"]


def cdf_threshold(importance: torch.Tensor, fraction: float) -> float:
    """Smallest importance t such that the texels with importance >= t carry at least ``fraction`` of the total.

    ``fraction`` >= 1 keeps everything (threshold -inf); <= 0 keeps nothing (+inf).
    """
    if fraction >= 1.0:
        return float("-inf")
    values = importance.flatten().double().sort(descending=True).values
    total = float(values.sum())
    if fraction <= 0.0 or total <= 0.0:
        return float("inf")
    carried = torch.cumsum(values, 0) / total
    k = int(torch.searchsorted(carried, torch.tensor(fraction, dtype=carried.dtype)))
    return float(values[min(k, values.numel() - 1)])


def cdf_split(importance: torch.Tensor, keep: float, non_prune: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (keep, vq) of one plane's importance map [H, W].

    keep: the most important texels carrying ``keep`` of the total importance, stored exactly (int8).
    vq: the next ones, up to ``non_prune`` of the total, replaced by a code. The rest are pruned (zero).
    """
    non_pruned = importance >= cdf_threshold(importance, non_prune)
    keep_mask = (importance >= cdf_threshold(importance, keep)) & non_pruned
    if keep <= 0.0:
        keep_mask = torch.zeros_like(keep_mask)
    return keep_mask, non_pruned & ~keep_mask
