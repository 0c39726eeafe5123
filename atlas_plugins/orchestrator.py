"""One run from start to finish: lock the folder, check it, assemble, train (or resume), save, report.

What it saves: ``student.pt``, ``map.pt`` (the training rows in both spaces, for ``encode(refine=N)``),
``map.parquet`` and ``map.html`` (every row's coordinates, :mod:`atlas_plugins.mapfiles`), and the report.

Nothing in the run folder is touched before the pipeline has been assembled and
smoke-tested, except the lock (removed again at the end, with the folder itself
when the run created it and left it empty) and what a teacher caches in ``cache/``
while it loads (recorded in the manifest).  A dry run does the same and stops there.
"""

from __future__ import annotations

import inspect
import shlex
import warnings
from typing import Callable

import attrs
import torch

from . import distributed
from .checkpoint import TEACHER_LOCATIONS, check_resumable, check_same_teacher, find_resume_checkpoint
from .checks import resolve_device
from .config import (PipelineConfig, config_from_dict, dump_toml, flatten, load_config, logger_spec, override_items,
                     training_keys)
from .errors import AtlasError, CheckpointError, ConfigError, DataError, PluginError, RunDirError, TrainingError
from .pipeline import Pipeline, assemble, blame
from .mapfiles import write_map_html, write_map_table
from .refine import build_map
from .registry import Registry, get_registry
from .report import write_report
from .rundir import RunDir
from .student import TrainedStudent, teacher_record
from .trainer import Interrupted, Trainer, call_loggers


@attrs.define
class RunResult:
    pipeline: Pipeline
    student: TrainedStudent | None
    metrics: list[dict]
    report: dict | None = None
    dist: distributed.DistInfo = attrs.field(factory=distributed.DistInfo)  # this process's rank, of how many


def check_folder(run: RunDir, resume: bool, overwrite: bool, command: str) -> None:
    """What a run (or a dry run) may do with ``run``; raise :class:`RunDirError` naming the first obstacle."""
    run.check_free()
    if resume:
        return
    if run.holds_run() and not overwrite:
        then = run.continue_command(command)
        raise RunDirError(f"{run.path} already holds a run; continue it with: {then}" + (
            ", or replace it with --overwrite (removes only files atlas-run wrote there)"
            if then.endswith("--resume") else ""))
    foreign = run.foreign_outputs()  # --overwrite removes only files atlas-run wrote: these would stay
    if foreign:
        raise RunDirError(f"{foreign[0]} exists and was not written by atlas-run; move it away or choose another "
                          "output.dir (atlas-run never overwrites files it did not write)")


def make_loggers(config: PipelineConfig, registry: Registry | None, run: RunDir) -> list[tuple[str, object]]:
    """The ``output.loggers``, built (they write nothing yet): ``(name, logger)`` pairs."""
    registry = registry or get_registry()
    out = []
    for name, params in map(logger_spec, config.output.loggers):
        with blame("logger", name, registry.info("logger", name).distribution):
            logger = registry.get("logger", name)(run.file, **params)
        if not callable(getattr(logger, "log", None)):
            raise PluginError(f"logger '{name}' ({registry.info('logger', name).distribution}) returned "
                              f"{type(logger).__name__}, which has no log(metrics) method")
        out.append((name, logger))
    return out


def idle_gpu(config: PipelineConfig, device: torch.device, registry: Registry | None = None) -> str:
    """What would put an idle CUDA GPU to work: training (``train.device``) and a teacher's own ``device``
    parameter (a teacher that embeds texts), each when it is the CPU; "" when neither is."""
    registry = registry or get_registry()
    fn = registry.get("teacher", config.teacher.loader)
    param = inspect.signature(fn).parameters.get("device")
    idle = []
    if device.type == "cpu":
        idle.append(f"train.device = '{config.train.device}': --set train.device=auto trains on it")
    if config.teacher.params.get("device", None if param is None else param.default) == "cpu":
        idle.append("teacher.device = 'cpu': --set teacher.device=cuda runs the teacher (its model) on it")
    return "; ".join(idle)


