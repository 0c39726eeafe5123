"""Teachers that read vectors from tables: ``parquet`` and ``arrow`` (optional extra, pyarrow), ``jsonl`` and
``csv``.

This is how embeddings are usually stored (dataset exports, pandas/polars/DuckDB,
vector databases): one row per item, an embedding column of float lists, and
perhaps a text, a label and an id.  The ``parquet`` teacher reads batch by batch
into a float32 ``.npy`` in ``cache_dir`` (by default the run folder's ``cache/``)
and memory-maps it, so a file larger than memory streams like a ``.npy`` does and
a second run reuses the conversion; without ``cache_dir`` the vectors are read into memory.
"""

from __future__ import annotations

import contextlib
import json
import struct
import warnings
from pathlib import Path

import numpy as np

from atlas_plugins.checkpoint import atomic_write_bytes, cache_writer
from atlas_plugins.errors import AtlasError, DataError, first_line
from atlas_plugins.formats import (ABSENT, ARROW_SUFFIXES, PARQUET_SUFFIXES, api_answer, batch_answer, cell_numbers,
                                   hf_shards, holds_vector, ipc_batches, json_field, not_utf8, parquet_parts,
                                   read_table, text_vector, unreadable, utf16)
from atlas_plugins.teacher import TeacherData, dtype_hint

from .teachers import _cache_file, _exists, _stamp

BATCH_ROWS = 65536
TEXT_CELLS = 4096  # vectors kept as text parsed at a time: a 1536-D one is some 25 kB of it
EXTRA_COLUMNS = ("text", "label", "id")  # the columns read when present (or named by text_column, ...)


def _pyarrow(teacher: str = "parquet"):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"the {teacher} teacher needs pyarrow, the optional extra: pip install 'atlas-distill[parquet]'"
                        ) from None
    return pa, pq


def _strings(pa, t) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _list_dim(pa, field, path: Path, column: str) -> int | None:
    """The vector length for a fixed-size list column, None for a variable list or strings (:func:`text_vector`:
    a CSV file's lists converted as they were); DataError otherwise."""
    t = field.type
    if _strings(pa, t):
        return None
    listed = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    if not listed or not pa.types.is_floating(t.value_type):
        raise DataError(f"{path}: column '{column}' is {t}; expected a list of floats (one embedding per row)"
                        + (dtype_hint(str(t.value_type)) if listed else ""))
    return t.list_size if pa.types.is_fixed_size_list(t) else None


def _vectors(pa, chunk, path: Path, column: str, first_row: int, dim: int | None) -> np.ndarray:
    """A list column's batch as a float32 array ``(n, D)``; every row must hold ``D`` floats."""
    arr = chunk.combine_chunks() if hasattr(chunk, "combine_chunks") else chunk
    if arr.null_count:
        row = first_row + next(i for i, v in enumerate(arr.is_null().to_pylist()) if v)
        raise DataError(f"{path}: row {row} of column '{column}' is empty (null); drop it or fill it")
    n = len(arr)
    if _strings(pa, arr.type):
        rows = []
        for start in range(0, n, TEXT_CELLS):  # a slice at a time: Python's copies of the texts stay small
            for i, cell in enumerate(arr.slice(start, TEXT_CELLS).to_pylist(), first_row + start):
                rows.append(_vector(cell, f"{path}: row {i} of column '{column}'", dim))
                dim = len(rows[-1])
        return np.stack(rows) if rows else np.zeros((0, dim or 0), np.float32)
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    else:
        lengths = np.diff(np.asarray(arr.offsets)) if n else np.zeros(0, np.int64)
        dim = int(lengths[0]) if dim is None and n else dim
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            raise DataError(f"{path}: row {first_row + int(bad[0])} of column '{column}' holds "
                            f"{int(lengths[bad[0]])} values, the rows before it {dim}; every embedding must have "
                            "the same length")
    values = arr.flatten()
    if values.null_count:
        raise DataError(f"{path}: column '{column}' holds null values inside an embedding; clean them first")
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, dim or 0)


