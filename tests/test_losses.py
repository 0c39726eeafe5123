"""Each built-in loss against an independent NumPy computation (plain loops, float64)."""

import math
import re

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from atlas_plugins import ConfigError, get_loss


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sims(x):
    u = _unit_rows(x)
    return u @ u.T


def _softmax_log(v):
    m = max(v)
    logz = m + math.log(sum(math.exp(a - m) for a in v))
    return [a - logz for a in v]


def ref_mse(s, t):
    b = s.shape[0]
    if s.shape[1] == t.shape[1]:
        return np.array([np.mean((s[i] - t[i]) ** 2) for i in range(b)])
    S, T = _sims(s), _sims(t)
    return np.array([np.mean([(S[i, j] - T[i, j]) ** 2 for j in range(b) if j != i]) for i in range(b)])


def ref_cosine(s, t):
    b = s.shape[0]
    if s.shape[1] == t.shape[1]:
        return np.array([1 - s[i] @ t[i] / (np.linalg.norm(s[i]) * np.linalg.norm(t[i])) for i in range(b)])
    S, T = _sims(s), _sims(t)
    out = []
    for i in range(b):
        a = [S[i, j] for j in range(b) if j != i]
        c = [T[i, j] for j in range(b) if j != i]
        out.append(1 - np.corrcoef(a, c)[0, 1])
    return np.array(out)


def ref_relational(s, t, tau):
    b = s.shape[0]
    S, T = _sims(s), _sims(t)
    out = []
    for i in range(b):
        lp = _softmax_log([T[i, j] / tau for j in range(b) if j != i])
        lq = _softmax_log([S[i, j] / tau for j in range(b) if j != i])
        out.append(tau**2 * sum(math.exp(p) * (p - q) for p, q in zip(lp, lq)))
    return np.array(out)


def ref_kl(s, t, tau):
    out = []
    for i in range(s.shape[0]):
        lp = _softmax_log(list(t[i] / tau))
        lq = _softmax_log(list(s[i] / tau))
        out.append(tau**2 * sum(math.exp(p) * (p - q) for p, q in zip(lp, lq)))
    return np.array(out)


def _reduce(v, reduction):
    return {"mean": v.mean(), "sum": v.sum(), "none": v}[reduction]


REFERENCES = {"mse": lambda s, t, tau: ref_mse(s, t), "cosine": lambda s, t, tau: ref_cosine(s, t),
              "relational": ref_relational}


@pytest.mark.parametrize("name", ["mse", "cosine", "relational"])
@pytest.mark.parametrize("student_dim", [5, 384], ids=["unequal-dims", "equal-dims"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_vector_losses_match_reference(real_embeddings, name, student_dim, reduction, tau):
    rng = np.random.default_rng(1)
    t = real_embeddings[rng.choice(len(real_embeddings), 12, replace=False)].astype(np.float64)
    s = rng.normal(size=(12, student_dim)) if student_dim != 384 else t + 0.1 * rng.normal(size=t.shape)
    got = get_loss(name)(torch.from_numpy(s), torch.from_numpy(t), tau=tau, reduction=reduction)
    want = _reduce(REFERENCES[name](s, t, tau), reduction)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-12)
    if reduction == "none":
        assert got.shape == (12,)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kl_matches_hinton_reference(reduction):
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(9, 4)), rng.normal(size=(9, 4)) * 3
    got = get_loss("kl")(torch.from_numpy(s), torch.from_numpy(t), tau=2.0, reduction=reduction)
    np.testing.assert_allclose(got.numpy(), _reduce(ref_kl(s, t, 2.0), reduction), rtol=1e-10)


