"""Assemble a training pipeline from a :class:`PipelineConfig`: every plugin looked up by name.

:func:`assemble` loads and checks the teacher, builds the student, picks the
loss and schedule, and runs one real forward and backward pass on a throw-away
copy of the student, so that a misbehaving plugin is caught before anything is
written (``atlas-run --dry-run`` stops there).  Every error raised inside a
plugin, then or during training, becomes one line naming the plugin's kind,
name and distribution (:func:`blame`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from typing import Callable

import attrs
import numpy as np
import torch

from .batches import MIN_BATCH_ROWS
from .checks import resolve_device
from .config import PipelineConfig
from .errors import AtlasError, ConfigError, DataError, PluginError, first_line
from .neighbors import choose_method
from .params import accepts, resolve_refs
from .registry import Registry, get_registry
from .student import as_student_output
from .teacher import RowScan, TeacherData, dtype_name, in_memory_if_small, validate_teacher


@attrs.define
class Pipeline:
    """Everything a run needs, assembled and checked."""

    config: PipelineConfig
    teacher: TeacherData
    student: torch.nn.Module
    loss_fn: Callable
    loss_params: dict
    taus: list[float]
    device: torch.device
    reconstruct: bool
    train_rows: np.ndarray
    val_rows: np.ndarray
    batch_mode: str  # "random" or "neighbors" ("auto" resolved by the number of training rows)
    neighbor_index: str | None = None  # "exact" or "faiss" with neighbour batches (neighbors.choose_method)
    providers: dict = attrs.field(factory=dict)  # kind -> distribution, for error messages
    teacher_digest: str = ""  # teacher.teacher_digest: checkpoints record it, a resume compares it

    def forward(self, module: torch.nn.Module, x: torch.Tensor):
        """``module(x)`` (the student, or a wrapper of it); an error inside is blamed on the student plugin."""
        with blame("student", self.config.student.name, self.providers.get("student")):
            return module(x)

    def loss(self, out, x, tau: float, xhat=None):
        """The configured loss on one batch; ``out`` is the student's output for teacher rows ``x``."""
        levels = as_student_output(out, self.config.student.name, x.shape[0])
        extra = {}
        if self.reconstruct:
            extra["reconstruction_loss"] = torch.mean((xhat - x) ** 2)
        with blame("loss", self.config.loss.name, self.providers.get("loss")):
            return self.loss_fn(levels[0] if len(levels) == 1 else levels, x, tau=tau, **self.loss_params, **extra)

    def describe(self) -> str:
        """A readable summary of the assembled pipeline (what ``--dry-run`` prints)."""
        c = self.config
        n_params = sum(p.numel() for p in self.student.parameters())
        dtype = dtype_name(self.teacher.embeddings)
        budget = (f"{c.train.steps_per_stage} step(s)/stage" if c.train.steps_per_stage
                  else f"{c.train.epochs_per_stage} epoch(s)/stage")
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
            f"train      {budget}, batch {c.train.batch_size} ({self.batch_mode} batches"
            + (f", {self.neighbor_index} neighbours" if self.neighbor_index else "") + "), "
            f"lr {c.train.learning_rate:g}, device {self.device}",
            f"output     {c.output.dir}",
        ]
        return "\n".join(lines)


def _fmt_params(params: dict) -> str:
    return "".join(f"{k}={v!r} " for k, v in params.items())


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of ``n`` rows; both index arrays sorted.

    ``perm = numpy.random.default_rng(seed).permutation(n)``; the last
    ``round(n * val_fraction)`` rows of ``perm`` are held out.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = n - int(round(n * val_fraction))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


@contextlib.contextmanager
def blame(kind: str, name: str, distribution: str | None, section: str | None = None):
    """Turn an error raised inside a plugin into one line naming its kind, name and distribution.

    The toolkit's own errors (a loss's ``ConfigError`` about its input) keep their
    class and get the plugin named in front; anything else becomes a :class:`PluginError`.
    """
    who = f"{kind} '{name}'" + (f" ({distribution})" if distribution else "")
    try:
        yield
    except AtlasError as exc:
        raise type(exc)(f"[{section or kind}] {who}: {exc}") from None
    except (Exception, SystemExit) as exc:
        raise PluginError(f"[{section or kind}] {who} failed: {first_line(exc, 300)}") from None