def parquet(path, column: str = "embedding", text_column: str | None = None, label_column: str | None = None,
            id_column: str | None = None, cache_dir: str | None = None):
    """A Parquet file, or a folder of them (Spark's or Dask's output, in name order): an embedding column
    (list of floats) and, when present, text, label and id columns.

    ``text_column`` / ``label_column`` / ``id_column`` default to columns named ``text``, ``label``
    and ``id`` if the file has them.
    """
    pa, pq = _pyarrow()
    parts = parquet_parts(path)
    p = Path(path) if parts is not None else _exists(path)
    files, schema, n = [], None, 0  # (file, rows per batch) of each part; only its footer is read here
    for f in parts or [p]:
        try:
            meta = pq.read_metadata(f)
            found = meta.schema.to_arrow_schema()
        except Exception as exc:  # pyarrow raises ArrowInvalid and OSError for damaged files
            raise DataError(unreadable(f, "Parquet file", PARQUET_SUFFIXES, exc)) from None
        if schema is not None and not found.equals(schema):
            raise DataError(f"{f}: its columns differ from those of {Path(files[0][0]).name}; write the parts with "
                            "one schema")
        schema, n = found, n + meta.num_rows
        files.append((f, _batch_rows(meta, column)))

    def batches(columns):  # one part open at a time: a folder may hold thousands
        for f, rows in files:
            # pages read as needed, not a row group's column at once: pandas writes up to a million rows in one
            with pq.ParquetFile(f, buffer_size=PAGE_BUFFER, pre_buffer=False) as pf:
                yield from pf.iter_batches(batch_size=rows, columns=columns)

    stamps = [[Path(f).name, *_stamp(Path(f))] for f, _ in files] if parts is not None else []
    return _table(pa, p, schema, n, batches, column, (text_column, label_column, id_column), cache_dir, "parquet",
                  stamps)


PAGE_BUFFER = 8 * 2**20
BATCH_BYTES = 16 * 2**20  # of the vector column, uncompressed, per batch read from a Parquet or Arrow file


def _batch_rows(meta, column: str) -> int:
    """Rows per batch read from the Parquet file whose footer is ``meta``: about :data:`BATCH_BYTES` of
    ``column``, by the bytes a row takes in the first row group (a 1536-D float32 row: 6 kB; as text, some
    25 kB), so that the peak memory of a conversion does not grow with the vectors' width."""
    if meta.num_row_groups == 0 or meta.row_group(0).num_rows == 0:
        return BATCH_ROWS
    group = meta.row_group(0)
    size = sum(group.column(i).total_uncompressed_size for i in range(group.num_columns)
               if group.column(i).path_in_schema.split(".")[0] == column)
    return _rows_per_batch(group.num_rows, size)