def test_kl_of_masked_logits_counts_only_the_classes_left_open():
    """A top-2 router masks the other experts to -inf: those classes hold no probability and add nothing."""
    rng = np.random.default_rng(5)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    masked = [[1, 3, 4], [0, 1, 2], [2, 3, 4], [0, 4, 1], [1, 2, 3], [0, 2, 4]]
    for row, cols in enumerate(masked):
        s[row, cols] = t[row, cols] = -math.inf
    student = torch.tensor(s, requires_grad=True)
    got = get_loss("kl")(student, torch.from_numpy(t), tau=2.0, reduction="none")
    want = [ref_kl(np.delete(s[[i]], cols, axis=1), np.delete(t[[i]], cols, axis=1), 2.0)[0]
            for i, cols in enumerate(masked)]
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10)
    got.sum().backward()
    assert torch.isfinite(student.grad).all()
    open_for_teacher_only = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, -math.inf]])
    assert get_loss("kl")(*open_for_teacher_only).item() == pytest.approx(math.log(1 + math.e))  # -log Q(class 0)
    assert get_loss("kl")(*reversed(open_for_teacher_only)) == math.inf  # the teacher's class the student masked
    assert get_loss("kl")(torch.zeros(1, 2), torch.tensor([[0.0, math.nan]])).isnan()  # NaN is never masked away


def test_kl_mean_is_batch_mean_not_elementwise():
    s, t = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    per = get_loss("kl")(s, t, tau=1.0, reduction="none")
    assert torch.allclose(get_loss("kl")(s, t, tau=1.0), per.mean())
    elementwise_mean = per.sum() / per.numel() / 4  # what torch's reduction="mean" would give
    assert not torch.allclose(per.mean(), elementwise_mean)


def test_relational_is_zero_when_student_reproduces_teacher_similarities(real_batch):
    _, teacher = real_batch
    assert get_loss("relational")(teacher.clone(), teacher, tau=0.1).abs() < 1e-12


def test_combined_weights_distillation_and_reconstruction(real_batch):
    s, t = real_batch
    recon = torch.tensor(0.3, dtype=torch.float64)
    distill = ref_relational(s.detach().numpy(), t.numpy(), 1.0).mean()
    got = get_loss("combined")(s, t, tau=1.0, alpha=0.7, reconstruction_loss=recon)
    assert got.item() == pytest.approx(0.7 * distill + 0.3 * 0.3, rel=1e-10)
    plain = get_loss("combined")(s, t, tau=1.0, alpha=0.7)
    assert plain.item() == pytest.approx(distill, rel=1e-10)
    mse_based = get_loss("combined")(s, t, tau=1.0, alpha=0.5, reconstruction_loss=recon, base="mse")
    assert mse_based.item() == pytest.approx(0.5 * ref_mse(s.detach().numpy(), t.numpy()).mean() + 0.15, rel=1e-10)


def test_combined_takes_a_reconstruction_per_row_with_reduction_none(real_batch):
    s, t = real_batch
    recon = torch.linspace(0, 1, 16, dtype=torch.float64)
    distill = ref_relational(s.detach().numpy(), t.numpy(), 1.0)
    got = get_loss("combined")(s, t, tau=1.0, alpha=0.7, reconstruction_loss=recon, reduction="none")
    assert np.allclose(got.detach().numpy(), 0.7 * distill + 0.3 * recon.numpy())
    one = get_loss("combined")(s, t, tau=1.0, alpha=0.7, reconstruction_loss=torch.tensor([0.3], dtype=torch.float64))
    assert one.shape == () and one.item() == pytest.approx(0.7 * distill.mean() + 0.09, rel=1e-10)


@pytest.mark.parametrize("recon, reduction, message", [
    (torch.ones(16), "mean", "must be a scalar (one value per row needs reduction='none'), got shape (16,)"),
    (torch.ones(3), "none", "must be a scalar, or one value per row (16,), got shape (3,)"),
    ("0.3", "mean", "must be a number or a tensor, got '0.3'"),
])
def test_combined_refuses_a_reconstruction_loss_of_another_shape(real_batch, recon, reduction, message):
    """A (16,) reconstruction with reduction="mean" broadcast to a (16,) "loss"; a string was a torch TypeError."""
    s, t = real_batch
    with pytest.raises(ConfigError, match=f"^reconstruction_loss {re.escape(message)}$"):
        get_loss("combined")(s, t, reconstruction_loss=recon, reduction=reduction)


