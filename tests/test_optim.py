"""MaskedAdam: torch.optim.Adam's update without masking, DVGO's masking and per-element learning rates, the numba
kernel against the PyTorch reference, and its state through the checkpoint helpers."""

from __future__ import annotations

import math

import pytest
import torch

from vqrf import optim as optim_module
from vqrf.backend import KERNELS_ENV
from vqrf.optim import MaskedAdam
from vqrf.step import load_optimizer_tensors, optimizer_tensors

TOL = dict(rtol=1e-6, atol=1e-6)
SHAPE = (6, 5, 4, 3)  # a small [X, Y, Z, C] grid


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    """Run the test on the numba kernel (which must then run) and on the PyTorch reference (which must not reach it)."""
    kernel = optim_module._masked_adam_kernel
    calls = []

    def spy(*args):
        if request.param == "torch":
            raise AssertionError("the numba kernel ran on the forced PyTorch path")
        calls.append(1)
        kernel(*args)

    monkeypatch.setattr(optim_module, "_masked_adam_kernel", spy)
    if request.param == "torch":
        monkeypatch.setenv(KERNELS_ENV, "torch")
    else:
        monkeypatch.delenv(KERNELS_ENV, raising=False)
    yield request.param
    assert request.param == "torch" or calls, "the numba kernel never ran"


