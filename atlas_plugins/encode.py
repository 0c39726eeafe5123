"""Apply a trained student to a file: read it piece by piece, encode, write coordinates by suffix.

What ``atlas-encode`` does.  Inputs: anything a teacher plugin reads (picked by
suffix, or by name), read ``CHUNK_BYTES`` at a time, so a memory-mapped ``.npy``
never sits in memory whole; texts (``.txt``, a ``.jsonl`` of ``text`` fields, or
``-`` for stdin, one per line) are embedded with the teacher model recorded in
``student.pt``.  Outputs (:data:`WRITERS`): ``.parquet``, ``.npy``, ``.csv``,
``.jsonl``, or JSON lines on stdout; a file is written under a temporary name
and renamed when complete (:func:`atomic_open`), so a failed run leaves no half-written output.

Columns: ``dim_0 … dim_{D-1}`` (a hierarchical student adds ``level1_0 …``), then
``text``, ``label`` and ``id`` when the input has them; ``.npy`` holds the
coordinates alone, levels side by side.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import attrs
import numpy as np
from tqdm import tqdm

from .checkpoint import atomic_open
from .errors import ConfigError, DataError
from .registry import Registry, get_registry
from .student import ZERO_ROWS_MEAN_NOTHING, TrainedStudent
from .params import accepts
from .formats import (ABSENT, TABLE_SUFFIXES, batch_input, columnar, convert_first, first_row, holds_vector,
                      json_field, loader_for_suffix, no_reader, npy_parts, read_columnar_texts, read_table,
                      table_schema, text_lines, text_vector, vector_field)
from .teacher import RowScan, TeacherData, in_memory_if_small, mend_unicode, missing_value, validate_teacher

CHUNK_BYTES = 32 * 2**20  # teacher rows read (and encoded) at a time
TEXT_CHUNK = 1024  # texts embedded at a time
EXTRAS = ("text", "label", "id")


@attrs.define
class Piece:
    """Consecutive input rows: their vectors ``(n, D)`` and the texts/labels/ids that came with them."""

    vectors: object
    extras: dict


@attrs.define
class Source:
    """An input opened for encoding: its pieces, its row count when known, and which extras it has."""

    pieces: Iterator[Piece]
    rows: int | None
    extras: tuple[str, ...]


def side_by_side(z) -> np.ndarray:
    """``encode``'s output as one NumPy array ``(N, C)``: a multi-level student's levels side by side, in the
    order of :func:`column_names`."""
    levels = z if isinstance(z, tuple) else (z,)
    return np.concatenate([np.asarray(v) for v in levels], axis=1) if len(levels) > 1 else np.asarray(levels[0])


def column_names(levels: list[int]) -> list[str]:
    """``dim_0 …`` for the first level, ``level1_0 …`` for the next, and so on."""
    return [f"{'dim' if i == 0 else f'level{i}'}_{j}" for i, d in enumerate(levels) for j in range(d)]


# -- inputs --------------------------------------------------------------------------------------------------
def open_source(path: str, student: TrainedStudent, loader: str | None = None,
                registry: Registry | None = None, workdir: Callable[[], str] | None = None,
                key: str | None = None) -> Source:
    """Open ``path`` (``-``: texts on stdin) as pieces of teacher vectors for ``student``.

    ``workdir()`` gives a folder for a teacher that converts its file first (``cache_dir``: the
    ``parquet`` teacher); without it such a teacher reads into memory.  ``key`` names the array,
    tensor or column that holds the vectors: the teacher's ``key`` (or ``column``) parameter; in a
    ``.jsonl`` file or a ``.csv``/``.tsv`` table of texts, the field or column of the texts.
    """
    registry = registry or get_registry()
    p = Path(path)
    texts = path == "-" or (loader is None and p.suffix.lower() == ".txt")
    if key is not None and texts:
        raise ConfigError(f"--key {key}: {'stdin' if path == '-' else p} holds texts, one per line; --key names "
                          "the array or column of vectors in a vector file")
    if path == "-":
        return _texts(_lines(sys.stdin.buffer, "stdin"), student)
    _must_exist(p)
    if texts:
        return _texts(_lines(p.open("rb"), str(p)), student)
    table = p.suffix.lower() in TABLE_SUFFIXES
    if loader is None and (table or columnar(p)):
        if vector_field(p) is None if key is None else _is_text_column(p, key):
            rows, extras = _table_rows(p, key or "text")
            return _texts(rows, student, extras, len(rows))
        loader = "csv" if table else None  # vectors: the teacher of the suffix reads a Parquet or Arrow table
    if loader is None and p.suffix.lower() == ".jsonl":
        if why := batch_input(p):
            raise DataError(why)
        if key is None and vector_field(p) == "":
            loader = "jsonl"  # a vector alone per line
        else:
            _, first = _jsonl_rows(p, first=True, key=key)[0]
            value = json_field(first, key or "embedding", ABSENT)
            if value is not ABSENT and not (isinstance(value, str) and text_vector(value) is None):
                loader = "jsonl"  # vectors (or their text, or base64): the jsonl teacher reads the file
            else:  # texts, in 'text' or in the field --key names
                rows = _with_texts(_jsonl_rows(p, key=key, texts_in=key or "text"), p, f"field '{key or 'text'}'",
                                   "line")
                for field in EXTRAS:  # JSON's escapes may hold half an emoji, which no model or file takes
                    values = [r.get(field) for r in rows]
                    if (mended := mend_unicode(values, str(p), f"{field}s")) is not values:
                        rows = [{**r, field: v} if field in r else r for r, v in zip(rows, mended)]
                return _texts(rows, student, tuple(k for k in EXTRAS if any(k in r for r in rows)), len(rows))
    name = loader or loader_for_suffix(p, registry)
    if name is None and (why := no_reader(p)):  # a compressed file, a pickle, ...: what to do with it
        raise DataError(why)
    if name is None:
        raise ConfigError(f"{p}: no teacher plugin reads '{p.suffix.lower() or p.name}' files; name one with "
                          f"--loader ({', '.join(registry.names('teacher'))}), or give .txt/.jsonl texts")
    fn = registry.get("teacher", name)
    kwargs = {"cache_dir": workdir()} if workdir is not None and accepts(fn, "cache_dir") else {}
    if key is not None:
        param = next((n for n in ("key", "column") if accepts(fn, n)), None)
        if param is None:
            raise ConfigError(f"--key {key}: teacher '{name}' has no key or column parameter; drop --key")
        kwargs[param] = key
    # values are checked piece by piece as they are read
    data = in_memory_if_small(validate_teacher(fn(str(p), **kwargs), scan=False))
    student.check_input(data.embeddings)
    return _vectors(data, student.input_dim)


def _vectors(data: TeacherData, dim: int) -> Source:
    extras = {"text": data.texts, "label": data.labels, "id": data.ids}
    extras = {k: v for k, v in extras.items() if v is not None}
    chunk = max(256, CHUNK_BYTES // (4 * dim))

    def pieces():
        scan = RowScan(data)
        for start, block in data.chunks(chunk):
            scan.see(start, block)
            yield Piece(block, {k: list(v[start:start + len(block)]) for k, v in extras.items()})
        if scan.zeros:  # encoded all the same (the output keeps one row per input row), but said
            warnings.warn(f"atlas: {scan.describe_zeros()}: {ZERO_ROWS_MEAN_NOTHING}")
    return Source(pieces(), data.num_rows, tuple(extras))


def _must_exist(p: Path) -> None:
    if p.is_dir() and (columnar(p) or npy_parts(p)):  # a dataset, Parquet or .npy parts: the teacher reads them
        return
    if why := convert_first(p):
        raise DataError(why)
    if p.is_dir() or not p.exists():
        raise DataError(f"{p}: {'is a folder' if p.is_dir() else 'not found'}; expected an input file")


def _lines(fh, name: str) -> Iterator[dict]:
    """One row per non-blank line; blank lines before a text are named in a warning: output rows then follow
    the lines no more (blank lines at the end change nothing and pass quietly).  No text at all is an error,
    as an empty table of texts is: an empty output said nothing of why."""
    between, pending, kept = [], [], 0
    with fh:
        for lineno, line in text_lines(fh, name, "texts", texts=True):
            line = line.rstrip("\r\n")
            if not line.strip():
                pending.append(lineno)
                continue
            between += pending
            pending, kept = [], kept + 1
            yield {"text": line}
    if not kept:
        raise DataError(f"{name}: no texts found; give one text per line (blank lines are skipped)")
    _warn_skipped(name, between, kept, "blank line")


def _table_rows(p: Path, column: str) -> tuple[list[dict], tuple]:
    """The texts of a ``.csv``/``.tsv`` or columnar (Parquet, Arrow) table's ``column`` (with its ``label``
    and ``id`` columns, when there), and those extras; rows with an empty text are left out, and named when
    any text follows."""
    hint = "; --key names another column"
    if columnar(p):
        cols = read_columnar_texts(p, column, ["label", "id"], "table of texts", hint)
        numbered, unit = list(enumerate({k: cols[k][i] for k in cols} for i in range(len(cols[column])))), "row"
    else:
        numbered, unit = list(read_table(p, [column], "table of texts", hint)), "line"
    extras = ("text", *(k for k in ("label", "id") if numbered and k in numbered[0][1]))  # the same in every row
    rows = [(n, {"text": row[column], **{k: row[k] if row[k] != "" else None for k in extras[1:]}})
            for n, row in numbered]
    return _with_texts(rows, p, f"column '{column}'", unit), extras


def _with_texts(numbered: list[tuple[int, dict]], p: Path, where: str, unit: str) -> list[dict]:
    """The rows of ``numbered`` (``(number, row)`` pairs) whose ``text`` is not blank.  A row without one is
    left out, and named when a text follows it (the output's rows then follow the input's no more); a file
    without any is an error."""
    rows, between, pending = [], [], []
    for number, row in numbered:
        if not (row["text"] or "").strip():
            pending.append(number)
            continue
        between, pending = between + pending, []
        rows.append(row)
    _warn_skipped(str(p), between, len(rows), "row without a text", unit)
    if not rows:
        raise DataError(f"{p}: no texts found in {where}")
    return rows


def _is_text_column(p: Path, column: str) -> bool:
    """Whether ``column`` of the table ``p`` holds texts, judged by its first row: not a vector, nor one's text
    (a CSV file's column of lists; in a Parquet or Arrow table too, converted as it was)."""
    if p.suffix.lower() not in TABLE_SUFFIXES:  # columnar: a column of another type than strings is vectors
        schema = table_schema(p)
        if schema is None or column not in schema.names or str(schema.field(column).type) not in ("string",
                                                                                                   "large_string"):
            return False
    row = first_row(p)  # a column it lacks is named by _table_rows
    return row is None or not holds_vector(row.get(column))


def _warn_skipped(name: str, lines: list[int], kept: int, what: str, unit: str = "line") -> None:
    if lines:
        where = ", ".join(map(str, lines[:3])) + (", ..." if len(lines) > 3 else "")
        several = len(lines) > 1
        warnings.warn(f"atlas: {name}: {len(lines):,} {what}{'s' * several} skipped ({unit}{'s' * several} {where}); "
                      f"the output has a row for each of the other {kept:,} texts, in order")


def _jsonl_rows(p: Path, first: bool = False, key: str | None = None,
                texts_in: str | None = None) -> list[tuple[int, dict]]:
    """The JSON objects of ``p`` with their line numbers; ``first``: only the first, to tell texts from vectors
    in field ``key``; ``texts_in``: the field that holds each row's text, returned as its ``text``."""
    vectors = key or "embedding"
    rows = []
    with p.open("rb") as fh:
        for lineno, line in text_lines(fh, p):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):  # RecursionError: brackets nested thousands deep
                raise DataError(f"{p}:{lineno}: not a JSON object") from None
            if key is not None and json_field(row, key, ABSENT) is ABSENT:
                fields = f"; its fields are: {', '.join(row)}" if isinstance(row, dict) else ""
                raise DataError(f"{p}:{lineno}: no field '{key}' (--key){fields}")
            if not isinstance(row, dict) or ("text" not in row and json_field(row, vectors, ABSENT) is ABSENT):
                fields = f" (its fields are: {', '.join(row)})" if isinstance(row, dict) else ""
                raise DataError(f"{p}:{lineno}: expected a JSON object with a 'text' field (texts to embed) "
                                "or an 'embedding' field (vectors), or a list of numbers (a vector); --key NAME "
                                f"names a field of another name{fields}")
            if texts_in is not None:
                text = json_field(row, texts_in, ABSENT)
                if text is ABSENT:
                    raise DataError(f"{p}:{lineno}: no '{texts_in}' field (a text to embed)")
                if not isinstance(text, str) and not missing_value(text):  # null, NaN: no text
                    raise DataError(f"{p}:{lineno}: '{texts_in}' must be a string (a text to embed), got "
                                    f"{type(text).__name__}")
                row = {**row, "text": text if isinstance(text, str) else ""}
            rows.append((lineno, row))
            if first:
                break
    if not rows:
        raise DataError(f"{p}: no rows found")
    return rows