def test_hierarchical_sums_weighted_levels(real_batch):
    _, t = real_batch
    rng = np.random.default_rng(3)
    coarse, fine = rng.normal(size=(16, 5)), rng.normal(size=(16, 25))
    tn = t.numpy()
    levels = (torch.from_numpy(coarse), torch.from_numpy(fine))
    got = get_loss("hierarchical")(levels, t, tau=0.5, weights=[0.7, 0.3])
    want = 0.7 * ref_relational(coarse, tn, 0.5).mean() + 0.3 * ref_relational(fine, tn, 0.5).mean()
    assert got.item() == pytest.approx(want, rel=1e-10)
    equal = get_loss("hierarchical")(levels, t, tau=0.5, base="mse")
    assert equal.item() == pytest.approx(0.5 * ref_mse(coarse, tn).mean() + 0.5 * ref_mse(fine, tn).mean(), rel=1e-10)
    per_level_teacher = get_loss("hierarchical")(levels, (t, t), tau=0.5, weights=[0.7, 0.3])
    assert per_level_teacher.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("name", ["mse", "cosine", "relational", "kl", "combined", "hierarchical"])
def test_gradients_reach_the_student_only(name):
    student = torch.randn(10, 5, requires_grad=True)
    teacher = torch.randn(10, 5 if name == "kl" else 32, requires_grad=True)
    kwargs = {"reconstruction_loss": torch.tensor(0.2)} if name == "combined" else {}
    get_loss(name)(student, teacher, tau=2.0, **kwargs).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None



class _HostTensors(TorchDispatchMode):
    """Records each operation that mixes tensors of two devices (on a GPU: a host-to-device copy, which waits
    for every queued kernel before the CPU may go on)."""

    def __init__(self):
        super().__init__()
        self.mixed = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        devices = {str(a.device) for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)}
        if len(devices) > 1:
            self.mixed.append((str(func), sorted(devices)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["mse", "cosine", "relational", "kl", "neighbors", "combined", "hierarchical"])
def test_losses_keep_every_tensor_on_the_inputs_device(name):
    """Run on the meta device (shapes only), every operation of the loss and its gradient sees tensors of one
    device: none is made on the host, which on a GPU would stall every training step."""
    student = torch.randn(10, 5, device="meta", requires_grad=True)
    teacher = torch.randn(10, 5 if name == "kl" else 32, device="meta")
    kwargs = {"reconstruction_loss": torch.zeros((), device="meta")} if name == "combined" else {}
    with _HostTensors() as seen:
        get_loss(name)(student, teacher, tau=2.0, **kwargs).backward()
    assert seen.mixed == []

@pytest.mark.parametrize("call, message", [
    (lambda f: f(torch.randn(4), torch.randn(4, 8)), "student must be 2-D"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8, 2)), "teacher must be 2-D"),
    (lambda f: f(torch.randn(4, 5), torch.randn(6, 8)), "batch sizes differ: 4 vs 6"),
    (lambda f: f(torch.randn(1, 5), torch.randn(1, 8)), "batch size >= 2"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), reduction="avg"), "reduction must be one of"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), tau=0), "tau must be a positive number"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), tau=-1.0), "tau must be a positive number"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), tau="0.5"), "tau must be a positive number, got '0.5'"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), tau=True), "tau must be a positive number, got True"),
    (lambda f: f(torch.randn(4, 5), torch.randn(4, 8), tau=torch.ones(2)), "tau must be a positive number"),
    (lambda f: f([1, 2], torch.randn(4, 8)), "student must be a torch.Tensor"),
])
def test_relational_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call(get_loss("relational"))


def test_torch_s_batchmean_is_named_as_what_mean_already_is():
    """A Hinton-KD recipe ported from ``F.kl_div(..., reduction="batchmean")``: "mean" is that here."""
    s, t = torch.randn(8, 4), torch.randn(8, 4)
    with pytest.raises(ConfigError, match=r"got 'batchmean'; 'mean' is the per-row loss averaged over the batch, "
                                          r"torch's 'batchmean'$"):
        get_loss("kl")(s, t, reduction="batchmean")
    torch_batchmean = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.log_softmax(t / 2, 1),
                                                 reduction="batchmean", log_target=True) * 4
    assert torch.allclose(get_loss("kl")(s, t, tau=2.0, reduction="mean"), torch_batchmean, atol=1e-6)


