"""Built-in distillation losses.

Notation: student ``s`` (B, Ds), teacher ``t`` (B, Dt); ``ŝ, t̂`` are the rows
L2-normalised; ``S = ŝŝᵀ`` and ``T = t̂t̂ᵀ`` are in-batch cosine similarity
matrices; ``j≠i`` leaves the diagonal out.  Every loss takes ``tau`` (> 0) and
``reduction`` ("mean", "sum" or "none" for the per-sample vector ``(B,)``).
The teacher never receives a gradient.
"""

from __future__ import annotations

import math
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F

from atlas_plugins.checks import (as_number, check_alpha, check_matrix, check_pair, check_reduction, check_tau,
                                  cosine_matrix, off_diagonal, reduce)
from atlas_plugins.errors import ConfigError
from atlas_plugins.params import PluginRef


def _teacher_sims(teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return off_diagonal(cosine_matrix(teacher.detach()))


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(Pᵢ ‖ Qᵢ) per row ``(B,)`` from log-probabilities ``(B, C)``; a class with Pᵢⱼ = 0 adds 0.

    0 · log 0 = 0: a class masked to −inf in both teacher and student (a router's unused experts)
    would otherwise be 0 · (−inf + inf) = NaN.  A NaN in ``log_p`` stays NaN: the trainer stops on it.
    """
    terms = log_p.exp() * (log_p - log_q)
    return torch.where(log_p == -math.inf, 0.0, terms).sum(dim=1)  # a Python 0: no tensor from the host


def mse(student, teacher, *, tau=1.0, reduction="mean"):
    """Mean squared error; relational (on similarity matrices) when dimensions differ.

    Ds = Dt: ℓᵢ = mean_d (sᵢd − tᵢd)².  Ds ≠ Dt: ℓᵢ = mean_{j≠i} (Sᵢⱼ − Tᵢⱼ)².
    """
    check_tau(tau), check_reduction(reduction)
    check_pair(student, teacher)
    if student.shape[1] == teacher.shape[1]:  # the fused op; "sum" is a sum of per-sample means
        if reduction == "mean":
            return F.mse_loss(student, teacher.detach())
        if reduction == "sum":
            return F.mse_loss(student, teacher.detach(), reduction="sum") / student.shape[1]
        per = F.mse_loss(student, teacher.detach(), reduction="none").mean(dim=1)
    else:
        check_pair(student, teacher, min_batch=2)
        per = (off_diagonal(cosine_matrix(student)) - _teacher_sims(teacher)).pow(2).mean(dim=1)
    return reduce(per, reduction)


def cosine(student, teacher, *, tau=1.0, reduction="mean"):
    """Cosine distance; relational (Pearson of similarity rows) when dimensions differ.

    Ds = Dt: ℓᵢ = 1 − cos(sᵢ, tᵢ).  Ds ≠ Dt: ℓᵢ = 1 − corr(S_{i,j≠i}, T_{i,j≠i}).
    """
    check_tau(tau), check_reduction(reduction)
    check_pair(student, teacher)
    if student.shape[1] == teacher.shape[1]:
        per = 1.0 - F.cosine_similarity(student, teacher.detach(), dim=1)
    else:
        check_pair(student, teacher, min_batch=3)
        a = off_diagonal(cosine_matrix(student))
        b = _teacher_sims(teacher)
        a = a - a.mean(dim=1, keepdim=True)
        b = b - b.mean(dim=1, keepdim=True)
        corr = (a * b).sum(1) / (a.pow(2).sum(1) * b.pow(2).sum(1)).clamp_min(1e-24).sqrt()
        per = 1.0 - corr
    return reduce(per, reduction)


def relational(student, teacher, *, tau=1.0, reduction="mean"):
    """Soft-neighbour KL between in-batch similarity distributions (any Ds, Dt).

    Pᵢ = softmax_{j≠i}(Tᵢⱼ/τ), Qᵢ = softmax_{j≠i}(Sᵢⱼ/τ), ℓᵢ = τ² · KL(Pᵢ ‖ Qᵢ).
    """
    tau = check_tau(tau)
    check_reduction(reduction)
    check_pair(student, teacher, min_batch=2)
    log_p = torch.log_softmax(_teacher_sims(teacher) / tau, dim=1)
    log_q = torch.log_softmax(off_diagonal(cosine_matrix(student)) / tau, dim=1)
    per = _kl_rows(log_p, log_q) * tau**2
    return reduce(per, reduction)


def kl(student, teacher, *, tau=1.0, reduction="mean"):
    """Hinton KL on logits: p = softmax(t/τ), q = softmax(s/τ), ℓᵢ = τ² · KL(pᵢ ‖ qᵢ).

    ``student`` and ``teacher`` are logits ``(B, C)`` with the same C; "mean"
    averages the per-sample KL over the batch.
    """
    tau = check_tau(tau)
    check_reduction(reduction)
    check_pair(student, teacher, names=("student_logits", "teacher_logits"))
    if student.shape[1] != teacher.shape[1]:
        raise ConfigError(f"kl needs the same number of classes for student_logits and teacher_logits, "
                          f"got {student.shape[1]} and {teacher.shape[1]}")
    log_p = torch.log_softmax(teacher.detach() / tau, dim=1)
    log_q = torch.log_softmax(student / tau, dim=1)
    per = _kl_rows(log_p, log_q) * tau**2
    return reduce(per, reduction)


LossName = Annotated[str, PluginRef("loss")]


def _base(base):
    """A base loss: a function (what atlas-run passes, resolved through its registry) or a built-in's name."""
    if callable(base):
        return base
    if isinstance(base, str) and base in BUILTIN_BASES:
        return BUILTIN_BASES[base]
    raise ConfigError(f"base must be a loss function or one of {', '.join(BUILTIN_BASES)}, got {base!r}; "
                      "atlas-run and atlas_plugins.distill_loss look up any registered loss by name")


def combined(student, teacher, *, tau=1.0, reduction="mean", alpha: float = 0.5, reconstruction_loss=None,
             base: LossName | Callable = "relational"):
    """α · base(s, t, τ) + (1 − α) · reconstruction_loss; plain ``base`` without one.

    ``reconstruction_loss`` is a scalar tensor (or ``(B,)`` with reduction "none").
    """
    alpha = check_alpha(alpha)
    distill = _base(base)(student, teacher, tau=tau, reduction=reduction)
    if reconstruction_loss is None:
        return distill
    if not isinstance(reconstruction_loss, torch.Tensor):
        reconstruction_loss = as_number(reconstruction_loss, "reconstruction_loss must be a number or a tensor")
    elif reconstruction_loss.numel() == 1:
        reconstruction_loss = reconstruction_loss.reshape(())  # (1,) too: the result keeps the distill loss's shape
    elif reconstruction_loss.shape != distill.shape:
        per_row = (f", or one value per row {tuple(distill.shape)}" if distill.ndim
                   else " (one value per row needs reduction='none')")
        raise ConfigError(f"reconstruction_loss must be a scalar{per_row}, "
                          f"got shape {tuple(reconstruction_loss.shape)}")
    return alpha * distill + (1.0 - alpha) * reconstruction_loss


def hierarchical(student, teacher, *, tau=1.0, reduction="mean", weights: list[float] | None = None,
                 base: LossName | Callable = "relational"):
    """Σₗ wₗ · base(sₗ, tₗ, τ) over levels, coarse first (e.g. 5-D then 25-D).

    ``student`` is a sequence of level tensors ``(B, Dₗ)``; ``teacher`` is one
    tensor used for every level, or one tensor per level.  Weights default to
    equal and summing to 1.
    """
    levels = [student] if isinstance(student, torch.Tensor) else list(student)
    if not levels:
        raise ConfigError("hierarchical needs at least one student level")
    teachers = [teacher] * len(levels) if isinstance(teacher, torch.Tensor) else list(teacher)
    if len(teachers) != len(levels):
        raise ConfigError(f"hierarchical got {len(levels)} student levels but {len(teachers)} teacher levels")
    if weights is None:
        weights = [1.0 / len(levels)] * len(levels)
    expected = (f"weights must be {len(levels)} non-negative numbers (one per level), not all 0" if len(levels) > 1
                else "weights must be one positive number (one per level)")
    try:
        weights = [as_number(w, expected) for w in weights]
    except (ConfigError, TypeError):
        raise ConfigError(f"{expected}, got {weights!r}") from None
    if len(weights) != len(levels) or any(not math.isfinite(w) or w < 0 for w in weights) or not any(weights):
        raise ConfigError(f"{expected}, got {weights}")  # all 0: a loss of 0 that would train nothing
    fn = _base(base)
    for i, level in enumerate(levels):
        check_matrix(level, f"student level {i}")
    return sum(w * fn(s, t, tau=tau, reduction=reduction) for w, s, t in zip(weights, levels, teachers))


def neighbors(student, teacher, *, tau=1.0, reduction="mean", kernel: Literal["gaussian", "student-t"] = "gaussian",
              dof: float = 1.0):
    """Neighbour-preserving KL for very low dimensions (2–10-D students).

    The teacher side is calibrated per point: each row of in-batch cosine
    similarities is standardised, zᵢⱼ = (Tᵢⱼ − meanⱼ Tᵢ)/stdⱼ Tᵢ, so τ means the
    same on any teacher (MiniLM's spread-out similarities, OpenAI's narrow
    band).  The student side is a distance kernel, not a cosine:

    Pᵢ = softmax_{j≠i}(zᵢⱼ/τ);  Qᵢ ∝ k(‖sᵢ − sⱼ‖²) over j≠i, with
    k(d²) = exp(−d²) ("gaussian") or (1 + d²/ν)^(−(ν+1)/2) ("student-t", ν = dof);
    ℓᵢ = KL(Pᵢ ‖ Qᵢ).
    """
    tau = check_tau(tau)
    check_reduction(reduction)
    check_pair(student, teacher, min_batch=3)
    if kernel not in ("gaussian", "student-t"):
        raise ConfigError(f"kernel must be 'gaussian' or 'student-t', got {kernel!r}")
    if isinstance(dof, bool) or not isinstance(dof, (int, float)) or not math.isfinite(dof) or dof <= 0:
        raise ConfigError(f"dof must be a positive number, got {dof!r}")
    with torch.no_grad():
        t = _teacher_sims(teacher)
        centred = t - t.mean(dim=1, keepdim=True)
        std = centred.pow(2).sum(dim=1, keepdim=True).div(t.shape[1] - 1).sqrt()  # = t.std(dim=1), 6x faster on CPU
        z = centred / std.clamp_min(1e-8)
        log_p = torch.log_softmax(z / tau, dim=1)
    sq = student.pow(2).sum(dim=1)
    d2 = off_diagonal((sq[:, None] + sq[None, :] - 2.0 * student @ student.T).clamp_min(0.0))
    if kernel == "gaussian":
        logits = -d2
    else:
        logits = -(float(dof) + 1.0) / 2.0 * torch.log1p(d2 / float(dof))
    log_q = torch.log_softmax(logits, dim=1)
    per = _kl_rows(log_p, log_q)
    return reduce(per, reduction)


# The τ curriculum each loss reads on its own scale (atlas_plugins.config.loss_tau_range): the default
# [schedule] start and end.  neighbors standardises the teacher's similarities; relational divides raw cosines,
# whose spread is about a tenth of that (measured on the bundled example: docs/losses.md).
neighbors.tau_range = (2.0, 0.4)
relational.tau_range = (0.2, 0.05)
combined.tau_range = hierarchical.tau_range = "base"

# The bases combined and hierarchical find by name when called directly, without a registry.
BUILTIN_BASES = {"mse": mse, "cosine": cosine, "relational": relational, "kl": kl, "neighbors": neighbors}
