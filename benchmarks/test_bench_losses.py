"""Relational loss forward+backward (B=1024, Dt=1536, Ds=5) against a plain-torch reference of the same maths.

    pytest benchmarks/test_bench_losses.py --benchmark-enable -n 0

Both run in the same session; the ratio (ours / reference, median times of interleaved runs) is
stored in the benchmark's ``extra_info`` and printed.
"""

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from atlas_plugins import get_loss

B, DT, DS, TAU = 1024, 1536, 5, 0.5


def reference_relational(s, t, tau):
    """Pᵢ = softmax_{j≠i}(Tᵢⱼ/τ), Qᵢ = softmax_{j≠i}(Sᵢⱼ/τ), mean τ²·KL(Pᵢ‖Qᵢ), written plainly with a mask."""
    eye = torch.eye(s.shape[0], dtype=torch.bool)
    with torch.no_grad():
        tn = F.normalize(t, dim=1)
        log_p = torch.log_softmax((tn @ tn.T / tau).masked_fill(eye, -float("inf")), dim=1)
        p = log_p.exp()
    sn = F.normalize(s, dim=1)
    log_q = torch.log_softmax((sn @ sn.T / tau).masked_fill(eye, -float("inf")), dim=1)
    kl = (p * (log_p - log_q)).masked_fill(eye, 0.0).sum(dim=1)
    return (kl * tau**2).mean()


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, DS, generator=g, requires_grad=True), torch.randn(B, DT, generator=g)


def _step(fn, s, t):
    s.grad = None
    fn(s, t, TAU).backward()


def _median_ratio(fn, ref, s, t, reps=25):
    """Median time of ``fn`` over median time of ``ref``, runs interleaved so load drift hits both alike."""
    _step(fn, s, t), _step(ref, s, t)
    times = {fn: [], ref: []}
    for _ in range(reps):
        for f in (fn, ref):
            t0 = time.perf_counter()
            _step(f, s, t)
            times[f].append(time.perf_counter() - t0)
    return statistics.median(times[fn]) / statistics.median(times[ref])


def test_reference_matches():
    s, t = _data()
    ours = get_loss("relational")(s, t, tau=TAU)
    assert torch.allclose(ours, reference_relational(s, t, TAU), rtol=1e-5)


@pytest.mark.benchmark(group="relational-loss")
def test_relational_forward_backward(benchmark):
    s, t = _data()
    loss = get_loss("relational")
    ours = lambda s_, t_, tau: loss(s_, t_, tau=tau)
    benchmark(_step, ours, s, t)
    ratio = _median_ratio(ours, reference_relational, s, t)
    benchmark.extra_info["ratio_vs_reference"] = round(ratio, 3)
    print(f"\nrelational forward+backward B={B} Dt={DT} Ds={DS}: {ratio:.2f}x the plain-torch reference")


@pytest.mark.benchmark(group="relational-loss")
def test_reference_forward_backward(benchmark):
    s, t = _data()
    benchmark(_step, reference_relational, s, t)


MSE_B, MSE_D = 4096, 1536


def test_mse_with_equal_dimensions_matches_the_fused_op():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    assert torch.allclose(get_loss("mse")(s, t), F.mse_loss(s, t))
    assert torch.allclose(get_loss("mse")(s, t, reduction="sum"), ((s - t) ** 2).mean(1).sum())


@pytest.mark.benchmark(group="mse-loss")
def test_mse_forward_backward_vs_fused(benchmark):
    """``mse`` with Ds = Dt against ``torch.nn.functional.mse_loss`` on the same tensors (goal: ≤ 1.1×)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(MSE_B, MSE_D, generator=g, requires_grad=True), torch.randn(MSE_B, MSE_D, generator=g)
    loss = get_loss("mse")
    ours = lambda s_, t_, tau: loss(s_, t_, tau=tau)  # noqa: E731
    fused = lambda s_, t_, tau: F.mse_loss(s_, t_)  # noqa: E731
    benchmark(_step, ours, s, t)
    ratio = _median_ratio(ours, fused, s, t)
    benchmark.extra_info["ratio_vs_fused"] = round(ratio, 3)
    print(f"\nmse forward+backward B={MSE_B} D={MSE_D}: {ratio:.2f}x F.mse_loss")
