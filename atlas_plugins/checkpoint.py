"""Safe, atomic reading and writing of ``.pt`` files: checkpoints, students, teacher checkpoints.

Every load uses ``torch.load(weights_only=True)``: a file whose pickle would
build arbitrary objects (and so could run code) is refused with a clear message.
Every write goes to a temporary file in the same folder, is flushed and
fsync'ed, then ``os.replace``'d over the target, so a crash at any moment
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_load(path, *, trust: bool = False, what: str = "checkpoint") -> Any:
    """Load a ``.pt`` file with ``weights_only=True`` (unless ``trust``), mapping failures to :class:`CheckpointError`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: {what} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines() if ln.strip()]
        found = re.search(r"Unsupported global: GLOBAL (\S+)", " ".join(lines))
        if not found:
            raise CheckpointError(f"{p}: not a readable {what}: it is damaged or not a torch file "
                                  "(torch.save writes a zip archive)") from None
        first = f"it would import {found.group(1)}"
        hint = ("set trust = true in [teacher] only for a file you trust" if what == "teacher file"
                else "only tensors, numbers, strings, lists and dicts can be loaded")
        raise CheckpointError(f"{p}: refused to load {what}: it holds pickled objects that weights_only=True "
                              f"does not allow ({first}); unpickling could run code; {hint}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{p}: not a readable {what} ({type(exc).__name__}: {first})") from None


def load_teacher_checkpoint(checkpoint_path, device: str = "cpu") -> dict:
    """Load a teacher checkpoint safely; return a dict with at least ``embeddings`` (N, D).

    A bare tensor becomes ``{"embeddings": tensor}``; a dict must hold
    ``embeddings`` and may hold ``model_state``, ``labels`` and ``texts``.
    """
    obj = safe_load(checkpoint_path, what="teacher file")
    if isinstance(obj, torch.Tensor):
        obj = {"embeddings": obj}
    if not isinstance(obj, dict) or "embeddings" not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{checkpoint_path}: expected a tensor or a dict with 'embeddings', found: {keys}")
    if not isinstance(obj["embeddings"], torch.Tensor):
        raise CheckpointError(f"{checkpoint_path}: 'embeddings' must be a tensor, got {type(obj['embeddings']).__name__}")
    obj = dict(obj)
    obj["embeddings"] = obj["embeddings"].to(device)
    return obj
