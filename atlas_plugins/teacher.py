"""Teacher data: the embeddings a student learns from, plus optional labels and texts.

A teacher plugin returns one :class:`TeacherData`.  ``embeddings`` is a
``numpy`` array (often memory-mapped, never read whole) or a ``torch`` tensor of
shape ``(N, D)``; batches are read row by row with :meth:`TeacherData.rows`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import attrs
import numpy as np
import torch

from .errors import DataError

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
CHUNK_BYTES = 8 * 2**20
MAP_BUDGET_BYTES = 64 * 2**20  # larger memory-mapped files are read with pread (see _large_file)


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

        For a memory-mapped array only those rows are read (in sorted order, for
        locality) and returned in the order given.
        """
        emb = self.embeddings
        if isinstance(emb, torch.Tensor):
            idx = torch.as_tensor(index, dtype=torch.long)
            return emb[idx].to(torch.float32)
        idx = np.asarray(index, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), emb.shape[1]), dtype=np.float32)
        if _large_file(emb):
            out[order] = gather(emb, idx[order])
        else:
            out[order] = emb[idx[order]]
        return torch.from_numpy(out)

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, rows)`` over the whole array, ``chunk_rows`` at a time (default: about 8 MB)."""
        emb = self.embeddings
        chunk_rows = chunk_rows or max(1, CHUNK_BYTES // (4 * self.dim))
        for start in range(0, self.num_rows, chunk_rows):
            stop = min(start + chunk_rows, self.num_rows)
            block = _pread_range(emb, start, stop) if _large_file(emb) else emb[start:stop]
            if isinstance(block, torch.Tensor):
                yield start, block.to(torch.float32)
            else:
                with np.errstate(over="ignore"):  # values beyond float32 become inf: validate_teacher names them
                    converted = np.array(block, dtype=np.float32)
                yield start, torch.from_numpy(converted)


def _large_file(emb) -> bool:
    """A memory-mapped ``.npy`` larger than :data:`MAP_BUDGET_BYTES`, read with ``pread`` instead of the map.

    Every page read through a map counts as resident memory of the process
    until it is unmapped, so reading a large file through its map would grow
    resident memory up to the file's size; ``pread`` copies just the rows asked
    for and leaves caching to the kernel.  Small files are read through the map
    (faster; they cannot grow memory by more than their size).
    """
    return (isinstance(emb, np.memmap) and bool(getattr(emb, "filename", None)) and emb.ndim == 2
            and emb.flags.c_contiguous and emb.nbytes > MAP_BUDGET_BYTES)


GATHER_THREADS = 4  # concurrent reads: a cold file on an SSD answers several requests at once
_gather_pool: ThreadPoolExecutor | None = None


def gather(emb: np.memmap, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, repeats allowed) of a memory-mapped array, read from its file (not through the map).

    Runs of consecutive rows become one ``preadv`` each, straight into the result's memory, and the
    runs are split among :data:`GATHER_THREADS` threads (the reads release the GIL), so scattered
    rows of a file the page cache does not hold arrive with several requests in flight.
    """
    global _gather_pool
    if len(rows) > 1 and not (np.diff(rows) > 0).all():  # repeated rows: read each once
        unique, inverse = np.unique(rows, return_inverse=True)
        return gather(emb, unique)[inverse]
    row_bytes = emb.shape[1] * emb.itemsize
    buf = np.empty((len(rows), emb.shape[1]), dtype=emb.dtype)
    if not len(rows):
        return buf
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(rows)]])
    view = memoryview(buf.reshape(-1).view(np.uint8))
    fd = os.open(emb.filename, os.O_RDONLY)

    def read(runs: range) -> None:
        for r in runs:
            a, b = int(starts[r]), int(stops[r])
            want, at = (b - a) * row_bytes, emb.offset + int(rows[a]) * row_bytes
            got = os.preadv(fd, [view[a * row_bytes:b * row_bytes]], at)
            if got != want:
                raise DataError(f"{emb.filename}: short read at byte {at} ({got} of {want} bytes); "
                                "was the file truncated while training?")

    try:
        n_runs = len(starts)
        if n_runs < 64:
            read(range(n_runs))
        else:
            if _gather_pool is None:
                _gather_pool = ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="atlas-gather")
            step = -(-n_runs // GATHER_THREADS)
            for f in [_gather_pool.submit(read, range(i, min(i + step, n_runs))) for i in range(0, n_runs, step)]:
                f.result()
    finally:
        os.close(fd)
    return buf


def _pread_range(emb: np.memmap, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a memory-mapped array, read from its file (not through the map)."""
    row_bytes = emb.shape[1] * emb.itemsize
    fd = os.open(emb.filename, os.O_RDONLY)
    try:
        buf = os.pread(fd, (stop - start) * row_bytes, emb.offset + start * row_bytes)
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=emb.dtype).reshape(stop - start, emb.shape[1])


def _dtype_name(emb) -> str:
    return str(emb.dtype).replace("torch.", "")


LABEL_TYPES = (str, int, float, bool)


def validate_teacher(data: TeacherData, *, dim: int | None = None, min_rows: int = 1,
                     chunk_rows: int | None = None) -> TeacherData:
    """Check shape, dtype, values, labels and texts before any training; raise :class:`DataError` naming the file.

    The NaN/Inf scan reads ``chunk_rows`` rows at a time, so a memory-mapped
    file is never loaded whole.  Labels must be strings, numbers or booleans (they are
    counted and compared); texts must be strings.
    """
    if not isinstance(data, TeacherData):
        raise DataError(f"the teacher plugin returned {type(data).__name__}, expected atlas_plugins.TeacherData")
    src = data.source or "teacher"
    emb = data.embeddings
    if not isinstance(emb, (np.ndarray, torch.Tensor)):
        raise DataError(f"{src}: embeddings must be a numpy array or torch tensor, got {type(emb).__name__}")
    if isinstance(emb, torch.Tensor) and (emb.layout != torch.strided or emb.is_meta):
        kind = "on the meta device (it holds no values)" if emb.is_meta else f"sparse ({emb.layout})"
        raise DataError(f"{src}: embeddings are a {kind} tensor; save a dense tensor (tensor.to_dense())")
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
        raise DataError(f"{src}: has {n} rows, fewer than needed ({min_rows}); add data")
    for name, seq, types, expected in (("labels", data.labels, LABEL_TYPES, "strings, numbers or booleans"),
                                       ("texts", data.texts, (str,), "strings")):
        if seq is None:
            continue
        if not isinstance(seq, (list, tuple)):
            raise DataError(f"{src}: {name} must be a list of {expected}, got {type(seq).__name__}")
        if len(seq) != n:
            raise DataError(f"{src}: {len(seq)} {name} for {n} embedding rows")
        bad = next((i for i, v in enumerate(seq) if not isinstance(v, types) and (v is not None or name == "texts")),
                   None)
        if bad is not None:
            raise DataError(f"{src}: {name}[{bad}] is a {type(seq[bad]).__name__}; {name} must be {expected}")
    for start, block in data.chunks(chunk_rows):
        bad = ~torch.isfinite(block).all(dim=1)
        if bool(bad.any()):
            row = start + int(bad.nonzero()[0, 0])
            raw = np.asarray(emb[row].double() if isinstance(emb, torch.Tensor) else emb[row], dtype=np.float64)
            if np.isfinite(raw).all():
                raise DataError(f"{src}: row {row} has values too large for float32 (|x| > 3.4e38; largest "
                                f"{np.abs(raw).max():.3g}); rescale the embeddings")
            raise DataError(f"{src}: row {row} contains NaN or Inf; clean or drop it before training")
    return data
