"""Built-in loggers: ``jsonl`` (``metrics.jsonl``, one JSON object per epoch) and ``tensorboard``.

A logger factory gets ``path(rel)``, a path inside the run folder owned by the run, and returns an
object with ``log(metrics)`` and optionally ``start(info)`` and ``end(summary)``.
"""

from __future__ import annotations

import json
import socket
import time

from atlas_plugins.checkpoint import atomic_write_bytes
from atlas_plugins.errors import ConfigError

SCALARS = ("train_loss", "val_loss", "tau", "lr", "samples_per_s")


class JsonlLogger:
    """``metrics.jsonl``: every epoch so far, rewritten atomically after each one (a reader never sees half)."""

    def __init__(self, path):
        self.path, self.rows = path, []

    def start(self, info: dict) -> None:
        self.target = self.path("metrics.jsonl")
        self.rows = list(info.get("metrics", []))

    def log(self, metrics: dict) -> None:
        self.rows.append(metrics)
        atomic_write_bytes(self.target, "".join(json.dumps(m) + "\n" for m in self.rows).encode())


def jsonl(path):
    """Each epoch's metrics as one JSON line in ``metrics.jsonl``."""
    return JsonlLogger(path)


class TensorBoardLogger:
    """Each epoch's scalars, at its optimizer step, in ``tensorboard/events.out.tfevents.<time>.<host>.atlas``
    (one file per start; a resumed run adds a file, and TensorBoard reads the folder as one run)."""

    def __init__(self, path, modules):
        self.path, (self.Event, self.Summary, self.RecordWriter) = path, modules
        self.fh = self.writer = None

    def _write(self, **fields) -> None:
        self.writer.write(self.Event(wall_time=time.time(), **fields).SerializeToString())
        self.fh.flush()

    def start(self, info: dict) -> None:
        name = f"tensorboard/events.out.tfevents.{int(time.time())}.{socket.gethostname()}.atlas"
        self.fh = open(self.path(name), "wb")
        self.writer = self.RecordWriter(self.fh)
        self._write(file_version="brain.Event:2")

    def log(self, metrics: dict) -> None:
        values = [self.Summary.Value(tag=k, simple_value=float(metrics[k])) for k in SCALARS
                  if isinstance(metrics.get(k), (int, float))]
        self._write(step=int(metrics.get("step", 0)), summary=self.Summary(value=values))

    def end(self, summary: dict) -> None:
        if self.fh is not None:
            self.fh.close()


def tensorboard(path):
    """Each epoch's loss, τ, learning rate and speed for TensorBoard, by step (needs the 'tensorboard' extra)."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise ConfigError("logger 'tensorboard' needs the optional extra: pip install 'atlas-distill[tensorboard]' "
                          "(or remove it from output.loggers)") from None
    return TensorBoardLogger(path, (Event, Summary, RecordWriter))
