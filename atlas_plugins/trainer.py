"""The training loop: curriculum stages → epochs → batches, with checkpoints and exact resume.

Determinism is by construction: the student is initialised from ``seed``,
every epoch's batch order is derived from ``(seed, epoch)`` alone, and the
learning rate is a function of the optimizer step.  A checkpoint therefore
only needs the weights, the optimizer state, the torch RNG state and the
position, and a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from . import distributed
from .batches import MIN_BATCH_ROWS, chunks, neighbor_batches, random_batches
from .checkpoint import CHECKPOINT_FORMAT
from .errors import AtlasError, TrainingError, WriteError
from .neighbors import graph_width, neighbor_graph
from .pipeline import Pipeline, blame
from .rundir import RunDir

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both save a checkpoint and stop; exit code 128 + signal
READ_EVERY = 10  # optimizer steps between reads of the losses from the device (one host sync each)
LONG_RUN_STEPS = 100_000  # an epoch budget above this many steps (an hour or more on a CPU) names steps_per_stage


def call_loggers(loggers: list, method: str, arg: dict) -> None:
    """Call ``method(arg)`` (start, log or end) on each ``(name, logger)`` that has it; an error names the
    logger plugin."""
    for name, logger in loggers:
        fn = getattr(logger, method, None)
        if callable(fn):
            with blame("logger", name, None):
                fn(arg)


class Interrupted(AtlasError):
    """Ctrl-C or SIGTERM: a checkpoint was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _Objective(nn.Module):
    """Student forward (and decode, when reconstructing) in one module, so DDP sees every parameter.

    With ``noise`` > 0, training inputs get Gaussian noise of std ``noise × RMS(xᵢ)`` per row (the
    targets stay clean), which smooths the map for points it has not seen.
    """

    def __init__(self, student: nn.Module, reconstruct: bool, noise: float = 0.0):
        super().__init__()
        self.student = student
        self.reconstruct = reconstruct
        self.noise = noise

    def forward(self, x):
        if self.training and self.noise > 0:
            x = x + self.noise * x.pow(2).mean(dim=1, keepdim=True).sqrt() * torch.randn_like(x)
        out = self.student(x)
        return out, (self.student.decode(out) if self.reconstruct else None)


@attrs.define
class EpochAcc:
    """Running sums of one epoch, saved with a mid-epoch checkpoint."""

    loss_sum: float = 0.0
    batches: int = 0
    samples: int = 0
    seconds: float = 0.0


