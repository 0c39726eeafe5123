"""A trained student on disk: ``student.pt`` and :func:`load_student`.

``student.pt`` holds only weights-only-safe values: the student plugin's
name, the parameters it was built with, its ``state_dict`` and a record of its
teacher (:func:`teacher_record`: which plugin made the inputs, with what
parameters, and how long the vectors were).  Loading
rebuilds the module through the registry, so a third-party student loads the
same way as a built-in one.  ``map.pt`` beside it (see :mod:`atlas_plugins.refine`)
lets ``encode(x, refine=N)`` place new points against the training map.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from .checkpoint import atomic_save, safe_load
from .config import MAX_SEED
from .checks import missing_device
from .distributed import parameter_digest
from .errors import CheckpointError, ConfigError, DataError, PluginError, first_line
from .params import accepts
from .refine import (REFINE_BLOCK, REFINE_MAX_DIMS, REFINE_MAX_EPOCHS, TrainingMap, refine as refine_points,
                     refines)
from .registry import get_registry
from .teacher import FLOAT_DTYPES, RowScan, TeacherData, dtype_hint, dtype_name, shape_hint, transposed

STUDENT_FORMAT = "atlas-student/1"
NORM_TOLERANCE = 1.25  # new vectors whose mean norm is off by more than this factor get a warning
NORM_SAMPLE = 2000
# New vectors whose mean direction is this far from the training rows' (cosine below CENTRE_MIN_COS) were made by
# another model.  A model's vectors share a direction (MiniLM: resultant length 0.32); 100 of its vectors of other
# texts (PyPI summaries against docstrings) are at 0.44-0.53, 100 vectors in a random other basis at -0.05-0.13.
# Checked from CENTRE_MIN_ROWS new rows, for a teacher whose resultant length is at least CENTRE_MIN_RESULTANT.
CENTRE_MIN_COS, CENTRE_MIN_ROWS, CENTRE_MIN_RESULTANT = 0.2, 100, 0.2
ZERO_ROWS_MEAN_NOTHING = "a zero vector has no direction, so its coordinates mean nothing (a failed embedding call?)"


def teacher_record(loader: str, data, rows, embedder: dict | None = None) -> dict:
    """What ``student.pt`` records about its teacher: the plugin, the input dimension, the mean and standard
    deviation of the training rows' norms and their mean direction ``centre``, with the length ``resultant``
    of the unit rows' mean (over up to 2,000 rows: ``encode`` compares new vectors against them), and
    ``embed``: the teacher plugin and parameters that embed new texts the same way — the teacher's own
    (``TeacherData.embed_params``), else ``teacher.embedder`` from the pipeline, else None."""
    sample = np.asarray(rows)[np.linspace(0, len(rows) - 1, min(len(rows), NORM_SAMPLE)).astype(np.int64)]
    picked = data.rows(sample).double()
    norms = picked.norm(dim=1)
    mean = (picked / norms.clamp_min(1e-30)[:, None]).mean(dim=0)
    embed = ({"loader": loader, "params": dict(data.embed_params)} if data.embed_params else
             {"loader": embedder["loader"], "params": {k: v for k, v in embedder.items() if k != "loader"}}
             if embedder else None)
    return {"loader": loader, "source": data.source, "dim": data.dim, "embed": embed,
            "norm_mean": float(norms.mean()), "norm_std": float(norms.std()) if len(norms) > 1 else 0.0,
            "resultant": float(mean.norm()), "centre": (mean / mean.norm().clamp_min(1e-30)).float().tolist()}


def on_this_machine(params: dict) -> dict:
    """The recorded embedding parameters with a ``device`` this machine lacks (a map trained beside a GPU, used
    on a laptop) replaced by the CPU: where a model ran is not how it embeds, and the vectors are the same."""
    device = params.get("device")
    gone = isinstance(device, str) and missing_device(device) is not None
    return {**params, "device": "cpu"} if gone else params


def _rows(x: list | tuple) -> np.ndarray:
    """A list of vectors as a float32 array ``(N, D)``; rows of different lengths are named, not NumPy's
    "inhomogeneous shape"."""
    try:
        return np.asarray(x, np.float32)
    except (ValueError, TypeError):
        lengths = [len(r) if isinstance(r, (list, tuple, np.ndarray, torch.Tensor)) else None for r in x]
        other = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
        if other is None or None in (lengths[0], lengths[other]):
            raise DataError("encode: the rows are not vectors of numbers of one length") from None
        raise DataError(f"encode: row {other} holds {lengths[other]:,} values, row 0 {lengths[0]:,}; every row "
                        "is a vector of one length") from None


@attrs.define(repr=False)
class TrainedStudent:
    """A student module with the plugin name and parameters that rebuild it.

    ``training_map`` (or ``map_path``, read on first use) is what ``encode(x, refine=N)`` needs;
    ``teacher`` (:func:`teacher_record`) is what ``encode(list_of_texts)`` needs.
    """

    module: torch.nn.Module
    plugin: str
    params: dict = attrs.field(factory=dict)
    input_dim: int = 0
    dim: int = 0
    training_map: TrainingMap | None = None
    map_path: Path | None = None
    teacher: dict = attrs.field(factory=dict)

    def __repr__(self) -> str:
        """One line, not the module's weights, the map's tensors and the teacher's 384 or 1536 numbers."""
        try:  # a repr never raises, whatever the module or a loaded record holds
            embed = self.teacher.get("embed") or {}
            texts = f", texts by {embed['params'].get('model', embed['loader'])}" if embed else ""
            place = (f"{self.training_map.vectors.shape[0]:,} rows" if self.training_map is not None else
                     str(self.map_path) if self.map_path is not None and self.map_path.is_file() else "none")
            return (f"TrainedStudent({self.plugin!r} {self.input_dim}->{'+'.join(map(str, self.levels))}, teacher "
                    f"{self.teacher.get('loader', '?')!r}{texts}, map for refine: {place})")
        except Exception:
            return f"TrainedStudent({self.plugin!r} {self.input_dim}->{self.dim})"

    def encode(self, x, batch_size: int = 65536, precision: str = "float32", refine: int = 0, seed: int = 0,
               check: bool = True):
        """Map teacher vectors ``(N, Dt)`` to student vectors ``(N, Ds)`` in batches.

        Accepts a float tensor (returns a CPU float32 tensor), a possibly
        memory-mapped float NumPy array, or what NumPy reads as one (a DataFrame,
        a pandas column of vectors), or a list (or column) of texts (embedded with
        the recorded teacher model, :meth:`embed_texts`); all but a tensor return
        a float32 NumPy array.  A multi-level student returns a tuple of them,
        coarse first.  New vectors whose mean norm is far from the training
        rows' get a warning (say, unnormalised vectors for a student trained on
        normalised ones).
        ``precision="bfloat16"`` runs the student in bfloat16 (about twice as
        fast on CPUs with bf16 matrix units; coordinates differ by ~1e-2).
        ``refine=N`` then moves each point N epochs against the frozen training
        map (:func:`atlas_plugins.refine.refine`; needs ``map.pt``): slower, and
        closer to the teacher's neighbourhoods.  It moves levels of at most
        :data:`~atlas_plugins.refine.REFINE_MAX_DIMS` dimensions (a hierarchical
        student's 25-D level keeps its output); a student with none refuses it.
        Same ``x``, ``seed`` and ``batch_size``: same result.  ``check``: a row holding NaN or Inf is a
        :class:`DataError` naming it, and rows of all zeros (no direction, so
        a meaningless place) get one warning; a caller that checked already
        passes False.
        """
        with torch.inference_mode():
            return self._encode(x, batch_size, precision, refine, seed, check)

    def _encode(self, x, batch_size, precision, refine, seed, check):
        as_numpy = not isinstance(x, torch.Tensor)
        if isinstance(x, str) or x is None:
            raise DataError(f"the student encodes rows of vectors (N, {self.input_dim}) or a list of texts, got "
                            + ("one text; pass it as a list: encode([text])" if x is not None else "None"))
        if isinstance(x, (list, tuple)):
            x = (self.embed_texts(x) if any(isinstance(t, str) for t in x)
                 else _rows(x) if len(x) else np.zeros((0, self.input_dim), np.float32))
        x = x if isinstance(x, (np.ndarray, torch.Tensor)) else np.asarray(x)  # a DataFrame, a Series, ...
        if isinstance(x, np.ndarray) and x.dtype.kind in "OU" and x.ndim == 1 and len(x) and all(
                isinstance(t, str) for t in x):  # a Series (or array) of texts, as a list of them
            x = self.embed_texts([str(t) for t in x])
        if isinstance(x, np.ndarray) and x.dtype == object:  # a Series of vectors is a 1-D array of them
            try:
                x = (np.stack(x) if x.ndim == 1 and len(x) else x).astype(np.float32)
            except (ValueError, TypeError):
                raise DataError("encode: the rows are not vectors of numbers of one length") from None
        if dtype_name(x) not in FLOAT_DTYPES:
            raise DataError(f"encode: the vectors are {dtype_name(x)}, expected floats ({', '.join(FLOAT_DTYPES)})"
                            + (dtype_hint(dtype_name(x)) or ": encode vectors of the kind the student was trained on"))
        self.check_input(x)
        if precision not in ("float32", "bfloat16"):
            raise ConfigError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        for arg, value, lo, hi, what in (("refine", refine, 0, REFINE_MAX_EPOCHS,
                                          f"a number of epochs (an integer from 0 to {REFINE_MAX_EPOCHS:,})"),
                                         ("batch_size", batch_size, 1, math.inf, "an integer >= 1"),
                                         ("seed", seed, 0, MAX_SEED, f"an integer from 0 to {MAX_SEED:,}")):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
                raise ConfigError(f"{arg} must be {what}, got {value!r}")
        refine, batch_size, seed = int(refine), int(batch_size), int(seed)
        if refine:
            self.check_refinable(f"refine={refine}")
            training_map = self.load_map()
            batch_size = min(batch_size, REFINE_BLOCK)
        dtype = getattr(torch, precision)
        self.module.eval()
        device = next(self.module.parameters()).device
        module = self.module if dtype == torch.float32 else copy.deepcopy(self.module).to(dtype)
        generator = torch.Generator().manual_seed(seed)
        outs: list = []
        scan = RowScan(TeacherData(x, source="encode"))
        for start in range(0, x.shape[0], batch_size):
            block = x[start:start + batch_size]
            if not isinstance(block, torch.Tensor):
                with np.errstate(over="ignore"):  # values too large for float32 are named by the scan
                    block = torch.from_numpy(np.array(block, dtype=np.float32))
            elif block.dtype != torch.float32:
                block = block.float()
            if check:
                scan.see(start, block)
            if start == 0:
                self._check_like_training(block)
            block = block.to(device=device, dtype=dtype)
            z = module(block)
            z = tuple(z) if isinstance(z, (tuple, list)) else (z,)
            if refine:
                z = refine_points(training_map, block.float(), tuple(v.float() for v in z), epochs=refine,
                                  generator=generator)
            outs.append(z)
        if scan.zeros:
            warnings.warn(f"atlas: {scan.describe_zeros()}: {ZERO_ROWS_MEAN_NOTHING}", stacklevel=3)
        if not outs:
            outs = [tuple(torch.zeros(0, d) for d in self.levels)]
        levels = [torch.cat([o[i] for o in outs]).float().cpu() for i in range(len(outs[0]))]
        if as_numpy:
            levels = [z.numpy() for z in levels]
        return levels[0] if len(levels) == 1 else tuple(levels)

    @property
    def refinable(self) -> bool:
        """Whether refine moves any level (:func:`~atlas_plugins.refine.refines`)."""
        return any(refines(width) for width in self.levels)

    def check_refinable(self, asked: str) -> None:
        """A :class:`ConfigError` naming ``asked`` when no level is narrow enough for refine to help."""
        if not self.refinable:
            raise ConfigError(f"{asked}: refine places points on maps of at most {REFINE_MAX_DIMS} dimensions, "
                              f"and this student's is {min(self.levels)}-D (wider maps gained nothing or lost "
                              "neighbours when refined); leave refine out for the student's own output")

    @property
    def levels(self) -> list[int]:
        """The width of each output level (``[dim]`` for a one-level student), from one forward pass."""
        device = next(self.module.parameters()).device
        with torch.inference_mode():
            z = self.module.eval()(torch.zeros(2, self.input_dim, device=device))
        return [int(v.shape[1]) for v in (z if isinstance(z, (tuple, list)) else (z,))]

    def check_input(self, x) -> None:
        """A :class:`DataError` unless ``x`` is ``(N, input_dim)``, naming both dimensions and the teacher."""
        if x.ndim == 2 and x.shape[1] == self.input_dim:
            return
        made = self._made()
        if x.ndim == 1 and x.shape[0] == self.input_dim:
            raise DataError(f"the student encodes rows of vectors (N, {self.input_dim}), got one vector of shape "
                            f"({self.input_dim},); pass it as x[None], shape (1, {self.input_dim})")
        if x.ndim == 2 and x.shape[0] == self.input_dim:
            raise DataError(f"the student encodes rows of {self.input_dim} values, got {x.shape[0]:,} rows of "
                            f"{x.shape[1]:,}: {transposed(x.shape[1])}, or pass x.T")
        if x.ndim != 2:
            raise DataError(f"the student encodes rows of vectors (N, {self.input_dim}), got an array of shape "
                            f"{tuple(x.shape)}{shape_hint(x.shape)}")
        raise DataError(f"the student expects {self.input_dim}-D vectors{made}, got {x.shape[1]}-D vectors; encode "
                        "vectors made by the same teacher model")

    def _made(self) -> str:
        """`` (teacher 'npy')``, `` (teacher 'sentence-transformers', model all-MiniLM-L6-v2)``, or ""."""
        t = self.teacher
        model = ((t.get("embed") or {}).get("params") or {}).get("model")
        return (f" (teacher '{t['loader']}'" + (f", model {model}" if model else "") + ")") if t else ""

    def embed_texts(self, texts) -> np.ndarray:
        """Embed a list of texts with the teacher the student was trained on: a float32 array ``(N, input_dim)``.

        Calls the recorded teacher plugin's ``embed(texts, **params)`` (for the text teacher: the
        same SentenceTransformer model and normalisation); a student trained on a file of vectors cannot.
        """
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"texts[{bad}] is of type {type(texts[bad]).__name__}; pass a list of strings")
        embed = self.text_embedder()
        t = self.teacher["embed"]
        out = np.asarray(embed(list(texts), **on_this_machine(t["params"])), dtype=np.float32)
        if out.shape != (len(texts), self.input_dim):
            raise PluginError(f"teacher '{t['loader']}' embedded {len(texts)} texts as shape {out.shape}; "
                              f"the student expects ({len(texts)}, {self.input_dim})")
        return out

    def to_sentence_transformer(self, folder, *, progress: bool = True) -> Path:
        """Write a SentenceTransformer model folder: the recorded teacher model followed by this student, so
        ``SentenceTransformer(folder).encode(texts)`` returns the map's coordinates (:mod:`atlas_plugins.export`).
        ``progress=False``: no progress bars, even on a terminal."""
        from .export import to_sentence_transformer

        return to_sentence_transformer(self, folder, progress=progress)

    def use_model(self, model: str, given: str = "model") -> None:
        """Embed texts (and export) with ``model`` in place of the recorded teacher model: for a map whose
        model folder moved, or a copy of the same model elsewhere.  Another model's vectors lie elsewhere:
        the check on new vectors' direction warns (:meth:`encode`)."""
        embed = self.text_embedder()  # a student without a text model says so
        if not accepts(embed, "model"):
            raise ConfigError(f"{given}: teacher '{self.teacher['embed']['loader']}' embeds without a model "
                              f"parameter; leave {given} out")
        recorded = self.teacher["embed"]
        self.teacher = {**self.teacher, "embed": {**recorded, "params": {**recorded["params"], "model": model}}}

    def text_embedder(self):
        """The recorded teacher plugin's ``embed`` function; a :class:`DataError` when there is none."""
        t = self.teacher
        if not t.get("embed"):
            what = f"vectors from teacher '{t['loader']}' ({t.get('source')})" if t else "vectors"
            raise DataError(f"this student was trained on {what} and records no text model; embed the texts "
                            "with the model that made those vectors and pass the array (or retrain with "
                            "teacher.embedder naming that model)")
        loader = t["embed"]["loader"]
        embed = getattr(get_registry().get("teacher", loader), "embed", None)
        if embed is None:
            raise PluginError(f"teacher '{loader}' has no embed() function; it cannot embed new texts")
        return embed

    def _check_like_training(self, block: torch.Tensor) -> None:
        """Warn when new vectors' mean norm is off from the training rows' by more than :data:`NORM_TOLERANCE`,
        or their mean direction is at a cosine below :data:`CENTRE_MIN_COS` to the training rows' (another
        model's vectors: they have the right width and no other sign)."""
        ref = self.teacher.get("norm_mean")
        if not ref or not len(block):
            return
        block = block[:NORM_SAMPLE].float()
        centre, resultant = self.teacher.get("centre"), self.teacher.get("resultant") or 0.0
        if centre and resultant >= CENTRE_MIN_RESULTANT and len(block) >= CENTRE_MIN_ROWS:
            mean = torch.nn.functional.normalize(block, dim=1).mean(dim=0)
            cos = float(mean @ torch.tensor(centre, device=mean.device) / mean.norm().clamp_min(1e-30))
            if cos < CENTRE_MIN_COS:
                warnings.warn(f"atlas: the new vectors' mean direction is at cosine {cos:.2f} to the training rows' "
                              f"(vectors of one model share it: {CENTRE_MIN_COS} or more); were they made by another "
                              f"model than the training rows'{self._made()}? encode vectors of that model",
                              stacklevel=4)
        mean = float(block.norm(dim=1).mean())
        if not (ref / NORM_TOLERANCE <= mean <= ref * NORM_TOLERANCE):
            unit = abs(ref - 1) < 0.05 or abs(mean - 1) < 0.05
            hint = " (were they normalised like the training rows?)" if unit else ""
            warnings.warn(f"atlas: the new vectors' mean norm is {mean:.3g}, the training rows' {ref:.3g}{hint}; "
                          "encode vectors made the same way as the training rows", stacklevel=4)

    def load_map(self) -> TrainingMap:
        """The training map: ``training_map``, else read from ``map_path`` (once); a clear error without one."""
        if self.training_map is None:
            if self.map_path is None or not Path(self.map_path).exists():
                where = f"{self.map_path} does not exist" if self.map_path else "this student has none"
                raise CheckpointError(
                    f"refine needs the training map, and {where}: atlas-run writes map.pt beside student.pt "
                    "(unless output.map_rows = 0) and load_student() finds it there; use refine=0 for the "
                    "student alone")
            training_map = TrainingMap.load(self.map_path)
            if training_map.teacher_dim != self.input_dim:
                raise CheckpointError(f"{self.map_path}: the map holds {training_map.teacher_dim}-D teacher "
                                      f"vectors, the student expects {self.input_dim}-D: it belongs to another run")
            if training_map.student not in (None, parameter_digest(self.module)):
                raise CheckpointError(f"{self.map_path}: the map's coordinates come from other weights than this "
                                      "student's: it belongs to another run (or student.pt was replaced); keep a "
                                      "run's student.pt and map.pt together, or use refine=0")
            self.training_map = training_map
        return self.training_map

    def save(self, path) -> None:
        """Write ``student.pt`` atomically."""
        atomic_save({"format": STUDENT_FORMAT, "plugin": self.plugin, "params": self.params,
                     "input_dim": self.input_dim, "dim": self.dim, "teacher": self.teacher,
                     "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}, path)


def load_student(path, registry=None) -> TrainedStudent:
    """Rebuild a student from ``student.pt``, or a run folder holding one (loaded with ``weights_only=True``).

    ``map.pt`` beside it, when there, is read on the first ``encode(..., refine=N)``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"load_student takes a run folder or its student.pt, got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / "student.pt"
    blob = safe_load(path, what="student file")
    if not isinstance(blob, dict) or blob.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{path}: not an atlas student file (expected format '{STUDENT_FORMAT}')")
    registry = registry or get_registry()
    factory = registry.get("student", blob["plugin"])
    module = factory(blob["input_dim"], blob["dim"], **blob["params"])
    try:
        module.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise PluginError(f"{path}: student '{blob['plugin']}' no longer matches the saved weights: "
                          f"{first_line(exc)}") from None
    module.eval()
    return TrainedStudent(module, blob["plugin"], dict(blob["params"]), blob["input_dim"], blob["dim"],
                          map_path=path.with_name("map.pt"), teacher=dict(blob.get("teacher") or {}))


def as_student_output(out: Any, plugin: str, batch: int) -> tuple[torch.Tensor, ...]:
    """Check what a student's forward returned: a ``(B, D)`` tensor or a tuple of them."""
    levels = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    for z in levels:
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != batch:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise PluginError(f"student '{plugin}' returned {got}; expected a tensor of shape ({batch}, D) "
                              "or a tuple of them")
    return levels
