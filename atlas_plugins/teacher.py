"""Teacher data: the embeddings a student learns from, plus optional labels and texts.

A teacher plugin returns one :class:`TeacherData`.  ``embeddings`` is a
``numpy`` array (often memory-mapped: a large file is never read whole) or a
``torch`` tensor of shape ``(N, D)``; batches are read row by row with :meth:`TeacherData.rows`.
Here too: the teacher's digest and the checks every teacher's rows pass (:func:`validate_teacher`); how the
files themselves are read is :mod:`atlas_plugins.formats`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import attrs
import numpy as np
import torch

from .errors import DataError

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
CHUNK_BYTES = 8 * 2**20
MAP_BUDGET_BYTES = 64 * 2**20  # larger memory-mapped files are read with pread (see _large_file)


@attrs.define(repr=False)
class TeacherData:
    """Teacher embeddings ``(N, D)`` and, when known, a label, a text and an id per row.

    ``embed_params``: set by a teacher that embeds texts itself (its plugin function has an ``embed``
    attribute, see :mod:`atlas_plugins.hookspecs`): the parameters ``embed(texts, **embed_params)`` needs
    to embed new texts the way these rows were embedded.  A run records them in ``student.pt``.
    """

    embeddings: Any
    labels: Sequence | None = None
    texts: Sequence[str] | None = None
    model_state: dict | None = None
    source: str = ""
    ids: Sequence | None = None
    embed_params: dict | None = None

    def __repr__(self) -> str:
        """One line: the shape and what comes with the rows, not every vector and text (a quarter of a million
        characters for the bundled example)."""
        emb = self.embeddings
        try:
            shape = " x ".join(f"{n:,}" for n in emb.shape) + f" {str(emb.dtype).removeprefix('torch.')}"
        except Exception:  # not validated yet: whatever a plugin returned
            shape = type(emb).__name__
        mapped = " (memory-mapped)" if isinstance(emb, np.memmap) else ""
        extras = "".join(f", {name}" for name in ("texts", "labels", "ids", "model_state", "embed_params")
                         if getattr(self, name) is not None)
        return f"TeacherData({shape}{mapped}{extras}" + (f", source {self.source!r})" if self.source else ")")

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
        if _large_file(emb):
            return torch.from_numpy(gather(emb, idx).astype(np.float32, copy=False))
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), emb.shape[1]), dtype=np.float32)
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
                yield start, block.to(torch.float32).contiguous()
            else:
                with np.errstate(over="ignore"):  # values beyond float32 become inf: validate_teacher names them
                    converted = np.array(block, dtype=np.float32, order="C")
                yield start, torch.from_numpy(converted)


def _large_file(emb) -> bool:
    """A memory-mapped ``.npy`` larger than :data:`MAP_BUDGET_BYTES`, read with ``pread`` instead of the map.

    Every page read through a map counts as resident memory of the process
    until it is unmapped, so reading a large file through its map would grow
    resident memory up to the file's size; ``pread`` copies just the rows asked
    for and leaves caching to the kernel.  A run copies small files into memory
    first (:func:`in_memory_if_small`); one read through its map is a small file
    a plugin or caller holds directly, or one that ``pread`` cannot read in rows
    (not C-contiguous).
    """
    return (isinstance(emb, np.memmap) and bool(getattr(emb, "filename", None)) and emb.ndim == 2
            and emb.flags.c_contiguous and emb.nbytes > MAP_BUDGET_BYTES)


def in_memory_if_small(data: TeacherData) -> TeacherData:
    """``data`` with a memory-mapped file of at most :data:`MAP_BUDGET_BYTES` copied into memory once.

    A page read through a map of a file that has since shrunk (replaced, truncated by another program)
    kills the process with SIGBUS: no message, no last checkpoint.  A copy cannot; it costs what reading
    the small file through its map would hold anyway.  Large files are read with ``pread``, whose short
    reads are a :class:`DataError` (:func:`gather`, :func:`_pread_range`).
    """
    emb = data.embeddings
    if isinstance(emb, np.memmap) and emb.nbytes <= MAP_BUDGET_BYTES:
        return attrs.evolve(data, embeddings=np.array(emb, order="C"))  # a copy, row-major whatever the file
    return data


GATHER_THREADS = 16  # concurrent reads of rows not in the page cache (4 → 16 threads: 1.5x faster cold here)


def _iov_max() -> int:
    """Buffers one ``preadv`` may take (POSIX ``IOV_MAX``, 1024 on Linux); more fail with EINVAL."""
    try:
        return max(16, os.sysconf("SC_IOV_MAX"))  # 16: POSIX's least; sysconf says -1 for "no limit known"
    except (AttributeError, ValueError, OSError):
        return 1024


IOV_MAX = _iov_max()  # a run of more consecutive rows than this is read in several preadv calls
_gather_pool: ThreadPoolExecutor | None = None
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def gather(emb: np.memmap, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (any order, repeats allowed) of a memory-mapped array, read from its file (not through
    the map), in the order given.

    Sorted, the rows fall into runs of consecutive rows; each run (each :data:`IOV_MAX` rows of a longer
    one) is one ``preadv`` that scatters it straight into its rows of the result.  Each is first tried with
    ``RWF_NOWAIT`` (answered only from the page cache: a memory copy); the runs that would wait for the
    disk are then read by :data:`GATHER_THREADS` threads at once (the reads release the GIL), so a file the
    page cache does not hold is read with many requests in flight, and one it does hold is not slowed by
    threads (benchmarks/scale.py, section 5).
    """
    global _gather_pool
    row_bytes = emb.shape[1] * emb.itemsize
    out = np.empty((len(index), emb.shape[1]), dtype=emb.dtype)
    if not len(index):
        return out
    order = np.argsort(index, kind="stable")
    rows = index[order]
    pos = np.arange(len(rows))
    run_start = np.maximum.accumulate(np.where(np.r_[True, np.diff(rows) != 1], pos, 0))
    cuts = np.flatnonzero((pos - run_start) % IOV_MAX == 0)
    starts, stops = cuts.tolist(), np.concatenate([cuts[1:], [len(rows)]]).tolist()
    first, order = rows[starts].tolist(), order.tolist()
    view = memoryview(out.reshape(-1).view(np.uint8))
    slot = [view[p * row_bytes:(p + 1) * row_bytes] for p in range(len(index))]
    fd = os.open(emb.filename, os.O_RDONLY)

    def read(runs, flags: int = 0) -> list[int]:
        """Read runs ``runs``; with ``RWF_NOWAIT``, return those the page cache could not answer."""
        waiting = []
        for r in runs:
            a, b = starts[r], stops[r]
            want, at = (b - a) * row_bytes, emb.offset + first[r] * row_bytes
            try:
                got = os.preadv(fd, [slot[order[j]] for j in range(a, b)], at, flags)
            except BlockingIOError:
                got = -1
            except OSError:  # RWF_NOWAIT not supported by this file system: read the plain way
                if not flags:
                    raise
                got = -1
            if got != want:
                if not flags:
                    raise _short_read(emb, at, got, want)
                waiting.append(r)
        return waiting

    try:
        waiting = read(range(len(starts)), _NOWAIT) if _NOWAIT else list(range(len(starts)))
        if len(waiting) < 16:
            read(waiting)
        else:
            if _gather_pool is None:
                _gather_pool = ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="atlas-gather")
            step = -(-len(waiting) // GATHER_THREADS)
            for f in [_gather_pool.submit(read, waiting[i:i + step]) for i in range(0, len(waiting), step)]:
                f.result()
    finally:
        os.close(fd)
    return out


def _short_read(emb: np.memmap, at: int, got: int, want: int) -> DataError:
    return DataError(f"{emb.filename}: short read at byte {at} ({got} of {want} bytes); "
                     "was the file truncated while training?")


def _pread_range(emb: np.memmap, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a memory-mapped array, read from its file (not through the map)."""
    row_bytes = emb.shape[1] * emb.itemsize
    want, at = (stop - start) * row_bytes, emb.offset + start * row_bytes
    fd = os.open(emb.filename, os.O_RDONLY)
    try:
        buf = os.pread(fd, want, at)
    finally:
        os.close(fd)
    if len(buf) != want:
        raise _short_read(emb, at, len(buf), want)
    return np.frombuffer(buf, dtype=emb.dtype).reshape(stop - start, emb.shape[1])


def teacher_digest(teacher: TeacherData) -> str:
    """A hash of the teacher's shape, dtype and every row's values (read in chunks, as float32): what a
    checkpoint records and the neighbour graph's cache is keyed by, so rows changed anywhere are other data,
    while a file copied or touched keeps it (as does the same array saved as ``.npy`` or ``.pt``).  A run
    takes it from the rows its validation reads anyway (``RowScan(data, digest=True)``); this is a pass of
    its own, ~1 GB/s: 0.3 s for 200,000 × 384 float32 rows on 2 cores."""
    h = _new_digest(teacher)
    for _, block in teacher.chunks():
        h.update(block.cpu().numpy())
    return h.hexdigest()[:20]


def _new_digest(teacher: TeacherData):
    return hashlib.sha256(f"{teacher.num_rows}x{teacher.dim}:{dtype_name(teacher.embeddings)}".encode())


def dtype_name(emb) -> str:
    """``float32`` for float32 values in either byte order (``str()`` of a big-endian NumPy dtype is ``>f4``)."""
    return emb.dtype.name if isinstance(emb, np.ndarray) else str(emb.dtype).replace("torch.", "")


LABEL_TYPES = (str, int, float, bool)
MODEL_WIDTHS = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)  # embedding models' output widths


def shape_hint(shape) -> str:
    """What to do with a 3-D array of vectors, ``shape``, to make it ``(N, D)``: "" for other shapes."""
    if len(shape) != 3:
        return ""
    if 1 in shape[:2]:
        return f"; drop the axis of length 1: x[{':, ' if shape[1] == 1 else ''}0]"
    return (f"; {shape[1]:,} vectors per row, as a model's token embeddings are: pool them into one per row "
            "(x.mean(axis=1), or the model's sentence embedding)")


def dtype_hint(name: str) -> str:
    """What to do with vectors of the non-float dtype ``name``: quantized or binary embeddings (what Cohere's
    ``embedding_types`` and vector databases' compression give) read as floats would bend their geometry
    without a word, so each kind is told its conversion; "" for other dtypes.  Binary rows unpack to ±1
    floats, whose cosine is ``1 - 2 * hamming / D``; the bits' order in a byte only permutes the dimensions."""
    unpack = ("unpack binary ones into +-1 floats: "
              "numpy.save('vectors.npy', numpy.unpackbits(x.view('uint8'), axis=1) * 2.0 - 1)")
    if name == "int8":
        return ("; int8 rows are quantized embeddings, or binary ones packed 8 dimensions to a byte (Cohere's "
                "'binary'): ask the model for float embeddings, or save quantized ones as floats, "
                f"numpy.save('vectors.npy', x.astype('float32')), and {unpack}")
    if name == "uint8":
        return ("; uint8 rows are binary embeddings packed 8 dimensions to a byte, or unsigned quantized ones, which "
                f"read as floats would not keep their neighbours: ask the model for float embeddings, or {unpack}")
    if name == "bool":
        return "; boolean rows are binary embeddings: save them as +-1 floats: numpy.save('vectors.npy', x * 2.0 - 1)"
    if name.startswith(("int", "uint")):
        return "; whole numbers are token ids or labels, not embeddings: give the model's float vectors"
    return ""


def transposed(d: int) -> str:
    """What to do when an ``(n, d)`` array holds its vectors as columns (Julia, R and MATLAB keep them so)."""
    return (f"if each of the {d:,} columns is one vector, save the rows instead: "
            "numpy.save('vectors.npy', numpy.ascontiguousarray(numpy.load(FILE).T))")


def validate_teacher(data: TeacherData, *, dim: int | None = None, min_rows: int = 1,
                     chunk_rows: int | None = None, scan: bool | RowScan = True) -> TeacherData:
    """Check shape, dtype, values, labels and texts before any training; raise :class:`DataError` naming the file.

    Values must be finite, no row may be all zeros (a zero vector has no cosine neighbours, so such a
    row, typically a failed embedding call padded with zeros, would land anywhere on the map and blur
    every metric), and not every row may be the same vector.  The scan reads ``chunk_rows`` rows at a
    time, so a memory-mapped file is never loaded whole; ``scan=False`` leaves the values to the caller,
    who reads the rows anyway (:class:`RowScan` on each chunk); a :class:`RowScan` of ``data`` scans with it
    (one made with ``digest=True`` then holds :func:`teacher_digest` of the rows).  Labels must be
    strings, numbers or booleans (they are counted and compared), or None for a row without one; a NaN
    label (what ``json.dumps`` writes for pandas' missing value) is returned as None, and labels of more than
    one type as their text (3 and "3" are one label).  Texts must be strings;
    a row without one (None, or NaN: a parquet or pandas column's missing value) is returned as "", and
    texts that are all missing as None.
    """
    if not isinstance(data, TeacherData):
        raise DataError(f"the teacher plugin returned {type(data).__name__}, expected atlas_plugins.TeacherData")
    src = data.source or "teacher"
    emb = data.embeddings
    if not isinstance(emb, (np.ndarray, torch.Tensor)):
        raise DataError(f"{src}: embeddings must be a numpy array or torch tensor, got {type(emb).__name__}")
    if isinstance(emb, torch.Tensor) and (emb.layout != torch.strided or emb.is_meta):
        if emb.is_meta:
            raise DataError(f"{src}: embeddings are a tensor on the meta device, which holds no values; save the "
                            "tensor that holds them (on the CPU or a GPU)")
        raise DataError(f"{src}: embeddings are a sparse ({emb.layout}) tensor; save a dense tensor "
                        "(tensor.to_dense())")
    if emb.ndim != 2:
        raise DataError(f"{src}: embeddings must be 2-D (N, D), got shape {tuple(emb.shape)}{shape_hint(emb.shape)}")
    if dtype_name(emb) not in FLOAT_DTYPES:
        raise DataError(f"{src}: embeddings have unsupported dtype {dtype_name(emb)}; "
                        f"expected one of {', '.join(FLOAT_DTYPES)}{dtype_hint(dtype_name(emb))}")
    n, d = emb.shape
    if n == 0 or d == 0:
        raise DataError(f"{src}: embeddings are empty (shape {tuple(emb.shape)})")
    if dim is not None and d != dim:
        raise DataError(f"{src}: embeddings have dimension {d}, but the configuration expects {dim}")
    if n < min_rows:
        raise DataError(f"{src}: has {n} rows, fewer than needed ({min_rows}); add data")
    if n < d and n in MODEL_WIDTHS and d not in MODEL_WIDTHS and not (data.texts or data.labels or data.ids):
        warnings.warn(f"atlas: {src}: {n:,} rows of {d:,} values; {n:,} is an embedding model's width and "
                      f"{d:,} is not: {transposed(d)}", stacklevel=2)
    if isinstance(emb, np.memmap) and not emb.flags.c_contiguous and emb.nbytes > MAP_BUDGET_BYTES:
        warnings.warn(f"atlas: {src}: the rows are stored column-major (Fortran order), so reading one row reads "
                      f"{d:,} places in the file: slow at this size; save a row-major copy once: "
                      "numpy.save(NEW, numpy.ascontiguousarray(numpy.load(FILE, mmap_mode='r')))", stacklevel=2)
    for name, seq, types, expected in (("labels", data.labels, LABEL_TYPES, "strings, numbers or booleans"),
                                       ("texts", data.texts, (str,), "strings"),
                                       ("ids", data.ids, (str, int), "strings or integers")):
        if seq is None:
            continue
        if not isinstance(seq, (list, tuple)):
            raise DataError(f"{src}: {name} must be a list of {expected}, got {type(seq).__name__}")
        if len(seq) != n:
            hint = f"; {transposed(d)}" if len(seq) == d else ""
            raise DataError(f"{src}: {len(seq)} {name} for {n} embedding rows{hint}")
        bad = next((i for i, v in enumerate(seq)
                    if not isinstance(v, types) and not (name != "ids" and missing_value(v))), None)
        if bad is not None:
            raise DataError(f"{src}: {name}[{bad}] is of type {type(seq[bad]).__name__}; {name} must be {expected}")
    rows, first, differ = scan if isinstance(scan, RowScan) else RowScan(data), None, False
    for start, block in (data.chunks(chunk_rows) if scan else ()):
        rows.see(start, block)
        if not differ:  # usually settled by the first block
            first = block[0] if first is None else first
            differ = bool((block != first).any())
    if rows.zeros:
        raise DataError(f"{rows.describe_zeros()}: a zero vector has no direction, so no cosine neighbours "
                        "(a failed embedding call?); drop such rows before training")
    if scan and not differ and n > 1:
        raise DataError(f"{src}: all {n:,} rows are the same vector, so there are no neighbourhoods to map "
                        "(did the embedding step repeat one result?)")
    if data.labels is not None and any(map(missing_value, data.labels)):
        data = attrs.evolve(data, labels=[None if missing_value(v) else v for v in data.labels])
    if data.labels is not None and len({type(v) for v in data.labels if v is not None}) > 1:
        # 3 and "3" in one file are one label, as map.parquet (a column of one type) and map.html show them
        data = attrs.evolve(data, labels=[None if v is None else str(v) for v in data.labels])
    if data.texts is not None and any(map(missing_value, data.texts)):
        texts = ["" if missing_value(v) else v for v in data.texts]
        data = attrs.evolve(data, texts=texts if any(texts) else None)  # a column of missing values: no texts
    for name in ("texts", "labels", "ids"):
        seq = getattr(data, name)
        if seq is not None and (mended := mend_unicode(seq, src, name)) is not seq:
            data = attrs.evolve(data, **{name: mended})
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def mend_unicode(values: Sequence, where: str, what: str = "texts") -> Sequence:
    """``values`` with each lone surrogate in a string replaced by U+FFFD (and a warning), else ``values``
    itself.  JSON's ``"\\ud83d"`` alone, half of an emoji that a tool counting UTF-16 units cut in two,
    decodes to one; it is not Unicode text, and no file, tokenizer or browser takes it (map.parquet failed
    with a traceback after training).  One ``encode`` of all strings settles the usual case."""
    try:
        "".join(v for v in values if isinstance(v, str)).encode("utf-8")
        return values
    except UnicodeEncodeError:
        pass
    bad = [i for i, v in enumerate(values) if isinstance(v, str) and _SURROGATE.search(v)]
    several = len(bad) > 1
    warnings.warn(f"atlas: {where}: {len(bad):,} {what if several else what[:-1]} hold{'' if several else 's'} half "
                  f"of a UTF-16 pair (an emoji cut in two?), which is not Unicode text (the first: {what}[{bad[0]}] = "
                  f"{values[bad[0]][:40]!r}); each such half is shown as U+FFFD", stacklevel=2)
    return [_SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v for v in values]


def missing_value(v) -> bool:
    """None, or NaN (NaN != NaN): how JSON, parquet and pandas write a missing label or text."""
    return v is None or (isinstance(v, float) and v != v)


@attrs.define
class RowScan:
    """Consecutive blocks of ``data``'s rows, looked at once each: the first row holding NaN or Inf is a
    :class:`DataError` (:func:`check_finite` names it), and rows of all zeros are counted — a zero vector
    has no direction, so it has no cosine neighbours and its place on a map means nothing.

    A row's max and min are finite exactly when the row is, and both zero exactly when it is all zeros, so
    one ``amax`` and one ``amin`` settle both: ~2 row sums (``abs().amax()`` copied the block: ~15×).
    """

    data: TeacherData
    zeros: int = 0
    first_zero: int | None = None
    digest: bool = attrs.field(default=False, kw_only=True)  # also hash the blocks: teacher_digest, no second read
    copies: bool = attrs.field(default=False, kw_only=True)  # also key each row: describe_copies
    _hash: Any = attrs.field(default=None, init=False)
    _keys: list = attrs.field(factory=list, init=False)

    def see(self, start: int, block: torch.Tensor) -> None:
        """Check ``block`` ``(n, D)``, rows ``start…`` of the data (blocks in order, for ``digest``)."""
        if self.digest:
            if self._hash is None:  # at the first block: validation has checked the shape by then
                self._hash = _new_digest(self.data)
            self._hash.update(block.cpu().numpy())
        if self.copies:
            self._keys.append(row_keys(block))
        hi, lo = block.amax(dim=1), block.amin(dim=1)
        if not bool(torch.isfinite(hi).all() and torch.isfinite(lo).all()):
            check_finite(self.data, start, block)
        zero = torch.nonzero((hi == 0) & (lo == 0)).flatten()
        if len(zero):
            self.zeros += len(zero)
            self.first_zero = start + int(zero[0]) if self.first_zero is None else self.first_zero

    def hexdigest(self) -> str:
        """:func:`teacher_digest` of the rows seen (all of them, after :func:`validate_teacher`)."""
        return (_new_digest(self.data) if self._hash is None else self._hash).hexdigest()[:20]

    def describe_copies(self) -> str | None:
        """With ``copies``: what to say when at least :data:`COPIES_SHARE` of the rows seen repeat an earlier
        row's vector, else None.  A vector's copies are each other's nearest neighbours at distance 0, so many
        of them fill the neighbour graph with themselves and count as found neighbours in every report metric
        (an empty text's embedding, a failed call's default, a corpus of duplicated pages)."""
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.uint64)
        _, first, counts = np.unique(keys, return_index=True, return_counts=True)
        repeated = len(keys) - len(first)
        if not repeated or repeated < COPIES_SHARE * len(keys):
            return None
        row, most = int(first[counts.argmax()]), int(counts.max())
        texts = self.data.texts
        text = f", {json.dumps(texts[row][:60])}" if texts and isinstance(texts[row], str) else ""
        fix = ("keep each text once" if self.data.embed_params is not None else "keep each vector's first row "
               "(and its text, label): keep = numpy.sort(numpy.unique(x, axis=0, return_index=True)[1])")
        return (f"{self.data.source or 'teacher'}: {repeated:,} of {len(keys):,} rows ({repeated / len(keys):.1%}) "
                f"repeat an earlier row's vector (the most: row {row}{text}, in {most:,} rows); copies are each "
                "other's nearest neighbours, so they crowd the neighbour graph and count as found neighbours in the "
                f"report: {fix}")

    def describe_zeros(self) -> str:
        """``t.npy: row 41 is all zeros (3 rows in all)``."""
        src = self.data.source or "teacher"
        more = f" ({self.zeros:,} rows in all)" if self.zeros > 1 else ""
        return f"{src}: row {self.first_zero} is all zeros{more}"


COPIES_SHARE = 0.01  # repeated rows warned about from this share of the rows (the example's: 1 of 2,642)


def row_keys(block: torch.Tensor) -> np.ndarray:
    """A 64-bit key per row of ``block`` ``(n, D)``: equal rows (as float32 bits) get equal keys, and two
    different rows one key with odds of about 2⁻⁶³ — each row's bits times random odd weights, summed modulo
    2⁶⁴, exact integer arithmetic (a float projection may round a row differently at another place in a block).
    An even row length is read two values to a 64-bit word, with no copy: 2.6× faster."""
    bits = block.detach().to("cpu", torch.float32).contiguous().numpy()
    words = bits.view(np.uint64) if bits.shape[1] % 2 == 0 else bits.view(np.uint32).astype(np.uint64)
    return (words * _key_weights(words.shape[1])).sum(axis=1, dtype=np.uint64)


@functools.cache
def _key_weights(d: int) -> np.ndarray:
    return np.random.default_rng(d).integers(0, 2**64, size=d, dtype=np.uint64, endpoint=False) | np.uint64(1)


def check_finite(data: TeacherData, start: int, block: torch.Tensor) -> None:
    """A :class:`DataError` naming the first row of ``block`` (rows ``start…`` of ``data``) that is not finite.

    Each value is looked at: :class:`RowScan` calls it only for a block whose cheap pass found one.
    """
    bad = ~torch.isfinite(block).all(dim=1)
    if bool(bad.any()):
        emb, src = data.embeddings, data.source or "teacher"
        row = start + int(bad.nonzero()[0, 0])
        raw = np.asarray(emb[row].double() if isinstance(emb, torch.Tensor) else emb[row], dtype=np.float64)
        if np.isfinite(raw).all():
            raise DataError(f"{src}: row {row} has values too large for float32 (|x| > 3.4e38; largest "
                            f"{np.abs(raw).max():.3g}); rescale the embeddings")
        raise DataError(f"{src}: row {row} contains NaN or Inf; clean or drop such rows")
