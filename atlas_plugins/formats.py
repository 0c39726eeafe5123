"""The files people bring as teachers: what each suffix holds, and the readers' shared parsing rules.

Teacher plugins (``builtin_plugins/tables.py``, ``teachers.py``, ``text.py``), ``atlas-encode`` and the
pipeline file's checks use these, so one rule holds everywhere: which suffix a plugin reads
(:func:`loader_for_suffix`), what to say about a file no teacher reads (:func:`no_reader`,
:func:`convert_first`), how text lines are decoded (:func:`text_lines`), how CSV, Parquet and Arrow tables
are read (:func:`read_table`, :func:`read_columnar_texts`), where a JSON row keeps a field
(:func:`json_field`), and when a cell, line or column holds a vector rather than a text
(:func:`text_vector`, :func:`vector_line`, :func:`vector_field`).
"""

from __future__ import annotations

import base64
import codecs
import csv
import json
import os
import re
import zipfile
from typing import Iterator, Sequence

import numpy as np

from .errors import DataError, first_line


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


def parquet_parts(path) -> list[str] | None:
    """The Parquet files of a folder of them (what Spark, Dask and ``pyarrow.parquet.write_to_dataset`` write:
    ``part-00000.parquet``, ...) in natural name order (:func:`_parts`).  None for anything else, a folder of
    partition subfolders (``label=x/``, whose values are in folder names, not in the files) included."""
    return _parts(path, PARQUET_SUFFIXES)


def npy_parts(path) -> list[str] | None:
    """The ``.npy`` files of a folder of them (what a script that embeds in batches leaves: ``batch-0.npy``,
    ..., ``batch-10.npy``) in natural name order (:func:`_parts`); None for anything else, a folder of Parquet
    parts included."""
    return None if parquet_parts(path) else _parts(path, (".npy",))


def _parts(path, suffixes) -> list[str] | None:
    """The files of the folder ``path`` whose suffix is one of ``suffixes``, in natural name order (``part.2``
    before ``part.10``, where plain sorting, ``sorted(glob(...))``, puts ``part.10`` first): the rows' order.
    Names that start with ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are left out, as pyarrow does.  None for
    anything else, a Hugging Face dataset folder included."""
    if not os.path.isdir(path) or hf_shards(path) is not None:
        return None
    names = [f for f in os.listdir(path) if not f.startswith(("_", ".")) and os.path.isfile(os.path.join(path, f))
             and _suffix(f) in suffixes]
    key = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]  # noqa: E731
    return [os.path.join(str(path), n) for n in sorted(names, key=key)] or None


def _parquet_files(path) -> list | None:
    """The Parquet files of ``path``: a folder's parts (:func:`parquet_parts`), ``path`` itself for a Parquet
    file (by its suffix), else None."""
    return parquet_parts(path) or ([path] if _suffix(path) in PARQUET_SUFFIXES else None)


def loader_for_suffix(path, registry) -> str | None:
    """The teacher plugin that reads files like ``path`` (its ``suffixes`` attribute), or None.  A Hugging
    Face dataset folder reads as its shards do (``.arrow``), a folder of Parquet or ``.npy`` files as they do."""
    suffix = (".arrow" if hf_shards(path) is not None else ".parquet" if parquet_parts(path)
              else ".npy" if npy_parts(path) else _suffix(path))
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
    if not os.path.isdir(path):
        return None
    return f"{path}: is a folder; expected a teacher file"