def _rows_per_batch(rows: int, size: int) -> int:
    """Rows to read at a time from ``rows`` whose vector column takes ``size`` bytes: about :data:`BATCH_BYTES`
    of it, at least 64 rows and at most :data:`BATCH_ROWS`."""
    return int(min(BATCH_ROWS, max(64, BATCH_BYTES * rows // max(size, 1))))


parquet.suffixes = PARQUET_SUFFIXES


def arrow(path, column: str = "embedding", text_column: str | None = None, label_column: str | None = None,
          id_column: str | None = None, cache_dir: str | None = None):
    """An Arrow IPC file (``df.to_feather`` in pandas, ``write_ipc`` in polars; the file or the stream format)
    or a Hugging Face dataset folder (``ds.save_to_disk``: its ``.arrow`` shards in order), read like a
    Parquet file: an embedding column (list of floats) and, when present, text, label and id columns.  Each
    file is memory-mapped and read a batch at a time.
    """
    pa, _ = _pyarrow("arrow")
    shards = hf_shards(path)
    p = Path(path) if shards is not None else _exists(path)
    files = [_exists(f, "dataset shard") for f in shards] if shards is not None else [p]
    if not files:
        raise DataError(f"{p}: is a Hugging Face dataset folder without .arrow shards; save the dataset again")

    n, schema = 0, None
    for f in files:
        try:
            found, batches = ipc_batches(f)
            n += sum(b.num_rows for b in batches)  # no copy: the batches point into the map
        except Exception as exc:  # pyarrow raises ArrowInvalid and OSError for damaged files
            raise DataError(unreadable(f, "Arrow IPC (Feather) file", ARROW_SUFFIXES, exc)) from None
        if schema is not None and not found.equals(schema):
            raise DataError(f"{f}: its columns differ from those of {files[0].name}; save the dataset again")
        schema = found

    def batches(columns):  # a record batch as written may hold any number of rows: slices of BATCH_BYTES
        for f in files:
            for b in ipc_batches(f)[1]:
                size = b.column(column).nbytes if column in b.schema.names else 0
                step = _rows_per_batch(b.num_rows, size)
                yield from (b.slice(start, step).select(columns) for start in range(0, b.num_rows, step))

    stamps = [[f.name, *_stamp(f)] for f in files] if shards is not None else []
    return _table(pa, p, schema, n, batches, column, (text_column, label_column, id_column), cache_dir, "arrow",
                  stamps)


arrow.suffixes = ARROW_SUFFIXES


def _table(pa, p: Path, schema, n: int, batches, column: str, given: tuple, cache_dir, prefix: str,
           stamps: list = ()) -> TeacherData:
    """The teacher of a table with ``schema`` and ``n`` rows whose ``batches(columns)`` yields record batches:
    the vectors of ``column`` and the ``given`` (text, label, id) columns, or those named so.  The cache file
    is named ``prefix-...`` after the file, the columns and ``stamps`` (a folder's files)."""
    if column not in schema.names:
        raise DataError(f"{p}: no column '{column}'; columns are: {', '.join(schema.names)}; name the one with "
                        "the vectors: teacher.column in a pipeline file, --key for atlas-encode")
    dim = _list_dim(pa, schema.field(column), p, column)
    extras = {}
    for kind, name_given in zip(EXTRA_COLUMNS, given):
        if name_given is not None and name_given not in schema.names:
            raise DataError(f"{p}: no column '{name_given}' ({kind}_column); columns are: {', '.join(schema.names)}")
        name = name_given or (kind if kind in schema.names and kind != column else None)
        if name is not None:
            extras[kind] = name
    if n == 0:
        raise DataError(f"{p}: has no rows")
    try:
        emb, lists = _convert(pa, batches, p, column, dim, n, extras, cache_dir, prefix, stamps)
    except AtlasError:  # a bad row, a cache that cannot be written: already named
        raise
    except Exception as exc:
        raise DataError(f"{p}: cannot read column '{column}' ({first_line(exc)})") from None
    return TeacherData(emb, labels=lists.get("label"), texts=lists.get("text"), ids=lists.get("id"), source=str(p))


def _convert(pa, batches, path: Path, column: str, dim, n: int, extras: dict, cache_dir, prefix: str,
             stamps: list = ()):
    """Read the record batches of ``batches(columns)`` into an array (memory, or a ``.npy`` in ``cache_dir``,
    written as the batches come and then memory-mapped) and lists."""
    lists: dict[str, list] = {kind: [] for kind in extras}
    cache = None
    if cache_dir:
        cache = _cache_file(path, cache_dir, prefix, [column, *stamps])
        if cache.is_file():
            for batch in batches(list(extras.values())) if extras else ():  # the small columns alone
                for kind, name in extras.items():
                    lists[kind] += batch.column(name).to_pylist()
            return np.load(cache, mmap_mode="r"), lists
    parts, row = [], 0
    # written, not mapped (a map's written pages count as the process's memory); a bad row, or Ctrl-C, part
    # way: no half-converted file is left
    with cache_writer(cache) if cache is not None else contextlib.nullcontext() as out:
        if out is not None:
            out.write(_npy_header((0, 0)))  # room for the header, written once the width is known
        for batch in batches([column, *extras.values()]):
            block = _vectors(pa, batch.column(column), path, column, row, dim)
            dim = block.shape[1]
            if out is not None:
                out.write(block.astype("<f4", copy=False).tobytes())
            else:
                parts.append(block)
            for kind, name in extras.items():
                lists[kind] += batch.column(name).to_pylist()
            row += len(block)
        if row != n:
            raise DataError(f"{path}: holds {row:,} rows, its metadata {n:,}; write the file again")
        if out is None:
            return np.concatenate(parts), lists
        out.seek(0)
        out.write(_npy_header((n, dim)))
    return np.load(cache, mmap_mode="r"), lists


def jsonl(path, column: str = "embedding", text_column: str = "text", label_column: str = "label",
          id_column: str = "id", requests: str | None = None, cache_dir: str | None = None):
    """JSON lines with a vector per row (``{"embedding": [...], "text": ..., "label": ..., "id": ...}``), a
    vector alone per line (``[0.1, ...]``), an embedding API's answer per line (OpenAI's ``{"data": [...]}``,
    Ollama's ``{"embeddings": [...]}``: what a loop over requests that saves each answer writes), or OpenAI
    Batch API output (a line per request, its vectors in ``response.body.data``; ids are the requests'
    ``custom_id``, ``custom_id#i`` for the i-th of several inputs).

    A ``.jsonl`` file whose first line has an ``embedding`` field, is a list of numbers or a Batch answer is
    read with it when no loader is named; name it (``loader = "jsonl"``, ``column = ...``) for vectors in a
    field of another name.  ``requests``: the Batch's input file, whose ``body.input`` gives each row its text.
    With ``cache_dir`` (a run's ``cache/``), the vectors are written to a float32 ``.npy`` there as they are
    parsed and memory-mapped, and the texts, labels and ids beside it as JSON: memory stays flat, and a second
    run reads those instead of parsing the file again (about 1,500 rows/s of 1536-D JSON).
    """
    p = _exists(path)
    names = {"text": text_column, "label": label_column, "id": id_column}
    asked = _exists(requests, "Batch input file (requests)") if requests is not None else None
    stamp = [str(asked.resolve()), *_stamp(asked)] if asked is not None else []
    return _parsed(p, "jsonl", [column, *names.values(), *stamp], cache_dir,  # requests read only to parse p
                   lambda: _jsonl_rows(p, column, names, _requests(asked) if asked is not None else None))


jsonl.path_params = ("requests",)  # a file beside the pipeline file


def json_file(path, column: str = "embedding", text_column: str = "text", label_column: str = "label",
              id_column: str = "id"):
    """A ``.json`` file of vectors, read whole: an embedding API's answer as saved (``{"data": [{"index": 0,
    "embedding": [...]}, ...]}``: OpenAI and the servers that answer like it; ``{"embeddings": [[...], ...]}``,
    with ``"texts"`` beside them: Ollama, Cohere; with ``"documents"`` and ``"ids"``: Chroma's
    ``collection.get()``; ``{"embeddings": [{"values": [...]}, ...]}``: Gemini;
    ``{"predictions": [{"embeddings": {"values": [...]}}, ...]}``: Vertex AI), a list of vectors, a list
    of rows as the ``jsonl`` teacher reads them (``json.dump(records)``), or an answer that holds one such
    list (a vector database's: Qdrant's ``result.points``, Weaviate's ``objects``, Pinecone's ``vectors``).
    JSON lines stream instead; a large file says so."""
    p = _exists(path)
    if p.stat().st_size > JSON_WARN_BYTES:
        warnings.warn(f"atlas: {p}: {p.stat().st_size / 1e9:.1f} GB of JSON is read whole, at about twice that in "
                      f"memory; JSON lines are read a line at a time (jq -c '.data[]' {p.name} > {p.stem}.jsonl)")
    try:
        doc = json.loads(p.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{p}: lists nested too deeply to be vectors or rows") from None
    names = {"text": text_column, "label": label_column, "id": id_column}
    return _parsed(p, "json", [], None, lambda: _json_rows(p, doc, column, names))


json_file.suffixes = (".json",)
JSON_WARN_BYTES = 2**30


def _json_rows(p, doc, column: str, names: dict, dim: int | None = None, file=None):
    """The rows of a ``.json`` document (:func:`json_file`; ``p``: its name in messages, ``file`` the file's
    when ``p`` is a line of it), as :func:`_jsonl_rows` yields them, each vector ``dim`` long when given, else
    as long as the first."""
    beside = {}  # lists beside the vectors, one item per vector: {kind: list}
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):  # OpenAI's answer, in input order
        items = sorted(doc["data"], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
    elif isinstance(doc, dict) and isinstance(doc.get("embeddings"), (list, dict)):
        items = doc["embeddings"]
        if isinstance(items, dict):  # Cohere's v2 answer, by type
            if "float" not in items:
                raise _not_float(p, items, file or p)
            items = items["float"]
        for kind, key in (("text", "texts"), ("text", "documents"), ("id", "ids")):  # Chroma: documents, ids
            if isinstance(doc.get(key), list):
                if len(doc[key]) != len(items):
                    raise DataError(f"{p}: '{key}' holds {len(doc[key]):,} items for {len(items):,} embeddings; "
                                    "save the answer again, whole")
                beside[kind] = doc[key]
    elif isinstance(doc, dict) and isinstance(doc.get("predictions"), list):  # Vertex AI's answer
        items = [json_field(d, "embeddings") for d in doc["predictions"]]
    elif isinstance(doc, list):
        items = doc
    elif len(found := _row_lists(doc)) == 1:  # a vector database's answer: Qdrant's result.points, Weaviate's objects
        items = found[0][1]
    else:
        fields = f"; its fields are: {', '.join(doc)}" if isinstance(doc, dict) else ""
        lists = (f"; it holds lists of rows in {', '.join(repr(name) for name, _ in found)}: save the one with the "
                 f"vectors alone (jq '.{found[0][0]}' {Path(p).name} > rows.json)" if found else "")
        raise DataError(f"{p}: expected an embedding API's answer ({{\"data\": [...]}} or {{\"embeddings\": [...]}}), "
                        f"a list of vectors or a list of rows with a '{column}' field{fields}{lists}")
    for i, item in enumerate(items):
        if isinstance(item, str):
            raise DataError(f"{p}: item {i} is a text; texts to embed go in a .txt file, one per line, or JSON "
                            "lines with a 'text' field")
        vec = json_field(item, column, item.get("values", ABSENT)) if isinstance(item, dict) else item  # Google's
        if vec is ABSENT:
            raise DataError(f"{p}: item {i} has no '{column}' field (its fields are: {', '.join(item)}){_COLUMN_HINT}")
        values = _vector(vec, f"{p}: item {i}" + (f" '{column}'" if isinstance(item, dict) else ""), dim)
        dim = len(values)
        extras = {kind: json_field(item, name) for kind, name in names.items()}
        yield values, extras | {kind: side[i] for kind, side in beside.items()}


def _not_float(where: str, types: dict, file) -> DataError:
    """The refusal of an answer whose ``embeddings`` hold only quantized or binary types (Cohere's
    ``embedding_types``): read as floats, binary and unsigned ones would not keep their neighbours."""
    int8 = (f", or map the int8 ones as they are: jq -c '.embeddings.int8[]' {Path(file).name} > vectors.jsonl"
            if "int8" in types else "")
    return DataError(f"{where}: 'embeddings' holds {', '.join(map(str, types))} embeddings, no float ones; ask the "
                     f"API for them (embedding_types=[\"float\"]){int8}")


def _row_lists(doc, at: str = "", depth: int = 3) -> list[tuple[str, list]]:
    """The lists of rows (objects or lists) inside the object ``doc``, ``depth`` levels deep at most, by their
    dotted names; an object whose values are all objects is one too, keyed by id (Pinecone's fetch answer)."""
    found = []
    for key, value in (doc.items() if isinstance(doc, dict) else ()):
        if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
            found.append((at + key, value))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            found.append((at + key, list(value.values())))
        elif isinstance(value, dict) and depth > 1:
            found += _row_lists(value, f"{at}{key}.", depth - 1)
    return found


def csv(path, column: str = "embedding", text_column: str | None = None, label_column: str | None = None,
        id_column: str | None = None, cache_dir: str | None = None):
    """A ``.csv`` (or ``.tsv``) table with a vector per row in ``column``, each cell a JSON list of numbers
    (``"[0.1, -0.2, ...]"``: what pandas' ``to_csv`` writes for a column of lists, as in the OpenAI cookbook's
    embedding files) or NumPy's full print of an array (``"[ 0.1 -0.2 ...]"``), and, when present, text,
    label and id columns (``text_column``, ... default to columns named ``text``, ``label`` and ``id`` if the
    table has them).

    A ``.csv`` or ``.tsv`` file with an ``embedding`` column is read with it when no loader is named.  With
    ``cache_dir``, converted once to a memory-mapped ``.npy`` as the ``jsonl`` teacher does.
    """
    p = _exists(path)
    given = {"text": text_column, "label": label_column, "id": id_column}
    return _parsed(p, "csv", [column, *given.values()], cache_dir, lambda: _csv_rows(p, column, given))


_COLUMN_HINT = "; name the one with the vectors: teacher.column in a pipeline file, --key for atlas-encode"


def _parsed(p: Path, prefix: str, params: list, cache_dir, rows) -> TeacherData:
    """The teacher of a file parsed row by row, ``rows()`` yielding ``(float32 vector, {kind: text, label or id
    or None})``: read into memory, or with ``cache_dir`` written as parsed to a float32 ``.npy`` there and
    memory-mapped, the texts, labels and ids beside it as JSON; a second run reads those while the file is
    unchanged."""
    cache = _cache_file(p, cache_dir, prefix, params) if cache_dir else None
    if cache is not None and cache.is_file() and cache.with_suffix(".json").is_file():
        extra = _present(json.loads(cache.with_suffix(".json").read_text(encoding="utf-8")))
        return TeacherData(np.load(cache, mmap_mode="r"), labels=extra["label"], texts=extra["text"],
                           ids=extra["id"], source=str(p))
    lists: dict[str, list] = {"text": [], "label": [], "id": []}
    if cache is None:
        vectors = []  # a float32 array per row: Python floats take 8x
        for values, extras in rows():
            vectors.append(values)
            for kind in lists:
                lists[kind].append(extras[kind])
        if not vectors:
            raise DataError(f"{p}: no rows found")
        emb = np.stack(vectors)
    else:
        before, n, dim = _stamp(p), 0, 0
        with cache_writer(cache) as out:
            out.write(_npy_header((0, 0)))  # room for the header, written once the rows are counted
            for values, extras in rows():
                out.write(values.astype("<f4", copy=False).tobytes())
                n, dim = n + 1, len(values)
                for kind in lists:
                    lists[kind].append(extras[kind])
            if n == 0:
                raise DataError(f"{p}: no rows found")
            if _stamp(p) != before:
                raise DataError(f"{p}: changed while it was read; run again once it is written")
            out.seek(0)
            out.write(_npy_header((n, dim)))
            # the .npy is renamed into place last: its presence says both files are whole
            atomic_write_bytes(cache.with_suffix(".json"), json.dumps(lists).encode())
        emb = np.load(cache, mmap_mode="r")
    extra = _present(lists)
    return TeacherData(emb, labels=extra["label"], texts=extra["text"], ids=extra["id"], source=str(p))


NPY_HEADER = 128  # bytes: a version 1.0 header with room for any 2-D float32 shape


def _npy_header(shape: tuple) -> bytes:
    """The ``.npy`` header of a little-endian float32 array of ``shape``, :data:`NPY_HEADER` bytes long (a
    header padded with spaces, as the format allows), so that rows can be written before their count is known."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", NPY_HEADER - 10) + text.ljust(NPY_HEADER - 11).encode() + b"\n"


def _present(lists: dict) -> dict:
    """Each list of texts, labels or ids, or None where no row has one."""
    return {k: (v if any(x is not None for x in v) else None) for k, v in lists.items()}


def _jsonl_rows(p: Path, column: str, names: dict, asked: dict | None = None):
    """Each row of ``p`` as ``(float32 vector, {kind: value of field names[kind] or None})``: a non-blank line's,
    or each of a Batch answer's (:func:`_answered`), every vector as long as the first; a line that is not
    one is a :class:`DataError` naming it."""
    dim, answered = None, {}  # custom_id -> the line of its answer
    for lineno, raw in _lines(p):
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            if lineno == 1 and utf16(raw):
                raise DataError(not_utf8(p, 1, raw)) from None
            row = None
        vec = row if isinstance(row, list) else json_field(row, column, ABSENT)
        if vec is ABSENT and batch_answer(row):
            cid = row["custom_id"]
            if isinstance(cid, str):
                if cid in answered:
                    raise DataError(f"{p}:{lineno}: request '{cid}' is answered twice (lines {answered[cid]} and "
                                    f"{lineno}); keep one answer per request")
                answered[cid] = lineno
            for vec, extras in _answered(row, f"{p}:{lineno}", asked):
                values = _vector(vec, f"{p}:{lineno}: the embedding of '{extras['id']}'", dim)
                dim = len(values)
                yield values, extras
            continue
        if vec is ABSENT and api_answer(row):  # a line per request, each the API's answer as it came
            for values, extras in _json_rows(f"{p}:{lineno}", row, column, names, dim, p):
                dim = len(values)
                yield values, extras
            continue
        if vec is ABSENT:
            raise DataError(f"{p}:{lineno}: expected a JSON object with a '{column}' field (a list of "
                            "numbers), or a list of numbers")
        where = f"{p}:{lineno}: " + ("the line" if vec is row else f"'{column}'")
        values = _vector(vec, where, dim, maybe_bool=b"true" in raw or b"false" in raw)
        dim = len(values)
        yield values, {kind: json_field(row, name) for kind, name in names.items()}


def _lines(p: Path):
    """``(line number, bytes)`` for each non-blank line of the file ``p``."""
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                yield lineno, raw




def _answered(row: dict, where: str, asked: dict | None):
    """The vectors of one line of OpenAI Batch API output, ``{"custom_id": ..., "response": {"status_code": 200,
    "body": {"data": [{"index": 0, "embedding": [...]}, ...]}}, "error": null}``, in input order: ``(vector,
    {"id": custom_id, "text": its input from ``asked`` (custom_id -> body.input), "label": None})``.  A failed
    request is a :class:`DataError` that names it: its vectors are not in the file."""
    cid = row["custom_id"]
    response = row["response"] if isinstance(row["response"], dict) else {}
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    data = body.get("data")
    if row.get("error") or response.get("status_code", 200) != 200 or not isinstance(data, list) or not data:
        error = row.get("error") or body.get("error")
        why = error.get("message") if isinstance(error, dict) else error
        why = why or f"status {response.get('status_code')}, no embeddings in its answer"
        raise DataError(f"{where}: request '{cid}' failed ({why}); send it again in a new batch and add its "
                        "answer, or drop the line")
    if asked is not None and cid not in asked:
        raise DataError(f"{where}: request '{cid}' is not in the Batch input file (requests); name the file the "
                        "batch was made from")
    inputs = asked.get(cid) if asked is not None else None
    items = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
    for i, item in enumerate(items):
        vec = item.get("embedding") if isinstance(item, dict) else None
        text = inputs[i] if isinstance(inputs, list) and i < len(inputs) else inputs
        yield vec, {"text": text if isinstance(text, str) else None, "label": None,
                    "id": cid if len(items) == 1 else f"{cid}#{i}"}


def _requests(p: Path) -> dict:
    """The inputs of an OpenAI Batch input file (a line per request: ``{"custom_id": ..., "body": {"input":
    text or [texts]}}``) by ``custom_id``."""
    asked = {}
    for lineno, raw in _lines(p):
        try:
            row = json.loads(raw)
            asked[row["custom_id"]] = row["body"]["input"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise DataError(f"{p}:{lineno}: expected a Batch request, {{\"custom_id\": ..., \"body\": {{\"input\": "
                            "...}}") from None
    return asked


def _csv_rows(p: Path, column: str, given: dict):
    """Each row of the table ``p`` as ``(float32 vector, {kind: its cell, or None})``, the cells of the columns
    ``given`` names, or else of those named as the kind; a cell that is not a vector of the first one's length,
    or a column given that the table lacks, is a :class:`DataError`."""
    dim, names = None, {kind: name or kind for kind, name in given.items()}
    for lineno, row in read_table(p, [column], "table of vectors", _COLUMN_HINT):
        if dim is None and (missing := next((k for k, name in given.items() if name and name not in row), None)):
            raise DataError(f"{p}: no column '{given[missing]}' ({missing}_column); its columns are: {', '.join(row)}")
        cell = row[column] or ""
        vec = cell_numbers(cell)
        if vec is None:
            why = ("is cut short with '...' (NumPy's print of a long array: the values are not in the file); "
                   "write them as lists (df[col] = df[col].map(lambda v: v.tolist())) or save the table as Parquet"
                   if holds_vector(cell) else "must be a list of numbers, like [0.1, -0.2]" if cell.strip()
                   else "is empty; drop the row or fill it")
            raise DataError(f"{p}:{lineno}: '{column}' {why}")
        values = _vector(vec, f"{p}:{lineno}: '{column}'", dim)
        dim = len(values)
        yield values, {kind: row.get(name) or None for kind, name in names.items()}


def _vector(vec, where: str, dim: int | None, maybe_bool: bool = True) -> np.ndarray:
    """``vec`` as float32 values (:func:`_numbers`; a string: core :func:`text_vector`), ``dim`` of them when given;
    else a :class:`DataError` that starts with ``where`` (the file, line and field)."""
    if isinstance(vec, str):
        vec = text_vector(vec)
        if vec is None:
            raise DataError(f"{where} is a text, not a vector: expected a list of numbers, the same as text "
                            "('[0.1, -0.2]') or base64 float32 (what embedding APIs send)")
    values = _numbers(vec, maybe_bool)
    if values is None:
        raise DataError(f"{where} must be a list of numbers")
    if np.isinf(values).any() and np.isfinite(np.array(vec, dtype=np.float64)).all():
        raise DataError(f"{where} has values too large for float32 (|x| > 3.4e38; largest "
                        f"{max(abs(float(v)) for v in vec):.3g}); rescale the embeddings")
    if dim is not None and len(values) != dim:
        raise DataError(f"{where} has {len(values)} values, the rows before it {dim}")
    if dim is None and len(values) and 127 < values.max() <= 255 and values.min() >= 0 \
            and (values == np.round(values)).all():  # the first row: bytes, never a model's floats
        raise DataError(f"{where} holds whole numbers from 0 to 255, bytes{dtype_hint('uint8')}")
    return values


def _numbers(vec, maybe_bool: bool = True) -> np.ndarray | None:
    """``vec`` as float32 values when it is a flat list of JSON numbers, else None (``true`` is not a number;
    ``maybe_bool=False``: the line holds no ``true`` or ``false``, so the check per value is skipped)."""
    if not isinstance(vec, list):
        return None
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: the caller names it
        values = np.array(vec) if vec else np.empty(0)
        if values.dtype.kind == "O" and all(type(v) in (int, float) for v in vec):  # an integer beyond int64
            values = np.array(vec, dtype=np.float64)
        if values.ndim != 1 or values.dtype.kind not in "fiu" or (maybe_bool and any(type(v) is bool for v in vec)):
            return None
        return values.astype(np.float32)
