"""Atlas Distill core: a plugin registry and the machinery to distil embeddings into small students.

Plugins register losses, schedules, teacher loaders and students through the
hooks in :mod:`atlas_plugins.hookspecs`; code picks any of them by name::

    import atlas_plugins
    loss_fn = atlas_plugins.get_loss("relational")
    student = atlas_plugins.train("pipeline.toml", ["train.epochs_per_stage=2"])  # as atlas-run does
"""

from .hookspecs import hookimpl
from .errors import (AtlasError, CheckpointError, ConfigError, DataError, DuplicatePluginError, PluginError,
                     RunDirError, TrainingError, UnknownPluginError, WriteError)
from .registry import KINDS, PluginInfo, PluginLoadWarning, Registry, get_registry, reset_registry
from .teacher import TeacherData
from .checkpoint import load_teacher_checkpoint
from .student import TrainedStudent, load_student
from .distill import (combined_distill_loss, create_curriculum_schedule, curriculum_distill_step, distill_loss,
                      get_loss, get_schedule, get_student, get_teacher, kl_distill_loss)
from .presets import CURRICULUM_CONFIG, DEFAULT_OPENAI_CONFIG, FAST_CONFIG, DistillationConfig
from .export import quiet_transformers
from .orchestrator import train


def available(kind: str | None = None) -> list[PluginInfo]:
    """Registered plugins (of one kind, or all): name, description, providing distribution and version."""
    return get_registry().available(kind)


def register(kind: str, name: str, obj=None, description: str = ""):
    """Register ``obj`` as a ``kind`` (loss, schedule, teacher, student) named ``name`` in this process.

    Works as a decorator too::

        @atlas_plugins.register("loss", "my-loss")
        def my_loss(student, teacher, *, tau=1.0, reduction="mean"): ...
    """
    return get_registry().register(kind, name, obj, description)


__all__ = [
    "hookimpl", "AtlasError", "CheckpointError", "ConfigError", "DataError", "DuplicatePluginError",
    "PluginError", "RunDirError", "TrainingError", "UnknownPluginError", "WriteError", "KINDS", "PluginInfo",
    "PluginLoadWarning", "Registry", "get_registry", "reset_registry", "TeacherData", "load_teacher_checkpoint",
    "TrainedStudent", "load_student", "combined_distill_loss", "create_curriculum_schedule",
    "curriculum_distill_step", "distill_loss", "get_loss", "get_schedule", "get_student", "get_teacher",
    "kl_distill_loss", "CURRICULUM_CONFIG", "DEFAULT_OPENAI_CONFIG", "FAST_CONFIG", "DistillationConfig",
    "available", "register", "quiet_transformers", "train",
]
