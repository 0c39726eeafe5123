"""The pipeline file (``pipeline.toml``): parsed with ``tomllib``, validated into attrs objects.

Six sections.  ``[teacher]``, ``[student]``, ``[loss]`` and ``[schedule]`` name
a plugin; their other keys are that plugin's parameters, checked against its
signature before any training.  ``[train]`` and ``[output]`` are fixed.  Every
problem is a :class:`ConfigError` whose one-line message names the file, the
key path and what was expected, with a did-you-mean where one fits.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .checks import DEVICE_NAMES, DEVICES, is_device
from .errors import ConfigError, PluginError, UnknownPluginError, did_you_mean
from .params import accepts, describe, literal_values, matches, parameters, plugin_ref, signature_annotations
from .registry import get_registry
from .formats import TABLE_SUFFIXES, batch_input, columnar, loader_for_suffix, no_reader, utf16, vector_field


# -- field validators: each raises ConfigError("<field> must be ..., got ...") -------------
# Shared by the pipeline file's sections and the quickstart's DistillationConfig (presets.py).
MAX_STAGES = 10_000      # τ per stage is listed in full (dry run, checkpoints): keep the list small
MAX_DIM = 4096           # a 5-D map is the point; 4096 already means a 64 MB output per million rows
MAX_COUNT = 2**40        # epochs, batch sizes, rows: larger than any machine can run
MAX_TEACHER_DIM = 2**31  # teacher.dim: a typo guard; no embedding model comes near it
MAX_SEED = 2**62         # seeds: room below 2**64 (the most torch takes) for the offsets added per epoch and rank
MAX_HOPS = 3             # train.neighbor_hops: 3 hops already reach a row's ~900th nearest of 195,000 (median)
DEFAULT_EPOCHS = 10      # train.epochs_per_stage when neither it nor train.steps_per_stage is given


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check(pred, expected, choices=()):
    """An attrs validator; the message names the field (prefixed by the class's ``ERROR_PREFIX``, if any) and,
    for a string close to one of ``choices``, suggests it.  ``expected`` is a text, or a function of the value
    that returns one."""
    def validator(inst, attr, value):
        try:
            ok = pred(value)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            wanted = expected(value) if callable(expected) else expected
            raise ConfigError(f"{getattr(inst, 'ERROR_PREFIX', '')}{attr.name} must be {wanted}, got {value!r}{hint}")
    return validator


def int_expected(lo: int, hi: int):
    """What an integer in ``[lo, hi]`` is called in a message: the bound is named when it is a real limit
    (below :data:`MAX_COUNT`) or when the value passed it."""
    plain = "a positive integer" if lo == 1 else f"an integer >= {lo}"
    return lambda v: plain if hi >= MAX_COUNT and not _is_int(v, hi + 1, math.inf) else f"{plain} (at most {hi:,})"


def bounded_int(lo: int, hi: int, optional: bool = False):
    """An integer in ``[lo, hi]`` (or None, when ``optional``)."""
    return _check(lambda v: (optional and v is None) or _is_int(v, lo, hi), int_expected(lo, hi))


positive_int = bounded_int(1, MAX_COUNT)
nonneg_int = bounded_int(0, MAX_SEED)
positive_number = _check(lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive number")
nonneg_number = _check(lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a number >= 0")
unit_number = _check(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
fraction = _check(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
boolean = _check(lambda v: isinstance(v, bool), "true or false")
name = _check(lambda v: isinstance(v, str) and v.strip() != "", "a plugin name (a non-empty string)")
path_str = _check(lambda v: isinstance(v, str) and v.strip() != "" and "\x00" not in v, "a path (a non-empty string)")
optional_name = _check(lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a plugin name")
optional_dim = bounded_int(1, MAX_TEACHER_DIM, optional=True)
optional_positive_int = bounded_int(1, MAX_COUNT, optional=True)
optional_positive_number = _check(lambda v: v is None or (_is_number(v) and math.isfinite(v) and v > 0),
                                  "a positive number")
device = _check(is_device, DEVICES, DEVICE_NAMES)


def one_of(*choices):
    return _check(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices), choices)


def _field(default, validator, help, *, resumable: bool = False):
    """A section field; ``resumable``: may change on ``--resume`` (it does not change what the weights mean)."""
    return attrs.field(default=default, validator=validator, metadata={"help": help, "resumable": resumable})


# -- sections -------------------------------------------------------------------------------
@attrs.frozen
class TeacherSection:
    """``[teacher]``: where the teacher embeddings come from."""

    path: str = _field(None, path_str, "teacher file; relative paths resolve against the pipeline file's folder")
    loader: str | None = _field(None, optional_name, "teacher plugin name; omitted: chosen by the file suffix")
    dim: int | None = _field(None, optional_dim, "expected embedding dimension; checked before training")
    embedder: dict | None = _field(
        None, _check(lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("loader"), str)),
                     "a table with a loader (a teacher plugin that embeds texts) and its parameters"),
        "how a file of vectors was made, e.g. {loader = \"sentence-transformers\", model = \"all-MiniLM-L6-v2\"}: "
        "recorded in student.pt so new texts are embedded the same way", resumable=True)
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class StudentSection:
    """``[student]``: the model that maps teacher vectors to a few dimensions."""

    name: str = _field("mlp", name, "student plugin name (linear, mlp, hierarchical, ...)")
    dim: int = _field(5, bounded_int(1, MAX_DIM), "output dimension (the coarse level's for hierarchical)")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class LossSection:
    """``[loss]``: the distillation objective."""

    name: str = _field("neighbors", name, "loss plugin name")
    tau: float | None = _field(None, optional_positive_number,
                               "a fixed τ: one stage, instead of [schedule]'s curriculum")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class ScheduleSection:
    """``[schedule]``: τ per curriculum stage: soft to sharp, over 4 stages by default.

    τ is on the loss's own scale, so ``start`` and ``end`` default to the range the loss declares
    (:func:`loss_tau_range`): 2.0 → 0.4 for ``neighbors``, 0.2 → 0.05 for ``relational``."""

    name: str = _field("cosine", name, "schedule plugin name (linear, exponential, cosine, ...)")
    start: float | None = _field(None, optional_positive_number, "τ at the first stage (default: the loss's "
                                 "tau_range, see --list-plugins; 1.0 for a loss that declares none)")
    end: float | None = _field(None, optional_positive_number, "τ at the last stage (default: the loss's tau_range)")
    stages: int = _field(4, bounded_int(1, MAX_STAGES), "number of curriculum stages")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class TrainSection:
    """``[train]``: optimisation."""

    epochs_per_stage: int | None = _field(None, optional_positive_int, "epochs in each curriculum stage "
                                          f"({DEFAULT_EPOCHS} when steps_per_stage is not set)")
    steps_per_stage: int | None = _field(None, optional_positive_int, "optimizer steps in each curriculum stage, "
                                         "instead of epochs_per_stage (a budget that does not grow with the data)")
    batch_size: int = _field(1024, positive_int, "rows per batch (anchors plus neighbours with neighbour batches)")
    learning_rate: float = _field(5e-3, positive_number, "Adam learning rate", resumable=True)
    weight_decay: float = _field(0.0, nonneg_number, "AdamW weight decay (0: plain Adam)")
    lr_schedule: str = _field("cosine", one_of("constant", "cosine"),
                              "'constant', or 'cosine' decay over the whole run after warm-up")
    warmup_steps: int = _field(50, nonneg_int, "optimizer steps of linear learning-rate warm-up")
    device: str = _field("cpu", device, f"{DEVICES} (auto: CUDA when available)", resumable=True)
    seed: int = _field(0, nonneg_int, "seed for initialisation, split and batch order")
    val_fraction: float = _field(0.1, fraction, "share of rows held out for validation and the report")
    accumulate: int = _field(1, positive_int, "gradient accumulation steps per optimizer step")
    input_noise: float = _field(1.6, nonneg_number, "Gaussian noise on training inputs, std = this × the row's RMS "
                                "(targets stay clean); smooths the map for unseen points")
    batches: str = _field("auto", one_of("auto", "random", "neighbors"),
                          "'neighbors': anchors plus their teacher neighbours; 'random'; 'auto': neighbors "
                          "(random only when there are too few rows for train.neighbors)")
    neighbor_index: str = _field("auto", one_of("auto", "exact", "faiss"),
                                 "how neighbour batches find neighbours: 'exact', 'faiss' (approximate, the "
                                 "'scale' extra), 'auto': exact up to 100,000 training rows on a CPU, faiss above")
    neighbors: int = _field(15, positive_int, "with batches = 'neighbors': neighbours drawn per anchor")
    neighbor_pool: int = _field(60, positive_int, "with batches = 'neighbors': draw from each anchor's top-k")
    neighbor_hops: int = _field(1, bounded_int(1, MAX_HOPS), "with batches = 'neighbors': steps on the teacher "
                                "graph from an anchor to each neighbour drawn (2: neighbours' neighbours too; "
                                "for 100,000 rows and more, docs/scaling.md)")
    eval_rows: int = _field(5000, bounded_int(2, MAX_COUNT), "at most this many validation rows for the report "
                            "metrics (at least 2: a row's neighbours are the others)", resumable=True)

    def __attrs_post_init__(self):
        if self.epochs_per_stage is not None and self.steps_per_stage is not None:
            raise ConfigError("steps_per_stage and epochs_per_stage are both set; a stage is measured in one of "
                              "them: remove one")
        if self.steps_per_stage is None and self.epochs_per_stage is None:
            object.__setattr__(self, "epochs_per_stage", DEFAULT_EPOCHS)  # frozen: set once, here
        if self.neighbors > self.neighbor_pool:
            raise ConfigError(f"neighbors must be at most neighbor_pool ({self.neighbor_pool}), got {self.neighbors}; "
                              "raise train.neighbor_pool or lower train.neighbors")


@attrs.frozen
class OutputSection:
    """``[output]``: where the run writes."""

    dir: str = _field(None, path_str, "run folder; default runs/<pipeline file name>")
    report: bool = _field(True, boolean, "write report.json and report.md after training")
    plots: bool = _field(True, boolean, "write training.png and scatter.png (matplotlib) and the interactive "
                                        "map.html (plotly): the 'plots' extra")
    map_rows: int = _field(50_000, bounded_int(0, MAX_COUNT),
                           "training rows kept in map.pt for encode(refine=N), a uniform sample above it; 0: no map")
    umap: bool = _field(False, boolean, "also fit UMAP in the report, for comparison (needs the 'umap' extra)")
    loggers: list = _field(("jsonl",), _check(lambda v: isinstance(v, (list, tuple)) and all(
                               logger_name(x) for x in v), 'a list of logger names or tables { name = "...", ... }'),
                           "logger plugins that receive each epoch's metrics (jsonl: metrics.jsonl; tensorboard); "
                           'a table { name = "...", key = value } passes the logger its parameters; each logger once',
                           resumable=True)

    def __attrs_post_init__(self):
        object.__setattr__(self, "loggers", list(self.loggers))  # the default is a tuple (immutable)
        if self.umap and importlib.util.find_spec("umap") is None:
            raise ConfigError("umap = true needs umap-learn, which is not installed: pip install 'atlas-distill[umap]' "
                              "(or set umap = false)")


SECTIONS = {"teacher": TeacherSection, "student": StudentSection, "loss": LossSection,
            "schedule": ScheduleSection, "train": TrainSection, "output": OutputSection}
PLUGIN_SECTIONS = {"teacher": "teacher", "student": "student", "loss": "loss", "schedule": "schedule"}
# Arguments assembly passes to plugins itself (pipeline.py; tests/test_pipeline.py pins the two together), so
# a pipeline file may not set them; a loss also keeps "reduction" and "reconstruction_loss" for the trainer.
RESERVED = {"teacher": {"path"}, "student": {"input_dim", "dim"},
            "loss": {"student", "teacher", "tau", "reduction", "reconstruction_loss"},
            "schedule": {"start", "end", "num_stages"}, "logger": {"path"}}
PATH_KEYS = ("path", "meta", "cache_dir")


@attrs.frozen
class PipelineConfig:
    """A validated pipeline: one attrs object per section, plus the file it came from."""

    source: Path
    teacher: TeacherSection
    student: StudentSection
    loss: LossSection
    schedule: ScheduleSection
    train: TrainSection
    output: OutputSection

    def to_dict(self) -> dict:
        """The resolved configuration, every default written out, as TOML-ready tables."""
        out = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            table = {k: v for k, v in attrs.asdict(obj, recurse=False).items() if k != "params" and v is not None}
            if section == "loss":
                table.pop("tau", None)  # a fixed τ is written out as its one-stage [schedule]
            table.update(getattr(obj, "params", {}))
            out[section] = table
        return out

    def config_hash(self) -> str:
        """SHA-256 of what determines the trained weights (all but ``[output]``)."""
        return hash_dict(training_keys(self.to_dict()))

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir)


def resumable_keys() -> set[str]:
    """``section.key`` of every field marked ``resumable`` (may change on ``--resume``)."""
    return {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in attrs.fields(cls)
            if f.metadata.get("resumable")}


def field_defaults() -> dict:
    """``section.key`` -> the default of every field: what a checkpoint written before a field existed trained
    with (a resume treats a key it lacks as that default)."""
    return {f"{section}.{f.name}": f.default for section, cls in SECTIONS.items() for f in attrs.fields(cls)
            if not isinstance(f.default, attrs.Factory)}  # a plugin's ``params``: flattened into its own keys


def training_keys(d: dict) -> dict:
    """The part of a resolved configuration that affects the weights."""
    return {k: v for k, v in d.items() if k != "output"}


def hash_dict(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# -- loading: read, override, check, resolve -------------------------------------------------
MAX_PIPELINE_BYTES = 2**20  # a pipeline file is a few hundred bytes: a larger one is data given by mistake
MAX_NESTING = 8  # tables and lists nested deeper than this are refused (no plugin needs more)


@attrs.frozen
class Origin:
    """Where each value came from, so that an error blames the pipeline file or the ``--set`` that gave it."""

    path: Path | str  # the pipeline file, or "pipeline dict" (config_from_dict)
    overrides: dict = attrs.field(factory=dict)  # "section.key" -> the --set argument that set it

    def __call__(self, key: str) -> str:
        """The source of ``key`` ("section.key..."): the ``--set`` that gave it, or one inside it (the
        overrides record every prefix of a ``--set``'s key), or one that gave a table or list holding it
        whole; otherwise the pipeline file."""
        parts = key.split(".")
        for n in range(len(parts), 1, -1):
            item = self.overrides.get(".".join(parts[:n]))
            if item is not None and (n == len(parts) or len(parse_override(item)[0]) == n):
                return f"--set {item!r}"
        return str(self.path)


def override_items(overrides) -> list[str]:
    """``--set`` items given in Python: one ``"train.seed=1"``, a list of them, or a dict ``{"train.seed": 1}``
    whose values are written as TOML (``{"output.dir": "runs/x"}`` is the string, ``{"x.y": True}`` the boolean)."""
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, dict):
        if not all(isinstance(k, str) for k in overrides):
            raise ConfigError(f"overrides: keys are SECTION.KEY strings, e.g. {{'train.seed': 1}}, got {overrides!r}")
        try:
            return [f"{k}={_toml_scalar(v)}" for k, v in overrides.items()]
        except ConfigError as exc:
            raise ConfigError(f"overrides: {exc}; give numbers, booleans, strings and lists of them") from None
    items = list(overrides) if isinstance(overrides, (list, tuple)) else None
    if items is None or not all(isinstance(x, str) for x in items):
        raise ConfigError(f"overrides are --set items: a list of 'SECTION.KEY=VALUE' strings or a dict "
                          f"{{'train.seed': 1}}, got {overrides!r}")
    return items


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.batch_size=64"`` -> ``(["train", "batch_size"], 64)``; the value is parsed as TOML, else it is a
    bare string (``output.dir=runs/x``) — unless it starts like a TOML string, list or table: a broken one of
    those is an error, never a string with its quotes or brackets in it."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or any(not p.strip() for p in parts):
        owners = [name for name, cls in SECTIONS.items() if key.strip() in attrs.fields_dict(cls)]
        hint = f"; did you mean --set {owners[0]}.{key.strip()}={raw.strip()}?" if sep and len(owners) == 1 else \
            ", e.g. --set train.batch_size=64"
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE{hint}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if raw.strip()[:1] in ('"', "'", "[", "{"):
            why = re.sub(r" \(at [^)]*\)$", "", str(exc))  # its position is in "v = VALUE", not in the --set
            raise ConfigError(f"--set {item!r}: not a valid TOML value ({why}); a string may also be given bare, "
                              "without quotes") from None
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {item!r}: the value is nested too deeply") from None
    return [p.strip() for p in parts], value


def apply_overrides(doc: dict, overrides) -> tuple[dict, dict]:
    """Apply ``--set`` items to ``doc``; return it and ``{"section.key": item}`` for :class:`Origin`."""
    origins = {}
    for item in override_items(overrides):
        parts, value = parse_override(item)
        if parts[0] not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section '{parts[0]}'{did_you_mean(parts[0], SECTIONS)}; "
                              f"sections are: {', '.join(SECTIONS)}")
        table = doc
        for p in parts[:-1]:
            nxt = table.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: '{p}' is a value, not a table")
            table = nxt
        table[parts[-1]] = value
        for i in range(2, len(parts) + 1):
            origins[".".join(parts[:i])] = item
    return doc, origins


def read_toml(path: Path, registry=None) -> dict:
    """The pipeline file's table; one line naming the file when it cannot be one (and what to write instead,
    when it is a teacher's data file: atlas-run takes the pipeline that names it)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{path}: is a folder; expected a pipeline .toml file")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
        raise ConfigError(f"{path}: is not a regular file (a FIFO, socket or device); expected a pipeline .toml file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PIPELINE_BYTES + 1)
        if len(data) > MAX_PIPELINE_BYTES:
            raise ConfigError(f"{path}: is larger than {MAX_PIPELINE_BYTES // 2**20} MiB, which no pipeline file is; "
                              f"expected a pipeline .toml file{_data_file_hint(path, registry)}")
        return tomllib.loads(data.removeprefix(codecs.BOM_UTF8).decode("utf-8"))  # a Windows editor's byte-order mark
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}{_data_file_hint(path, registry)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML for a pipeline: values are nested too deeply") from None
    except UnicodeDecodeError:
        if utf16(data):  # Windows PowerShell's `"..." > file.toml`
            raise ConfigError(f"{path}: not valid TOML: the file is UTF-16 text (what Windows PowerShell's > "
                              "writes); save it as UTF-8 (Out-File -Encoding utf8)") from None
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text"
                          f"{_data_file_hint(path, registry) or '; save it as UTF-8'}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None


def _data_file_hint(path: Path, registry) -> str:
    loader = path.suffix.lower() != ".toml" and loader_for_suffix(path, registry or get_registry())
    return (f"; it looks like teacher data: atlas-run takes a pipeline file, and one that holds only [teacher] "
            f"with path = \"{path.name}\" is enough (every other key has a default)" if loader else "")


def load_config(path, overrides=(), registry=None) -> PipelineConfig:
    """Read, override, validate and resolve a pipeline file; plugin parameters are checked by signature."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a pipeline is a pipeline file's path or a dict of its tables, got {type(path).__name__}")
    path = Path(path)
    doc, origins = _overridden(read_toml(path, registry), overrides)
    return build_config(doc, path, registry, Origin(path, origins))


DICT_ORIGIN = "pipeline dict"


def config_from_dict(doc: dict, overrides=(), registry=None) -> PipelineConfig:
    """A pipeline given as its tables (``{"teacher": {"path": "vectors.npy"}, "output": {"dir": "runs/x"}}``),
    checked as :func:`load_config` checks a file.  Relative paths resolve against the working folder; there is
    no file name to name the run folder after, so ``output.dir`` is required, and the ``pipeline.toml`` the run
    writes there stands for the file (``atlas-run runs/x/pipeline.toml --resume`` continues the run)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"a pipeline is a pipeline file's path or a dict of its tables, got {type(doc).__name__}")
    doc, origins = _overridden(_plain(doc), overrides)
    out = doc.get("output", {})
    if isinstance(out, dict) and "dir" not in out:
        raise ConfigError(f"{DICT_ORIGIN}: output.dir is required (a pipeline dict has no file name to name the "
                          f"run folder after); add \"output\": {{\"dir\": \"runs/my-map\"}}")
    out_dir = out.get("dir") if isinstance(out, dict) else None  # a bad one is named by the checks of [output]
    source = Path(_beside(Path.cwd(), out_dir) if isinstance(out_dir, str) and out_dir.strip() else "") / \
        "pipeline.toml"
    return build_config(doc, source, registry, Origin(DICT_ORIGIN, origins), base=Path.cwd())


def _plain(value):
    """A dict of tables as TOML would give it: paths (``os.PathLike``) as strings, tuples as lists."""
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{DICT_ORIGIN}: keys are names (strings), got {bad[0]!r} in {value!r}")
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _overridden(doc: dict, overrides) -> tuple[dict, dict]:
    """``doc`` with the ``--set`` items applied, and where each came from."""
    doc, origins = apply_overrides(doc, overrides)
    for given, other in (("steps_per_stage", "epochs_per_stage"), ("epochs_per_stage", "steps_per_stage")):
        if f"train.{given}" in origins and f"train.{other}" not in origins and isinstance(doc.get("train"), dict):
            doc["train"].pop(other, None)  # a stage's budget given with --set replaces the file's other one
    return doc, origins


def build_config(doc: dict, path: Path, registry=None, origin: Origin | None = None, *,
                 base: Path | None = None) -> PipelineConfig:
    """Validate the tables of a pipeline file (``doc``, as ``tomllib`` reads it) into a :class:`PipelineConfig`;
    relative paths resolve against ``base``, by default the file's folder."""
    registry = registry or get_registry()
    origin = origin or Origin(path)
    base = base or path.resolve().parent
    _check_shape(doc, origin)
    tables = _resolve_paths(_schedule_from_tau({name: dict(doc.get(name, {})) for name in SECTIONS}, origin),
                            path, base, origin)
    tables["loss"] = _student_loss(tables, registry)
    sections = {name: _make_section(origin, name, tables[name]) for name in SECTIONS}
    sections = _resolve_plugins(sections, origin, registry, base)
    sections["schedule"] = _taus_from_loss(sections["schedule"], sections["loss"], registry)
    return PipelineConfig(source=path, **sections)


def _check_shape(doc: dict, origin: Origin) -> None:
    """Known sections, each a table, nothing nested too deeply, and a teacher path."""
    for key, value in doc.items():
        if key not in SECTIONS:
            raise ConfigError(f"{origin(key)}: unknown section [{key}]{did_you_mean(key, SECTIONS)}; "
                              f"sections are: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{origin(key)}: '{key}' must be a table [{key}], got {value!r}")
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(f"{origin.path}: values are nested more than {MAX_NESTING} levels deep")
        if isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ConfigError(f"{origin.path}: a value holds bytes that are not valid text: {value!r}")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((v, depth + 1) for v in children)
    if "path" not in doc.get("teacher", {}):
        raise ConfigError(f"{origin.path}: missing teacher.path; add [teacher] with path = \"embeddings.npy\"")


def _schedule_from_tau(tables: dict, origin: Origin) -> dict:
    """The τ rule: ``loss.tau`` and ``[schedule]`` exclude each other; ``loss.tau`` is one stage at that fixed τ;
    with neither, the run follows ``[schedule]``'s defaults (a curriculum over the loss's τ range:
    :func:`_taus_from_loss`)."""
    tau = tables["loss"].get("tau")
    if tau is not None and tables["schedule"]:
        raise ConfigError(f"{origin('loss.tau')}: loss.tau is set, but [schedule] sets τ per stage; "
                          "remove one of them")
    if tau is not None and _is_number(tau):  # a bad tau is reported by the [loss] section itself
        tables["schedule"] = {"name": "linear", "start": tau, "end": tau, "stages": 1}  # resolved as before 0.2
    return tables


def _taus_from_loss(schedule: ScheduleSection, loss: LossSection, registry) -> ScheduleSection:
    """The τ rule, continued: a ``start`` or ``end`` that ``[schedule]`` leaves out is the loss's own."""
    if schedule.start is not None and schedule.end is not None:
        return schedule
    start, end = loss_tau_range(registry, loss.name, loss.params)
    return attrs.evolve(schedule, start=start if schedule.start is None else schedule.start,
                        end=end if schedule.end is None else schedule.end)


DEFAULT_TAU = 1.0  # τ for a loss that declares no tau_range: the loss hook's documented default


def loss_tau_range(registry, name: str, params: dict | None = None) -> tuple[float, float]:
    """The τ curriculum ``(start, end)`` loss ``name`` declares in its ``tau_range`` attribute: where τ means
    the same soft-to-sharp on that loss's scale.  A ``tau_range`` that is a parameter's name (``"base"``)
    follows the loss that parameter names in ``params`` (its default when not given); a loss that declares
    nothing gets ``(DEFAULT_TAU, DEFAULT_TAU)``."""
    seen = []
    while True:
        info = registry.info("loss", name)
        declared = getattr(info.obj, "tau_range", None)
        who = f"loss '{name}' ({info.distribution})"
        if declared is None:
            return DEFAULT_TAU, DEFAULT_TAU
        if not isinstance(declared, str):
            ok = isinstance(declared, (tuple, list)) and len(declared) == 2 and all(
                _is_number(v) and math.isfinite(v) and v > 0 for v in declared)
            if not ok:
                raise PluginError(f"{who} declares tau_range = {declared!r}; expected (start, end), two positive "
                                  "numbers, or the name of its parameter that names another loss")
            return float(declared[0]), float(declared[1])
        if params is None:
            params = {p["name"]: p["default"] for p in parameters(info.obj)}
        inner = params.get(declared)
        if not isinstance(inner, str) or inner not in registry.names("loss") or inner in seen:
            why = "loops back" if inner in seen else f"names no registered loss ({declared} = {inner!r})"
            raise PluginError(f"{who} takes its tau_range from parameter '{declared}', which {why}; "
                              "set [schedule] start and end")
        seen.append(name)
        name, params = inner, None


def _student_loss(tables: dict, registry) -> dict:
    """The loss rule: a ``[loss]`` that names no loss is the student's ``default_loss`` (a hierarchical student's
    loss over levels) with ``[loss]``'s keys on top; without one, ``[loss] name``'s default holds."""
    table, student = tables["loss"], tables["student"].get("name", attrs.fields(StudentSection).name.default)
    try:
        fn = registry.get("student", student) if "name" not in table and isinstance(student, str) else None
    except PluginError:
        return table  # an unknown student is reported with the [student] section
    default = getattr(fn, "default_loss", None)
    if default is None:
        return table
    if not isinstance(default, dict) or not isinstance(default.get("name"), str):
        raise PluginError(f"student '{student}' ({registry.info('student', student).distribution}) declares "
                          f"default_loss = {default!r}; expected a [loss] table with a name, such as "
                          "{\"name\": \"hierarchical\"}; set [loss] name")
    return {**default, **table}


def _beside(base: Path, value: str) -> str:
    """``value`` (``~`` expanded) resolved against ``base``, the pipeline file's folder: how every relative path
    in a pipeline file is read.  An absolute path stays itself (normalised)."""
    return os.path.normpath(base / os.path.expanduser(value))


def _check_set_path(origin: Origin, key: str, value: str, resolved: str, base: Path) -> None:
    """A relative file given with ``--set`` that is missing beside the pipeline file but exists in the current
    folder (where the shell completed it): say so, instead of a bare "not found" later."""
    here = os.path.abspath(os.path.expanduser(value))
    if (key in origin.overrides and key != "teacher.cache_dir" and not os.path.isabs(os.path.expanduser(value))
            and not os.path.exists(resolved) and here != resolved and os.path.exists(here)):
        raise ConfigError(f"{origin(key)}: {resolved} does not exist: relative paths resolve against the pipeline "
                          f"file's folder ({base}); the file is in the current folder, so give {here}")


def _resolve_paths(tables: dict, path: Path, base: Path, origin: Origin) -> dict:
    """Relative paths resolve against ``base`` (the pipeline file's folder); ``output.dir`` defaults to
    runs/<file name>."""
    for key in PATH_KEYS:
        value = tables["teacher"].get(key)
        if isinstance(value, str) and not value.strip():  # resolved, "" would be the pipeline file's folder
            raise ConfigError(f"{origin(f'teacher.{key}')}: teacher.{key} must be a path (a non-empty string), "
                              f"got {value!r}")
        if isinstance(value, str):
            tables["teacher"][key] = _beside(base, value)
            _check_set_path(origin, f"teacher.{key}", value, tables["teacher"][key], base)
    out = tables["output"]
    out.setdefault("dir", str(Path("runs") / path.stem))
    if isinstance(out["dir"], str) and out["dir"].strip() and "\x00" not in out["dir"]:
        out["dir"] = _beside(base, out["dir"])
        if Path(out["dir"]) == Path(out["dir"]).parent:
            raise ConfigError(f"{origin('output.dir')}: output.dir must not be the file system's root "
                              f"({out['dir']}); choose a folder for this run")
    return tables


def _make_section(origin: Origin, section: str, table: dict):
    cls = SECTIONS[section]
    fixed = {f.name for f in attrs.fields(cls) if f.name != "params"}
    if section in PLUGIN_SECTIONS:
        kwargs = {k: v for k, v in table.items() if k in fixed}
        kwargs["params"] = {k: v for k, v in table.items() if k not in fixed}
    else:
        for key in table:
            if key not in fixed:
                raise ConfigError(f"{origin(f'{section}.{key}')}: unknown key {section}.{key}"
                                  f"{did_you_mean(key, fixed)}; [{section}] accepts: {', '.join(sorted(fixed))}")
        kwargs = table
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        key = str(exc).split(" ", 1)[0]
        raise ConfigError(f"{origin(f'{section}.{key}')}: {section}.{exc}") from None


def _resolve_plugins(sections: dict, origin: Origin, registry, base: Path) -> dict:
    """Look up each plugin by name and check its parameters against its signature; the teacher's path
    parameters are resolved against ``base``, the pipeline file's folder (:func:`_local_paths`)."""
    if sections["teacher"].loader is None:
        sections["teacher"] = attrs.evolve(sections["teacher"],
                                           loader=_loader_for_suffix(origin, sections["teacher"].path, registry))
    for section, kind in PLUGIN_SECTIONS.items():
        sec = sections[section]
        key = "loader" if section == "teacher" else "name"
        try:
            fn = registry.get(kind, getattr(sec, key))
        except UnknownPluginError as exc:
            raise ConfigError(f"{origin(f'{section}.{key}')}: {section}.{key}: {exc}") from None
        params = _check_params(origin, section, kind, getattr(sec, key), fn, sec.params, registry)
        if section == "teacher":
            params = _local_paths(fn, params, base)
        if section == "teacher" and sec.embedder is not None:
            embedder = _check_embedder(origin, sec.embedder, registry)
            embed = registry.get("teacher", embedder["loader"]).embed
            sec = attrs.evolve(sec, embedder=_local_paths(embed, embedder, base))
        if section == "teacher" and "cache_dir" not in params and accepts(fn, "cache_dir"):
            # a teacher that caches what it computes keeps it in the run folder by default
            params["cache_dir"] = os.path.join(sections["output"].dir, "cache")
        sections[section] = attrs.evolve(sec, params=params)
    loggers = []
    for item in sections["output"].loggers:
        name, params = logger_spec(item)
        try:
            fn = registry.get("logger", name)
        except UnknownPluginError as exc:
            raise ConfigError(f"{origin('output.loggers')}: output.loggers: {exc}") from None
        if isinstance(item, dict):
            params = _check_params(origin, f"output.loggers.{name}", "logger", name, fn, params, registry)
            item = {"name": name, **params}
        if name in (logger_spec(x)[0] for x in loggers):  # two would write the same file: each line twice
            raise ConfigError(f"{origin('output.loggers')}: output.loggers names '{name}' twice; name each logger once")
        loggers.append(item)
    sections["output"] = attrs.evolve(sections["output"], loggers=loggers)
    return sections


def logger_name(item) -> str | None:
    """The logger an ``output.loggers`` item names: the item itself, or a table's ``name``; None when neither."""
    name = item.get("name") if isinstance(item, dict) else item
    return name if isinstance(name, str) and name else None


def logger_spec(item) -> tuple[str, dict]:
    """An ``output.loggers`` item as ``(name, parameters)``: ``"jsonl"`` or ``{ name = "wandb", project = "maps" }``."""
    if not isinstance(item, dict):
        return item, {}
    params = dict(item)
    return params.pop("name"), params


def _local_paths(fn, params: dict, base: Path) -> dict:
    """``params`` with each parameter that ``fn`` names in its ``path_params`` attribute (a teacher's model may
    be a folder or a model name) made absolute when it is a relative path to something that exists in
    ``base``, as ``teacher.path`` is; otherwise (a name, an absolute path) it is passed on as written."""
    out = dict(params)
    for key in getattr(fn, "path_params", ()):
        value = out.get(key)
        if isinstance(value, str) and value.strip() and "\x00" not in value \
                and not os.path.isabs(os.path.expanduser(value)):
            candidate = _beside(base, value)
            if os.path.exists(candidate):
                out[key] = candidate
    return out


def _check_embedder(origin: Origin, table: dict, registry) -> dict:
    """``teacher.embedder``: a teacher plugin with an ``embed`` function, and parameters ``embed`` accepts."""
    loader = table["loader"]
    try:
        embed = getattr(registry.get("teacher", loader), "embed", None)
    except UnknownPluginError as exc:
        raise ConfigError(f"{origin('teacher.embedder')}: teacher.embedder.loader: {exc}") from None
    if embed is None:
        able = [i.name for i in registry.available("teacher") if hasattr(i.obj, "embed")]
        raise ConfigError(f"{origin('teacher.embedder')}: teacher.embedder.loader: teacher '{loader}' cannot embed "
                          f"texts; teachers that can: {', '.join(able) or 'none'}")
    params = {k: v for k, v in table.items() if k != "loader"}
    return {"loader": loader, **_check_params(origin, "teacher.embedder", "teacher", loader, embed, params, registry)}


def _loader_for_suffix(origin: Origin, teacher_path: str, registry) -> str:
    """The teacher for ``teacher_path`` when [teacher] names none: by its suffix; a ``.jsonl``, ``.csv``/``.tsv``
    or columnar table (Parquet, Arrow, a Hugging Face dataset folder) by what it holds, vectors (the ``jsonl``,
    ``csv``, ``parquet`` or ``arrow`` teacher) or texts (the teacher of ``.txt`` files)."""
    name = loader_for_suffix(teacher_path, registry)
    suffix = Path(teacher_path).suffix.lower()
    if suffix in (".jsonl", *TABLE_SUFFIXES) or columnar(teacher_path):
        field = vector_field(teacher_path)
        tables = "jsonl" if suffix == ".jsonl" else "csv" if suffix in TABLE_SUFFIXES else name
        if field in ("embedding", "") and tables in registry.names("teacher"):  # vectors, as atlas-encode tells them
            return tables
        if field is not None:  # never embed the texts again in silence when the file brings its own vectors
            raise ConfigError(f"{origin('teacher.path')}: {teacher_path} holds vectors in '{field}': set "
                              f"loader = \"{tables}\" and column = \"{field}\" in [teacher] to train on them, "
                              "or loader = \"sentence-transformers\" to embed its texts instead")
        if suffix == ".jsonl" and (why := batch_input(teacher_path)):
            raise ConfigError(f"{origin('teacher.path')}: {why}, with requests = \"{Path(teacher_path).name}\" in "
                              "[teacher] for the texts")
        name = loader_for_suffix("texts.txt", registry)  # a table of texts, without vectors
    if name is not None:
        return name
    if why := no_reader(teacher_path):
        raise ConfigError(f"{origin('teacher.path')}: {why}")
    raise ConfigError(f"{origin('teacher.path')}: teacher.loader is not set and no teacher plugin reads "
                      f"'{suffix or teacher_path}' files; set loader to one of: {', '.join(registry.names('teacher'))}")


def _check_params(origin: Origin, section: str, kind: str, plugin: str, fn, params: dict, registry) -> dict:
    """Check the keys and value types the plugin takes; return the params with its defaults filled in."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(params)
    reserved = RESERVED[kind]
    accepted = {p.name: p for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in reserved}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    annotations = signature_annotations(fn)
    for key, value in params.items():
        where = origin(f"{section}.{key}")
        if key in reserved:
            raise ConfigError(f"{where}: {section}.{key} is set by the orchestrator and cannot be given here")
        if key not in accepted and not takes_any:
            raise ConfigError(f"{where}: {section}.{key} is not a parameter of {kind} '{plugin}'"
                              f"{did_you_mean(key, accepted)}; it accepts: {', '.join(accepted) or 'no parameters'}")
        annotation = annotations.get(key)
        if annotation is not None and not matches(value, annotation):
            hint = did_you_mean(value, literal_values(annotation)) if isinstance(value, str) else ""
            raise ConfigError(f"{where}: {section}.{key} must be {describe(annotation)} for {kind} '{plugin}', "
                              f"got {value!r}{hint}")
        ref = plugin_ref(annotation) if annotation is not None else None
        if ref is not None and isinstance(value, str):
            try:
                registry.get(ref.kind, value)
            except UnknownPluginError as exc:
                raise ConfigError(f"{where}: {section}.{key}: {exc}") from None
    out = {}
    for pname, p in accepted.items():
        if pname in params:
            out[pname] = params[pname]
        elif p.default is not inspect.Parameter.empty and _toml_value(p.default):
            out[pname] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update({k: v for k, v in params.items() if k not in out})
    return out


def _toml_value(v) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_toml_value(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _toml_value(x) for k, x in v.items())
    return False


# -- writing ---------------------------------------------------------------------------------
_TOML_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and every control character (U+0000–U+001F, U+007F) escaped."""
    return '"' + "".join(_TOML_ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _toml_key(key) -> str:
    key = str(key)
    bare = key != "" and key.isascii() and key.replace("_", "").replace("-", "").isalnum()
    return key if bare else toml_string(key)


def _toml_scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_scalar(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def dump_toml(doc: dict) -> str:
    """Write a dict of tables as TOML (the subset the pipeline file uses)."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{_toml_key(k)} = {_toml_scalar(v)}")
        lines.append("")
    return "\n".join(lines)
