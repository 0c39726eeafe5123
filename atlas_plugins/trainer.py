"""The training loop: curriculum stages → epochs → batches, with checkpoints and exact resume.

Determinism is by construction: the student is initialised from ``seed``,
every epoch's batch order is derived from ``(seed, epoch)`` alone, and the
learning rate is a function of the optimizer step.  A checkpoint therefore
only needs the weights, the optimizer state, the torch RNG state and the
position, and a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from typing import Callable

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from . import distributed
from .config import flatten, hash_dict, training_keys
from .checkpoint import safe_load
from .errors import AtlasError, CheckpointError, TrainingError
from .neighbors import neighbor_batches, normalized_rows, topk_cosine
from .pipeline import Pipeline
from .rundir import RunDir

CHECKPOINT_FORMAT = "atlas-checkpoint/1"
# Keys that may change on --resume (they do not change what the weights mean).
RESUMABLE = {"train.learning_rate", "train.device", "train.eval_rows"}


class Interrupted(AtlasError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""

    exit_code = 130


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


class Trainer:
    """Runs a :class:`Pipeline`; only rank 0 writes into the :class:`RunDir`."""

    def __init__(self, pipe: Pipeline, run: RunDir | None, dist: distributed.DistInfo | None = None, *,
                 progress: bool = False, echo: Callable[[str], None] = print, resume_hint: str = ""):
        self.pipe, self.run, self.echo = pipe, run, echo
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
        self.stop_requested = False
        self.graph = self._neighbor_graph() if pipe.batch_mode == "neighbors" else None
        self.batches_per_epoch = len(self.batches(0, 0))  # the same every epoch: only the order changes
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.cfg.accumulate)
        self.total_steps = self.steps_per_epoch * self.cfg.epochs_per_stage * len(pipe.taus)
        self.config_dict = pipe.config.to_dict()
        self.config_hash = pipe.config.config_hash()

    # -- data ------------------------------------------------------------------
    def _neighbor_graph(self) -> torch.Tensor:
        rows = self.pipe.train_rows
        key = hash_dict({"source": self.pipe.teacher.source, "n": int(self.pipe.teacher.num_rows),
                         "rows": hash_dict({"r": rows[:: max(1, len(rows) // 1000)].tolist(), "len": len(rows)}),
                         "pool": self.cfg.neighbor_pool})[:16]
        rel = f"cache/knn-{key}.pt"
        if self.run is not None and (self.run.path / rel).is_file():
            try:
                graph = safe_load(self.run.path / rel, what="neighbour cache")
                if isinstance(graph, torch.Tensor) and graph.shape[0] == len(rows):
                    return graph
            except CheckpointError:
                pass
        graph = topk_cosine(normalized_rows(self.pipe.teacher, rows), self.cfg.neighbor_pool)
        if self.run is not None and self.dist.is_main:
            self.run.save(rel, graph)
        return graph

    def batches(self, stage: int, epoch: int) -> list[np.ndarray]:
        """This rank's batches (teacher row ids) for one epoch; a pure function of seed and epoch."""
        n = len(self.pipe.train_rows)
        global_epoch = stage * self.cfg.epochs_per_stage + epoch
        sampler = DistributedSampler(range(n), num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(global_epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
        if self.graph is not None:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + global_epoch * 7919 + self.dist.rank)
            positions = neighbor_batches(order, self.graph, self.cfg.batch_size, self.cfg.neighbors, gen)
        else:
            bs = self.cfg.batch_size
            positions = [order[i:i + bs] for i in range(0, len(order), bs) if len(order[i:i + bs]) >= 2]
        return [self.pipe.train_rows[p] for p in positions]

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
        return {"format": CHECKPOINT_FORMAT, "position": {"stage": stage, "epoch": epoch, "batch": batch},
                "global_step": self.global_step, "student": self.student.state_dict(),
                "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                "epoch_acc": attrs.asdict(acc), "metrics": list(self.metrics),
                "config_hash": self.config_hash, "config": self.config_dict}

    def save_checkpoint(self, rel: str, blob: dict) -> None:
        if self.run is not None and self.dist.is_main:
            self.run.save(rel, blob)

    def restore(self, blob: dict) -> tuple[int, int, int, EpochAcc]:
        self.student.load_state_dict(blob["student"])
        self.opt.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"])
        self.global_step = int(blob["global_step"])
        self.metrics = list(blob["metrics"])
        pos = blob["position"]
        return pos["stage"], pos["epoch"], pos["batch"], EpochAcc(**blob["epoch_acc"])

    # -- the loop ------------------------------------------------------------------
    def fit(self, resume: dict | None = None) -> None:
        stage0, epoch0, batch0, acc = (0, 0, 0, EpochAcc()) if resume is None else self.restore(resume)
        old_handler = None
        if self.dist.is_main and _main_thread():
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            for stage in range(stage0, len(self.pipe.taus)):
                self._stage(stage, epoch0 if stage == stage0 else 0, batch0 if stage == stage0 else 0,
                            acc if stage == stage0 else EpochAcc())
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)

    def _on_sigint(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True

    def _stage(self, stage: int, first_epoch: int, first_batch: int, acc: EpochAcc) -> None:
        from tqdm.auto import tqdm

        tau = self.pipe.taus[stage]
        n_stages, epochs = len(self.pipe.taus), self.cfg.epochs_per_stage
        n_batches = self.batches_per_epoch
        bar = tqdm(total=epochs * n_batches, initial=first_epoch * n_batches + first_batch, leave=False,
                   desc=f"stage {stage + 1}/{n_stages}", file=sys.stderr, disable=not self.progress,
                   dynamic_ncols=True)
        t_stage = time.perf_counter()
        try:
            for epoch in range(first_epoch, epochs):
                self._epoch(stage, epoch, tau, first_batch if epoch == first_epoch else 0,
                            acc if epoch == first_epoch else EpochAcc(), bar)
        finally:
            bar.close()
        last = self.metrics[-1]
        self.save_checkpoint(f"checkpoints/stage-{stage}.pt", self.state(stage + 1, 0, 0, EpochAcc()))
        if self.dist.is_main:
            val = f"{last['val_loss']:.4f}" if last["val_loss"] is not None else "n/a"
            self.echo(f"stage {stage + 1}/{n_stages}  tau {tau:.3g}  train loss {last['train_loss']:.4f}  "
                      f"val loss {val}  {time.perf_counter() - t_stage:.1f}s  {last['samples_per_s']:,.0f} samples/s")

    def _epoch(self, stage: int, epoch: int, tau: float, first_batch: int, acc: EpochAcc, bar) -> None:
        batches = self.batches(stage, epoch)
        acc_steps = self.cfg.accumulate
        self.objective.train()
        t0 = time.perf_counter() - acc.seconds
        for b in range(first_batch, len(batches)):
            x = self.pipe.teacher.rows(batches[b]).to(self.pipe.device, non_blocking=True)
            out, xhat = self.objective(x)
            loss = self.pipe.loss(out, x, tau, xhat)
            finite = bool(torch.isfinite(loss).item())
            if not distributed.all_ok(self.dist, finite):
                raise TrainingError(
                    f"the loss became {loss.item() if not finite else 'non-finite on another rank'} at stage "
                    f"{stage + 1}, epoch {epoch + 1}, step {b + 1} (tau {tau:.3g}, learning rate "
                    f"{self.lr_at(self.global_step):.3g}); the last good checkpoint is kept; resume with a lower "
                    f"learning rate: {self.resume_hint} --resume --set train.learning_rate="
                    f"{self.cfg.learning_rate / 10:g}")
            (loss / acc_steps).backward()
            acc.loss_sum += float(loss.detach())
            acc.batches += 1
            acc.samples += len(batches[b])
            if (b + 1) % acc_steps == 0 or b + 1 == len(batches):
                for group in self.opt.param_groups:
                    group["lr"] = self.lr_at(self.global_step)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.global_step += 1
                if self.stop_requested and b + 1 < len(batches):
                    acc.seconds = time.perf_counter() - t0
                    self._interrupt(stage, epoch, b + 1, acc)
            if b % 10 == 0 or b + 1 == len(batches):
                bar.set_postfix(loss=f"{loss.item():.4f}", tau=f"{tau:.3g}", refresh=False)
            bar.update(1)
        seconds = time.perf_counter() - t0
        train_loss = acc.loss_sum / max(1, acc.batches)
        if self.dist.active:
            train_loss = distributed.mean(self.dist, train_loss)
        record = {"stage": stage, "epoch": epoch, "tau": tau, "lr": self.lr_at(max(0, self.global_step - 1)),
                  "train_loss": train_loss, "val_loss": self.val_loss(tau) if self.dist.is_main else None,
                  "seconds": round(seconds, 4), "samples_per_s": acc.samples * self.dist.world / max(seconds, 1e-9),
                  "step": self.global_step}
        self.metrics.append(record)
        if self.run is not None and self.dist.is_main:
            self.run.write_text("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        self.save_checkpoint("checkpoints/latest.pt", self.state(stage, epoch + 1, 0, EpochAcc()))
        if self.stop_requested and not (stage + 1 == len(self.pipe.taus) and epoch + 1 == self.cfg.epochs_per_stage):
            raise Interrupted(f"interrupted after stage {stage + 1}, epoch {epoch + 1}; checkpoint saved; "
                              f"continue with: {self.resume_hint} --resume")

    def _interrupt(self, stage: int, epoch: int, batch: int, acc: EpochAcc) -> None:
        self.save_checkpoint("checkpoints/interrupt.pt", self.state(stage, epoch, batch, acc))
        raise Interrupted(f"interrupted at stage {stage + 1}, epoch {epoch + 1}; checkpoint saved; "
                          f"continue with: {self.resume_hint} --resume")

    @torch.no_grad()
    def val_loss(self, tau: float) -> float | None:
        rows = self.pipe.val_rows[: self.cfg.eval_rows]
        if len(rows) < 2:
            return None
        self.plain_objective.eval()
        total, count, bs = 0.0, 0, max(2, self.cfg.batch_size)
        for i in range(0, len(rows), bs):
            chunk = rows[i:i + bs]
            if len(chunk) < 2:
                continue
            x = self.pipe.teacher.rows(chunk).to(self.pipe.device)
            out, xhat = self.plain_objective(x)
            total += float(self.pipe.loss(out, x, tau, xhat))
            count += 1
        self.plain_objective.train()
        return total / max(1, count)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def checkpoint_order(blob: dict) -> tuple[int, int, int]:
    p = blob["position"]
    return (int(p["stage"]), int(p["epoch"]), int(p["batch"]))


def find_resume_checkpoint(run: RunDir, warn: Callable[[str], None]) -> dict | None:
    """The most advanced readable checkpoint in ``run``; corrupt ones are reported and skipped."""
    best = None
    for path in sorted((run.path / "checkpoints").glob("*.pt")):
        try:
            blob = safe_load(path, what="checkpoint")
            if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
                raise CheckpointError(f"{path}: not an atlas checkpoint")
            key = checkpoint_order(blob)
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            warn(f"skipping unreadable checkpoint: {exc}")
            continue
        if best is None or key > checkpoint_order(best[1]):
            best = (path, blob)
    if best is None:
        return None
    best[1]["_path"] = str(best[0])
    return best[1]


def check_resumable(blob: dict, config_dict: dict, source) -> list[str]:
    """Refuse a resume whose configuration changed in a way that changes the weights; list allowed changes."""
    old, new = flatten(training_keys(blob["config"])), flatten(training_keys(config_dict))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    blocking = [k for k in changed if k not in RESUMABLE]
    if blocking:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking)
        raise CheckpointError(f"{source}: cannot resume: the configuration changed since the checkpoint ({detail}); "
                              "restore those values or start a fresh run with --overwrite")
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