def _texts(rows, student: TrainedStudent, extras=("text",), count: int | None = None) -> Source:
    """Pieces of :data:`TEXT_CHUNK` texts, embedded with the student's recorded teacher model."""
    student.text_embedder()  # a student without a text model says so before anything is read or written

    def pieces():
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) == TEXT_CHUNK:
                yield embed(batch)
                batch = []
        if batch:
            yield embed(batch)

    def embed(batch):
        return Piece(student.embed_texts([r["text"] for r in batch]), {k: [r.get(k) for r in batch] for k in extras})
    return Source(pieces(), count, tuple(extras))


# -- outputs -------------------------------------------------------------------------------------------------
class _Jsonl:
    """JSON lines: one object per row, coordinates with 9 significant digits (exact for float32).  Text is
    encoded here and written as bytes: a text wrapper around ``fh`` would close it (stdout, too) when an error
    drops it."""

    def __init__(self, fh, names, extras):
        self.fh, self.extras = fh, extras
        self.fmt = "{" + ", ".join(f'"{n}": %.9g' for n in names)

    def write(self, z: np.ndarray, extras: dict) -> None:
        lines = [self.fmt % tuple(r) for r in z.tolist()]
        for k in self.extras:
            key = json.dumps(k)
            lines = [f"{line}, {key}: {json.dumps(v, ensure_ascii=False)}" for line, v in zip(lines, extras[k])]
        self.fh.write("".join(line + "}\n" for line in lines).encode("utf-8"))

    def close(self) -> None:
        self.fh.flush()