def count_batches(cfg, n_rows: int, width: int | None) -> int | None:
    """Batches in one epoch over ``n_rows`` training rows, counted without building one: random batches
    (``width`` None) or neighbour batches from a graph of ``width`` neighbours a row.  None when neighbour
    batches are too small to stand alone (they merge as they come, so only building them counts them)."""
    if width is None:
        return len(random_batches(np.arange(n_rows), cfg.batch_size))
    if 1 + min(cfg.neighbors, width) < MIN_BATCH_ROWS:  # an anchor and its distinct neighbours
        return None
    return len(chunks(np.arange(n_rows), max(1, cfg.batch_size // (1 + cfg.neighbors))))


def step_budget(cfg, batches_per_epoch: int, stages: int) -> tuple[int, int, int]:
    """Optimizer steps per epoch, per stage and in all: ``train.steps_per_stage``, or whole epochs."""
    per_epoch = math.ceil(batches_per_epoch / cfg.accumulate)
    per_stage = cfg.steps_per_stage or per_epoch * cfg.epochs_per_stage
    return per_epoch, per_stage, per_stage * stages


def plan_line(cfg, batches_per_epoch: int, stages: int, from_step: int = 0, world: int = 1) -> str:
    """``training N optimizer steps: S stage(s) x ...``: what a run trains, printed before its first step (and
    by ``--dry-run``), with a hint when an epoch budget grows past :data:`LONG_RUN_STEPS`.  Under torchrun
    (``world`` processes) each process takes those steps on its share of the rows, in step with the others."""
    per_epoch, per_stage, total = step_budget(cfg, batches_per_epoch, stages)
    shown = f"{per_stage:,}" if cfg.steps_per_stage else f"{cfg.epochs_per_stage} epoch(s) of {per_epoch:,}"
    line = f"training {total:,} optimizer steps: {stages} stage(s) x {shown} steps"
    if world > 1:  # a step's batch: batch_size rows per micro-batch, accumulate of them, on each process
        line += f", on each of {world} processes (a global batch of {cfg.batch_size * cfg.accumulate * world:,} rows)"
    if from_step >= total:  # --resume of a finished run: its outputs are written again
        line += "; all done before: nothing is left to train"
    elif from_step:
        line += f", from step {from_step:,}"
    if cfg.steps_per_stage is None and total > LONG_RUN_STEPS:
        line += "; train.steps_per_stage sets a budget that does not grow with the rows"
    return line


def about(seconds: float) -> str:
    """A duration as people say it: ``40 s``, ``12 min``, ``2.5 h`` (never ``0 s``: what is left takes time)."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def dry_run_plan(pipe: Pipeline, world: int = 1) -> str:
    """``--dry-run``'s :func:`plan_line`, before any graph is built (a neighbour graph's width is known ahead:
    :func:`~atlas_plugins.neighbors.graph_width`), for ``world`` processes: each trains on its share of the
    rows, in step with the others, so ``train.batch_size`` is per process."""
    cfg, n = pipe.config.train, len(pipe.train_rows)
    width = graph_width(cfg.neighbor_pool, n) if pipe.batch_mode == "neighbors" else None
    count = count_batches(cfg, n // world, width)
    if count is None:
        return "steps      counted when training starts (neighbour batches this small merge as they come)"
    return "steps      " + plan_line(cfg, count, len(pipe.taus), world=world).removeprefix("training ")


class Trainer:
    """Runs a :class:`Pipeline`; only rank 0 writes into the :class:`RunDir`."""

    def __init__(self, pipe: Pipeline, run: RunDir | None, dist: distributed.DistInfo | None = None, *,
                 progress: bool = False, echo: Callable[[str], None] = print, resume_hint: str = "",
                 loggers: list | None = None):
        self.pipe, self.run, self.echo = pipe, run, echo
        self.loggers = loggers or []  # (name, logger) pairs; rank 0 only
        self.dist = dist or distributed.DistInfo()
        self.cfg = pipe.config.train
        self.progress = progress and self.dist.is_main
        self.resume_hint = resume_hint
        self.student = pipe.student.to(pipe.device)
        self.plain_objective = _Objective(self.student, pipe.reconstruct, self.cfg.input_noise)
        objective = self.plain_objective
        if self.dist.active:
            ids = [pipe.device.index or 0] if pipe.device.type == "cuda" else None
            objective = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        self.objective = objective
        opt_cls = torch.optim.AdamW if self.cfg.weight_decay > 0 else torch.optim.Adam
        kwargs = {"weight_decay": self.cfg.weight_decay} if self.cfg.weight_decay > 0 else {}
        self.opt = opt_cls(self.student.parameters(), lr=self.cfg.learning_rate, **kwargs)
        self.global_step = 0
        self.metrics: list[dict] = []
        self.stop_signal: int | None = None  # the first signal this process got
        self.stopping = 0  # the signal the ranks agreed to stop on at the last loss read (0: none)
        self.graph_info: dict | None = None
        self._drawn: tuple[int, list[np.ndarray]] | None = None  # (epoch, its batches): _drawn_batches
        self.graph = self._neighbor_graph() if pipe.batch_mode == "neighbors" else None
        self.batches_per_epoch = self._count_batches()
        self.steps_per_epoch, self.steps_per_stage, self.total_steps = step_budget(
            self.cfg, self.batches_per_epoch, len(pipe.taus))
        self.config_dict = pipe.config.to_dict()
        self.config_hash = pipe.config.config_hash()

    # -- data ------------------------------------------------------------------
    def _neighbor_graph(self) -> torch.Tensor:
        """The training rows' teacher k-NN graph: built by rank 0 (cached in the run folder), read by the others."""
        pipe, writer = self.pipe, self.dist.is_main or self.run is None
        args = (pipe.teacher, pipe.train_rows, self.cfg.neighbor_pool)
        # rank 0's method names the graph every rank reads (a GPU with less free memory may choose faiss)
        method = distributed.broadcast(self.dist, pipe.neighbor_index)
        kwargs = {"method": method, "device": pipe.device, "run": self.run, "digest": pipe.teacher_digest}
        if writer:
            graph, self.graph_info = neighbor_graph(*args, **kwargs, echo=self.echo if self.dist.is_main else None)
        distributed.barrier(self.dist)
        if not writer:
            graph, self.graph_info = neighbor_graph(*args, **kwargs, writer=False)
        if self.dist.is_main and not self.graph_info["cached"]:
            i = self.graph_info
            self.echo(f"neighbour graph: {i['method']}, {i['rows']:,} rows x {i['k']} in {i['seconds']:.1f}s"
                      + (f", recall {i['recall']:.3f} on {i['recall_sample']:,} sampled rows"
                         if i["method"] != "exact" else ""))
        return graph

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches (teacher row ids) for pass ``epoch`` over the data (counted from the run's start);
        a pure function of seed and epoch."""
        n = len(self.pipe.train_rows)
        sampler = DistributedSampler(range(n), num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
        if self.graph is not None:
            seed = (self.cfg.seed * 1_000_003 + epoch * 7919 + self.dist.rank) % 2**63
            positions = neighbor_batches(order, self.graph, self.cfg.batch_size, self.cfg.neighbors,
                                         torch.Generator().manual_seed(seed), self.cfg.neighbor_hops)
        else:
            positions = random_batches(order, self.cfg.batch_size)
        return [self.pipe.train_rows[p] for p in positions]

    def stage_plan(self, stage: int) -> list[tuple[int, int, int]]:
        """What stage ``stage`` trains on: ``(epoch, first batch, end batch)`` pieces of the run's stream of
        epochs.  With ``epochs_per_stage`` E: whole epochs ``stage·E … stage·E + E − 1``.  With
        ``steps_per_stage`` S: optimizer steps ``stage·S … stage·S + S − 1`` of the stream, where epoch e
        holds steps ``e·spe …`` (``spe`` steps per epoch), so a stage may start or end inside an epoch."""
        n_batches, acc = self.batches_per_epoch, self.cfg.accumulate
        if self.cfg.steps_per_stage is None:
            first = stage * self.cfg.epochs_per_stage
            return [(first + e, 0, n_batches) for e in range(self.cfg.epochs_per_stage)]
        plan, step, end = [], stage * self.steps_per_stage, (stage + 1) * self.steps_per_stage
        while step < end:
            epoch, k = divmod(step, self.steps_per_epoch)
            take = min(end - step, self.steps_per_epoch - k)
            plan.append((epoch, k * acc, min(n_batches, (k + take) * acc)))
            step += take
        return plan

    def stage_batches(self, stage: int) -> int:
        """How many batches stage ``stage`` trains on (the pieces of :meth:`stage_plan` together)."""
        return sum(end - start for _, start, end in self.stage_plan(stage))

    def _count_batches(self) -> int:
        """Batches per epoch, the same every epoch (only the order changes)."""
        n = len(self.pipe.train_rows) // self.dist.world  # what each rank's sampler yields (drop_last)
        count = count_batches(self.cfg, n, None if self.graph is None else self.graph.shape[1])
        return count if count is not None else len(self._drawn_batches(0))

    def _drawn_batches(self, epoch: int) -> list[np.ndarray]:
        """:meth:`batches` of ``epoch``, kept until another epoch's are drawn: with ``steps_per_stage`` stages
        may share an epoch, and counting batches may have drawn epoch 0 already."""
        if self._drawn is None or self._drawn[0] != epoch:
            self._drawn = (epoch, self.batches(epoch))
        return self._drawn[1]

    def lr_at(self, step: int) -> float:
        lr, warm = self.cfg.learning_rate, self.cfg.warmup_steps
        if warm and step < warm:
            return lr * (step + 1) / warm
        if self.cfg.lr_schedule == "cosine":
            progress = (step - warm) / max(1, self.total_steps - warm)
            return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return lr

    # -- checkpoints -------------------------------------------------------------
    def state(self, stage: int, epoch: int, batch: int, acc: EpochAcc) -> dict:
        """Everything a resume needs, including every random generator in use (CPU, and CUDA on a GPU)."""
        blob = {"format": CHECKPOINT_FORMAT, "position": {"stage": stage, "epoch": epoch, "batch": batch},
                "global_step": self.global_step, "student": self.student.state_dict(),
                "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                "epoch_acc": attrs.asdict(acc), "metrics": list(self.metrics),
                "config_hash": self.config_hash, "config": self.config_dict,
                "teacher_digest": self.pipe.teacher_digest, "world": self.dist.world}
        if self.pipe.device.type == "cuda":
            blob["cuda_rng"] = torch.cuda.get_rng_state(self.pipe.device)
        return blob

    def save_checkpoint(self, rel: str, blob: dict) -> None:
        if self.run is not None and self.dist.is_main:
            try:
                self.run.save(rel, blob)
            except WriteError as exc:
                raise WriteError(f"{exc}; make room, then continue with: {self.next_step()}") from None

    def restore(self, blob: dict) -> tuple[int, int, int, EpochAcc]:
        self.student.load_state_dict(blob["student"])
        self.opt.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"])
        if self.pipe.device.type == "cuda" and isinstance(blob.get("cuda_rng"), torch.Tensor):
            torch.cuda.set_rng_state(blob["cuda_rng"], self.pipe.device)
        self.global_step = int(blob["global_step"])
        self.metrics = list(blob["metrics"])
        pos = blob["position"]
        return pos["stage"], pos["epoch"], pos["batch"], EpochAcc(**blob["epoch_acc"])

    def next_step(self) -> str:
        """The command that continues this run from where it stopped."""
        command = self.run.continue_command(self.resume_hint) if self.run is not None else self.resume_hint
        return f"{command}, started by torchrun as before" if self.dist.active else command

    # -- the loop ------------------------------------------------------------------
    def fit(self, resume: dict | None = None) -> None:
        stage0, epoch0, batch0, acc = (0, 0, 0, EpochAcc()) if resume is None else self.restore(resume)
        old_handlers = {}
        if _main_thread():  # every rank: torchrun passes a Ctrl-C or SIGTERM on to each
            old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atlas-read")
        if self.dist.is_main:
            self.echo(self.plan())
        self._to_loggers("start", {"config": self.config_dict, "metrics": list(self.metrics),
                                   "run_dir": str(self.run.path) if self.run is not None else None})
        try:
            for stage in range(stage0, len(self.pipe.taus)):
                self._stage(stage, epoch0 if stage == stage0 else 0, batch0 if stage == stage0 else 0,
                            acc if stage == stage0 else EpochAcc())
        finally:
            self._reader.shutdown(wait=True, cancel_futures=True)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        if self.run is not None and self.dist.is_main:
            self.run.remove("checkpoints/interrupt.pt")  # the run is complete: nothing to resume from it

    def plan(self) -> str:
        """What :meth:`fit` trains, in optimizer steps: the line atlas-run prints before the first."""
        return plan_line(self.cfg, self.batches_per_epoch, len(self.pipe.taus), self.global_step, self.dist.world)

    def _to_loggers(self, method: str, arg: dict) -> None:
        if self.dist.is_main:
            call_loggers(self.loggers, method, arg)

    def _on_signal(self, signum, frame) -> None:
        # a second Ctrl-C stops at once; not under torchrun, which repeats the terminal's to each rank (and
        # kills the ranks itself 30 s later)
        if self.stop_signal is not None and not self.dist.active:
            raise KeyboardInterrupt
        self.stop_signal = self.stop_signal or signum

    def _stage(self, stage: int, first_piece: int, first_batch: int, acc: EpochAcc) -> None:
        tau = self.pipe.taus[stage]
        n_stages, plan = len(self.pipe.taus), self.stage_plan(stage)
        done = sum(end - start for _, start, end in plan[:first_piece])
        if first_piece < len(plan):
            done += max(0, first_batch - plan[first_piece][1])
        total = self.stage_batches(stage)
        bar = tqdm(total=total, initial=done, leave=False,
                   desc=f"stage {stage + 1}/{n_stages}", file=sys.stderr, disable=not self.progress,
                   dynamic_ncols=True)
        t_stage = time.perf_counter()
        try:
            for piece in range(first_piece, len(plan)):
                epoch, start, end = plan[piece]
                first = max(start, first_batch) if piece == first_piece else start
                self._epoch(stage, piece, epoch, tau, first, end, acc if piece == first_piece else EpochAcc(), bar)
        finally:
            bar.close()
        last = self.metrics[-1]
        self.save_checkpoint(f"checkpoints/stage-{stage}.pt", self.state(stage + 1, 0, 0, EpochAcc()))
        if self.dist.is_main:
            val = f"{last['val_loss']:.4f}" if last["val_loss"] is not None else "n/a"
            mine = [m for m in self.metrics if m["stage"] == stage]
            rate = sum(m["samples_per_s"] * m["seconds"] for m in mine) / max(1e-9, sum(m["seconds"] for m in mine))
            seconds = time.perf_counter() - t_stage
            self.echo(f"stage {stage + 1}/{n_stages}  tau {tau:.3g}  train loss {last['train_loss']:.4f}  "
                      f"val loss {val}  {seconds:.1f}s  {rate:,.0f} samples/s"
                      f"{self._left(stage, seconds / max(1, total - done))}")

    def _left(self, stage: int, per_batch: float) -> str:
        """``; about 12 min of training left``: the later stages' batches at ``per_batch`` seconds each (this
        stage's pace in this process, validation and checkpoints included); nothing after the last stage."""
        later = sum(self.stage_batches(s) for s in range(stage + 1, len(self.pipe.taus)))
        return f"; about {about(per_batch * later)} of training left" if later else ""

    def _epoch(self, stage: int, piece: int, epoch: int, tau: float, first_batch: int, end: int, acc: EpochAcc,
               bar) -> None:
        """Batches ``first_batch … end − 1`` of epoch ``epoch`` (piece ``piece`` of the stage's plan); the next
        batch's rows are read in a background thread while the current one trains."""
        batches = self._drawn_batches(epoch)
        # an epoch's own count rules its end (with train.neighbors = 1, merged batches can make it differ)
        end = len(batches) if end >= self.batches_per_epoch else min(end, len(batches))
        self.objective.train()
        t0 = time.perf_counter() - acc.seconds
        pending: list[tuple[int, int, torch.Tensor]] = []  # (batch, optimizer step, loss on the device) not yet read
        reading = self._reader.submit(self.pipe.teacher.rows, batches[first_batch]) if first_batch < end else None
        for b in range(first_batch, end):
            x = reading.result()
            if b + 1 < end:
                reading = self._reader.submit(self.pipe.teacher.rows, batches[b + 1])
            steps_now = (b + 1) % self.cfg.accumulate == 0 or b + 1 == len(batches)
            # under DDP, gradients are averaged across ranks once per optimizer step, not per micro-batch
            with self.objective.no_sync() if self.dist.active and not steps_now else contextlib.nullcontext():
                pending.append((b, self.global_step, self._step(x, tau)))
            acc.batches += 1
            acc.samples += len(batches[b])
            if steps_now:
                self._optimizer_step()
            if (b + 1) % (READ_EVERY * self.cfg.accumulate) == 0 or b + 1 == end:
                loss = self._read(pending, batches, acc, tau, stage, piece)
                # drawn at once on an epoch's first read (a fast epoch may end before the bar's next redraw)
                bar.set_postfix(loss=f"{loss:.4f}", tau=f"{tau:.3g}",
                                refresh=b - first_batch < READ_EVERY * self.cfg.accumulate)
                if self.stopping and b + 1 < end:  # a step boundary, every loss checked
                    acc.seconds = time.perf_counter() - t0
                    self.save_checkpoint("checkpoints/interrupt.pt", self.state(stage, piece, b + 1, acc))
                    raise self._interrupted(f"at stage {stage + 1}, epoch {piece + 1}")
            bar.update(1)
        self._end_epoch(stage, piece, epoch, tau, acc, time.perf_counter() - t0)

    def _step(self, x: torch.Tensor, tau: float) -> torch.Tensor:
        """Forward, loss and backward on one batch of teacher rows (gradients accumulate); returns the loss,
        still on the device."""
        x = x.to(self.pipe.device, non_blocking=True)
        out, xhat = self.pipe.forward(self.objective, x)
        loss = self.pipe.loss(out, x, tau, xhat)
        (loss / self.cfg.accumulate).backward()
        return loss.detach()

    def _read(self, pending: list, batches: list, acc: EpochAcc, tau: float, stage: int, epoch: int) -> float:
        """Bring the pending losses to the host (one sync, one all-reduce under DDP); stop on the first that is
        not finite, before any checkpoint can hold what followed it.  Returns the last loss."""
        values = torch.stack([loss for _, _, loss in pending]).tolist()
        diverged, self.stopping = distributed.agree(self.dist, not all(math.isfinite(v) for v in values),
                                                    self.stop_signal or 0)
        if diverged:
            bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            b, step, _ = pending[bad if bad is not None else -1]
            raise TrainingError(self._divergence(values[bad] if bad is not None else None, batches[b], step, tau,
                                                 (stage, epoch, b)))
        acc.loss_sum += sum(values)
        pending.clear()
        return values[-1]

    def _divergence(self, value, rows: np.ndarray, step: int, tau: float, where: tuple[int, int, int]) -> str:
        """Why the loss stopped being finite, as far as the batch and the step tell, and the command that helps."""
        stage, epoch, b = where
        head = (f"the loss became {value if value is not None else 'non-finite on another rank'} at stage {stage + 1}, "
                f"epoch {epoch + 1}, step {b + 1} (tau {tau:.3g}, learning rate {self.lr_at(step):.3g})")
        x = self.pipe.teacher.rows(rows)
        biggest = float(x.abs().max()) if x.numel() else 0.0
        if biggest > 1e15:
            return (f"{head}: the teacher rows hold values up to {biggest:.3g}, too large for float32 arithmetic; "
                    f"rescale or normalise the embeddings in {self.pipe.teacher.source}")
        if tau < 1e-6:
            return (f"{head}: tau = {tau:.3g} is too small for float32 arithmetic; raise the schedule's end "
                    "(or loss.tau)")
        if step == 0:  # the weights are still the initial ones
            return (f"{head}, before any weight update, so the learning rate is not the cause: check the [loss] "
                    f"parameters of '{self.pipe.config.loss.name}' ({self.pipe.loss_params})")
        lower = min(self.cfg.learning_rate, self.lr_at(step)) / 10
        return (f"{head}; the last good checkpoint is kept; continue with a lower learning rate: "
                f"{self.next_step()} --set train.learning_rate={lower:.3g}")

    def _optimizer_step(self) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.global_step)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.global_step += 1

    def _end_epoch(self, stage: int, piece: int, epoch: int, tau: float, acc: EpochAcc, seconds: float) -> None:
        """Metrics, ``metrics.jsonl`` and ``checkpoints/latest.pt``; stop here when a signal asked to."""
        train_loss = acc.loss_sum / max(1, acc.batches)
        if self.dist.active:
            train_loss = distributed.mean(self.dist, train_loss)
        self.metrics.append({"stage": stage, "epoch": piece, "data_epoch": epoch, "tau": tau,
                             "lr": self.lr_at(max(0, self.global_step - 1)), "train_loss": train_loss,
                             "val_loss": self.val_loss(tau) if self.dist.is_main else None,
                             "seconds": round(seconds, 4),
                             "samples_per_s": acc.samples * self.dist.world / max(seconds, 1e-9),
                             "step": self.global_step})
        self._to_loggers("log", self.metrics[-1])
        self.save_checkpoint("checkpoints/latest.pt", self.state(stage, piece + 1, 0, EpochAcc()))
        last = stage + 1 == len(self.pipe.taus) and piece + 1 == len(self.stage_plan(stage))
        if self.stopping and not last:
            raise self._interrupted(f"after stage {stage + 1}, epoch {piece + 1}")

    def _interrupted(self, where: str) -> Interrupted:
        """The stop every rank agreed on, once rank 0's checkpoint is written."""
        distributed.barrier(self.dist)
        name = signal.Signals(self.stopping).name
        return Interrupted(f"interrupted ({name}) {where}; checkpoint saved; continue with: {self.next_step()}",
                           self.stopping)

    @torch.no_grad()
    def val_loss(self, tau: float) -> float | None:
        rows = self.pipe.val_rows[: self.cfg.eval_rows]
        if len(rows) < MIN_BATCH_ROWS:
            return None
        self.plain_objective.eval()
        total, count = 0.0, 0
        for chunk in chunks(rows, self.cfg.batch_size):
            x = self.pipe.teacher.rows(chunk).to(self.pipe.device)
            out, xhat = self.pipe.forward(self.plain_objective, x)
            total += float(self.pipe.loss(out, x, tau, xhat))
            count += 1
        self.plain_objective.train()
        return total / max(1, count)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
