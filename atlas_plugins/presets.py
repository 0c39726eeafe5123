"""``DistillationConfig``, the quickstart's configuration object, and its presets.

A frozen, validated attrs class: every field is checked on construction and
a bad value raises :class:`ConfigError` naming the field.  ``loss`` and
``schedule_type`` are plugin names, resolved through the registry when used.
"""

from __future__ import annotations

import math

import attrs

from .errors import ConfigError


def _positive_int(inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"DistillationConfig.{attr.name} must be a positive integer, got {value!r}")


def _positive(inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"DistillationConfig.{attr.name} must be a positive number, got {value!r}")


def _unit(inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"DistillationConfig.{attr.name} must be a number in [0, 1], got {value!r}")


def _pair_of_taus(inst, attr, value):
    if len(value) != 2:
        raise ConfigError(f"DistillationConfig.{attr.name} must be (start_tau, end_tau), got {value!r}")
    for v in value:
        _positive(inst, attr, v)


def _device(inst, attr, value):
    if not isinstance(value, str) or not (value in ("cpu", "cuda", "auto", "mps") or value.startswith("cuda:")):
        raise ConfigError(f"DistillationConfig.{attr.name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {value!r}")


def _name(inst, attr, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"DistillationConfig.{attr.name} must be a plugin name, got {value!r}")


@attrs.frozen
class DistillationConfig:
    """Everything a teacher→student distillation needs, with the quickstart's names."""

    teacher_checkpoint: str | None = None
    teacher_dim: int = attrs.field(default=1536, validator=_positive_int)
    student_dim: int = attrs.field(default=5, validator=_positive_int)
    tau: float = attrs.field(default=1.0, validator=_positive)
    alpha: float = attrs.field(default=0.7, validator=_unit)
    device: str = attrs.field(default="cpu", validator=_device)
    curriculum: bool = False
    curriculum_stages: int = attrs.field(default=5, validator=_positive_int)
    curriculum_tau_schedule: tuple = attrs.field(default=(4.0, 0.5), converter=tuple, validator=_pair_of_taus)
    schedule_type: str = attrs.field(default="linear", validator=_name)
    loss: str = attrs.field(default="relational", validator=_name)
    batch_size: int = attrs.field(default=32, validator=_positive_int)
    learning_rate: float = attrs.field(default=1e-4, validator=_positive)
    epochs_per_stage: int = attrs.field(default=10, validator=_positive_int)

    def get_tau_for_stage(self, stage: int) -> float:
        """τ for ``stage``: from the schedule when ``curriculum`` is on, else the fixed ``tau``."""
        from .distill import create_curriculum_schedule

        if not self.curriculum:
            return float(self.tau)
        start, end = self.curriculum_tau_schedule
        return create_curriculum_schedule(start, end, self.curriculum_stages, self.schedule_type)(stage)


DEFAULT_OPENAI_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, tau=1.0, alpha=0.7,
                                           batch_size=32, learning_rate=1e-4)
"""OpenAI-sized teacher (1536-D) to a 5-D student, fixed τ."""

CURRICULUM_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, alpha=0.7, curriculum=True,
                                       curriculum_stages=5, curriculum_tau_schedule=(4.0, 0.5))
"""Five curriculum stages, τ from 4.0 down to 0.5 (linear)."""

FAST_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, tau=1.0, alpha=0.7, batch_size=16,
                                 learning_rate=1e-3, epochs_per_stage=2)
"""Smaller batches and fewer epochs, for a quick look."""
