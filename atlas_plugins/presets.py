"""``DistillationConfig``, the quickstart's configuration object, and its presets.

A frozen, validated attrs class: every field is checked on construction and
a bad value raises :class:`ConfigError` naming the field.  ``loss`` and
``schedule_type`` are plugin names, resolved through the registry when used.
"""

from __future__ import annotations

import attrs

from .config import (MAX_DIM, MAX_STAGES, MAX_TEACHER_DIM, boolean, bounded_int, device, name, nonneg_number,
                     one_of, positive_int, positive_number, unit_number)
from .distill import create_curriculum_schedule
from .errors import ConfigError


def _pair_of_taus(inst, attr, value):
    if len(value) != 2:
        raise ConfigError(f"DistillationConfig.{attr.name} must be (start_tau, end_tau), got {value!r}")
    for v in value:
        positive_number(inst, attr, v)


@attrs.frozen
class DistillationConfig:
    """Everything a teacher→student distillation needs, with the quickstart's names.

    Its fields are checked by the same validators as the pipeline file's (``atlas_plugins.config``).
    """

    ERROR_PREFIX = "DistillationConfig."

    teacher_checkpoint: str | None = None
    teacher_dim: int = attrs.field(default=1536, validator=bounded_int(1, MAX_TEACHER_DIM))
    student_dim: int = attrs.field(default=5, validator=bounded_int(1, MAX_DIM))
    tau: float = attrs.field(default=1.0, validator=positive_number)
    alpha: float = attrs.field(default=0.7, validator=unit_number)
    device: str = attrs.field(default="cpu", validator=device)
    curriculum: bool = attrs.field(default=False, validator=boolean)
    curriculum_stages: int = attrs.field(default=5, validator=bounded_int(1, MAX_STAGES))
    curriculum_tau_schedule: tuple = attrs.field(default=(4.0, 0.5), converter=tuple, validator=_pair_of_taus)
    schedule_type: str = attrs.field(default="linear", validator=name)
    loss: str = attrs.field(default="neighbors", validator=name)
    batch_size: int = attrs.field(default=32, validator=positive_int)
    learning_rate: float = attrs.field(default=1e-4, validator=positive_number)
    epochs_per_stage: int = attrs.field(default=10, validator=positive_int)
    student: str = attrs.field(default="mlp", validator=name)
    student_hidden: tuple = attrs.field(default=(128, 128, 128, 128), converter=tuple)
    input_noise: float = attrs.field(default=1.6, validator=nonneg_number)
    batches: str = attrs.field(default="neighbors", validator=one_of("random", "neighbors"))

    def get_tau_for_stage(self, stage: int) -> float:
        """τ for ``stage``: from the schedule when ``curriculum`` is on, else the fixed ``tau``."""
        if not self.curriculum:
            return float(self.tau)
        start, end = self.curriculum_tau_schedule
        return create_curriculum_schedule(start, end, self.curriculum_stages, self.schedule_type)(stage)


    def pipeline(self, teacher_path: str, output_dir: str | None = None) -> dict:
        """The equivalent pipeline (the tables of a ``pipeline.toml``), for ``atlas-run`` or
        ``atlas_plugins.config.build_config``."""
        doc = {"teacher": {"path": str(teacher_path), "dim": self.teacher_dim},
               "student": {"name": self.student, "dim": self.student_dim, "hidden": list(self.student_hidden)},
               "loss": {"name": self.loss},
               "train": {"epochs_per_stage": self.epochs_per_stage, "batch_size": self.batch_size,
                         "learning_rate": self.learning_rate, "device": self.device, "batches": self.batches,
                         "input_noise": self.input_noise}}
        if self.curriculum:
            start, end = self.curriculum_tau_schedule
            doc["schedule"] = {"name": self.schedule_type, "start": start, "end": end,
                               "stages": self.curriculum_stages}
        else:
            doc["loss"]["tau"] = self.tau
        if output_dir is not None:
            doc["output"] = {"dir": str(output_dir)}
        return doc


# The presets use the setup measured best for 5-D maps (benchmarks/quality.py): the `neighbors` loss on
# teacher-neighbour batches; τ applies to per-row standardised teacher similarities.
DEFAULT_OPENAI_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, tau=0.4, alpha=0.7,
                                           batch_size=1024, learning_rate=5e-3, epochs_per_stage=20)
"""OpenAI-sized teacher (1536-D) to a 5-D student, fixed τ = 0.4."""

CURRICULUM_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, alpha=0.7, curriculum=True,
                                       curriculum_stages=5, curriculum_tau_schedule=(4.0, 0.5),
                                       batch_size=1024, learning_rate=5e-3, epochs_per_stage=4)
"""Five curriculum stages, τ from 4.0 down to 0.5 (linear), soft to sharp on standardised similarities."""

FAST_CONFIG = DistillationConfig(teacher_dim=1536, student_dim=5, tau=0.4, alpha=0.7, batch_size=256,
                                 learning_rate=5e-3, epochs_per_stage=2)
"""Smaller batches and fewer epochs, for a quick look."""
