"""The quickstart API: the same objects as :mod:`atlas_plugins`, under the names the guide uses."""

from atlas_plugins import (CURRICULUM_CONFIG, DEFAULT_OPENAI_CONFIG, FAST_CONFIG, DistillationConfig,
                           combined_distill_loss, create_curriculum_schedule, curriculum_distill_step,
                           distill_loss, kl_distill_loss, load_student, load_teacher_checkpoint, train)

__all__ = [
    "CURRICULUM_CONFIG", "DEFAULT_OPENAI_CONFIG", "FAST_CONFIG", "DistillationConfig", "combined_distill_loss",
    "create_curriculum_schedule", "curriculum_distill_step", "distill_loss", "kl_distill_loss", "load_student",
    "load_teacher_checkpoint", "train",
]
