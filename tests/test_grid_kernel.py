"""The numba dense-grid kernel against the F.grid_sample reference (values and gradients), the reference against a
hand-written trilinear interpolation, and the splat against the lookup's gradient."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqrf.fields.grid_kernel import grid_features, grid_features_torch, splat_trilinear

TOL = dict(rtol=1e-4, atol=1e-4)

# Grid size along x, y, z: every axis a different length, so a swapped axis reads other voxels or goes out of range.
SIZES = (13, 9, 11)


def make_grid(channels: int, sizes: tuple[int, int, int] = SIZES, seed: int = 0) -> torch.Tensor:
    """Random channels-last grid [X, Y, Z, C] that requires grad."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*sizes, channels, generator=gen).requires_grad_()


def make_points(n: int, seed: int = 1) -> torch.Tensor:
    """Points mostly inside [-1, 1]^3, some exactly on the borders, some outside (zero padding), some NaN/inf."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=gen) * 2 - 1
    if n >= 50:
        xyz[:10] = torch.randint(0, 2, (10, 3), generator=gen).float() * 2 - 1  # corners of the box
        xyz[10:20, 0] = 1.0  # one coord on a border
        xyz[20:30, 1] = -1.0
        xyz[30:40] = torch.rand(10, 3, generator=gen) * 3 - 1.5  # partly or wholly outside
        xyz[40:45] = torch.tensor([1.01, -1.001, 5.0, -7.0, 1.0 + 1e-6])[:, None]
        xyz[45:50, 2] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30])
    return xyz


def check(channels: int, n: int, sizes: tuple[int, int, int] = SIZES) -> None:
    grid = make_grid(channels, sizes)
    xyz = make_points(n)
    got = grid_features(grid, xyz)
    want = grid_features_torch(grid, xyz)
    assert got.shape == want.shape == (n, channels)
    torch.testing.assert_close(got, want, **TOL)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    (got_grad,) = torch.autograd.grad(got, grid, grad_out)
    (want_grad,) = torch.autograd.grad(want, grid, grad_out)
    assert got_grad.shape == grid.shape
    torch.testing.assert_close(got_grad, want_grad, **TOL)


@pytest.mark.parametrize("channels", [1, 12])
def test_matches_reference(channels):
    check(channels, 3000)


@pytest.mark.parametrize("sizes", [(2, 2, 2), (40, 3, 2), (1, 6, 5), (4, 1, 1)])
def test_small_and_flat_grids(sizes):
    # A size-1 axis is constant along it for every finite coordinate, in grid_sample as in the kernel.
    check(3, 500, sizes)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_batches(n):
    check(12, n)


def test_outside_box_and_non_finite_give_zero():
    grid = make_grid(4)
    xyz = torch.tensor([[1.5, 0.2, 0.3], [-3.0, 0.0, 0.0], [0.0, 1e9, 0.1], [float("inf"), 0.0, 0.0],
                        [0.0, 0.0, float("nan")], [2.0, 2.0, 2.0], [-1.0 - 2.5 / (SIZES[0] - 1), 0.0, 0.0]])
    torch.testing.assert_close(grid_features(grid, xyz), torch.zeros(7, 4), rtol=0, atol=0)


def test_no_grad_eval_and_frozen_grid():
    grid = make_grid(12)
    xyz = make_points(5000)
    with torch.no_grad():
        got = grid_features(grid, xyz)
    assert not got.requires_grad
    frozen = grid_features(grid.detach(), xyz)
    assert not frozen.requires_grad
    torch.testing.assert_close(got, grid_features_torch(grid, xyz), **TOL)
    torch.testing.assert_close(frozen, got, rtol=0, atol=0)


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_xyz_gets_no_gradient(kernels, monkeypatch):
    monkeypatch.setenv("VQRF_KERNELS", kernels)
    grid = make_grid(2)
    xyz = make_points(100).requires_grad_()
    (g_xyz,) = torch.autograd.grad(grid_features(grid, xyz).sum(), xyz, allow_unused=True)
    assert g_xyz is None


def with_threads(n: int, fn):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(threads)


def test_multithreaded_backward_matches_single_thread():
    grid = make_grid(12)
    xyz = make_points(20000)
    grads = [with_threads(n, lambda: torch.autograd.grad(grid_features(grid, xyz).sum(), grid)[0]) for n in (1, 2)]
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def test_backward_with_points_bunched_in_few_slabs():
    # The backward splits X slabs between threads by the points' slab quantiles; bunched points stress that.
    grid = make_grid(12)
    xyz = make_points(6000)
    xyz[:5000, 0] = 0.3  # all on one slab pair
    xyz[5000:5500, 0] = -1.0  # slab 0
    xyz[5500:5600, 0] = float("nan")
    got = with_threads(2, lambda: torch.autograd.grad(grid_features(grid, xyz).sum(), grid)[0])
    (want,) = torch.autograd.grad(grid_features_torch(grid, xyz).sum(), grid)
    torch.testing.assert_close(got, want, **TOL)


def test_env_forces_reference(monkeypatch):
    """VQRF_KERNELS=torch swaps the numba Function for the grid_sample path, which gives the same features."""
    grid = make_grid(12)
    xyz = make_points(200)
    weights = torch.rand(200, generator=torch.Generator().manual_seed(3))
    monkeypatch.delenv("VQRF_KERNELS", raising=False)
    fast = grid_features(grid, xyz)
    assert "GridFeatures" in type(fast.grad_fn).__name__
    fast_splat = splat_trilinear(SIZES, xyz, weights)
    monkeypatch.setenv("VQRF_KERNELS", "torch")
    forced = grid_features(grid, xyz)
    assert "GridFeatures" not in type(forced.grad_fn).__name__
    torch.testing.assert_close(forced, fast, **TOL)
    forced_splat = splat_trilinear(SIZES, xyz, weights)
    assert forced_splat.dtype == fast_splat.dtype == torch.float32
    torch.testing.assert_close(forced_splat, fast_splat, **TOL)


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_splat_is_the_gradient_of_the_lookup(kernels, monkeypatch):
    """splat(w) = d/d grid of sum(w * lookup(grid)): the lookup's transpose; inside the box it conserves sum(w)."""
    monkeypatch.setenv("VQRF_KERNELS", kernels)
    xyz = make_points(3000)
    weights = torch.rand(3000, generator=torch.Generator().manual_seed(3))
    ones = torch.ones(*SIZES, 1, requires_grad=True)
    (want,) = torch.autograd.grad(grid_features_torch(ones, xyz)[:, 0], ones, weights)
    with torch.no_grad():  # as importance is computed
        got = splat_trilinear(SIZES, xyz, weights)
    assert got.shape == SIZES and got.dtype == torch.float32
    torch.testing.assert_close(got, want[..., 0], **TOL)
    inside = torch.rand(3000, 3, generator=torch.Generator().manual_seed(4)) * 1.998 - 0.999
    total = splat_trilinear(SIZES, inside, weights).double().sum()
    assert math.isclose(total, weights.double().sum(), rel_tol=1e-6)


