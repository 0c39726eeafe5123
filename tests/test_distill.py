"""The guide's functions (``atlas_plugins/distill.py``, also ``atlas.training``): each checked against an
independent computation, with a registered loss picked by name, their bad input, and a short real training
loop that learns."""

import math

import pytest
import torch
import torch.nn.functional as F

import atlas_plugins
from atlas.training import (combined_distill_loss, create_curriculum_schedule, curriculum_distill_step,
                            distill_loss, kl_distill_loss)
from atlas_plugins import ConfigError, UnknownPluginError
from test_losses import ref_kl, ref_relational


def test_distill_loss_is_the_relational_kl_at_tau_1(real_batch):
    student, teacher = real_batch
    want = ref_relational(student.detach().numpy(), teacher.numpy(), 1.0)
    assert distill_loss(student, teacher).item() == pytest.approx(want.mean(), rel=1e-9)
    assert distill_loss(student, teacher, tau=0.3, reduction="none").detach().numpy() == pytest.approx(
        ref_relational(student.detach().numpy(), teacher.numpy(), 0.3), rel=1e-9)


def test_any_registered_loss_is_used_by_name_with_its_parameters(real_batch):
    student, teacher = real_batch

    @atlas_plugins.register("loss", "mean-gap")
    def mean_gap(s, t, *, tau=1.0, reduction="mean", scale: float = 1.0):
        per = scale * (s.mean(dim=1) - t.mean(dim=1)).abs() / tau
        return per.mean() if reduction == "mean" else per

    gap = (student.detach().mean(1) - teacher.mean(1)).abs()
    assert distill_loss(student, teacher, tau=2.0, method="mean-gap", scale=3.0).item() == pytest.approx(
        (3.0 * gap / 2.0).mean().item())
    loss, tau = curriculum_distill_step(student, teacher, stage=1, tau_schedule=[1.0, 0.5], method="mean-gap")
    assert (loss.item(), tau) == (pytest.approx((gap / 0.5).mean().item()), 0.5)
    assert distill_loss(student, teacher, tau=0.5, method="neighbors", kernel="student-t").item() != \
        distill_loss(student, teacher, tau=0.5, method="neighbors").item()  # parameters reach the plugin
    with pytest.raises(UnknownPluginError, match="unknown loss 'mean_gap' \\(did you mean 'mean-gap'\\?\\)"):
        distill_loss(student, teacher, method="mean_gap")


def test_combined_weighs_distillation_against_reconstruction(real_batch):
    student, teacher = real_batch
    distill = ref_relational(student.detach().numpy(), teacher.numpy(), 0.5).mean()
    got = combined_distill_loss(student, teacher, reconstruction_loss=torch.tensor(0.3, dtype=torch.float64), alpha=0.7,
                                tau=0.5)
    assert got.item() == pytest.approx(0.7 * distill + 0.3 * 0.3, rel=1e-9)
    assert combined_distill_loss(student, teacher, tau=0.5).item() == pytest.approx(distill, rel=1e-9)  # none given
    got.backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is a fixed target


def test_kl_distill_loss_is_hinton_s_tau_squared_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randn(32, 4, generator=g, dtype=torch.float64)
    per_row = ref_kl(s.numpy(), t.numpy(), 2.0)
    assert kl_distill_loss(s, t, tau=2.0, reduction="none").numpy() == pytest.approx(per_row, rel=1e-9)
    assert kl_distill_loss(s, t, tau=2.0, reduction="sum").item() == pytest.approx(per_row.sum(), rel=1e-9)
    assert kl_distill_loss(s, t, tau=2.0).item() == pytest.approx(per_row.mean(), rel=1e-9)


@pytest.mark.parametrize("kind, formula", [
    ("linear", lambda a, b, x: a + (b - a) * x),
    ("exponential", lambda a, b, x: a * (b / a) ** x),
    ("cosine", lambda a, b, x: b + (a - b) * (1 + math.cos(math.pi * x)) / 2),
])
def test_curriculum_step_takes_tau_from_the_schedule(real_batch, kind, formula):
    student, teacher = real_batch
    schedule = create_curriculum_schedule(4.0, 0.5, 5, kind)
    for stage in range(5):
        loss, tau = curriculum_distill_step(student, teacher, stage=stage, tau_schedule=schedule, alpha=0.7)
        assert tau == pytest.approx(formula(4.0, 0.5, stage / 4))
        assert loss.item() == pytest.approx(
            ref_relational(student.detach().numpy(), teacher.numpy(), tau).mean(), rel=1e-9)


@pytest.mark.parametrize("kwargs, message", [
    ({"stage": 2, "tau_schedule": [1.0, 0.5]}, r"stage must be an integer in \[0, 1\], got 2"),
    ({"stage": True, "tau_schedule": [1.0, 0.5]}, r"stage must be an integer in \[0, 1\], got True"),
    ({"stage": 0, "tau_schedule": "linear"}, "tau_schedule must be a callable stage -> tau or a sequence of taus"),
    ({"stage": 0, "tau_schedule": [0.0, 0.5]}, "tau must be a positive number, got 0.0"),
    ({"stage": 0, "tau_schedule": [1.0], "alpha": 1.5}, r"alpha must be a number in \[0, 1\], got 1.5"),
    ({"stage": 5, "tau_schedule": create_curriculum_schedule(4.0, 0.5, 5)}, r"stage must be an integer in \[0, 4\]"),
])
def test_curriculum_step_names_its_bad_argument(real_batch, kwargs, message):
    student, teacher = real_batch
    with pytest.raises(ConfigError, match=message):
        curriculum_distill_step(student, teacher, **kwargs)


def test_the_guide_s_loop_learns_the_teacher_s_neighbourhoods(real_embeddings):
    """The guide's full example in small: a linear student, the curriculum, 40 steps a stage on real rows.
    Its map keeps more of each row's 10 nearest teacher neighbours than the same student untrained."""
    teacher = torch.from_numpy(real_embeddings[:512])
    torch.manual_seed(0)
    student = torch.nn.Linear(384, 5)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    schedule = create_curriculum_schedule(1.0, 0.1, 3, "cosine")

    def recall():
        with torch.no_grad():
            z = student(teacher)
        unit = F.normalize(teacher, dim=1)
        near_t = (unit @ unit.T).fill_diagonal_(-2).topk(10).indices
        near_s = torch.cdist(z, z).fill_diagonal_(math.inf).topk(10, largest=False).indices
        return (near_t.unsqueeze(2) == near_s.unsqueeze(1)).any(2).float().mean().item()

    before = recall()
    for stage in range(3):
        for _ in range(40):
            rows = torch.randint(0, len(teacher), (128,))
            loss, _ = curriculum_distill_step(student(teacher[rows]), teacher[rows], stage=stage,
                                              tau_schedule=schedule, alpha=0.7)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert recall() > before + 0.1  # 0.131 -> 0.344 on this machine
