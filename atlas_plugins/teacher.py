"""Teacher data: the embeddings a student learns from, plus optional labels and texts.

A teacher plugin returns one :class:`TeacherData`.  ``embeddings`` is a
``numpy`` array (often memory-mapped, never read whole) or a ``torch`` tensor of
shape ``(N, D)``; batches are read row by row with :meth:`TeacherData.rows`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import attrs
import numpy as np
import torch

from .errors import DataError

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
CHUNK_BYTES = 8 * 2**20


@attrs.define
class TeacherData:
    """Teacher embeddings ``(N, D)`` and, when known, a label and a text per row."""

    embeddings: Any
    labels: Sequence | None = None
    texts: Sequence[str] | None = None
    model_state: dict | None = None
    source: str = ""

    @property
    def num_rows(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, index) -> torch.Tensor:
        """Rows ``index`` (a 1-D integer array or tensor) as a float32 tensor ``(len(index), D)``.

        For a memory-mapped array only those rows are read; indices are read in
        sorted order for locality and returned in the order given.
        """
        emb = self.embeddings
        if isinstance(emb, torch.Tensor):
            idx = torch.as_tensor(index, dtype=torch.long)
            return emb[idx].to(torch.float32)
        idx = np.asarray(index, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), emb.shape[1]), dtype=np.float32)
        if _file_backed(emb):
            sidx = idx[order]
            cuts = np.flatnonzero(np.diff(sidx) != 1) + 1
            fd = os.open(emb.filename, os.O_RDONLY)
            try:
                for pos, run in zip(np.concatenate([[0], cuts]), np.split(sidx, cuts)):
                    out[order[pos:pos + len(run)]] = _pread(emb, int(run[0]), int(run[0]) + len(run), fd)
            finally:
                os.close(fd)
        else:
            out[order] = emb[idx[order]]
        return torch.from_numpy(out)

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, rows)`` over the whole array, ``chunk_rows`` at a time (default: about 8 MB)."""
        chunk_rows = chunk_rows or max(1, CHUNK_BYTES // (4 * self.dim))
        for start in range(0, self.num_rows, chunk_rows):
            stop = min(start + chunk_rows, self.num_rows)
            block = _pread(self.embeddings, start, stop) if _file_backed(self.embeddings) else self.embeddings[start:stop]
            if isinstance(block, torch.Tensor):
                yield start, block.to(torch.float32)
            else:
                yield start, torch.from_numpy(np.array(block, dtype=np.float32))


def _file_backed(emb) -> bool:
    """A C-ordered ``np.memmap`` of a file: read with ``pread`` so the map's pages never count as our memory."""
    return isinstance(emb, np.memmap) and bool(getattr(emb, "filename", None)) and emb.flags.c_contiguous \
        and emb.ndim == 2


def _pread(emb: np.memmap, start: int, stop: int, fd: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of a memory-mapped array, read from its file (not through the map).

    Touching the map would make every page read part of the process's resident
    memory; ``pread`` copies just these rows and leaves the page cache to the kernel.
    """
    row_bytes = emb.shape[1] * emb.itemsize
    own = fd is None
    fd = os.open(emb.filename, os.O_RDONLY) if own else fd
    try:
        buf = os.pread(fd, (stop - start) * row_bytes, emb.offset + start * row_bytes)
    finally:
        if own:
            os.close(fd)
    return np.frombuffer(buf, dtype=emb.dtype).reshape(stop - start, emb.shape[1])


def _dtype_name(emb) -> str:
    return str(emb.dtype).replace("torch.", "")


def validate_teacher(data: TeacherData, *, dim: int | None = None, min_rows: int = 1,
                     chunk_rows: int | None = None) -> TeacherData:
    """Check shape, dtype and values before any training; raise :class:`DataError` naming the file.

    The NaN/Inf scan reads ``chunk_rows`` rows at a time, so a memory-mapped
    file is never loaded whole.
    """
    src = data.source or "teacher"
    emb = data.embeddings
    if not isinstance(data, TeacherData):
        raise DataError(f"{src}: the teacher plugin returned {type(data).__name__}, expected atlas_plugins.TeacherData")
    if not isinstance(emb, (np.ndarray, torch.Tensor)):
        raise DataError(f"{src}: embeddings must be a numpy array or torch tensor, got {type(emb).__name__}")
    if emb.ndim != 2:
        raise DataError(f"{src}: embeddings must be 2-D (N, D), got shape {tuple(emb.shape)}")
    if _dtype_name(emb) not in FLOAT_DTYPES:
        raise DataError(f"{src}: embeddings have unsupported dtype {_dtype_name(emb)}; "
                        f"expected one of {', '.join(FLOAT_DTYPES)}")
    n, d = emb.shape
    if n == 0 or d == 0:
        raise DataError(f"{src}: embeddings are empty (shape {tuple(emb.shape)})")
    if dim is not None and d != dim:
        raise DataError(f"{src}: embeddings have dimension {d}, but the configuration expects {dim}")
    if n < min_rows:
        raise DataError(f"{src}: has {n} rows, fewer than needed ({min_rows}); lower train.batch_size or add data")
    for name, seq in (("labels", data.labels), ("texts", data.texts)):
        if seq is not None and len(seq) != n:
            raise DataError(f"{src}: {len(seq)} {name} for {n} embedding rows")
    for start, block in data.chunks(chunk_rows):
        bad = ~torch.isfinite(block).all(dim=1)
        if bool(bad.any()):
            row = start + int(bad.nonzero()[0, 0])
            raise DataError(f"{src}: row {row} contains NaN or Inf; clean or drop it before training")
    return data
