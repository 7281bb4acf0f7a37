"""The numba VM kernel against the F.grid_sample reference (values and gradients), and the reference against a
hand-written interpolation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqrf.fields import vm_kernel
from vqrf.fields.vm_kernel import vm_features, vm_features_torch

TOL = dict(rtol=1e-4, atol=1e-4)

# Grid size along x, y, z; plane i is [size[b_i], size[a_i], C_i], line i is [size[c_i], C_i].
SIZES = (23, 17, 19)


def make_params(comps: tuple[int, int, int], sizes: tuple[int, int, int] = SIZES, seed: int = 0):
    """Random channels-last planes and lines that require grad."""
    gen = torch.Generator().manual_seed(seed)
    planes, lines = [], []
    for (a, b), c, n in zip(vm_kernel.MAT_MODE, vm_kernel.VEC_MODE, comps):
        planes.append(torch.randn(sizes[b], sizes[a], n, generator=gen).requires_grad_())
        lines.append(torch.randn(sizes[c], n, generator=gen).requires_grad_())
    return planes, lines


def make_points(n: int, seed: int = 1) -> torch.Tensor:
    """Points mostly inside [-1, 1]^3, some exactly on the borders and some outside (zero padding)."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=gen) * 2 - 1
    if n >= 40:
        xyz[:10] = torch.randint(0, 2, (10, 3), generator=gen).float() * 2 - 1  # corners of the box
        xyz[10:20, 0] = 1.0  # one coord on a border
        xyz[20:30, 1] = -1.0
        xyz[30:40] = torch.rand(10, 3, generator=gen) * 3 - 1.5  # partly or wholly outside
        xyz[40:45] = torch.tensor([1.01, -1.001, 5.0, -7.0, 1.0 + 1e-6])[:, None]
    return xyz


def check(comps: tuple[int, int, int], n: int, reduce: bool, sizes: tuple[int, int, int] = SIZES) -> None:
    planes, lines = make_params(comps, sizes)
    params = planes + lines
    xyz = make_points(n)
    got = vm_features(planes, lines, xyz, reduce)
    want = vm_features_torch(planes, lines, xyz, reduce)
    assert got.shape == want.shape == ((n,) if reduce else (n, sum(comps)))
    torch.testing.assert_close(got, want, **TOL)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    got_grads = torch.autograd.grad(got, params, grad_out)
    want_grads = torch.autograd.grad(want, params, grad_out)
    for g, w, p in zip(got_grads, want_grads, params):
        assert g.shape == p.shape
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("reduce", [True, False])
@pytest.mark.parametrize("comps", [(16, 4, 4), (48, 48, 48)])
def test_matches_reference(comps, reduce):
    check(comps, 3000, reduce)


@pytest.mark.parametrize("reduce", [True, False])
def test_non_square_planes_and_short_lines(reduce):
    check((5, 3, 7), 2000, reduce, sizes=(40, 9, 2))


@pytest.mark.parametrize("reduce", [True, False])
@pytest.mark.parametrize("n", [0, 1])
def test_tiny_batches(n, reduce):
    check((16, 4, 4), n, reduce)


def test_outside_box_and_non_finite_give_zero():
    planes, lines = make_params((4, 4, 4))
    # x is a plane coord of pairs 0 and 1 and the line coord of pair 2: x far outside zeroes every pair.
    xyz = torch.tensor([[1.5, 0.2, 0.3], [-3.0, 0.0, 0.0], [1e9, 0.1, 0.1], [float("inf"), 0.0, 0.0],
                        [float("nan"), 0.0, 0.0], [2.0, 2.0, 2.0]])
    torch.testing.assert_close(vm_features(planes, lines, xyz, False), torch.zeros(6, 12), rtol=0, atol=0)
    torch.testing.assert_close(vm_features(planes, lines, xyz, True), torch.zeros(6), rtol=0, atol=0)


def test_only_some_params_need_grad():
    planes, lines = make_params((8, 4, 4))
    frozen = [p.detach() for p in planes]
    xyz = make_points(500)
    out = vm_features(frozen, lines, xyz, False)
    grads = torch.autograd.grad(out.sum(), lines)
    want = torch.autograd.grad(vm_features_torch(frozen, lines, xyz, False).sum(), lines)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, **TOL)


def test_no_grad_eval_and_many_points():
    planes, lines = make_params((16, 16, 16))
    xyz = make_points(20000)
    with torch.no_grad():
        got = vm_features(planes, lines, xyz, True)
        assert not got.requires_grad
        torch.testing.assert_close(got, vm_features_torch(planes, lines, xyz, True), **TOL)


def test_multithreaded_backward_matches_single_thread():
    planes, lines = make_params((16, 4, 4))
    xyz = make_points(20000)
    threads = torch.get_num_threads()
    try:
        grads = []
        for n in (1, 2):
            torch.set_num_threads(n)
            grads.append(torch.autograd.grad(vm_features(planes, lines, xyz, False).sum(), planes + lines))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL)


def test_backward_with_points_bunched_in_few_rows():
    # The backward splits plane rows between threads by the points' row quantiles; bunched points stress that.
    planes, lines = make_params((16, 4, 4))
    xyz = make_points(6000)
    xyz[:5000, 1] = 0.3  # plane 0 rows: all on one row pair
    xyz[:5000, 2] = -1.0  # planes 1 and 2 rows: all on row 0
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = torch.autograd.grad(vm_features(planes, lines, xyz, False).sum(), planes + lines)
    finally:
        torch.set_num_threads(threads)
    want = torch.autograd.grad(vm_features_torch(planes, lines, xyz, False).sum(), planes + lines)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)