def grads(n: int, shape=SHAPE, zero_frac: float = 0.0, seed: int = 1) -> list[torch.Tensor]:
    """n random gradients; about ``zero_frac`` of the elements of each exactly 0, a fresh set each step."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) >= zero_frac) for _ in range(n)]


def run(opt: torch.optim.Optimizer, param: torch.Tensor, steps: list[torch.Tensor]) -> None:
    for g in steps:
        param.grad = g.clone()
        opt.step()


def start(shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_matches_torch_adam(path):
    steps = grads(20)
    p, q = start(), start()
    opt = MaskedAdam([p], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    run(opt, p, steps)
    ref = torch.optim.Adam([q], lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    run(ref, q, steps)
    torch.testing.assert_close(p, q, **TOL)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt.state[p][key], ref.state[q][key], **TOL)


def test_non_contiguous_and_empty_params(path):
    """A transposed parameter takes the reference on either path; an empty one is a no-op."""
    steps = grads(3, shape=(4, 5))
    p = torch.randn(5, 4).t().detach().requires_grad_()
    q = p.detach().clone().requires_grad_()
    empty = torch.zeros(0, 3, requires_grad=True)
    empty.grad = torch.zeros(0, 3)
    opt = MaskedAdam([p, empty], lr=1e-2)
    opt.set_lr_scale(empty, torch.ones(3))
    run(opt, p, steps)
    run(torch.optim.Adam([q], lr=1e-2, betas=(0.9, 0.99)), q, steps)
    torch.testing.assert_close(p, q, **TOL)
    assert opt.state[empty]["step"].item() == 3  # the empty one (contiguous) is what reaches the kernel


def test_skip_zero_grad_leaves_zero_grad_elements(path):
    p = start()
    p0 = p.detach().clone()
    opt = MaskedAdam([{"params": [p], "skip_zero_grad": True}], lr=1e-2)
    frozen = torch.zeros(SHAPE, dtype=torch.bool)
    frozen[1:3, :, 2] = True
    steps = [g.masked_fill(frozen, 0.0) for g in grads(5)]
    run(opt, p, steps)
    state = opt.state[p]
    assert torch.equal(p.detach()[frozen], p0[frozen])
    assert not torch.any(state["exp_avg"][frozen]) and not torch.any(state["exp_avg_sq"][frozen])
    assert torch.all(p.detach()[~frozen] != p0[~frozen])
    assert state["step"].item() == 5


def test_skip_zero_grad_by_hand(path):
    """Two steps on 4 elements; element 1 has gradient 0 on the second step, element 3 on both."""
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-8
    p = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    opt = MaskedAdam([{"params": [p], "skip_zero_grad": True}], lr=lr, betas=(b1, b2), eps=eps)
    g1, g2 = [0.5, -1.0, 2.0, 0.0], [0.25, 0.0, -2.0, 0.0]
    run(opt, p, [torch.tensor(g1), torch.tensor(g2)])
    want_p, want_m, want_v = [], [], []
    for x, a, b in zip([1.0, 2.0, 3.0, 4.0], g1, g2):
        m = v = 0.0
        for t, g in ((1, a), (2, b)):
            if g == 0.0:
                continue
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            x -= lr / (1 - b1**t) * m / (math.sqrt(v) / math.sqrt(1 - b2**t) + eps)
        want_p.append(x), want_m.append(m), want_v.append(v)
    state = opt.state[p]
    torch.testing.assert_close(p.detach(), torch.tensor(want_p), **TOL)
    torch.testing.assert_close(state["exp_avg"], torch.tensor(want_m), **TOL)
    torch.testing.assert_close(state["exp_avg_sq"], torch.tensor(want_v), **TOL)
    assert p[3].item() == 4.0 and state["exp_avg"][3].item() == 0.0  # never had a gradient
    # Element 1 skips the second step and keeps its first-step value: 2 + lr (Adam's first step is -lr * sign(g)).
    assert p[1].item() == pytest.approx(2.0 + lr, abs=1e-6)


def test_lr_scale(path):
    p = start()
    p0 = p.detach().clone()
    opt = MaskedAdam([p], lr=1e-2)
    scale = torch.ones(SHAPE[:3] + (1,))
    scale[0, 0, 0] = 0.0
    scale[1, 1, 1] = 0.5
    opt.set_lr_scale(p, scale)
    run(opt, p, grads(1))
    moved = (p.detach() - p0).abs()
    torch.testing.assert_close(moved[1, 1, 1], torch.full((SHAPE[3],), 0.5e-2), **TOL)
    torch.testing.assert_close(moved[2, 2, 2], torch.full((SHAPE[3],), 1e-2), **TOL)
    run(opt, p, grads(3, seed=2))
    assert torch.equal(p.detach()[0, 0, 0], p0[0, 0, 0])


def test_lr_scale_rejects_bad_input():
    p, other = start(), start()
    opt = MaskedAdam([p])
    with pytest.raises(ValueError):
        opt.set_lr_scale(p, torch.ones(SHAPE[0] + 1, 1, 1, 1))
    with pytest.raises(ValueError):
        opt.set_lr_scale(other, torch.ones(1))


@pytest.mark.parametrize("scale_shape", [None, SHAPE[:3] + (1,), (SHAPE[3],), (), SHAPE, (SHAPE[0], 1, SHAPE[2], 1)])
@pytest.mark.parametrize("skip_zero", [True, False])
def test_numba_matches_reference(monkeypatch, scale_shape, skip_zero):
    """Random data, ~30% zero gradients; the last scale shape is one the kernel leaves to the reference."""
    steps = grads(6, zero_frac=0.3)
    scale = None if scale_shape is None else torch.rand(scale_shape, generator=torch.Generator().manual_seed(3))
    results = []
    for kernels in ("", "torch"):
        monkeypatch.setenv(KERNELS_ENV, kernels)
        p = start()
        opt = MaskedAdam([{"params": [p], "skip_zero_grad": skip_zero}], lr=1e-2)
        if scale is not None:
            opt.set_lr_scale(p, scale)
        run(opt, p, steps)
        results.append((p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL)


def test_kernel_covers_the_common_scales():
    rows = optim_module._scale_row
    assert rows(torch.Size(SHAPE), torch.ones(SHAPE[:3] + (1,))) == SHAPE[3]
    assert rows(torch.Size(SHAPE), torch.ones(SHAPE[3])) == 1
    assert rows(torch.Size((1, 3, 4, 5)), torch.ones(1, 1, 4, 5)) == 1  # DVGO's [1, 1, X, Y, Z] for [1, C, X, Y, Z]
    assert rows(torch.Size(SHAPE), torch.ones(SHAPE[0], 1, SHAPE[2], 1)) is None


def test_state_round_trip(path):
    """Save after 4 steps, load into a fresh optimiser, continue: the same as 8 uninterrupted steps."""
    steps = grads(8, zero_frac=0.3)
    scale = torch.rand(SHAPE[:3] + (1,), generator=torch.Generator().manual_seed(4))

    def make(p):
        net = torch.zeros(5, requires_grad=True)  # a second group, without a gradient, as the network's
        opt = MaskedAdam([{"params": [p], "skip_zero_grad": True}, {"params": [net]}], lr=1e-2)
        opt.set_lr_scale(p, scale)
        return opt

    p = start()
    run(make(p), p, steps)

    q = start()
    opt = make(q)
    run(opt, q, steps[:4])
    saved = {k: v.clone() for k, v in optimizer_tensors(opt).items()}
    assert {k.rsplit(".", 1)[1] for k in saved} == {"step", "exp_avg", "exp_avg_sq", "lr_scale"}
    resumed_q = q.detach().clone().requires_grad_()
    resumed = make(resumed_q)
    resumed.set_lr_scale(resumed_q, torch.zeros(1))  # overwritten by the load
    load_optimizer_tensors(resumed, saved)
    run(resumed, resumed_q, steps[4:])
    assert torch.equal(resumed_q, p)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu_without_host_syncs():
    """The PyTorch path on a GPU gives the kernel's values and never waits on the device."""
    steps = grads(5, zero_frac=0.3)
    scale = torch.rand(SHAPE[:3] + (1,), generator=torch.Generator().manual_seed(3))
    results = []
    for device in ("cpu", "cuda"):
        p = start().to(device).detach().requires_grad_()
        opt = MaskedAdam([{"params": [p], "skip_zero_grad": True}], lr=1e-2)
        opt.set_lr_scale(p, scale)
        on_device = [g.to(device) for g in steps]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run(opt, p, on_device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        results.append(p.detach().cpu())
    torch.testing.assert_close(results[1], results[0], **TOL)
