"""Teacher data: the embeddings a student learns from, plus optional labels and texts.

A teacher plugin returns one :class:`TeacherData`.  ``embeddings`` is a
``numpy`` array (often memory-mapped: a large file is never read whole) or a
``torch`` tensor of shape ``(N, D)``; batches are read row by row with :meth:`TeacherData.rows`.
"""

from __future__ import annotations

import base64
import codecs
import csv
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


@attrs.define
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


def _suffix(path) -> str:
    return os.path.splitext(os.path.normpath(str(path)))[1].lower()  # normpath: "data.lance/" is a .lance folder


def hf_shards(path) -> list[str] | None:
    """The ``.arrow`` shards of a Hugging Face dataset folder (``ds.save_to_disk(path)``: a
    ``dataset_info.json`` beside them), in the dataset's row order (its ``state.json``, else by name); None
    for anything else."""
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_info.json"))):
        return None
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
            names = [f["filename"] for f in json.load(fh)["_data_files"]]
        if not all(isinstance(n, str) and os.path.basename(n) == n for n in names):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):  # no state.json, or not one save_to_disk wrote
        names = sorted(f for f in os.listdir(path) if f.endswith(".arrow"))
    return [os.path.join(str(path), n) for n in names]


def loader_for_suffix(path, registry) -> str | None:
    """The teacher plugin that reads files like ``path`` (its ``suffixes`` attribute), or None.  A Hugging
    Face dataset folder reads as its shards do (``.arrow``)."""
    suffix = ".arrow" if hf_shards(path) is not None else _suffix(path)
    return next((i.name for i in registry.available("teacher") if suffix in getattr(i.obj, "suffixes", ())), None)


COMPRESSED = {".gz": ("gzip", "gunzip -k"), ".bz2": ("bzip2", "bunzip2 -k"), ".xz": ("xz", "unxz -k"),
              ".zst": ("zstd", "unzstd")}  # suffix -> (format, the command that keeps the file and writes it whole)


def convert_first(path) -> str | None:
    """For data no teacher reads but one step makes readable, that step, as the one line to show; else None.

    A compressed file (``vectors.jsonl.gz``, by its suffix) is decompressed once, beside it: no reader
    streams through a decompressor (a memory map or a scattered read cannot).  Of a Hugging Face
    ``DatasetDict`` saved to disk, one split's folder is a dataset (:func:`hf_shards`).
    """
    name = os.path.basename(os.path.normpath(str(path)))
    stem, suffix = os.path.splitext(name)
    if suffix.lower() in COMPRESSED:
        kind, command = COMPRESSED[suffix.lower()]
        return f"{path}: is compressed ({kind}); decompress it first ({command} {name}) and give {stem}"
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset_dict.json")):
        splits = sorted(f for f in os.listdir(path) if hf_shards(os.path.join(path, f)) is not None)
        return (f"{path}: is a Hugging Face DatasetDict folder; give one split's folder"
                f"{': ' + ', '.join(os.path.join(str(path), f) for f in splits) if splits else ''}")
    return None


NO_READER = {  # suffix -> what to do with a file no teacher reads, by design or for now
    ".pkl": "a pickle, which is never loaded here (unpickling can run code); save the vectors with "
            "numpy.save('vectors.npy', vectors) or df.to_parquet('vectors.parquet')",
    ".h5": "HDF5, which no teacher reads; save the array as .npy: numpy.save('vectors.npy', h5py.File(path)[name][:])",
    ".faiss": "a FAISS index, which no teacher reads; save its vectors as .npy: index = faiss.read_index(path); "
              "numpy.save('vectors.npy', index.reconstruct_n(0, index.ntotal)) (a compressed index, PQ or SQ, "
              "gives back approximations)",
    ".lance": "a Lance dataset (LanceDB), which no teacher reads; save it as Parquet: pyarrow.parquet.write_table("
              "lance.dataset(path).to_table(), 'vectors.parquet')",
    ".vec": "word vectors in fastText's text format (a word, then its numbers), which no teacher reads; save them as "
            ".npy, with the words as its meta file: kv = gensim.models.KeyedVectors.load_word2vec_format(path); "
            "numpy.save('vectors.npy', kv.vectors); open('words.txt', 'w').write('\\n'.join(kv.index_to_key))",
    ".xlsx": "a spreadsheet, which no teacher reads; save the sheet as a CSV file (\"CSV UTF-8\" in a spreadsheet), "
             "or with pandas: pandas.read_excel(path).to_csv('texts.csv', index=False)",
}
NO_READER.update({".pickle": NO_READER[".pkl"], ".joblib": NO_READER[".pkl"], ".hdf5": NO_READER[".h5"],
                  ".xls": NO_READER[".xlsx"], ".ods": NO_READER[".xlsx"]})


