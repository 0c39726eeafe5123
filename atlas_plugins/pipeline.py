"""Assemble a training pipeline from a :class:`PipelineConfig`: every plugin looked up by name.

:func:`assemble` loads and checks the teacher, builds the student, picks the
loss and schedule, and runs one tiny forward pass so that a misbehaving plugin
is caught before any training (``atlas-run --dry-run`` stops there).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import attrs
import numpy as np
import torch

from .config import PipelineConfig
from .errors import AtlasError, ConfigError, DataError, PluginError
from .registry import Registry, get_registry
from .student import as_student_output
from .teacher import TeacherData, validate_teacher


@attrs.define
class Pipeline:
    """Everything a run needs, assembled and checked."""

    config: PipelineConfig
    teacher: TeacherData
    student: torch.nn.Module
    loss_fn: Callable
    loss_params: dict
    schedule: Callable[[int], float]
    taus: list[float]
    device: torch.device
    reconstruct: bool
    train_rows: np.ndarray
    val_rows: np.ndarray
    batch_mode: str  # "random" or "neighbors" ("auto" resolved by the number of training rows)

    def loss(self, out, x, tau: float, xhat=None):
        """The configured loss on one batch; ``out`` is the student's output for teacher rows ``x``."""
        levels = as_student_output(out, self.config.student.name, x.shape[0])
        extra = {}
        if self.reconstruct:
            extra["reconstruction_loss"] = torch.mean((xhat - x) ** 2)
        return self.loss_fn(levels[0] if len(levels) == 1 else levels, x, tau=tau, **self.loss_params, **extra)

    def describe(self) -> str:
        """A readable summary of the assembled pipeline (what ``--dry-run`` prints)."""
        c = self.config
        n_params = sum(p.numel() for p in self.student.parameters())
        emb = self.teacher.embeddings
        dtype = str(emb.dtype).replace("torch.", "")
        extras = [name for name, v in (("labels", self.teacher.labels), ("texts", self.teacher.texts)) if v is not None]
        lines = [
            f"pipeline   {c.source}",
            f"teacher    {c.teacher.loader}: {c.teacher.path}  ({self.teacher.num_rows} x {self.teacher.dim} {dtype}"
            + (f", with {' and '.join(extras)}" if extras else "") + ")",
            f"split      {len(self.train_rows)} train / {len(self.val_rows)} validation rows (seed {c.train.seed})",
            f"student    {c.student.name} -> {c.student.dim}-D {_fmt_params(c.student.params)}"
            f"({n_params:,} parameters)",
            f"loss       {c.loss.name} {_fmt_params(c.loss.params)}".rstrip(),
            f"schedule   {c.schedule.name}: tau " + ", ".join(f"{t:.3g}" for t in self.taus)
            + f" over {c.schedule.stages} stage(s)",
            f"train      {c.train.epochs_per_stage} epoch(s)/stage, batch {c.train.batch_size} ({self.batch_mode} batches), "
            f"lr {c.train.learning_rate:g}, device {self.device}",
            f"output     {c.output.dir}",
        ]
        return "\n".join(lines)


AUTO_NEIGHBORS_MAX_ROWS = 100_000  # batches = "auto": exact kNN graph up to here, random batches beyond


def _fmt_params(params: dict) -> str:
    return "".join(f"{k}={v!r} " for k, v in params.items())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device = '{name}' but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``n`` rows; both index arrays sorted.

    ``perm = numpy.random.default_rng(seed).permutation(n)``; the last
    ``round(n * val_fraction)`` rows of ``perm`` are held out.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - int(round(n * val_fraction))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def _call_plugin(section: str, kind: str, name: str, fn, *args, **kwargs):
    """Call a plugin factory, turning its complaints into one-line errors that name the section."""
    try:
        return fn(*args, **kwargs)
    except AtlasError as exc:
        raise type(exc)(f"[{section}] {kind} '{name}': {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] {kind} '{name}' rejected its parameters: {exc}") from None


def load_teacher(config: PipelineConfig, registry: Registry) -> TeacherData:
    t = config.teacher
    data = _call_plugin("teacher", "teacher", t.loader, registry.get("teacher", t.loader), t.path, **t.params)
    if not isinstance(data, TeacherData):
        raise PluginError(f"teacher '{t.loader}' ({registry.info('teacher', t.loader).distribution}) returned "
                          f"{type(data).__name__}; teacher plugins must return atlas_plugins.TeacherData")
    return data