def test_kl_rejects_different_class_counts():
    with pytest.raises(ConfigError, match="same number of classes.*4 and 3"):
        get_loss("kl")(torch.randn(4, 4), torch.randn(4, 3))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "x", "0.5", True])  # a string or a boolean is never a number
def test_combined_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\]"):
        get_loss("combined")(torch.randn(4, 5), torch.randn(4, 8), alpha=alpha, reconstruction_loss=torch.tensor(1.0))


@pytest.mark.parametrize("weights", [[1.0], ["0.5", "0.5"], "ab", 0.5, [0.5, None], [True, 1],
                                     [0, 0]])  # all 0: a loss of 0 whatever the student does, which trains nothing
def test_hierarchical_rejects_mismatched_weights(weights):
    with pytest.raises(ConfigError, match=r"weights must be 2 non-negative numbers \(one per level\), not all 0, got"):
        get_loss("hierarchical")((torch.randn(4, 5), torch.randn(4, 25)), torch.randn(4, 8), weights=weights)
    with pytest.raises(ConfigError, match=r"^weights must be one positive number \(one per level\), got \[0.0\]$"):
        get_loss("hierarchical")(torch.randn(4, 5), torch.randn(4, 8), weights=[0])
    assert get_loss("hierarchical")((torch.randn(4, 5), torch.randn(4, 25)), torch.randn(4, 8), weights=[0, 1]) > 0


def test_tau_and_alpha_may_be_numpy_scalars_or_one_element_tensors():
    s, t = torch.randn(6, 5), torch.randn(6, 8)
    expected = get_loss("combined")(s, t, tau=0.5, alpha=0.3, reconstruction_loss=torch.tensor(1.0))
    for tau, alpha in ((np.float32(0.5), np.float64(0.3)), (torch.tensor(0.5), torch.tensor([0.3]))):
        got = get_loss("combined")(s, t, tau=tau, alpha=alpha, reconstruction_loss=torch.tensor(1.0))
        assert torch.allclose(got, expected)


def ref_neighbors(s, t, tau, kernel="gaussian", dof=1.0):
    """Plain loops: per-row standardised teacher cosines (sample std, n − 1) against a distance kernel."""
    b = s.shape[0]
    T = _sims(t)
    out = []
    for i in range(b):
        row = [T[i, j] for j in range(b) if j != i]
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        lp = _softmax_log([(v - mean) / std / tau for v in row])
        d2 = [float(np.sum((s[i] - s[j]) ** 2)) for j in range(b) if j != i]
        if kernel == "gaussian":
            logits = [-d for d in d2]
        else:
            logits = [-(dof + 1) / 2 * math.log(1 + d / dof) for d in d2]
        lq = _softmax_log(logits)
        out.append(sum(math.exp(p) * (p - q) for p, q in zip(lp, lq)))
    return np.array(out)


@pytest.mark.parametrize("kernel, dof", [("gaussian", 1.0), ("student-t", 1.0), ("student-t", 3.5)])
@pytest.mark.parametrize("tau", [0.4, 2.0])
def test_neighbors_matches_reference(real_embeddings, kernel, dof, tau):
    rng = np.random.default_rng(int(tau * 10) + int(dof))
    t = real_embeddings[rng.choice(len(real_embeddings), 24, replace=False)].astype(np.float64)
    s = rng.normal(size=(24, 5))
    got = get_loss("neighbors")(torch.from_numpy(s), torch.from_numpy(t), tau=tau, reduction="none", kernel=kernel,
                                dof=dof)
    np.testing.assert_allclose(got.numpy(), ref_neighbors(s, t, tau, kernel, dof), rtol=1e-9, atol=1e-12)
    mean = get_loss("neighbors")(torch.from_numpy(s), torch.from_numpy(t), tau=tau, kernel=kernel, dof=dof)
    assert float(mean) == pytest.approx(ref_neighbors(s, t, tau, kernel, dof).mean(), rel=1e-9)