def check_same_everywhere(dist: distributed.DistInfo, config: PipelineConfig, teacher_digest: str) -> None:
    """Under torchrun, before training: every rank runs the same pipeline (its own file and ``--set`` options,
    on its own host; the teacher's location aside) on the same teacher rows (its own copy): DDP keeps the
    parameters equal whatever each rank trains on, so nothing later would tell."""
    if not dist.active:
        return
    mine = {k: v for k, v in flatten(training_keys(config.to_dict())).items() if k not in TEACHER_LOCATIONS}
    found = distributed.gathered(dist, (mine, teacher_digest))
    first = found[0][0]
    for rank, (theirs, _) in enumerate(found[1:], start=1):
        if changed := sorted(k for k in set(first) | set(theirs) if first.get(k) != theirs.get(k)):
            detail = ", ".join(f"{k}: {first.get(k)!r} -> {theirs.get(k)!r}" for k in changed)
            raise ConfigError(f"rank {rank} runs another pipeline than rank 0 ({detail}): give every host the same "
                              "pipeline file and --set options")
    if len({digest for _, digest in found}) > 1:
        ranks = ", ".join(f"rank {rank} {digest[:12]}" for rank, (_, digest) in enumerate(found))
        raise DataError(f"the ranks read different teacher rows ({ranks}): {config.teacher.path} must hold the same "
                        "rows on every host; copy it again from rank 0's host")