def content_kind(path) -> tuple[str, str] | None:
    """``(what, suffix)`` of a file whose first bytes say what it is: a NumPy ``.npy`` or ``.npz``, a torch
    ``.pt`` (a zip archive with a ``data.pkl``), Parquet, Arrow IPC (Feather) or safetensors; None otherwise,
    and for anything but a regular file (opening a FIFO would wait for a writer)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return "a torch file", ".pt"
            return ("a NumPy .npz archive", ".npz") if names and all(n.endswith(".npy") for n in names) else None
    except (OSError, zipfile.BadZipFile):
        return None
    if len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file", ".safetensors"  # an 8-byte header length, then the JSON header
    kinds = ((b"\x93NUMPY", ("a NumPy .npy file", ".npy")), (b"PAR1", ("a Parquet file", ".parquet")),
             (b"ARROW1", ("an Arrow IPC (Feather) file", ".arrow")))
    return next((kind for magic, kind in kinds if head.startswith(magic)), None)


def unreadable(path, what: str, reads: Sequence[str] | None, why) -> str:
    """The one line for a file that a reader of ``reads`` suffixes could not read as ``what``: the format its
    bytes are (:func:`content_kind`) and what to do, when that is another; else why not, from ``why``: an
    exception (its first line, in brackets) or the text to add.  ``reads = None``: no file of another format
    would do (a checkpoint)."""
    kind = content_kind(path) if reads is not None else None
    if kind is None or kind[1] in reads:
        if isinstance(why, BaseException):
            why = f" ({first_line(why)})"
        return f"{path}: not a readable {what}{why}"
    if kind[1] != _suffix(path):
        return (f"{path}: not a readable {what}: its bytes are {kind[0]}; give it a {kind[1]} name, and the "
                f"teacher for {kind[1]} files reads it")
    return (f"{path}: not a readable {what}: it is {kind[0]}, which the teacher for {kind[1]} files reads "
            "(leave out teacher.loader in a pipeline file, --loader for atlas-encode)")


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
    value})``, a short row's missing cells None, blank lines skipped.  The line number is the row's first line,
    where an editor shows it, also when a quoted cell spans several lines.  UTF-8, with or without the
    byte-order mark spreadsheets write ("CSV UTF-8"); the ``required`` columns must be in the header (else an
    error ending in ``hint``)."""
    csv.field_size_limit(2**31 - 1)  # a document's text may be longer than the csv module's default 128 KB
    sep = TABLE_SUFFIXES.get(_suffix(path), ",")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep, strict=True)  # strict: an unclosed quote is an error, not a text
        try:                                                  # that runs to the end of the file
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty; a {what} starts with a line naming its columns")
            _check_columns(path, required, header, hint)
            end = reader.line_num
            for cells in reader:
                lineno, end = end + 1, reader.line_num
                if not cells:
                    continue
                if len(cells) > len(header):  # a text's unquoted comma
                    raise DataError(f"{path}:{lineno}: {len(cells)} cells, the header names {len(header)}; quote a "
                                    f"text that holds a {'comma' if sep == ',' else 'tab'} (\"like, this\")")
                yield lineno, dict(zip(header, cells + [None] * (len(header) - len(cells))))
        except UnicodeDecodeError:  # no line number: the file is decoded ahead of the rows, a block at a time
            raise DataError(not_utf8(path, None, first_bytes(path), what, ' ("CSV UTF-8" in a spreadsheet)')) from None
        except csv.Error as exc:
            raise DataError(f"{path}: not a valid {what} after line {reader.line_num} ({exc}; a stray or unclosed "
                            "quote?)") from None


PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".feather", ".arrow", ".ipc")  # Arrow IPC: pandas' to_feather, polars' write_ipc, datasets' shards


def columnar(path) -> bool:
    """Whether ``path`` is a table pyarrow reads by columns: a Parquet or Arrow IPC file (by its suffix), a
    Hugging Face dataset folder (:func:`hf_shards`) or a folder of Parquet files (:func:`parquet_parts`)."""
    return (_suffix(path) in PARQUET_SUFFIXES + ARROW_SUFFIXES or hf_shards(path) is not None
            or parquet_parts(path) is not None)


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
    """The Arrow schema of the :func:`columnar` table ``path`` (a folder's: its first file's), or None
    without pyarrow or when it cannot be read (its loader then says why)."""
    try:
        if files := _parquet_files(path):
            import pyarrow.parquet as pq

            return pq.read_schema(files[0])
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
        if files := _parquet_files(path):  # a folder's files must agree on their columns: concat_tables checks
            table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
        else:
            batches = [b.select(columns) for f in _ipc_files(path) for b in ipc_batches(f)[1]]
            table = pa.Table.from_batches(batches, schema=pa.schema([schema.field(c) for c in columns]))
    except Exception as exc:  # pyarrow's own: a damaged file, or shards whose columns differ
        raise DataError(f"{path}: cannot read column '{column}' ({first_line(exc)})") from None
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
        if files := _parquet_files(path):
            import pyarrow.parquet as pq

            batch = next(pq.ParquetFile(files[0]).iter_batches(batch_size=1, columns=strings), None)
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
    found = found.get("float", next(iter(found.values()), None)) if isinstance(found, dict) else found
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
