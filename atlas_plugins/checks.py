"""Argument checks, reductions and small tensor helpers shared by plugins.

Plugins are free to use these so that every loss answers bad input the same
way: a :class:`ConfigError` (also a ``ValueError``) naming the argument; and so
that a device name means what ``train.device`` means (:func:`resolve_device`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError, did_you_mean

REDUCTIONS = ("mean", "sum", "none")
DEVICE_NAMES = ("cpu", "cuda", "mps", "auto")
DEVICES = "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"


def is_device(name) -> bool:
    """Whether ``name`` is a device name: one of :data:`DEVICES` (``auto``: CUDA when there is a CUDA GPU)."""
    return isinstance(name, str) and (name in DEVICE_NAMES or (name[:5] == "cuda:" and name[5:].isdigit()))


def missing_device(name: str) -> str | None:
    """Why this machine cannot run on the device ``name`` ('cuda', 'cuda:1', 'mps', 'cpu'), or None when it can."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        return "CUDA is not available here"
    if name[:5] == "cuda:" and name[5:].isdigit() and int(name[5:]) >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return "Apple's MPS is not available here"
    return None


def resolve_device(name, what: str) -> torch.device:
    """The device ``name`` on this machine (``auto``: CUDA when there is a CUDA GPU, else the CPU), or the
    :class:`ConfigError` that names ``what`` (the key that gave it) and says what to give instead."""
    if not is_device(name):
        raise ConfigError(f"{what} must be {DEVICES}, got {name!r}"
                          + (did_you_mean(name, DEVICE_NAMES) if isinstance(name, str) else ""))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if why := missing_device(name):
        raise ConfigError(f"{what} = '{name}' but {why}; use 'cpu' or 'auto'")
    return torch.device(name)


def as_number(value, what: str) -> float:
    """``value`` as a float, or the :class:`ConfigError` ``"<what>, got <value>"``: numbers, NumPy scalars and
    one-element tensors are numbers; a string or a boolean never is (``"0.5"`` is a typo for 0.5, not 0.5)."""
    try:
        if isinstance(value, (str, bytes, bool)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{what}, got {value!r}") from None


def check_tau(tau) -> float:
    """``tau`` must be a finite number > 0."""
    value = as_number(tau, "tau must be a positive number")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"tau must be a positive number, got {tau!r}")
    return value


def check_alpha(alpha) -> float:
    """``alpha`` must lie in [0, 1]."""
    value = as_number(alpha, "alpha must be a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return value


def check_reduction(reduction) -> str:
    """``reduction`` must be one of :data:`REDUCTIONS`; torch's ``"batchmean"`` (what ``F.kl_div`` needs for a
    true KL) is named as what ``"mean"`` already is here."""
    if reduction not in REDUCTIONS:
        same = "; 'mean' is the per-row loss averaged over the batch, torch's 'batchmean'" * (reduction == "batchmean")
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}{same}")
    return reduction


def check_matrix(x, arg: str) -> torch.Tensor:
    """``x`` must be a floating 2-D tensor ``(B, D)``."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{arg} must be a torch.Tensor of shape (B, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ConfigError(f"{arg} must be 2-D (B, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ConfigError(f"{arg} must be a floating-point tensor, got {x.dtype}")
    return x


def check_pair(student, teacher, *, min_batch: int = 1, names=("student", "teacher")) -> None:
    """Both 2-D, the same batch size, and at least ``min_batch`` rows."""
    check_matrix(student, names[0])
    check_matrix(teacher, names[1])
    if student.shape[0] != teacher.shape[0]:
        raise ConfigError(f"{names[0]} and {names[1]} batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    if student.shape[0] < min_batch:
        raise ConfigError(f"this loss compares rows within a batch and needs batch size >= {min_batch}, "
                          f"got {student.shape[0]}")


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to a per-sample loss vector ``(B,)``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The ``(B, B-1)`` matrix of ``m``'s off-diagonal entries, row by row."""
    b = m.shape[0]
    return m.flatten()[1:].view(b - 1, b + 1)[:, :-1].reshape(b, b - 1)


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """``x̂ x̂ᵀ``: pairwise cosine similarities of the rows of ``x`` (B, D) -> (B, B)."""
    xn = F.normalize(x, dim=1)
    return xn @ xn.T