def run_pipeline(config: PipelineConfig, *, resume: bool = False, overwrite: bool = False, dry_run: bool = False,
                 progress: bool = False, echo: Callable[[str], None] = print, warn: Callable[[str], None] = print,
                 registry: Registry | None = None, command: str = "atlas-run") -> RunResult:
    """Train the pipeline ``config`` describes into ``config.output.dir`` (with ``dry_run``: check only)."""
    device = resolve_device(config.train.device, "train.device")
    dist = distributed.init_from_env(device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if dist.is_main and torch.cuda.is_available() and (idle := idle_gpu(config, device, registry)):
        echo(f"note: this machine has a CUDA GPU, left idle: {idle}")
    run = RunDir(config.output.dir)
    try:
        blob, refused = None, None
        if dist.is_main:
            try:
                check_folder(run, resume, overwrite, command)
                run.acquire()  # a dry run too: a teacher may convert its file into cache/ while it loads
                if resume:
                    blob = find_resume_checkpoint(run, warn)
                    if blob is None:
                        hint = run.continue_command(command) if run.holds_run() else command
                        raise CheckpointError(f"{run.path}: nothing to resume (no readable checkpoint); start "
                                              f"with: {hint}")
                    for change in check_resumable(blob, config.to_dict(), config.source, dist.world):
                        echo(f"note: resuming with changed {change}")
            except AtlasError as exc:
                refused = exc
        # every rank waits for rank 0's word on the folder: none may write there (a teacher's cache) when it is
        # refused, and each stops with rank 0's one line rather than a broken connection's traceback
        refused = distributed.broadcast(dist, refused)
        if refused is not None:
            raise refused
        with run.recording_new_files("cache", enabled=dist.is_main):
            pipe = distributed.host_first(dist, lambda: assemble(config, registry, device=device, progress=progress))
        check_same_everywhere(dist, config, pipe.teacher_digest)
        loggers = make_loggers(config, registry, run) if dist.is_main else []
        if dry_run:
            return RunResult(pipe, None, [], dist=dist)
        if dist.is_main:
            if blob is not None:
                check_same_teacher(blob, pipe.teacher, pipe.teacher_digest, pipe.teacher.source or config.teacher.path)
                echo(f"resuming from {blob.pop('_path')}")
            elif overwrite:
                run.clear()
            run.write_text("pipeline.toml", dump_toml(config.to_dict()))
        blob = distributed.broadcast(dist, blob)
        trainer = Trainer(pipe, run, dist, progress=progress, echo=echo, resume_hint=command, loggers=loggers)
        status = "failed"
        try:
            trainer.fit(blob)
            status = "completed"
        except (KeyboardInterrupt, Interrupted):
            status = "interrupted"
            raise
        finally:
            if status != "completed":
                call_loggers(loggers, "end", {"status": status})
        if dist.active:
            found = distributed.digests(dist, pipe.student)
            if len(set(found)) != 1:
                digests = ", ".join(d[:12] for d in found)
                raise TrainingError(f"ranks finished with different student parameters ({digests})")
            if dist.is_main:
                echo(f"{dist.world} ranks finished with identical student parameters (sha256 {found[0][:16]})")
        student = TrainedStudent(pipe.student, config.student.name, dict(config.student.params),
                                 pipe.teacher.dim, config.student.dim,
                                 teacher=teacher_record(config.teacher.loader, pipe.teacher, pipe.train_rows,
                                                        config.teacher.embedder))
        result = RunResult(pipe, student, trainer.metrics, dist=dist)
        if dist.is_main:
            student.save(run.file("student.pt"))
            if config.output.map_rows and student.refinable:  # only refine reads the map
                student.training_map = build_map(pipe.teacher, pipe.train_rows, student.encode,
                                                 max_rows=config.output.map_rows, seed=config.train.seed,
                                                 student=distributed.parameter_digest(student.module))
                student.map_path = run.file("map.pt")
                student.training_map.save(student.map_path)
            coords = write_map_table(run, pipe, student)
            if config.output.plots:
                try:
                    write_map_html(run, pipe, student)
                except ImportError:
                    warn("map.html skipped: plotly is not installed; pip install 'atlas-distill[plots]'")
            if config.output.report:
                result.report = write_report(pipe, student, trainer.metrics, run, coords, echo=echo, warn=warn,
                                             neighbor_graph=trainer.graph_info)
            call_loggers(loggers, "end", {"status": "completed", "report": result.report})
        distributed.barrier(dist)
        return result
    finally:
        run.release()
        distributed.shutdown(dist)


def atlas_run_command(pipeline, overrides=()) -> str:
    """The ``atlas-run`` command line of a pipeline file and its ``--set`` items (what messages tell to run next)."""
    args = [str(pipeline), *(arg for item in overrides for arg in ("--set", item))]
    return "atlas-run " + " ".join(shlex.quote(a) for a in args)


def train(pipeline, overrides=(), *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          registry: Registry | None = None) -> TrainedStudent:
    """``atlas-run PIPELINE [--set ...] [--resume | --overwrite]`` from Python: train, write the run folder as
    atlas-run does, and return the student (``student.encode(x)``; ``refine=N`` against its ``map.pt``).

    ``pipeline``: a pipeline file, or its tables as a dict (:func:`~atlas_plugins.config.config_from_dict`:
    ``output.dir`` required, relative paths against the working folder).  ``overrides``: ``--set`` items,
    e.g. ``["train.epochs_per_stage=2"]``, or a dict ``{"train.epochs_per_stage": 2}``.  Bad input raises the
    :class:`AtlasError` whose one line atlas-run prints (a message that names a command to run next names the
    atlas-run one: ``resume=True`` is its ``--resume``); Ctrl-C saves a checkpoint and raises
    :class:`~atlas_plugins.trainer.Interrupted`.  Warnings go to :mod:`warnings`; ``quiet``: no progress bar
    and no report table on stdout."""
    for name, flag in (("resume", resume), ("overwrite", overwrite), ("quiet", quiet)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    if resume and overwrite:
        raise ConfigError("resume=True and overwrite=True cannot be used together")
    overrides = override_items(overrides)
    if isinstance(pipeline, dict):  # the run's own pipeline.toml holds the overrides: the command needs none
        config = config_from_dict(pipeline, overrides, registry)
        command = atlas_run_command(config.source)
    else:
        config, command = load_config(pipeline, overrides, registry), atlas_run_command(pipeline, overrides)
    result = run_pipeline(config, resume=resume, overwrite=overwrite, progress=not quiet,
                          echo=(lambda m: None) if quiet else print,
                          warn=lambda m: warnings.warn(f"atlas: {m}", stacklevel=3),
                          registry=registry, command=command)
    return result.student
