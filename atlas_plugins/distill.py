"""The quickstart's functions, each a thin dispatch to a registered plugin by name.

``distill_loss(..., method="relational")`` accepts any registered loss name,
so a third-party loss is used exactly like a built-in one.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .checks import check_tau
from .errors import ConfigError
from .registry import get_registry


def get_loss(name: str) -> Callable:
    """The loss function registered as ``name``."""
    return get_registry().get("loss", name)


def get_schedule(name: str) -> Callable:
    """The schedule factory registered as ``name``: ``fn(start, end, num_stages) -> (stage -> tau)``."""
    return get_registry().get("schedule", name)


def get_teacher(name: str) -> Callable:
    """The teacher loader registered as ``name``: ``fn(path, **params) -> TeacherData``."""
    return get_registry().get("teacher", name)


def get_student(name: str) -> Callable:
    """The student factory registered as ``name``: ``fn(input_dim, dim, **params) -> nn.Module``."""
    return get_registry().get("student", name)


def distill_loss(student, teacher, tau: float = 1.0, reduction: str = "mean", method: str = "relational", **params):
    """Distillation loss between student ``(B, Ds)`` and teacher ``(B, Dt)`` with the loss named ``method``."""
    return get_loss(method)(student, teacher, tau=tau, reduction=reduction, **params)


def kl_distill_loss(student_logits, teacher_logits, tau: float = 1.0, reduction: str = "mean"):
    """Hinton KL: τ² · KL(softmax(teacher/τ) ‖ softmax(student/τ)), logits ``(B, C)``."""
    return get_loss("kl")(student_logits, teacher_logits, tau=tau, reduction=reduction)


def combined_distill_loss(student_vec, teacher_vec, reconstruction_loss=None, alpha: float = 0.5,
                          tau: float = 1.0, reduction: str = "mean", method: str = "relational"):
    """α · distill_loss + (1 − α) · reconstruction_loss (plain distillation when it is None)."""
    return get_loss("combined")(student_vec, teacher_vec, tau=tau, reduction=reduction, alpha=alpha,
                                reconstruction_loss=reconstruction_loss, base=get_loss(method))


def create_curriculum_schedule(start_tau: float, end_tau: float, num_stages: int,
                               schedule_type: str = "linear") -> Callable[[int], float]:
    """A callable ``stage -> tau`` from the schedule plugin named ``schedule_type``."""
    return get_schedule(schedule_type)(start_tau, end_tau, num_stages)


def curriculum_distill_step(student_vec, teacher_vec, stage: int, tau_schedule, alpha: float = 0.5,
                            reconstruction_loss=None, method: str = "relational"):
    """One curriculum step: τ = tau_schedule(stage), then the combined loss. Returns ``(loss, tau)``.

    ``tau_schedule`` is a callable ``stage -> tau`` or a sequence of τ per stage.
    """
    if callable(tau_schedule):
        tau = tau_schedule(stage)
    elif isinstance(tau_schedule, Sequence) and not isinstance(tau_schedule, str):
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < len(tau_schedule):
            raise ConfigError(f"stage must be an integer in [0, {len(tau_schedule) - 1}], got {stage!r}")
        tau = tau_schedule[stage]
    else:
        raise ConfigError(f"tau_schedule must be a callable stage -> tau or a sequence of taus, got {tau_schedule!r}")
    tau = check_tau(tau)
    loss = combined_distill_loss(student_vec, teacher_vec, reconstruction_loss=reconstruction_loss,
                                 alpha=alpha, tau=tau, method=method)
    return loss, tau
