"""Built-in teacher loaders: ``pt``, ``npy`` (also ``.npz``) and ``safetensors``."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from atlas_plugins.checkpoint import cache_writer, safe_load
from atlas_plugins.errors import DataError
from atlas_plugins.formats import (ABSENT, TABLE_SUFFIXES, columnar, convert_first, json_field, npy_parts,
                                   read_columnar_texts, read_table, text_lines, unreadable)
from atlas_plugins.teacher import TeacherData, mend_unicode, missing_value, transposed

NAME_IT = "teacher.key in a pipeline file, --key for atlas-encode"


def _exists(path, what: str = "teacher file") -> Path:
    """``path`` as a Path, if it is a regular file (a FIFO or a device would block or never end); a file one
    step from readable (compressed, say) is told that step (:func:`~atlas_plugins.formats.convert_first`)."""
    p = Path(path)
    if why := convert_first(p):
        raise DataError(why)
    if p.is_dir():
        raise DataError(f"{p}: is a folder; expected a {what}")
    if not p.exists():
        raise DataError(f"{p}: {what} not found")
    if not p.is_file():
        raise DataError(f"{p}: is not a regular file (a FIFO, socket or device); expected a {what}")
    return p


def _vectors_key(p, key: str | None, shapes: dict, noun: str):
    """Which of a file's named arrays (``shapes``: name -> shape, None for what is not an array) holds the
    vectors: ``key``; when it is ``embeddings`` (the default name) or None and not there, the file's only
    array, else its only 2-D one.  The rule of ``.npz``, ``.pt`` and ``.safetensors`` files alike; ``noun``
    is what the file calls a name ("array", "key", "tensor")."""
    names = ", ".join(map(str, shapes)) or "none"
    if key in shapes:
        return key
    if key not in (None, "embeddings"):
        raise DataError(f"{p}: no {noun} '{key}'; its {noun}s are: {names}; name the one with the vectors: {NAME_IT}")
    matrices = [name for name, shape in shapes.items() if shape is not None and len(shape) == 2]
    if len(shapes) == 1 or len(matrices) == 1:
        return next(iter(shapes)) if len(shapes) == 1 else matrices[0]
    found = f"{len(matrices)} (N, D) arrays ({', '.join(map(str, matrices))})" if matrices else \
        f"no (N, D) array of vectors (its {noun}s are: {names})"
    raise DataError(f"{p}: holds {found} and none is named 'embeddings'; name the one with the vectors: {NAME_IT}")


def _npz_shapes(archive) -> dict:
    """name -> shape of each array in an open ``.npz``, read from the headers alone (None where unreadable)."""
    shapes = {}
    for name in archive.files:
        try:
            with archive.zip.open(f"{name}.npy") as fh:
                major, _ = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shapes[name] = header(fh)[0]
        except (KeyError, ValueError, OSError):
            shapes[name] = None
    return shapes


def read_texts(path, what: str = "text file", one_per_row: bool = False, text_field: str = "text",
               label_field: str = "label") -> tuple[list[str], list | None]:
    """Texts (and labels) from a ``.jsonl`` file, a ``.csv``/``.tsv`` table or a columnar one (``text``,
    optional ``label``: fields or columns that may be named otherwise), or a text file, one per line.

    Blank lines and empty texts are skipped.  With ``one_per_row`` (a meta file: line i is row i) a row may
    have no text: a blank line of a text file before the last text, ``"text": null`` or an empty cell is
    that row's empty text.
    """
    path = Path(path) if columnar(path) and os.path.isdir(path) else _exists(path, what)  # a folder: a table
    where = "field" if path.suffix.lower() == ".jsonl" else "column"
    hint = "" if one_per_row else f"; text_column in [teacher] names another {where}"
    rows = None
    if path.suffix.lower() in TABLE_SUFFIXES:
        rows = [(row[text_field] or "", row.get(label_field) or None)
                for _, row in read_table(path, [text_field], what, hint)]
    elif columnar(path):
        cols = read_columnar_texts(path, text_field, [label_field], what, hint)
        texts = [t or "" for t in cols[text_field]]
        rows = list(zip(texts, cols.get(label_field) or [None] * len(texts)))
    if rows is not None:  # a table
        rows = rows if one_per_row else [r for r in rows if r[0].strip()]
        if not rows:
            raise DataError(f"{path}: no texts found")
        texts, labels = [list(col) for col in zip(*rows)]
        return texts, (labels if any(lab is not None for lab in labels) else None)
    texts, labels, blank = [], [], 0
    with path.open("rb") as fh:
        for lineno, line in text_lines(fh, path, what, texts=path.suffix.lower() != ".jsonl"):
            if not line.strip():
                blank += 1
                continue
            if path.suffix.lower() != ".jsonl":
                texts += [""] * blank if one_per_row else []
                texts.append(line.rstrip("\r\n"))
                blank = 0
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                row = None
            text = json_field(row, text_field, ABSENT)  # a dotted name reaches a nested field
            if not isinstance(row, dict) or text is ABSENT:
                fields = f" (its fields are: {', '.join(row)})" if isinstance(row, dict) else ""
                raise DataError(f"{path}:{lineno}: expected a JSON object with a '{text_field}' field{fields}{hint}")
            if not isinstance(text, str) and not missing_value(text):  # null or NaN: no text
                raise DataError(f"{path}:{lineno}: '{text_field}' must be a string, got {type(text).__name__}")
            if one_per_row or (isinstance(text, str) and text.strip()):
                texts.append(text if isinstance(text, str) else "")
                labels.append(json_field(row, label_field))
    if not texts:
        raise DataError(f"{path}: no texts found")
    texts = list(mend_unicode(texts, str(path)))  # JSON's escapes may hold half an emoji: no model embeds that
    return texts, (labels if any(lab is not None for lab in labels) else None)


def read_meta(meta, path, emb) -> tuple[list[str], list | None]:
    """The texts (and labels) of the ``meta`` file beside the teacher file ``path``: one per row of ``emb``."""
    texts, labels = read_texts(meta, "meta file", one_per_row=True)
    rows = emb.shape[0] if getattr(emb, "ndim", 0) >= 1 else None
    if rows is not None and len(texts) != rows:
        count = f"{len(texts):,} text{'s' * (len(texts) != 1)}"
        hint = f"; {transposed(emb.shape[1])}" if emb.ndim == 2 and len(texts) == emb.shape[1] else ""
        raise DataError(f"{meta}: {count} for the {rows:,} rows of {path}; a meta file holds one line per row, "
                        f"in the same order{hint}")
    return texts, labels


def pt(path, key: str = "embeddings", trust: bool = False, meta: str | None = None):
    """Torch checkpoint: a tensor, or a dict with the vectors (``key``; without an ``embeddings`` key, the dict's
    only tensor) and optional ``labels``/``texts``/``model_state``.

    ``trust = true`` loads a full pickle, which can run code: only for files you trust.
    """
    obj = safe_load(_exists(path), trust=trust, what="teacher file")
    labels = texts = state = None
    if isinstance(obj, dict):
        key = _vectors_key(path, key, {k: getattr(v, "shape", None) for k, v in obj.items()}, "key")
        emb = obj[key]
        labels, texts, state = obj.get("labels"), obj.get("texts"), obj.get("model_state")
        if isinstance(labels, torch.Tensor):
            labels = labels.tolist()
    else:
        emb = obj
    if isinstance(emb, np.ndarray):
        emb = torch.from_numpy(emb)
    if not isinstance(emb, torch.Tensor):
        held = f"'{key}' is of type" if isinstance(obj, dict) else "holds a"
        raise DataError(f"{path}: {held} {type(emb).__name__}; expected a tensor of shape (N, D)")
    if meta is not None:
        texts, labels = read_meta(meta, path, emb)
    return TeacherData(emb, labels=labels, texts=texts, model_state=state, source=str(path))


pt.suffixes = (".pt", ".pth")


def npy(path, key: str | None = None, meta: str | None = None, cache_dir: str | None = None):
    """NumPy ``.npy`` (memory-mapped, never read whole), ``.npz`` (the array ``key``: by default ``embeddings``,
    else the archive's only array), or a folder of ``.npy``
    files (``batch-0.npy``, ...), their rows one after another in natural name order (``batch-2`` before
    ``batch-10``): joined into one ``.npy`` in ``cache_dir`` (a run's ``cache/``), a part at a time, then
    memory-mapped; without ``cache_dir``, in memory.

    ``meta`` names a JSONL file with a ``text`` (and optional ``label``) per row.
    """
    if parts := npy_parts(path):
        if key is not None:
            raise DataError(f"{path}: key = {key!r} is set, but a folder of .npy files holds one array a file; remove "
                            f"the key ({NAME_IT})")
        emb = _joined(Path(path), [Path(f) for f in parts], cache_dir)
        texts, labels = read_meta(meta, path, emb) if meta is not None else (None, None)
        return TeacherData(emb, labels=labels, texts=texts, source=str(path))
    p = _exists(path)
    expected = ".npz" if p.suffix.lower() == ".npz" else ".npy"
    try:
        if expected == ".npz":
            with np.load(p, allow_pickle=False) as archive:
                emb = archive[_vectors_key(p, key, _npz_shapes(archive), "array")]
                labels = archive["labels"].tolist() if "labels" in archive.files else None
        else:
            if key is not None:
                raise DataError(f"{p}: key = {key!r} is set, but a .npy file holds one array; remove the key "
                                f"({NAME_IT}): it names an array inside a .npz")
            emb = np.load(p, mmap_mode="r", allow_pickle=False)
            if not isinstance(emb, np.ndarray):  # numpy opens any zip archive as an .npz, whatever its name
                emb.close()
                raise DataError(unreadable(p, "NumPy file", (expected,), ": it is a zip archive, not one array"))
            labels = None
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(_unreadable_npy(p, expected, exc)) from None
    texts = None
    if meta is not None:
        texts, meta_labels = read_meta(meta, p, emb)
        labels = meta_labels if meta_labels is not None else labels
    return TeacherData(emb, labels=labels, texts=texts, source=str(p))


npy.suffixes = (".npy", ".npz")


def _unreadable_npy(p: Path, expected: str, exc: Exception) -> str:
    """The one line for a NumPy file (``expected``: its suffix) that ``np.load`` refused with ``exc``."""
    if isinstance(exc, ValueError) and ("Python objects" in str(exc) or "Object arrays" in str(exc)):
        # numpy's words for a dtype=object array (a file that is no .npy at all is "pickled (object) data")
        return (f"{p}: holds Python objects (an array of lists, as df['embedding'].values is), which only "
                "unpickling could read, and data files are never unpickled; save the vectors as one float array: "
                "np.save(path, np.stack(vectors).astype(np.float32))")
    return unreadable(p, "NumPy file", (expected,), exc)


def _cache_file(path: Path, cache_dir: str, prefix: str, params: list) -> Path:
    """The ``.npy`` in ``cache_dir`` that holds ``path``'s vectors read with ``params``: named by the file (its
    resolved path, size and modification time) and the parameters, so a changed file is converted again."""
    key = hashlib.sha256(json.dumps([str(path.resolve()), *_stamp(path), *params]).encode())
    return Path(cache_dir) / f"{prefix}-{key.hexdigest()[:20]}.npy"


def _stamp(p: Path) -> tuple:
    """What tells a changed file from the one read before: its size and modification time."""
    st = p.stat()
    return st.st_size, st.st_mtime_ns


def _joined(folder: Path, parts: list[Path], cache_dir: str | None) -> np.ndarray:
    """The rows of the ``.npy`` files ``parts`` of ``folder`` as one array ``(N, D)`` of their one dtype: a
    ``.npy`` in ``cache_dir`` named by the parts (their names, sizes and modification times, so a changed part
    is joined again), written 16 MiB at a time and memory-mapped; without ``cache_dir``, in memory.  Each part
    is mapped only while it is copied: a map's pages count as the process's memory while it is open."""
    def part(f: Path) -> np.ndarray:
        try:
            return np.load(f, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(_unreadable_npy(f, ".npy", exc)) from None

    shapes, width, dtype = [], None, None
    for f in parts:
        a = part(f)
        if not isinstance(a, np.ndarray) or a.ndim != 2 or (width, dtype) not in ((None, None), (a.shape[1], a.dtype)):
            what = f"an array of shape {a.shape} and dtype {a.dtype}" if isinstance(a, np.ndarray) else "a zip archive"
            expected = (f"(N, {width}) {dtype} rows, as {parts[0].name} holds" if width is not None
                        else "rows (N, D), one vector a row")
            raise DataError(f"{f}: holds {what}; each .npy file of the folder {folder} should hold {expected}")
        shapes.append(a.shape)
        width, dtype = a.shape[1], a.dtype
        del a
    if not cache_dir:
        return np.concatenate([part(f) for f in parts])
    cache = _cache_file(folder, cache_dir, "npy", [[f.name, *_stamp(f)] for f in parts])
    if cache.is_file():
        return np.load(cache, mmap_mode="r")
    step = max(1, 16 * 2**20 // max(dtype.itemsize * width, 1))  # rows
    with cache_writer(cache) as out:  # written, not mapped, for the same reason; Ctrl-C: no half-joined file
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False,
                                                  "shape": (sum(n for n, _ in shapes), width)})
        for f, shape in zip(parts, shapes):
            a = part(f)
            if a.shape != shape or a.dtype != dtype:  # the header above holds the first pass's row count
                raise DataError(f"{f}: changed while the folder's parts were joined (shape {shape}, now "
                                f"{a.shape}); run again once the files are written")
            for start in range(0, len(a), step):
                out.write(np.ascontiguousarray(a[start:start + step]).tobytes())
            del a
    return np.load(cache, mmap_mode="r")


def safetensors(path, key: str = "embeddings", meta: str | None = None):
    """A ``.safetensors`` file (needs the ``safetensors`` extra); the tensor named ``key`` (without an
    ``embeddings`` tensor, the file's only one)."""
    p = _exists(path)
    try:
        from safetensors import safe_open
    except ImportError:
        raise DataError("the safetensors teacher needs the optional extra: "
                        "pip install 'atlas-distill[safetensors]'") from None
    try:
        with safe_open(str(p), framework="pt") as fh:
            emb = fh.get_tensor(_vectors_key(p, key, {k: fh.get_slice(k).get_shape() for k in fh.keys()}, "tensor"))
    except DataError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise DataError(unreadable(p, "safetensors file", safetensors.suffixes, exc)) from None
    texts = labels = None
    if meta is not None:
        texts, labels = read_meta(meta, p, emb)
    return TeacherData(emb, labels=labels, texts=texts, source=str(p))


safetensors.suffixes = (".safetensors",)