def _call_plugin(registry: Registry, section: str, kind: str, name: str, *args, **params):
    """Call a plugin factory with its parameters (plugin references resolved through ``registry``)."""
    fn = registry.get(kind, name)
    with blame(kind, name, registry.info(kind, name).distribution, section):
        return fn(*args, **resolve_refs(fn, params, registry))


def load_teacher(config: PipelineConfig, registry: Registry, progress: bool = True) -> TeacherData:
    """Call the teacher plugin.  ``progress=False`` (``--quiet``, or not a terminal) turns off a teacher's own
    progress bars too, when it has a ``progress`` parameter: its ``progress = true`` only allows them."""
    t = config.teacher
    params = dict(t.params)
    if not progress and accepts(registry.get("teacher", t.loader), "progress"):
        params["progress"] = False
    data = _call_plugin(registry, "teacher", "teacher", t.loader, t.path, **params)
    if not isinstance(data, TeacherData):
        raise PluginError(f"teacher '{t.loader}' ({registry.info('teacher', t.loader).distribution}) returned "
                          f"{type(data).__name__}; teacher plugins must return atlas_plugins.TeacherData")
    return data


def assemble(config: PipelineConfig, registry: Registry | None = None, device: torch.device | None = None,
             progress: bool = True) -> Pipeline:
    """Build and check every part of the pipeline; raise a one-line :class:`AtlasError` on any problem.
    ``progress=False``: the teacher plugin draws no progress bar either (:func:`load_teacher`)."""
    registry = registry or get_registry()
    tr = config.train
    device = device or resolve_device(tr.device, "train.device")
    providers = {kind: registry.info(kind, name).distribution for kind, name in  # for error messages
                 (("teacher", config.teacher.loader), ("student", config.student.name),
                  ("loss", config.loss.name), ("schedule", config.schedule.name))}
    loaded = load_teacher(config, registry, progress)
    scan = RowScan(loaded, digest=True, copies=True)  # the rows' digest and repeats from validation's one read
    teacher = in_memory_if_small(validate_teacher(loaded, dim=config.teacher.dim, min_rows=MIN_BATCH_ROWS, scan=scan))
    if copies := scan.describe_copies():
        warnings.warn(f"atlas: {copies}", stacklevel=2)
    train_rows, val_rows = split_rows(teacher.num_rows, tr.val_fraction, tr.seed)
    batch_mode = _batch_mode(config, teacher, len(train_rows))
    index = (choose_method(len(train_rows), device, tr.neighbor_index, teacher.dim)
             if batch_mode == "neighbors" else None)

    s = config.student
    if teacher.dim <= s.dim:
        smaller = f", or set student.dim below {teacher.dim}" if teacher.dim > 1 else ""  # 1-D: nothing to reduce
        warnings.warn(f"atlas: the teacher's vectors are {teacher.dim}-D and student.dim is {s.dim}: a map no smaller "
                      f"than its vectors keeps nothing they do not; plot them as they are{smaller}", stacklevel=2)
    torch.manual_seed(tr.seed)
    student = _call_plugin(registry, "student", "student", s.name, teacher.dim, s.dim, **s.params)
    if not isinstance(student, torch.nn.Module):
        raise PluginError(f"student '{s.name}' ({providers['student']}) returned "
                          f"{type(student).__name__}; student plugins must return a torch.nn.Module")
    reconstruct = bool(getattr(student, "reconstructs", False))
    loss_fn = registry.get("loss", config.loss.name)
    if reconstruct and "reconstruction_loss" not in inspect.signature(loss_fn).parameters:
        raise ConfigError(f"{config.source}: student '{s.name}' reconstructs its input, which needs a loss that takes "
                          f"a reconstruction term, and loss '{config.loss.name}' does not; use name = \"combined\" "
                          "in [loss]")

    sch = config.schedule
    schedule = _call_plugin(registry, "schedule", "schedule", sch.name, sch.start, sch.end, sch.stages, **sch.params)
    taus = []
    for stage in range(sch.stages):
        with blame("schedule", sch.name, providers["schedule"]):
            tau = schedule(stage) if callable(schedule) else None
        if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau <= 0:
            raise PluginError(f"schedule '{sch.name}' ({providers['schedule']}) gave "
                              f"tau = {tau!r} for stage {stage}; schedules must give positive numbers")
        taus.append(float(tau))

    pipe = Pipeline(config, teacher, student, loss_fn, resolve_refs(loss_fn, config.loss.params, registry), taus,
                    device, reconstruct, train_rows, val_rows, batch_mode, index, providers,
                    scan.hexdigest())
    _smoke_test(pipe)
    return pipe


