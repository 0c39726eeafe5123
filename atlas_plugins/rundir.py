"""The run folder: one run at a time (a lock), and a manifest of every file the toolkit wrote.

Only files listed in the manifest are ever removed (``--overwrite``), so a run
never deletes a file it did not create.  All writes are atomic.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .checkpoint import atomic_save, atomic_write_bytes
from .errors import RunDirError

MANIFEST = ".atlas-manifest.json"
LOCK = ".atlas.lock"


class RunDir:
    """An output folder owned by one ``atlas-run`` process at a time."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    # -- locking ---------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock or raise :class:`RunDirError` naming the process that holds it.

        ``flock`` locks die with their process, so a lock file left by a killed
        run is stale by construction and is simply taken over.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"{self.path}: cannot create the output folder ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another atlas-run ({holder}); wait for it to finish "
                              "or choose another output.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock_fd = fd
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Temp files of atomic writes interrupted by a crash (``.<name>.<random>.tmp`` next to a file we own)."""
        owned = {Path(rel).name: Path(rel).parent for rel in self.manifest()}
        for tmp in self.path.rglob(".*.tmp"):
            target = tmp.name[1:].rsplit(".", 2)[0]
            if target in owned or target == MANIFEST:
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- manifest ----------------------------------------------------------------
    def manifest(self) -> list[str]:
        try:
            return list(json.loads((self.path / MANIFEST).read_text()))
        except (OSError, ValueError):
            return []

    def _record(self, rel: str) -> None:
        names = self.manifest()
        if rel not in names:
            names.append(rel)
            atomic_write_bytes(self.path / MANIFEST, json.dumps(names, indent=0).encode())

    def holds_run(self) -> bool:
        """Whether a previous run left files here."""
        return any((self.path / rel).exists() for rel in self.manifest())

    def clear(self) -> list[str]:
        """Remove the files a previous run wrote (only those); return what was removed."""
        removed = []
        for rel in self.manifest():
            target = self.path / rel
            if target.is_file():
                target.unlink()
                removed.append(rel)
        for rel in sorted({str(Path(r).parent) for r in self.manifest()}, key=len, reverse=True):
            folder = self.path / rel
            if rel != "." and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        (self.path / MANIFEST).unlink(missing_ok=True)
        return removed

    # -- writing -----------------------------------------------------------------
    def file(self, rel: str) -> Path:
        """Path of ``rel`` inside the folder, recorded in the manifest before anything is written to it."""
        self._record(rel)
        return self.path / rel

    def write_text(self, rel: str, text: str) -> Path:
        target = self.file(rel)
        atomic_write_bytes(target, text.encode("utf-8"))
        return target

    def save(self, rel: str, obj) -> Path:
        target = self.file(rel)
        atomic_save(obj, target)
        return target