def no_reader(path) -> str | None:
    """Why no teacher reads ``path``, whose suffix names none, and what to do, as the one line to show, for
    what users often have: a file one step from readable (:func:`convert_first`), a folder, a pickle or HDF5
    (:data:`NO_READER`); None otherwise (the caller then names the teachers there are)."""
    if why := convert_first(path):
        return why
    if _suffix(path) in NO_READER:  # a file, or a folder (a Lance dataset)
        return f"{path}: is {NO_READER[_suffix(path)]}"
    return f"{path}: is a folder; expected a teacher file" if os.path.isdir(path) else None


def not_utf8(name, lineno: int | None, head: bytes, what: str = "file", hint: str = "") -> str:
    """The one line for text in ``name`` (at line ``lineno``, when known) that does not decode as UTF-8, the
    file's first bytes being ``head``: UTF-16 starts with a byte-order mark (what Windows PowerShell's ``>``
    and Notepad's "Unicode" write) and is named so, for the whole file; anything else (a cp1252 export, say)
    is not UTF-8 text."""
    if utf16(head):
        return f"{name}: is UTF-16 text (what Windows PowerShell's > writes); save the {what} as UTF-8{hint}"
    return f"{name}{f':{lineno}' if lineno else ''}: not UTF-8 text; save the {what} as UTF-8{hint}"


