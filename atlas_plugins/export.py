"""Export a trained map as a SentenceTransformer model folder: the teacher model, then the student.

``SentenceTransformer(folder).encode(texts)`` then returns the map's coordinates
directly, in any tool that loads SentenceTransformer models.  The student goes in
as ``Dense`` layers (linear + activation), modules SentenceTransformer ships, so
the folder loads without ``trust_remote_code``; that needs a student whose
forward pass is a chain of layers (``linear_chain()``: the built-in ``linear``
and ``mlp``; the coarse level of ``hierarchical``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from torch import nn

from .errors import ConfigError, DataError
from .params import accepts
from .registry import get_registry
from .student import on_this_machine

ACTIVATIONS = (nn.GELU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.SiLU)


@contextlib.contextmanager
def quiet_transformers(show: bool = True):
    """No transformers progress bars ("Loading weights", "Writing model shards") unless ``show`` and stderr is
    a terminal: they draw into logs and pipes too, and ``--quiet`` passes ``show=False``.  The setting is
    restored afterwards (a user's own "off" stays off)."""
    turned_off = False
    if not (show and sys.stderr.isatty()) and importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging  # without it, no bar to turn off

        turned_off = transformers_logging.is_progress_bar_enabled()
        if turned_off:
            transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if turned_off:
            transformers_logging.enable_progress_bar()


def _st_modules():
    """sentence-transformers' module classes: ``sentence_transformer.modules`` in 6.x (where importing the old
    ``models`` path warns that it will be removed), ``models`` before."""
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:
        from sentence_transformers import models as modules
    return modules


def dense_layers(student) -> list:
    """The student's ``linear_chain()`` as SentenceTransformer ``Dense`` modules with the same weights."""
    Dense = _st_modules().Dense

    chain = getattr(student.module, "linear_chain", None)
    layers = chain() if callable(chain) else None
    if not layers or not isinstance(layers[0], nn.Linear):
        raise ConfigError(f"student '{student.plugin}' cannot be exported: its forward pass is not a chain of "
                          "linear layers and activations (a student says so with linear_chain(); the built-in "
                          "linear and mlp do)")
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            nxt = layers[i + 1] if i + 1 < len(layers) else nn.Identity()
            act = nxt if isinstance(nxt, ACTIVATIONS) else nn.Identity()
            dense = Dense(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          activation_function=type(act)())
            dense.linear.load_state_dict(layer.state_dict())
            out.append(dense)
        elif not isinstance(layer, ACTIVATIONS) or i == 0 or not isinstance(layers[i - 1], nn.Linear):
            raise ConfigError(f"student '{student.plugin}' cannot be exported: layer {i} is "
                              f"{type(layer).__name__}; expected Linear layers, each followed by at most one "
                              f"activation ({', '.join(a.__name__ for a in ACTIVATIONS)})")
    return out


def to_sentence_transformer(student, folder, *, progress: bool = True) -> Path:
    """Write ``folder``: the recorded teacher model's modules, a ``Normalize`` if the teacher normalised
    its output and the model does not, then the student as ``Dense`` layers.  Returns the folder.
    ``progress=False``: no transformers progress bars, even on a terminal."""
    folder = _new_folder(Path(folder))
    embed = (student.teacher or {}).get("embed") or {}
    if not embed:
        raise DataError("this student records no text model (it was trained on a file of vectors without "
                        "teacher.embedder); a SentenceTransformer export needs the model that embeds its inputs")
    fn = get_registry().get("teacher", embed["loader"])
    load_model = getattr(fn, "model", None)
    if load_model is None:
        raise ConfigError(f"teacher '{embed['loader']}' has no model() function: only a SentenceTransformer "
                          "teacher can be exported with the student")
    try:
        from sentence_transformers import SentenceTransformer
        Normalize = _st_modules().Normalize
    except ImportError:
        raise ConfigError("exporting needs the optional extra: pip install 'atlas-distill[text]'") from None
    params = {**on_this_machine(embed["params"]), **({"progress": progress} if accepts(load_model, "progress") else {})}
    teacher_model = load_model(**params)
    modules = list(teacher_model)
    if embed["params"].get("normalize") and not isinstance(modules[-1], Normalize):
        modules.append(Normalize())
    layers = dense_layers(student)
    width = teacher_model.encode(["probe"], convert_to_numpy=True).shape[1]
    if width != student.input_dim:
        raise DataError(f"the recorded teacher model gives {width}-D vectors, the student expects "
                        f"{student.input_dim}-D; it is not the model the student was trained on")
    model = SentenceTransformer(modules=[*modules, *layers], device="cpu")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:  # written beside it, then renamed: an interrupted export leaves no half model behind
        with quiet_transformers(show=progress):
            model.save(str(staging))
        os.replace(staging, folder)  # onto an empty folder too (POSIX rename)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _new_folder(folder: Path) -> Path:
    """``folder`` (a link followed to its target) when an export may be written there: it does not exist, or is
    an empty folder, and the folder that holds it exists; a :class:`ConfigError` saying what to change otherwise."""
    folder = folder.resolve() if folder.is_symlink() else folder
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: is a file; choose a new folder for the export")
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"{folder}: exists and is not empty; choose a new folder for the export")
    if not folder.absolute().parent.is_dir():
        raise ConfigError(f"{folder}: the folder {folder.absolute().parent} does not exist; create it first")
    return folder