def assemble(config: PipelineConfig, registry: Registry | None = None, device: torch.device | None = None) -> Pipeline:
    """Build and check every part of the pipeline; raise a one-line :class:`AtlasError` on any problem."""
    registry = registry or get_registry()
    tr = config.train
    device = device or resolve_device(tr.device)
    teacher = validate_teacher(load_teacher(config, registry), dim=config.teacher.dim, min_rows=2)
    train_rows, val_rows = split_rows(teacher.num_rows, tr.val_fraction, tr.seed)
    batch_mode = tr.batches
    if batch_mode == "auto":
        batch_mode = "neighbors" if len(train_rows) <= AUTO_NEIGHBORS_MAX_ROWS else "random"
    if batch_mode == "random" and len(train_rows) < tr.batch_size:
        raise DataError(f"{teacher.source}: {len(train_rows)} training rows after the validation split, fewer than "
                        f"train.batch_size = {tr.batch_size}; lower the batch size or add data")
    if batch_mode == "neighbors" and len(train_rows) <= tr.neighbors:
        raise DataError(f"{teacher.source}: {len(train_rows)} training rows after the validation split, too few for "
                        f"neighbour batches with train.neighbors = {tr.neighbors}; add data")

    s = config.student
    torch.manual_seed(tr.seed)
    student = _call_plugin("student", "student", s.name, registry.get("student", s.name), teacher.dim, s.dim,
                           **s.params)
    if not isinstance(student, torch.nn.Module):
        raise PluginError(f"student '{s.name}' ({registry.info('student', s.name).distribution}) returned "
                          f"{type(student).__name__}; student plugins must return a torch.nn.Module")
    reconstruct = bool(s.params.get("reconstruct", False))
    loss_fn = registry.get("loss", config.loss.name)
    if reconstruct and "reconstruction_loss" not in inspect.signature(loss_fn).parameters:
        raise ConfigError(f"{config.source}: student.reconstruct = true needs a loss that takes a reconstruction "
                          f"term, and loss '{config.loss.name}' does not; use name = \"combined\" in [loss]")

    sch = config.schedule
    schedule = _call_plugin("schedule", "schedule", sch.name, registry.get("schedule", sch.name),
                            sch.start, sch.end, sch.stages, **sch.params)
    taus = []
    for stage in range(sch.stages):
        tau = schedule(stage) if callable(schedule) else None
        if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau <= 0:
            raise PluginError(f"schedule '{sch.name}' ({registry.info('schedule', sch.name).distribution}) gave "
                              f"tau = {tau!r} for stage {stage}; schedules must give positive numbers")
        taus.append(float(tau))

    pipe = Pipeline(config, teacher, student, loss_fn, dict(config.loss.params), schedule, taus, device,
                    reconstruct, train_rows, val_rows, batch_mode)
    _smoke_test(pipe, registry)
    return pipe


def _smoke_test(pipe: Pipeline, registry: Registry) -> None:
    """One forward pass and loss on a few real rows, so plugin mistakes surface before training."""
    x = pipe.teacher.rows(pipe.train_rows[: min(8, len(pipe.train_rows))])
    name, loss_name = pipe.config.student.name, pipe.config.loss.name
    with torch.no_grad():
        try:
            out = pipe.student(x)
        except Exception as exc:
            raise PluginError(f"student '{name}' failed on a batch of shape {tuple(x.shape)}: "
                              f"{type(exc).__name__}: {exc}") from None
        try:
            levels = as_student_output(out, name, x.shape[0])
        except PluginError as exc:
            raise PluginError(f"{exc} (distribution '{registry.info('student', name).distribution}')") from None
        xhat = pipe.student.decode(out) if pipe.reconstruct else None
        try:
            loss = pipe.loss(out, x, pipe.taus[0], xhat)
        except AtlasError as exc:
            hint = (f"; student '{name}' returns {len(levels)} levels: use loss 'hierarchical' "
                    "(or 'combined' with base = \"hierarchical\")") if len(levels) > 1 else ""
            raise ConfigError(f"[loss] loss '{loss_name}': {exc}{hint}") from None
        except Exception as exc:
            raise PluginError(f"loss '{loss_name}' ({registry.info('loss', loss_name).distribution}) failed: "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise PluginError(f"loss '{loss_name}' ({registry.info('loss', loss_name).distribution}) returned {got}; "
                          "a loss must return a scalar tensor")