class _Csv:
    """CSV with a header row; as bytes, like :class:`_Jsonl`."""

    def __init__(self, fh, names, extras):
        self.fh, self.extras = fh, extras
        self._rows([[*names, *extras]])

    def _rows(self, rows) -> None:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        self.fh.write(text.getvalue().encode("utf-8"))

    def write(self, z: np.ndarray, extras: dict) -> None:
        cols = [extras[k] for k in self.extras]
        self._rows([*(f"{v:.9g}" for v in r), *(("" if c is None else c) for c in e)]
                   for r, e in zip(z.tolist(), zip(*cols) if cols else ((),) * len(z)))

    def close(self) -> None:
        self.fh.flush()


class _Npy:
    """A float32 ``.npy`` streamed to disk: the header's space is reserved and written last, with the row count."""

    HEADER = 128

    def __init__(self, fh, names, extras):
        self.fh, self.cols, self.rows = fh, len(names), 0
        fh.write(b"\0" * self.HEADER)

    def write(self, z: np.ndarray, extras: dict) -> None:
        self.fh.write(np.ascontiguousarray(z, dtype="<f4").tobytes())
        self.rows += len(z)

    def close(self) -> None:
        header = repr({"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.cols)}).encode("latin1")
        body = b"\x93NUMPY\x01\x00"
        pad = self.HEADER - len(body) - 2 - len(header) - 1
        self.fh.seek(0)
        self.fh.write(body + (self.HEADER - len(body) - 2).to_bytes(2, "little") + header + b" " * pad + b"\n")
        self.fh.flush()


class _Parquet:
    def __init__(self, fh, names, extras):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError("writing .parquet needs the optional extra: pip install 'atlas-distill[parquet]' "
                              "(or write .csv, .jsonl or .npy)") from None
        self.pa, self.names, self.extras, self.fh = pa, names, extras, fh
        self.writer, self.pq = None, pq

    def write(self, z: np.ndarray, extras: dict) -> None:
        pa = self.pa
        cols = {n: pa.array(z[:, i]) for i, n in enumerate(self.names)}
        for k in self.extras:
            try:
                cols[k] = pa.array(extras[k])
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types (say, ints and strings): store as text
                cols[k] = pa.array([None if v is None else str(v) for v in extras[k]], pa.string())
        table = pa.table(cols)
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.fh, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:
            self.write(np.zeros((0, len(self.names)), np.float32), {k: [] for k in self.extras})
        self.writer.close()


WRITERS = {".jsonl": _Jsonl, ".csv": _Csv, ".npy": _Npy, ".parquet": _Parquet}


def writer_for(out: str | None):
    if out is None:
        return _Jsonl
    suffix = Path(out).suffix.lower()
    if Path(out).is_dir():  # before its suffix: a folder named like a file (coords.npy/) is a folder all the same
        raise ConfigError(f"-o {out}: is a folder; name a file in it, e.g. -o {Path(out) / 'coords.parquet'}")
    if suffix not in WRITERS:
        raise ConfigError(f"-o {out}: unknown output suffix '{suffix or Path(out).name}'; write one of: "
                          f"{', '.join(WRITERS)} (or no -o for JSON lines on stdout)")
    return WRITERS[suffix]


# -- the whole job --------------------------------------------------------------------------------------------
def _scratch(stack: ExitStack, folder: Path) -> str:
    """A temporary folder in ``folder``, removed when ``stack`` closes."""
    return stack.enter_context(tempfile.TemporaryDirectory(prefix=".atlas-encode-", dir=folder))


def encode_file(student: TrainedStudent, source: str, out: str | None = None, *, loader: str | None = None,
                key: str | None = None, batch_size: int = 65536, precision: str = "float32", refine: int = 0,
                seed: int = 0, progress: bool = False, registry: Registry | None = None,
                overwrite: bool = False) -> int:
    """Encode ``source`` into ``out`` (None: JSON lines on stdout); return the number of rows written.

    ``loader`` and ``key`` as for :func:`open_source`.  An existing ``out`` is replaced only with
    ``overwrite`` (its rows may be all that is left of an earlier map), and then only once the new file
    is complete."""
    writer_cls = writer_for(out)
    levels = student.levels
    names = column_names(levels)
    with ExitStack() as stack:
        workdir = None
        if out is not None:
            if os.path.islink(out):  # os.replace would put a file where the link was, not at its target
                raise ConfigError(f"-o {out}: is a symbolic link (to {os.readlink(out)}); give the file's own path")
            if Path(out).exists():
                if source != "-" and os.path.samefile(source, out):
                    raise ConfigError(f"-o {out}: is the input file, which the coordinates would replace; "
                                      "write them to another file")
                if not overwrite:
                    raise ConfigError(f"-o {out}: exists; pass --overwrite to replace it, or give another file name")
            folder = Path(out).resolve().parent
            if not folder.is_dir():
                raise ConfigError(f"-o {out}: the folder {folder} does not exist")
            # beside the output: a large conversion should not land in a RAM-backed /tmp
            workdir = functools.partial(_scratch, stack, folder)
        src = open_source(source, student, loader, registry, workdir, key)
        fh = sys.stdout.buffer if out is None else stack.enter_context(atomic_open(out, replace=overwrite))
        writer = writer_cls(fh, names, src.extras)
        bar = stack.enter_context(tqdm(total=src.rows, unit=" rows", disable=not progress, file=sys.stderr))
        rows = 0
        for piece in src.pieces:
            z = student.encode(piece.vectors, batch_size=batch_size, precision=precision, refine=refine,
                               seed=seed + rows, check=False)  # checked as read (_vectors), rows counted over pieces
            z = side_by_side(z)
            writer.write(z, piece.extras)
            rows += len(z)
            bar.update(len(z))
        writer.close()
        if out is None:
            sys.stdout.flush()
    return rows
