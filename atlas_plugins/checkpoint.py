"""Safe, atomic reading and writing of ``.pt`` files: checkpoints, students, teacher checkpoints.

Every load uses ``torch.load(weights_only=True)``: a file whose pickle would
build arbitrary objects (and so could run code) is refused with a clear message.
Every write goes to a temporary file in the same folder, is flushed and
fsync'ed, then ``os.replace``'d over the target, so a crash at any moment
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import os
import pickle
import pickletools
import socket
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import field_defaults, flatten, resumable_keys, training_keys
from .errors import CheckpointError, WriteError, first_line
from .formats import content_kind, npy_parts, parquet_parts, unreadable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path, *, replace: bool = True):
    """A binary file handle whose contents replace ``path`` when the block ends without an error.

    The data go to a temporary file in the same folder, flushed and fsync'ed, then ``os.replace``'d over
    ``path``; on any error the temporary file is removed and ``path`` is left as it was.  With
    ``replace=False`` the file is hard-linked into place instead, which fails if ``path`` appeared meanwhile
    (a caller that checked it was absent at the start keeps that promise to the end).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"{path}: could not be written ({exc.strerror or exc}); the previous version of this "
                             "file and every file written before are intact") from None
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


def _link_into_place(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links (some network and FAT mounts): check, then rename
        if path.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def atomic_write_bytes(path, data) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def cache_writer(path):
    """A binary file handle whose contents become the cache file ``path`` when the block ends without an error.

    For a file that several processes may write at once, each the same bytes (the ranks of a torchrun run
    converting one teacher): each writes ``.<name>.<host>-<pid>.tmp`` beside it, fsync's it and renames it into
    place, so the last rename wins and every reader sees a whole file.  On an error the temp file is removed; one
    left by a process of this host that was killed part way (``kill -9``, the out-of-memory killer: as large as
    the teacher) is removed by the next writer of the same file.  A failure to write the cache (a full disk, a
    ``cache_dir`` inside a file) is a :class:`WriteError` naming it, never taken for a failure to read the data.
    """
    path = Path(path)
    stem = f".{path.name}.{socket.gethostname().replace('.', '_')}-"
    tmp = path.with_name(f"{stem}{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(glob.escape(stem) + "*.tmp"):
            pid = old.name[len(stem):-len(".tmp")]
            if pid.isdigit() and not _running(int(pid)):
                old.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise _cache_unwritable(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield _CacheFile(fh, path)
            try:
                fh.flush()
                os.fsync(fh.fileno())
                os.replace(tmp, path)
            except OSError as exc:
                raise _cache_unwritable(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


class _CacheFile:
    """What :func:`cache_writer` yields: ``write`` and ``seek`` of the temp file, a failed write a
    :class:`WriteError` naming the cache (the block's other errors, reading the data, stay the caller's)."""

    def __init__(self, fh, path: Path):
        self._fh, self._path = fh, path

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise _cache_unwritable(self._path, exc) from None

    def seek(self, *args) -> int:
        return self._fh.seek(*args)


def _cache_unwritable(path: Path, exc: OSError) -> WriteError:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    then = ("free some space, or set the teacher's cache_dir to a disk with room for a copy of the vectors" if full
            else "set the teacher's cache_dir to a folder this process can write")
    return WriteError(f"{path}: cache file could not be written ({exc.strerror or exc}); {then}")


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's; or no pid at all (a name we did not write): kept
        pass
    return True


def atomic_save(obj: Any, path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())  # a view, not a second copy of a large file


def safe_load(path, *, trust: bool = False, what: str = "checkpoint", mmap: bool = False) -> Any:
    """Load a ``.pt`` file with ``weights_only=True``, mapping failures to :class:`CheckpointError`.

    ``trust=True`` unpickles in full a file that holds more than ``weights_only`` allows (with a warning
    naming what it imports): a file that needs no trust never gets it.  Only the boolean ``True`` does so:
    a string such as ``"false"`` never does.  ``mmap``: tensors stay in the file, paged in as they are read.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: {what} not found" if not p.exists() else f"{p}: is a folder; expected a {what}"
                              if p.is_dir() else f"{p}: not a regular file ({what})")

    reads = (".pt", ".pth") if what == "teacher file" else None  # a teacher of another format: named so

    def load(weights_only: bool):
        # Sparse tensors checked as they load: torch leaves the checks off by default, so a crafted file could
        # hand over indices outside the tensor (memory errors later); some torch versions warn about it too.
        with torch.sparse.check_sparse_tensor_invariants():
            return torch.load(p, map_location="cpu", weights_only=weights_only, mmap=mmap)

    try:
        try:
            return load(weights_only=True)
        except pickle.UnpicklingError:
            imports = pickled_imports(p)
            if imports is None:
                raise CheckpointError(unreadable(p, what, reads, ": it is damaged or not a torch file (torch.save "
                                                 "writes a zip archive)")) from None
            unsafe = [g for g in imports if not g.startswith(_SAFE_PREFIXES)]
            first = f" (it would import {unsafe[0]})" if unsafe else ""
            if trust is not True:
                hint = ("set trust = true in [teacher] only for a file you trust" if what == "teacher file"
                        else "only tensors, numbers, strings, lists and dicts can be loaded")
                raise CheckpointError(f"{p}: refused to load {what}: it holds pickled objects that weights_only=True "
                                      f"does not allow{first}; unpickling could run code; {hint}") from None
            importing = f", importing {unsafe[0]}" if unsafe else ""
            warnings.warn(f"atlas: {p}: unpickled in full (trust = true){importing}: only for a file you trust",
                          stacklevel=2)
            return load(weights_only=False)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(unreadable(p, what, reads, f" ({first_line(exc, 200)})")) from None


_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
                  "builtins.complex", "builtins.slice", "builtins.range")


def pickled_imports(path) -> list[str] | None:
    """The ``module.name`` globals the pickle inside a ``torch.save`` archive would import, read without
    unpickling (``pickletools``); ``None`` when the file is not an intact archive with a pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            data = archive.read(name)
        found, strings, memo = [], [], {}
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT") and strings:
                memo[len(memo) if op.name == "MEMOIZE" else arg] = strings[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and arg in memo:
                strings.append(memo[arg])
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
        return found
    except Exception:  # any damage: not an intact archive
        return None


OTHER_READERS = {".npy": "numpy.load(path)", ".npz": "numpy.load(path)[name]",
                 ".parquet": "pyarrow.parquet.read_table(path)", ".arrow": "pyarrow.feather.read_table(path)",
                 ".safetensors": "safetensors.torch.load_file(path)[name]"}  # format -> the Python call that reads it


def load_teacher_checkpoint(checkpoint_path, device: str = "cpu") -> dict:
    """Load a teacher checkpoint safely; return a dict with at least ``embeddings`` (N, D).

    A bare tensor becomes ``{"embeddings": tensor}``; a dict must hold
    ``embeddings`` and may hold ``model_state``, ``labels`` and ``texts``.
    """
    try:
        obj = safe_load(checkpoint_path, what="teacher file")
    except CheckpointError:
        if parts := npy_parts(checkpoint_path) or parquet_parts(checkpoint_path):
            raise CheckpointError(f"{checkpoint_path}: is a folder of {Path(parts[0]).suffix} parts, and "
                                  "load_teacher_checkpoint reads torch files; train on the folder as it is (a "
                                  "pipeline's [teacher] path)") from None
        kind = content_kind(checkpoint_path)  # looked at only when torch could not read it
        if kind is None or kind[1] not in OTHER_READERS:
            raise
        raise CheckpointError(f"{checkpoint_path}: is {kind[0]}, and load_teacher_checkpoint reads torch files; "
                              f"read the vectors with {OTHER_READERS[kind[1]]}, or train on the file as it is "
                              "(a pipeline's [teacher] path)") from None
    if isinstance(obj, torch.Tensor):
        obj = {"embeddings": obj}
    if not isinstance(obj, dict) or "embeddings" not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{checkpoint_path}: expected a tensor or a dict with 'embeddings', found: {keys}")
    if not isinstance(obj["embeddings"], torch.Tensor):
        found = type(obj["embeddings"]).__name__
        raise CheckpointError(f"{checkpoint_path}: 'embeddings' must be a tensor, got {found}")
    obj = dict(obj)
    obj["embeddings"] = obj["embeddings"].to(device)
    return obj


# -- training checkpoints ---------------------------------------------------------------------
CHECKPOINT_FORMAT = "atlas-checkpoint/1"


def checkpoint_order(blob: dict) -> tuple[int, int, int]:
    p = blob["position"]
    return (int(p["stage"]), int(p["epoch"]), int(p["batch"]))


def find_resume_checkpoint(run, warn: Callable[[str], None]) -> dict | None:
    """The most advanced readable checkpoint in the :class:`~atlas_plugins.rundir.RunDir` ``run``; unreadable,
    foreign or incomplete ones are reported and skipped."""
    best = None
    for path in sorted((run.path / "checkpoints").glob("*.pt")):
        try:
            if run.inside(str(path.relative_to(run.path))) is None:
                raise CheckpointError(f"{path}: a symbolic link; checkpoints are only read from the run folder")
            blob = safe_load(path, what="checkpoint")
            check_checkpoint(blob, path)
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


def check_checkpoint(blob, path) -> None:
    """A checkpoint must be ours and complete: every key the trainer restores, of the right type."""
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an atlas checkpoint")
    expected = {"position": dict, "global_step": int, "student": dict, "optimizer": dict, "rng": torch.Tensor,
                "epoch_acc": dict, "metrics": list, "config_hash": str, "config": dict}
    for key, kind in expected.items():
        if not isinstance(blob.get(key), kind):
            raise CheckpointError(f"{path}: incomplete checkpoint ('{key}' is missing or not a {kind.__name__})")
    if not blob["student"]:
        raise CheckpointError(f"{path}: incomplete checkpoint (no student weights)")
    if "world" in blob and not (type(blob["world"]) is int and blob["world"] >= 1):  # older checkpoints lack it
        raise CheckpointError(f"{path}: incomplete checkpoint ('world' is not a number of processes)")


def check_same_teacher(blob: dict, teacher, digest: str, source) -> None:
    """Refuse a resume on other teacher rows than the checkpoint's (the file at ``teacher.path`` was replaced
    or re-embedded, in part or whole): the student would go on learning other data.  ``digest`` is
    :func:`~atlas_plugins.teacher.teacher_digest` of ``teacher``, every row's values.  Checkpoints written
    before it recorded 64 sampled rows (``teacher_rows``), compared as they were; older ones are not checked."""
    if "teacher_digest" in blob:
        same = blob["teacher_digest"] == digest
    else:
        same = blob.get("teacher_rows", "") in ("", _sampled_rows_hash(teacher))
    if not same:
        raise CheckpointError(f"{source}: cannot resume: the teacher's rows are not the ones the checkpoint was "
                              "trained on (the file changed since); restore it, or start a fresh run with --overwrite")


def _sampled_rows_hash(teacher) -> str:
    """What checkpoints recorded before :func:`~atlas_plugins.teacher.teacher_digest`: a hash of the teacher's
    shape, dtype and 64 rows spread over it."""
    n = teacher.num_rows
    at = np.unique(np.linspace(0, n - 1, min(n, 64)).astype(np.int64))
    h = hashlib.sha256(f"{n}x{teacher.dim}:{teacher.embeddings.dtype}".encode())
    h.update(teacher.rows(at).numpy().tobytes())
    return h.hexdigest()[:20]


# Where the teacher's files are may change on --resume (a project moved to another disk or machine) when the
# checkpoint holds every row's digest: check_same_teacher then proves the rows are the same wherever they are.
TEACHER_LOCATIONS = {"teacher.path", "teacher.meta", "teacher.cache_dir"}


def check_resumable(blob: dict, config_dict: dict, source, world: int = 1) -> list[str]:
    """Refuse a resume whose configuration changed in a way that changes the weights; list allowed changes:
    the fields marked ``resumable``, and :data:`TEACHER_LOCATIONS` for a checkpoint with a teacher digest.
    A key the checkpoint lacks (a field added since it was written) is its field's default there.  The
    number of processes (``world``, torchrun's) may not change either: each draws its share of every step's
    rows, so it sets the global batch, the steps per epoch and the learning-rate schedule, as batch_size does
    (a checkpoint written before it was recorded is not checked)."""
    was = blob.get("world", world)
    if was != world:
        how = "one process" if was == 1 else f"{was} processes (torchrun)"
        again = "atlas-run without torchrun" if was == 1 else f"torchrun with {was} processes in all"
        raise CheckpointError(f"{source}: cannot resume: the checkpoint was trained by {how} and this run has "
                              f"{world}; the global batch, the steps and the learning-rate schedule would change: "
                              f"resume with {again}, or start a fresh run with --overwrite")
    old, new = flatten(training_keys(blob["config"])), flatten(training_keys(config_dict))
    old = {**{k: v for k, v in field_defaults().items() if k in new}, **old}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    allowed = resumable_keys() | (TEACHER_LOCATIONS if "teacher_digest" in blob else set())
    blocking = [k for k in changed if k not in allowed]
    if blocking:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in blocking)
        raise CheckpointError(f"{source}: cannot resume: the configuration changed since the checkpoint ({detail}); "
                              "restore those values or start a fresh run with --overwrite")
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed]
