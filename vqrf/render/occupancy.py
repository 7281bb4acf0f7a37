"""The occupancy (alpha) mask: which parts of the box can hold anything, so empty space is never queried."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vqrf.fields.base import Field

__all__ = ["OccupancyGrid", "build_occupancy"]


@dataclass
class OccupancyGrid:
    """Binary cells over a box: a cell is occupied when any of its 8 corner grid points passed the alpha test.

    That makes "the cell containing x is occupied" exactly the reference's test "trilinear lookup of the binary
    grid-point mask at x is > 0".
    """

    cells: torch.Tensor  # [X-1, Y-1, Z-1] uint8, on the field's device
    aabb: torch.Tensor  # [2, 3] float32, the box the grid points span, on the same device

    @staticmethod
    def full(aabb: torch.Tensor) -> "OccupancyGrid":
        """Everything inside ``aabb`` is occupied (before the first mask update)."""
        return OccupancyGrid(torch.ones(1, 1, 1, dtype=torch.uint8, device=aabb.device), aabb.detach().float().clone())

    def to(self, device: str | torch.device) -> "OccupancyGrid":
        return OccupancyGrid(self.cells.to(device), self.aabb.to(device))

    def occupied_fraction(self) -> float:
        return float(self.cells.float().mean())

    def query(self, xyz: torch.Tensor) -> torch.Tensor:
        """[N, 3] world points -> [N] bool: inside the box and in an occupied cell."""
        size = torch.tensor(self.cells.shape, dtype=torch.float32, device=self.cells.device)
        rel = (xyz.to(self.cells.device) - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((rel >= 0) & (rel <= 1)).all(-1)
        idx = (rel * size).long().clamp(min=torch.zeros_like(size, dtype=torch.long), max=size.long() - 1)
        return inside & self.cells[idx[:, 0], idx[:, 1], idx[:, 2]].bool()


@torch.no_grad()
def build_occupancy(
    field: Field, grid: list[int], step: float, threshold: float, previous: OccupancyGrid | None = None,
    chunk: int = 1 << 18,
) -> tuple[OccupancyGrid, torch.Tensor | None]:
    """Evaluate alpha = 1 - exp(-sigma * step * field.mask_distance_scale) at the grid points of ``field.aabb``,
    dilate by 3x3x3, threshold.

    With ``previous``, points outside it count as empty: space the renderer has been skipping never trained, so its
    density is still the initial one and says nothing (a DVGO field starts at alpha 1e-2 everywhere).

    Returns:
        the occupancy grid, and the [2, 3] box of the grid points that passed (None if nothing did).
    """
    device = field.aabb.device
    axes = [torch.linspace(0, 1, n, device=device) for n in grid]
    unit = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    points = field.aabb[0] * (1 - unit) + field.aabb[1] * unit
    scaled_step = step * field.mask_distance_scale
    alpha = torch.cat([1 - torch.exp(-field.density(p) * scaled_step) for p in points.split(chunk)])
    if previous is not None:
        alpha = alpha * torch.cat([previous.query(p) for p in points.split(chunk)])
    alpha = alpha.reshape(grid)
    alpha = F.max_pool3d(alpha[None, None], kernel_size=3, padding=1, stride=1)[0, 0]
    mask = alpha >= threshold
    # A cell is occupied when any of its 8 corners is: max over each 2x2x2 block of grid points.
    cells = F.max_pool3d(mask.float()[None, None], kernel_size=2, stride=1)[0, 0].to(torch.uint8)
    occupancy = OccupancyGrid(cells.contiguous(), field.aabb.detach().clone())
    if not mask.any():
        return occupancy, None
    valid = points[mask.reshape(-1)]
    return occupancy, torch.stack([valid.amin(0), valid.amax(0)])
