"""One run from start to finish: lock the folder, train (or resume), save the student, write the report."""

from __future__ import annotations

from typing import Callable

import attrs
import torch

from . import distributed
from .config import PipelineConfig, dump_toml
from .errors import CheckpointError, RunDirError, TrainingError
from .pipeline import Pipeline, assemble, resolve_device
from .registry import Registry
from .rundir import RunDir
from .student import TrainedStudent
from .trainer import Trainer, check_resumable, find_resume_checkpoint


@attrs.define
class RunResult:
    pipeline: Pipeline
    student: TrainedStudent
    metrics: list[dict]
    report: dict | None = None


def run_pipeline(config: PipelineConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = False,
                 echo: Callable[[str], None] = print, warn: Callable[[str], None] = print,
                 registry: Registry | None = None, command: str = "atlas-run") -> RunResult:
    """Train the pipeline ``config`` describes into ``config.output.dir``."""
    device = resolve_device(config.train.device)
    dist = distributed.init_from_env(device)
    if dist.active and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    pipe = assemble(config, registry, device=device)
    run = RunDir(config.output.dir)
    try:
        blob = None
        if dist.is_main:
            run.acquire()
            if resume:
                blob = find_resume_checkpoint(run, warn)
                if blob is None:
                    raise CheckpointError(f"{run.path}: nothing to resume (no readable checkpoint); "
                                          "run again without --resume")
                for change in check_resumable(blob, config.to_dict(), config.source):
                    echo(f"note: resuming with changed {change}")
                echo(f"resuming from {blob.pop('_path')}")
            elif run.holds_run():
                if not overwrite:
                    raise RunDirError(f"{run.path} already holds a run; continue it with --resume, or replace it "
                                      "with --overwrite (removes only files atlas-run wrote there)")
                run.clear()
            run.write_text("pipeline.toml", dump_toml(config.to_dict()))
        blob = distributed.broadcast(dist, blob)
        trainer = Trainer(pipe, run, dist, progress=progress, echo=echo, resume_hint=command)
        trainer.fit(blob)
        if dist.active:
            found = distributed.digests(dist, pipe.student)
            if len(set(found)) != 1:
                raise TrainingError(f"ranks finished with different student parameters ({', '.join(d[:12] for d in found)})")
            if dist.is_main:
                echo(f"{dist.world} ranks finished with identical student parameters (sha256 {found[0][:16]})")
        student = TrainedStudent(pipe.student, config.student.name, dict(config.student.params),
                                 pipe.teacher.dim, config.student.dim)
        result = RunResult(pipe, student, trainer.metrics)
        if dist.is_main:
            student.save(run.file("student.pt"))
            if config.output.report:
                from .report import write_report

                result.report = write_report(pipe, student, trainer.metrics, run, echo=echo, warn=warn)
        distributed.barrier(dist)
        return result
    finally:
        run.release()
        distributed.shutdown(dist)
