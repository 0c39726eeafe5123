"""The run folder: one run at a time (a lock), and a manifest of every file the toolkit wrote.

The rules, all enforced here:

- atlas-run writes only inside its run folder, never through a symbolic link, and never over a
  file it did not write (a file that exists but is not in the manifest);
- only files listed in the manifest are ever removed (``--overwrite``), and only when they lie
  inside the folder; any other manifest entry is ignored with a warning; caches (``cache/``,
  keyed by their content) are kept for the next run;
- one process at a time holds the folder's lock (``flock`` on ``.atlas.lock``, opened without
  following links); the lock file is removed when the run ends.

All writes are atomic (:mod:`atlas_plugins.checkpoint`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import warnings
from pathlib import Path, PurePosixPath

from .checkpoint import atomic_save, atomic_write_bytes
from .errors import RunDirError

try:
    import fcntl
except ImportError:  # Windows: said here, instead of Python's bare "No module named 'fcntl'"
    raise ImportError("Atlas Distill runs on Linux and macOS: its run folder's lock needs POSIX file locks (fcntl), "
                      "which Windows lacks; on Windows, run it under WSL") from None

MANIFEST = ".atlas-manifest.json"
LOCK = ".atlas.lock"
# What a run writes (glob patterns relative to the run folder); a fresh run refuses a folder where
# one of these exists and was not written by atlas-run.
OUTPUTS = ("pipeline.toml", "metrics.jsonl", "student.pt", "map.pt", "map.parquet", "map.csv", "map.html",
           "report.json", "report.md", "training.png", "scatter.png", "checkpoints/*.pt", "cache/knn-*.pt")
# Where a crash can leave temp files of atomic writes.
_TEMP_FOLDERS = (".", "checkpoints", "cache")


class RunDir:
    """An output folder owned by one ``atlas-run`` process at a time."""

    def __init__(self, path):
        self.path = Path(os.path.abspath(path))
        self._lock_fd: int | None = None
        self._created: Path | None = None

    # -- locking ---------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock or raise :class:`RunDirError` naming the process that holds it.

        ``flock`` locks die with their process, so a lock file left by a killed
        run is stale by construction and is simply taken over.
        """
        try:
            missing = [p for p in (self.path, *self.path.parents) if not os.path.lexists(p)]
            self._created = missing[-1] if missing else None  # the outermost folder this run makes
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create the output folder ({exc.strerror})") from None
        lock = self.path / LOCK
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RunDirError(f"{lock} is a symbolic link; atlas-run never writes through one: remove it "
                                      "and run again") from None
                raise RunDirError(f"{lock}: cannot create the lock file ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                error = self._in_use(fd)
                os.close(fd)
                raise error from None
            try:  # the previous holder may have removed the file between our open and our lock: retry
                same = os.fstat(fd).st_ino == os.lstat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock_fd = fd
        self._remove_stale_temp_files()

    def check_free(self) -> None:
        """Raise :class:`RunDirError` naming the holder when another process holds the lock; takes nothing."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)

    def _in_use(self, fd: int) -> RunDirError:
        """The error naming the holder, whose pid, host and start time the lock file holds."""
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
        return RunDirError(f"{self.path} is in use by another atlas-run ({holder}); wait for it to finish or choose "
                           "another output.dir")

    def _remove_stale_temp_files(self) -> None:
        """Temp files of atomic writes interrupted by a crash (``.<name>.<random>.tmp`` next to a file we own)."""
        owned = {PurePosixPath(rel).name for rel in self.manifest()} | {MANIFEST}
        for folder in _TEMP_FOLDERS:
            base = self.path / folder
            if base.is_symlink() or not base.is_dir():
                continue
            for tmp in base.glob(".*.tmp"):
                if tmp.name[1:].rsplit(".", 2)[0] in owned:
                    tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file (while still holding it) and let go of the lock; remove the folder too
        when :meth:`acquire` created it and nothing else was written, and the empty folders it was made in
        (``runs/`` of ``runs/my-map``) when it made them too."""
        if self._lock_fd is not None:
            try:
                if os.fstat(self._lock_fd).st_ino == os.lstat(self.path / LOCK).st_ino:
                    os.unlink(self.path / LOCK)
            except OSError:
                pass
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
            if self._created:  # a teacher's cache/, left empty by a file it could not convert, then the folder
                made = [self.path / "cache", self.path]
                made += [p for p in self.path.parents if p.is_relative_to(self._created)]
                for folder in made:
                    try:
                        folder.rmdir()  # only succeeds when empty
                    except OSError:
                        if folder != made[0]:
                            break

    @contextlib.contextmanager
    def recording_new_files(self, folder: str, enabled: bool = True):
        """Record in the manifest the files that appear in ``folder`` meanwhile (a teacher's cache, written
        by a plugin that does not know the manifest)."""
        base = self.path / folder
        before = set(base.iterdir()) if enabled and base.is_dir() and not base.is_symlink() else set()
        yield
        if enabled and base.is_dir() and not base.is_symlink():
            for path in sorted(set(base.iterdir()) - before):
                if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
                    self._record(f"{folder}/{path.name}")

    # -- paths -------------------------------------------------------------------
    def inside(self, rel) -> Path | None:
        """``rel``'s path in the folder, or ``None`` when it is not a plain relative path inside it
        (absolute, with ``..``, or through a symbolic link)."""
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            return None
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or not parts:
            return None
        target = self.path
        for part in parts:
            target = target / part
            if target.is_symlink():
                return None
        return target

    # -- manifest ----------------------------------------------------------------
    def manifest(self) -> list[str]:
        """What atlas-run wrote here, as recorded (entries are checked with :meth:`inside` before use)."""
        path = self.path / MANIFEST
        if path.is_symlink():
            return []
        try:
            names = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _record(self, rel: str) -> None:
        names = self.manifest()
        if rel not in names:
            names.append(rel)
            atomic_write_bytes(self.path / MANIFEST, json.dumps(names, indent=0).encode())

    def continue_command(self, command: str) -> str:
        """The command that continues a run here: ``--resume`` when a checkpoint exists, else a fresh start."""
        has_checkpoint = any(p.is_file() for p in (self.path / "checkpoints").glob("*.pt"))
        return f"{command} --resume" if has_checkpoint else f"{command} --overwrite"

    def holds_run(self) -> bool:
        """Whether a previous run left files here (caches do not count: they belong to no run)."""
        owned = [p for p in map(self.inside, self.manifest()) if p is not None]
        return any(p.exists() for p in owned if p.parent != self.path / "cache")

    def foreign_outputs(self) -> list[Path]:
        """Files where a run would write that atlas-run did not write (so a fresh run must not overwrite)."""
        owned = {p for p in map(self.inside, self.manifest()) if p is not None}
        found = [self.path / f for f in ("checkpoints", "cache") if (self.path / f).is_symlink()]
        for pattern in OUTPUTS:
            found += sorted(p for p in self.path.glob(pattern) if (p.exists() or p.is_symlink()) and p not in owned)
        return found

    def clear(self) -> list[str]:
        """Remove the files a previous run wrote (only those, only inside the folder); return what was removed."""
        removed, folders, kept = [], set(), []
        for rel in self.manifest():
            target = self.inside(rel)
            if target is not None and target.parent == self.path / "cache":
                kept.append(rel)  # caches are keyed by their content and belong to no run: the next run reuses them
                continue
            if target is None:
                warnings.warn(f"atlas: ignoring manifest entry {rel!r} in {self.path / MANIFEST}: not a file inside "
                              "the run folder (nothing outside it is ever removed)", stacklevel=2)
                continue
            if target.is_file():
                target.unlink()
                removed.append(rel)
            folders.update(target.parents)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if self.path in folder.parents and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if kept:
            atomic_write_bytes(self.path / MANIFEST, json.dumps(kept, indent=0).encode())
        else:
            (self.path / MANIFEST).unlink(missing_ok=True)
        return removed

    def remove(self, rel: str) -> bool:
        """Remove ``rel`` if atlas-run wrote it (it is in the manifest and inside the folder)."""
        target = self.inside(rel)
        if target is None or rel not in self.manifest() or not target.is_file():
            return False
        target.unlink()
        names = [n for n in self.manifest() if n != rel]
        atomic_write_bytes(self.path / MANIFEST, json.dumps(names, indent=0).encode())
        return True

    # -- writing -----------------------------------------------------------------
    def file(self, rel: str) -> Path:
        """Path of ``rel`` inside the folder (its folders created), recorded in the manifest before anything is
        written to it.

        Refused (:class:`RunDirError`) when the path leads through a symbolic link or when a
        file is already there that atlas-run did not write.
        """
        target = self.inside(rel)
        if target is None:
            raise RunDirError(f"{self.path / rel}: refused to write through a symbolic link or outside the run "
                              "folder; remove the link or choose another output.dir")
        if target.exists() and rel not in self.manifest():
            raise RunDirError(f"{target} exists and was not written by atlas-run; move it away or choose "
                              "another output.dir (atlas-run never overwrites files it did not write)")
        self._record(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self.file(rel)
        atomic_write_bytes(target, data)
        return target

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def save(self, rel: str, obj) -> Path:
        target = self.file(rel)
        atomic_save(obj, target)
        return target
