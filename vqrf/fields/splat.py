"""Scatter sample weights onto grid sites with the coefficients a linear-interpolation lookup reads them with."""

from __future__ import annotations

import torch

__all__ = ["splat_bilinear"]


def splat_bilinear(target: torch.Tensor, u: torch.Tensor, v: torch.Tensor, weights: torch.Tensor) -> None:
    """Add ``weights`` [M] to the 4 texels around each point of ``target`` [H, W], in place.

    ``u`` (along W) and ``v`` (along H) are [M] coordinates in [-1, 1] with align_corners=True, clamped at the border
    exactly as the feature lookup clamps them.
    """
    height, width = target.shape

    def axis(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = ((x + 1) * 0.5 * (size - 1)).clamp(0, size - 1)
        low = pos.floor().clamp(max=max(size - 2, 0))
        return low.long(), pos - low

    x0, fx = axis(u, width)
    y0, fy = axis(v, height)
    x1 = (x0 + 1).clamp(max=width - 1)
    y1 = (y0 + 1).clamp(max=height - 1)
    flat = target.view(-1)
    for ys, xs, w in ((y0, x0, (1 - fy) * (1 - fx)), (y0, x1, (1 - fy) * fx), (y1, x0, fy * (1 - fx)), (y1, x1, fy * fx)):
        flat.index_add_(0, ys * width + xs, weights * w)