def text_lines(fh, name, what: str = "file", texts: bool = False) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` for each line of the binary file ``fh`` (``name`` in messages), decoded as UTF-8:
    a byte-order mark at the start (Windows editors, spreadsheet exports) is not part of the first line, and a
    line that does not decode is :func:`not_utf8`'s one line.  ``texts``: a line is a text, so the first two
    that are not blank must not be vectors (:func:`vector_line`; two: word2vec's first line is a header)."""
    head, checked = b"", 0
    for lineno, raw in enumerate(fh, 1):
        head = head or raw
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            raise DataError(not_utf8(name, lineno, head, what)) from None
        if texts and checked < 2 and line.strip():
            checked += 1
            if why := vector_line(name, lineno, line):
                raise DataError(why)
        yield lineno, line


VECTOR_LINE_NUMBERS = 8  # numbers on a line that make it a vector, not a text to embed


def vector_line(name, lineno: int, line: str) -> str | None:
    """The one line for a line of a text file that holds a vector, not a text (embedding it would map the
    digits): :data:`VECTOR_LINE_NUMBERS` or more numbers alone (``numpy.savetxt``), or a word and then
    numbers (word vectors' text format: GloVe, word2vec, fastText's ``.vec``); None for a text."""
    words = line.replace(",", " ").split()
    numbers = sum(map(_is_float, words))
    base = os.path.basename(str(name)) if str(name) != "stdin" else "vectors.txt"
    if numbers >= VECTOR_LINE_NUMBERS and numbers == len(words):
        comma = ", delimiter=','" if "," in line else ""
        return (f"{name}:{lineno}: holds {numbers} numbers, not a text: it looks like vectors (numpy.savetxt "
                f"writes them so), which a teacher reads from .npy: numpy.save('vectors.npy', "
                f"numpy.loadtxt('{base}', ndmin=2{comma}))")
    if numbers >= VECTOR_LINE_NUMBERS and numbers == len(words) - 1 and not _is_float(words[0]):
        return (f"{name}:{lineno}: is a word and {numbers} numbers, not a text: it looks like word vectors "
                f"(GloVe's or word2vec's text format), which a teacher reads from .npy, with the words as its "
                f"meta file: kv = gensim.models.KeyedVectors.load_word2vec_format('{base}', no_header={lineno == 1});"
                " numpy.save('vectors.npy', kv.vectors); open('words.txt', 'w').write('\\n'.join(kv.index_to_key))")
    return None


def utf16(head: bytes) -> bool:
    """Whether a file that starts with ``head`` is UTF-16 text (by its byte-order mark)."""
    return head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def first_bytes(path, n: int = 4) -> bytes:
    """The first ``n`` bytes of the file ``path`` (what :func:`not_utf8` reads the encoding from)."""
    with open(path, "rb") as fh:
        return fh.read(n)


TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}  # text tables: suffix -> delimiter


def read_table(path, required: Sequence[str], what: str, hint: str = "") -> Iterator[tuple[int, dict]]:
    """The rows of a ``.csv`` (or ``.tsv``) file whose first line names the columns: ``(line number, {column:
    value})``, a short row's missing cells None.  UTF-8, with or without the byte-order mark spreadsheets write
    ("CSV UTF-8"); the ``required`` columns must be in the header (else an error ending in ``hint``)."""
    csv.field_size_limit(2**31 - 1)  # a document's text may be longer than the csv module's default 128 KB
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=TABLE_SUFFIXES.get(_suffix(path), ","),
                                strict=True)  # strict: an unclosed quote is an error, not a text that runs to the end
        try:
            header = reader.fieldnames
            if header is None:
                raise DataError(f"{path}: empty; a {what} starts with a line naming its columns")
            _check_columns(path, required, header, hint)
            for row in reader:
                if None in row:  # DictReader's key for cells beyond the header's: a text's unquoted comma
                    sep = "comma" if reader.reader.dialect.delimiter == "," else "tab"
                    raise DataError(f"{path}:{reader.line_num}: {len(header) + len(row[None])} cells, the header "
                                    f"names {len(header)}; quote a text that holds a {sep} (\"like, this\")")
                yield reader.line_num, row
        except UnicodeDecodeError:  # no line number: the file is decoded ahead of the rows, a block at a time
            raise DataError(not_utf8(path, None, first_bytes(path), what, ' ("CSV UTF-8" in a spreadsheet)')) from None
        except csv.Error as exc:
            raise DataError(f"{path}: not a valid {what} after line {reader.line_num} ({exc}; a stray or unclosed "
                            "quote?)") from None


PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".feather", ".arrow", ".ipc")  # Arrow IPC: pandas' to_feather, polars' write_ipc, datasets' shards


def columnar(path) -> bool:
    """Whether ``path`` is a table pyarrow reads by columns: a Parquet or Arrow IPC file (by its suffix), or a
    Hugging Face dataset folder (:func:`hf_shards`)."""
    return _suffix(path) in PARQUET_SUFFIXES + ARROW_SUFFIXES or hf_shards(path) is not None


def ipc_batches(path):
    """The schema and the record batches of the Arrow IPC file ``path`` (the file or the stream format),
    memory-mapped: a batch's columns point into the map until they are copied."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_file(source)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:  # not the file format: the stream format
        source.seek(0)
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)


def _ipc_files(path) -> list:
    """The Arrow IPC files of ``path``: a dataset folder's shards, else ``path`` itself."""
    return hf_shards(path) or [path]


def table_schema(path):
    """The Arrow schema of the :func:`columnar` table ``path`` (a dataset folder's: its first shard's), or None
    without pyarrow or when it cannot be read (its loader then says why)."""
    try:
        if _suffix(path) in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return pq.read_schema(path)
        return ipc_batches(_ipc_files(path)[0])[0]
    except Exception:  # ImportError, or pyarrow's own for a damaged file
        return None


def _check_columns(path, required: Sequence[str], names: Sequence[str], hint: str) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        shown = ", ".join(names[:10]) + (f", ... ({len(names):,} in all)" if len(names) > 10 else "")
        if all(_is_float(n) for n in names):  # no header, or column numbers for one: vectors, not texts
            sep = TABLE_SUFFIXES.get(_suffix(path), ",")
            skip = ", skiprows=1" if all(n.strip().isdigit() for n in names) else ""
            hint = (f"; it looks like a table of vectors, which a teacher reads from .npy: numpy.save('vectors.npy', "
                    f"numpy.loadtxt('{os.path.basename(str(path))}', delimiter={sep!r}{skip}, ndmin=2))")
        raise DataError(f"{path}: no column '{missing[0]}'; its columns are: {shown}{hint}")


def _is_float(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def read_columnar_texts(path, column: str, optional: Sequence[str], what: str, hint: str = "") -> dict[str, list]:
    """A :func:`columnar` table of texts (a dataset's export, or the dataset itself), read whole as a
    ``.jsonl`` one is: its ``column`` of texts (strings, or None for a row without one) and those of the
    ``optional`` columns it has, as lists."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading a {what} from a Parquet or Arrow table needs the optional extra: "
                        "pip install 'atlas-distill[parquet]'") from None
    schema = table_schema(path)
    if schema is None:
        raise DataError(f"{path}: not a readable Parquet or Arrow table")
    _check_columns(path, [column], schema.names, hint)
    columns = [column, *(c for c in optional if c in schema.names and c != column)]
    try:
        if _suffix(path) in PARQUET_SUFFIXES:
            table = pq.read_table(path, columns=columns)
        else:
            batches = [b.select(columns) for f in _ipc_files(path) for b in ipc_batches(f)[1]]
            table = pa.Table.from_batches(batches, schema=pa.schema([schema.field(c) for c in columns]))
    except Exception as exc:  # pyarrow's own: a damaged file, or shards whose columns differ
        raise DataError(f"{path}: cannot read column '{column}' ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})") from None
    out = {c: table.column(c).to_pylist() for c in columns}
    bad = next((t for t in out[column] if not isinstance(t, (str, type(None)))), None)
    if bad is not None:
        raise DataError(f"{path}: column '{column}' holds {type(bad).__name__} values; expected texts")
    return out


def first_row(path) -> dict | None:
    """The first row of the ``.csv``/``.tsv`` table ``path`` as ``{column: cell}``, or of the :func:`columnar`
    one's string columns (which may hold vectors as text: :func:`holds_vector`); None when it has none or
    cannot be read (its loader then says why)."""
    try:
        if not columnar(path):
            return next(read_table(path, [], "table"), (0, None))[1]
        schema = table_schema(path)
        strings = [f.name for f in schema if str(f.type) in ("string", "large_string")] if schema else []
        if not strings:
            return None
        if _suffix(path) in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(path).iter_batches(batch_size=1, columns=strings), None)
        else:
            batch = next((b for b in ipc_batches(_ipc_files(path)[0])[1] if b.num_rows), None)
        return None if batch is None else {k: v[0] for k, v in batch.select(strings).slice(0, 1).to_pydict().items()}
    except Exception:  # DataError, OSError, or pyarrow's own for a damaged file
        return None


_NUMPY_SCALAR = re.compile(r"np\.float(?:16|32|64)\(([^()]*)\)")


def cell_numbers(cell) -> list[float] | None:
    """A table cell's vector: a list of numbers as pandas writes a column of lists (``[0.1, -0.2]``, as in
    the OpenAI cookbook's ``embedding`` column; ``[np.float32(0.1), ...]`` for lists of NumPy 2 scalars) or of
    arrays (NumPy's print, ``[ 0.1 -0.2]``); None for anything else, a cut print (``[0.1 ... 0.9]``) included."""
    text = (cell or "").strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        values = json.loads(_NUMPY_SCALAR.sub(r"\1", text) if "np.float" in text else text)
    except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
        try:
            values = [float(v) for v in text[1:-1].split()]
        except ValueError:  # '...': NumPy cut a long array short; the values are not there
            return None
    return values if _numbers_list(values) else None


def text_vector(text: str) -> list[float] | None:
    """A vector written as a string where a vector is expected, or None: a list's text (``"[0.1, -0.2]"``,
    what a column of lists becomes through a CSV file; :func:`cell_numbers`), or base64 of little-endian
    float32 values (an embedding API's ``encoding_format = "base64"``), at least two of them.  Base64 is
    not looked for when telling a column of vectors from one of texts (:func:`holds_vector`): an id or a
    hash can be valid base64."""
    values = cell_numbers(text)
    if values is not None:
        return values
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return np.frombuffer(raw, "<f4").tolist() if len(raw) >= 8 and len(raw) % 4 == 0 else None


def holds_vector(cell) -> bool:
    """Whether a table cell holds a vector (:func:`cell_numbers`), or NumPy's cut print of one."""
    if cell_numbers(cell) is not None:
        return True
    words = (cell or "").strip()[1:-1].split()
    return "..." in words and all(w == "..." or _is_float(w) for w in words)


def vector_field(path) -> str | None:
    """The field of the JSON-lines file ``path`` that holds vectors, judged by its first line: ``embedding``
    when there is one, else the first field that is a list of numbers, and "" when the line is itself one
    (``jq -c '.data[].embedding'`` of an API's answer), an API's answer (:func:`api_answer`: a line per request)
    or an OpenAI Batch answer (:func:`batch_answer`); None
    for a file of texts to embed, or one that cannot be read (its loader then says why).  Embedding APIs
    return vectors with the text beside.  For a ``.csv``/``.tsv`` table, the same from its header and first
    row (:func:`holds_vector`; a ``text`` column holds texts, whatever they look like); for a :func:`columnar`
    one, from its schema: ``embedding``, else the first column of float lists, else None (a table of texts);
    ``embedding`` when it cannot be read here."""
    if _suffix(path) in TABLE_SUFFIXES:
        row = first_row(path)
        if row is None:
            return None
        if "embedding" in row:
            return "embedding"
        return next((k for k, v in row.items() if k != "text" and holds_vector(v)), None)
    if columnar(path):
        schema = table_schema(path)
        if schema is None or "embedding" in schema.names:
            return "embedding"
        found = next((f.name for f in schema if hasattr(f.type, "value_type") and str(f.type.value_type) in
                      ("float", "double", "halffloat")), None)
        row = first_row(path) if found is None else None  # lists kept as text, through a CSV file
        return found or next((k for k, v in (row or {}).items() if k != "text" and holds_vector(v)), None)
    row = _first_json_line(path)
    if _numbers_list(row) or batch_answer(row) or api_answer(row):
        return ""
    if not isinstance(row, dict):
        return None
    if "embedding" in row:
        return "embedding"
    return next((k for k, v in row.items() if _numbers_list(v)), None)


def _first_json_line(path):
    """The first non-blank line of the file ``path``, parsed as JSON; None when there is none, or it cannot be
    read or parsed (its reader then says why)."""
    try:
        with open(path, "rb") as fh:
            return json.loads(next((line for line in fh if line.strip()), b"null"))
    except (OSError, ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
        return None


ABSENT = object()  # json_field(row, name, ABSENT): a field the row lacks, told from one that is null


def json_field(row, name: str, absent=None):
    """``row[name]``, or the nested field a dotted name names (``metadata.text``: vector databases' exports keep
    a row's text in an object beside its vector); ``absent`` when there is none."""
    if isinstance(row, dict) and name in row:
        return row[name]
    for part in name.split("."):
        if not isinstance(row, dict) or part not in row:
            return absent
        row = row[part]
    return row


def api_answer(row) -> bool:
    """Whether a JSON value is an embedding API's answer: OpenAI's (``data``, objects with an ``embedding``),
    or Ollama's and Cohere's (``embeddings``, a list of vectors; Cohere's v2 by type, ``{"float": [...]}``)."""
    if not isinstance(row, dict):
        return False
    data, found = row.get("data"), row.get("embeddings")
    found = found.get("float") if isinstance(found, dict) else found
    return (isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "embedding" in data[0]) or \
        (isinstance(found, list) and bool(found) and _numbers_list(found[0]))


def batch_answer(row) -> bool:
    """Whether a JSON line is a request's answer in OpenAI Batch API output (``custom_id`` and ``response``)."""
    return isinstance(row, dict) and "custom_id" in row and "response" in row


def batch_input(path) -> str | None:
    """What to do when ``path``, given as vectors or texts, is an OpenAI Batch input file (its first line a
    request, ``custom_id`` and ``body``): the vectors are in the batch's output file; None otherwise."""
    row = _first_json_line(path)
    if isinstance(row, dict) and "custom_id" in row and isinstance(row.get("body"), dict) and "response" not in row:
        return (f"{path}: is an OpenAI Batch input file (requests); its embeddings are in the batch's output file: "
                "give that")
    return None


def _numbers_list(v) -> bool:
    return isinstance(v, list) and len(v) > 1 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                       for x in v)


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
                        f"expected one of {', '.join(FLOAT_DTYPES)}")
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
        bad = next((i for i, v in enumerate(seq) if not isinstance(v, types) and not (name != "ids" and _missing(v))),
                   None)
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
    if data.labels is not None and any(map(_missing, data.labels)):
        data = attrs.evolve(data, labels=[None if _missing(v) else v for v in data.labels])
    if data.labels is not None and len({type(v) for v in data.labels if v is not None}) > 1:
        # 3 and "3" in one file are one label, as map.parquet (a column of one type) and map.html show them
        data = attrs.evolve(data, labels=[None if v is None else str(v) for v in data.labels])
    if data.texts is not None and any(map(_missing, data.texts)):
        texts = ["" if _missing(v) else v for v in data.texts]
        data = attrs.evolve(data, texts=texts if any(texts) else None)  # a column of missing values: no texts
    return data


def _missing(v) -> bool:
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
    _hash: Any = attrs.field(default=None, init=False)

    def see(self, start: int, block: torch.Tensor) -> None:
        """Check ``block`` ``(n, D)``, rows ``start…`` of the data (blocks in order, for ``digest``)."""
        if self.digest:
            if self._hash is None:  # at the first block: validation has checked the shape by then
                self._hash = _new_digest(self.data)
            self._hash.update(block.cpu().numpy())
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

    def describe_zeros(self) -> str:
        """``t.npy: row 41 is all zeros (3 rows in all)``."""
        src = self.data.source or "teacher"
        more = f" ({self.zeros:,} rows in all)" if self.zeros > 1 else ""
        return f"{src}: row {self.first_zero} is all zeros{more}"


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