def test_env_forces_reference(monkeypatch):
    """VQRF_KERNELS=torch swaps the numba Function for the grid_sample path, which gives the same features."""
    planes, lines = make_params((4, 4, 4))
    xyz = make_points(100)
    monkeypatch.delenv("VQRF_KERNELS", raising=False)
    fast = vm_features(planes, lines, xyz, False)
    assert "VMFeatures" in type(fast.grad_fn).__name__
    monkeypatch.setenv("VQRF_KERNELS", "torch")
    forced = vm_features(planes, lines, xyz, False)
    assert "VMFeatures" not in type(forced.grad_fn).__name__
    torch.testing.assert_close(forced, fast, **TOL)


# The documented layout, written out independently of vm_kernel.MAT_MODE / VEC_MODE for the oracle below.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))
LINE_AXES = (2, 1, 0)


def oracle_axis(u: float, size: int) -> list[tuple[int, float]]:
    """(texel, weight) of the in-grid corners of normalised coord ``u`` on an axis of ``size`` texels."""
    f = (u + 1) / 2 * (size - 1)
    i = math.floor(f)
    return [(k, w) for k, w in ((i, 1 - (f - i)), (i + 1, f - i)) if 0 <= k < size]


def oracle_features(planes: list[np.ndarray], lines: list[np.ndarray], p: tuple[float, float, float],
                    reduce: bool) -> np.ndarray:
    """Features of one point by plain loops: plane i [H, W, C] spans PLANE_AXES[i] = (a along W, b along H),
    line i [L, C] runs along LINE_AXES[i]."""
    feats = []
    for plane, line, (a, b), c in zip(planes, lines, PLANE_AXES, LINE_AXES):
        h, w, n = plane.shape
        pv = sum((wx * wy * plane[y, x] for x, wx in oracle_axis(p[a], w) for y, wy in oracle_axis(p[b], h)),
                 np.zeros(n))
        lv = sum((wl * line[l] for l, wl in oracle_axis(p[c], line.shape[0])), np.zeros(n))
        feats.append(pv * lv)
    out = np.concatenate(feats)
    return np.array([out.sum()]) if reduce else out


@pytest.mark.parametrize("reduce", [True, False])
def test_reference_matches_hand_interpolation(reduce):
    """vm_features_torch is bilinear-plane x linear-line with align_corners=True and zero padding, pair 0 first."""
    sizes = (6, 4, 3)  # every axis a different length: a swapped axis reads other texels or goes out of range
    gen = torch.Generator().manual_seed(5)
    planes = [torch.randn(sizes[b], sizes[a], n, generator=gen) for (a, b), n in zip(PLANE_AXES, (2, 1, 3))]
    lines = [torch.randn(sizes[c], p.shape[2], generator=gen) for c, p in zip(LINE_AXES, planes)]
    points = [(-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), (0.3, -0.55, 0.8), (-0.9, 0.1, -0.2), (0.62, 0.95, -0.7),
              (1.2, 0.4, -0.3), (0.2, -1.3, 0.6)]  # the last two: one corner in the grid, one in the padding
    got = vm_features_torch(planes, lines, torch.tensor(points), reduce)
    np_planes, np_lines = [p.double().numpy() for p in planes], [l.double().numpy() for l in lines]
    want = np.stack([oracle_features(np_planes, np_lines, p, reduce) for p in points])
    np.testing.assert_allclose(got.reshape(want.shape).numpy(), want, rtol=1e-5, atol=1e-6)


def test_rejects_float64():
    planes, lines = make_params((4, 4, 4))
    with pytest.raises(TypeError):
        vm_features([p.double() for p in planes], [l.double() for l in lines], make_points(10).double(), True)


def test_rejects_bad_shapes():
    planes, lines = make_params((4, 4, 4))
    with pytest.raises(ValueError):
        vm_features(planes, lines, torch.zeros(10, 2), True)
    with pytest.raises(ValueError):
        vm_features(planes, [lines[0], lines[1], torch.zeros(19, 5)], make_points(10), True)
    with pytest.raises(ValueError):
        vm_features(planes[:2], lines, make_points(10), True)


def test_thread_bands_ignore_nan_points():
    """A NaN among the sampled points once turned every band boundary into INT64_MIN (one thread did all the work,
    and the zeroing of its band could cover another thread's rows)."""
    xyz = make_points(2000)
    xyz[::3] = float("nan")
    dims = vm_kernel._dims(*make_params((4, 4, 4)))
    bands = vm_kernel._bands(xyz, dims, 3)
    for i in range(3):
        assert bands[i, 0] == 0 and bands[i, -1] == dims[i, 0]
        assert (np.diff(bands[i]) >= 0).all()
        assert (bands[i, 1:-1] > 0).any()  # the rows really are shared out


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 6, 2), (6, 1, 2)])
def test_plane_tv_gradient_matches_autograd(shape):
    """The written-out TV gradient against autograd through TensoRF's TVLoss formula."""
    from vqrf.fields.tensorf import PlaneTV

    plane = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    dh = (plane[1:] - plane[:-1]).pow(2).mean() if shape[0] > 1 else plane.new_zeros(())
    dw = (plane[:, 1:] - plane[:, :-1]).pow(2).mean() if shape[1] > 1 else plane.new_zeros(())
    expected = 2.0 * (dh + dw)
    (expected_grad,) = torch.autograd.grad(expected, plane)
    got = PlaneTV.apply(plane)
    (got_grad,) = torch.autograd.grad(3.0 * got, plane)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, 3.0 * expected_grad)
    assert torch.autograd.gradcheck(PlaneTV.apply, (plane,))