@pytest.mark.parametrize("kernels", ["numba", "torch"])
def test_splat_sums_in_float64(kernels, monkeypatch):
    # 2^24 then 1000 ones on one voxel: a float32 running sum would stay at 2^24 (2^24 + 1 rounds back to it).
    monkeypatch.setenv("VQRF_KERNELS", kernels)
    weights = torch.ones(1001)
    weights[0] = 2.0**24
    got = splat_trilinear((2, 3, 2), torch.full((1001, 3), -1.0), weights)
    assert got[0, 0, 0].item() == 2**24 + 1000 and got.sum().item() == 2**24 + 1000


def oracle_axis(u: float, size: int) -> list[tuple[int, float]]:
    """(voxel, weight) of the in-grid corners of normalised coord ``u`` on an axis of ``size`` voxels."""
    f = (u + 1) / 2 * (size - 1)
    i = math.floor(f)
    return [(k, w) for k, w in ((i, 1 - (f - i)), (i + 1, f - i)) if 0 <= k < size]


def oracle_features(grid: np.ndarray, p: tuple[float, float, float]) -> np.ndarray:
    """Features of one point by plain loops: grid [X, Y, Z, C], p[0] along X, p[1] along Y, p[2] along Z."""
    out = np.zeros(grid.shape[3])
    for x, wx in oracle_axis(p[0], grid.shape[0]):
        for y, wy in oracle_axis(p[1], grid.shape[1]):
            for z, wz in oracle_axis(p[2], grid.shape[2]):
                out += wx * wy * wz * grid[x, y, z]
    return out


def test_reference_matches_hand_interpolation():
    """grid_features_torch is trilinear with align_corners=True and zero padding, xyz[:, 0] indexing X."""
    grid = torch.randn(6, 4, 3, 2, generator=torch.Generator().manual_seed(5))
    points = [(-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), (1.0, -1.0, 1.0), (0.3, -0.55, 0.8), (-0.9, 0.1, -0.2),
              (0.62, 0.95, -0.7), (1.1, 0.4, -0.3), (0.2, -1.3, 0.6)]  # the last two: corners partly in the padding
    got = grid_features_torch(grid, torch.tensor(points))
    want = np.stack([oracle_features(grid.double().numpy(), p) for p in points])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_rejects_float64():
    with pytest.raises(TypeError):
        grid_features(make_grid(2).double(), make_points(10).double())
    with pytest.raises(TypeError):
        splat_trilinear(SIZES, make_points(10), torch.ones(10, dtype=torch.float64))


def test_rejects_bad_shapes():
    grid = make_grid(2)
    with pytest.raises(ValueError):
        grid_features(grid, torch.zeros(10, 2))
    with pytest.raises(ValueError):
        grid_features(grid[..., 0], make_points(10))
    with pytest.raises(ValueError):
        grid_features(torch.zeros(0, 4, 4, 2), make_points(10))
    with pytest.raises(ValueError):
        splat_trilinear(SIZES, make_points(10), torch.ones(9))
    with pytest.raises(ValueError):
        splat_trilinear((4, 4), make_points(10), torch.ones(10))
    with pytest.raises(ValueError):
        splat_trilinear((4, 0, 4), make_points(10), torch.ones(10))