def _batch_mode(config: PipelineConfig, teacher: TeacherData, n_train: int) -> str:
    """``train.batches`` with "auto" resolved; checks that the training rows make at least one valid batch."""
    tr = config.train
    if n_train < MIN_BATCH_ROWS:
        raise DataError(f"{teacher.source}: {n_train} training rows after the validation split "
                        f"(train.val_fraction = {tr.val_fraction}); a batch needs at least {MIN_BATCH_ROWS}: "
                        "add data or lower train.val_fraction")
    mode = tr.batches
    if mode == "auto":
        mode = "neighbors" if n_train > tr.neighbors else "random"
    if mode == "neighbors" and n_train <= tr.neighbors:
        raise DataError(f"{teacher.source}: {n_train} training rows after the validation split, too few for "
                        f"neighbour batches with train.neighbors = {tr.neighbors}; lower train.neighbors or add data")
    if n_train < tr.batch_size:
        warnings.warn(f"atlas: train.batch_size = {tr.batch_size} is larger than the {n_train} training rows; "
                      "each batch holds all of them", stacklevel=3)
    return mode


def _smoke_test(pipe: Pipeline) -> None:
    """One real forward and backward pass on a throw-away copy of the student, on the smallest batch training
    can build and on a full one, so plugin mistakes surface before anything is written."""
    n_train = len(pipe.train_rows)
    name, loss_name = pipe.config.student.name, pipe.config.loss.name
    with torch.random.fork_rng(devices=[]):  # the real run's random numbers stay as they were
        student = copy.deepcopy(pipe.student)
        if not any(p.requires_grad for p in student.parameters()):
            raise PluginError(f"student '{name}' ({pipe.providers['student']}) has no trainable parameters; "
                              "a student must have parameters that require gradients")
        for size in sorted({MIN_BATCH_ROWS, min(n_train, pipe.config.train.batch_size)}):
            x = pipe.teacher.rows(pipe.train_rows[:size])
            student.zero_grad(set_to_none=True)
            out = pipe.forward(student, x)
            try:
                levels = as_student_output(out, name, size)
            except PluginError as exc:
                raise PluginError(f"{exc} (distribution '{pipe.providers['student']}')") from None
            xhat = pipe.forward(student.decode, out) if pipe.reconstruct else None
            try:
                loss = pipe.loss(out, x, pipe.taus[0], xhat)
            except ConfigError as exc:
                levelled = "hierarchical" in (loss_name, pipe.config.loss.params.get("base"))
                hint = ""
                if len(levels) > 1 or levelled:  # a count of levels is the likely cause
                    hint = f"; student '{name}' returns {len(levels)} level{'s' * (len(levels) > 1)}"
                if len(levels) > 1 and not levelled:
                    hint += (": use loss 'hierarchical' (or 'combined' with base = \"hierarchical\"), or leave "
                             "[loss] name out to get the student's own")
                raise ConfigError(f"{exc}{hint}") from None
            who = f"loss '{loss_name}' ({pipe.providers['loss']})"
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise PluginError(f"{who} returned {got}; a loss must return a scalar tensor")
            if not loss.requires_grad:
                raise PluginError(f"{who} returned a tensor without a gradient (a constant, or computed under "
                                  "no_grad or from detached inputs); a loss must depend on the student's output")
            with blame("loss", loss_name, pipe.providers["loss"]):
                loss.backward()
            if all(p.grad is None for p in student.parameters()):
                raise PluginError(f"{who} gives student '{name}' no gradient: the loss does not depend on the "
                                  "student's parameters (frozen, or its output is detached)")
