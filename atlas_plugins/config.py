"""The pipeline file (``pipeline.toml``): parsed with ``tomllib``, validated into attrs objects.

Six sections.  ``[teacher]``, ``[student]``, ``[loss]`` and ``[schedule]`` name
a plugin; their other keys are that plugin's parameters, checked against its
signature before any training.  ``[train]`` and ``[output]`` are fixed.  Every
problem is a :class:`ConfigError` whose one-line message names the file, the
key path and what was expected, with a did-you-mean where one fits.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs

from .errors import ConfigError, UnknownPluginError, did_you_mean


# -- field validators: each raises ConfigError("<field> must be ..., got ...") -------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(pred, expected):
    def validator(inst, attr, value):
        try:
            ok = pred(value)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ConfigError(f"{attr.name} must be {expected}, got {value!r}")
    validator.expected = expected
    return validator


positive_int = _check(lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**40,
                      "a positive integer")
nonneg_int = _check(lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**62,
                    "an integer >= 0")
positive_number = _check(lambda v: _is_number(v) and math.isfinite(v) and v > 0, "a positive number")
nonneg_number = _check(lambda v: _is_number(v) and math.isfinite(v) and v >= 0, "a number >= 0")
fraction = _check(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
boolean = _check(lambda v: isinstance(v, bool), "true or false")
name = _check(lambda v: isinstance(v, str) and v.strip() != "", "a plugin name (a non-empty string)")
path_str = _check(lambda v: isinstance(v, str) and v.strip() != "" and "\x00" not in v, "a path (a non-empty string)")
optional_name = _check(lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a plugin name")
optional_dim = _check(lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                      "a positive integer")
device = _check(lambda v: isinstance(v, str) and (v in ("cpu", "cuda", "auto") or
                                                  (v.startswith("cuda:") and v[5:].isdigit())),
                "'cpu', 'cuda', 'cuda:N' or 'auto'")


def one_of(*choices):
    return _check(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def _field(default, validator, help):
    return attrs.field(default=default, validator=validator, metadata={"help": help})


# -- sections -------------------------------------------------------------------------------
@attrs.frozen
class TeacherSection:
    """``[teacher]``: where the teacher embeddings come from."""

    path: str = _field(None, path_str, "teacher file; relative paths resolve against the pipeline file's folder")
    loader: str | None = _field(None, optional_name, "teacher plugin name; omitted: chosen by the file suffix")
    dim: int | None = _field(None, optional_dim, "expected embedding dimension; checked before training")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class StudentSection:
    """``[student]``: the model that maps teacher vectors to a few dimensions."""

    name: str = _field("mlp", name, "student plugin name (linear, mlp, hierarchical, ...)")
    dim: int = _field(5, positive_int, "output dimension (the coarse level's for hierarchical)")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class LossSection:
    """``[loss]``: the distillation objective."""

    name: str = _field("neighbors", name, "loss plugin name")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class ScheduleSection:
    """``[schedule]``: τ per curriculum stage."""

    name: str = _field("linear", name, "schedule plugin name (linear, exponential, cosine, ...)")
    start: float = _field(1.0, positive_number, "τ at the first stage")
    end: float = _field(1.0, positive_number, "τ at the last stage")
    stages: int = _field(1, positive_int, "number of curriculum stages")
    params: dict = attrs.field(factory=dict)


@attrs.frozen
class TrainSection:
    """``[train]``: optimisation."""

    epochs_per_stage: int = _field(10, positive_int, "epochs in each curriculum stage")
    batch_size: int = _field(1024, positive_int, "rows per batch (anchors plus neighbours with neighbour batches)")
    learning_rate: float = _field(5e-3, positive_number, "Adam learning rate")
    weight_decay: float = _field(0.0, nonneg_number, "AdamW weight decay (0: plain Adam)")
    lr_schedule: str = _field("cosine", one_of("constant", "cosine"),
                              "'constant', or 'cosine' decay over the whole run after warm-up")
    warmup_steps: int = _field(50, nonneg_int, "optimizer steps of linear learning-rate warm-up")
    device: str = _field("cpu", device, "'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)")
    seed: int = _field(0, nonneg_int, "seed for initialisation, split and batch order")
    val_fraction: float = _field(0.1, fraction, "share of rows held out for validation and the report")
    accumulate: int = _field(1, positive_int, "gradient accumulation steps per optimizer step")
    input_noise: float = _field(0.0, nonneg_number, "Gaussian noise on training inputs, std = this × the row's RMS "
                                "(targets stay clean); smooths the map for unseen points")
    batches: str = _field("auto", one_of("auto", "random", "neighbors"),
                          "'neighbors': anchors plus teacher neighbours (needs the training rows in memory); "
                          "'random'; 'auto': neighbors up to 100,000 training rows, else random")
    neighbors: int = _field(15, positive_int, "with batches = 'neighbors': neighbours drawn per anchor")
    neighbor_pool: int = _field(60, positive_int, "with batches = 'neighbors': draw from each anchor's top-k")
    eval_rows: int = _field(5000, positive_int, "at most this many validation rows for the report metrics")


@attrs.frozen
class OutputSection:
    """``[output]``: where the run writes."""

    dir: str = _field(None, path_str, "run folder; default runs/<pipeline file name>")
    report: bool = _field(True, boolean, "write report.json and report.md after training")
    plots: bool = _field(True, boolean, "write PNG plots (needs matplotlib, the 'plots' extra)")


SECTIONS = {"teacher": TeacherSection, "student": StudentSection, "loss": LossSection,
            "schedule": ScheduleSection, "train": TrainSection, "output": OutputSection}
PLUGIN_SECTIONS = {"teacher": "teacher", "student": "student", "loss": "loss", "schedule": "schedule"}
# Arguments the orchestrator passes itself, so a pipeline file may not set them.
RESERVED = {"teacher": {"path"}, "student": {"input_dim", "dim"},
            "loss": {"student", "teacher", "reduction", "reconstruction_loss"},
            "schedule": {"start", "end", "num_stages"}}
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
            table.update(getattr(obj, "params", {}))
            out[section] = table
        return out

    def config_hash(self) -> str:
        """SHA-256 of what determines the trained weights (all but ``[output]``)."""
        return hash_dict(training_keys(self.to_dict()))

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir)


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


# -- loading ---------------------------------------------------------------------------------
def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.batch_size=64"`` -> ``(["train", "batch_size"], 64)``; the value is parsed as TOML, else a string."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or any(not p.strip() for p in parts):
        raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set train.batch_size=64")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return [p.strip() for p in parts], value


def apply_overrides(doc: dict, overrides) -> dict:
    for item in overrides or ():
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
    return doc


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a pipeline .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None


def load_config(path, overrides=(), registry=None) -> PipelineConfig:
    """Read, override, validate and resolve a pipeline file; plugin parameters are checked by signature."""
    path = Path(path)
    doc = apply_overrides(read_toml(path), overrides)
    return build_config(doc, path, registry)


def build_config(doc: dict, path: Path, registry=None) -> PipelineConfig:
    from .registry import get_registry

    registry = registry or get_registry()
    base = path.resolve().parent
    for key, value in doc.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}]{did_you_mean(key, SECTIONS)}; "
                              f"sections are: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: '{key}' must be a table [{key}], got {value!r}")
    if "teacher" not in doc or "path" not in doc["teacher"]:
        raise ConfigError(f"{path}: missing teacher.path; add [teacher] with path = \"embeddings.npy\"")
    tables = {name: dict(doc.get(name, {})) for name in SECTIONS}
    loss_tau = tables["loss"].pop("tau", None)
    if loss_tau is not None:
        try:
            positive_number(None, SimpleNamespace(name="tau"), loss_tau)
        except ConfigError as exc:
            raise ConfigError(f"{path}: loss.{exc}") from None
    if loss_tau is not None and "schedule" in doc:
        raise ConfigError(f"{path}: loss.tau is set, but [schedule] sets τ per stage; remove one of them")
    if "schedule" not in doc:  # no curriculum: one stage at a fixed τ
        tables["schedule"] = {"start": 1.0 if loss_tau is None else loss_tau,
                              "end": 1.0 if loss_tau is None else loss_tau, "stages": 1}
    for key in PATH_KEYS:
        if isinstance(tables["teacher"].get(key), str):
            tables["teacher"][key] = os.path.normpath(base / Path(tables["teacher"][key]).expanduser())
    tables["output"].setdefault("dir", str(Path("runs") / path.stem))
    if isinstance(tables["output"]["dir"], str):
        tables["output"]["dir"] = os.path.normpath(base / Path(tables["output"]["dir"]).expanduser())
    sections = {name: _make_section(path, name, tables[name]) for name in SECTIONS}
    if sections["teacher"].loader is None:
        sections["teacher"] = attrs.evolve(sections["teacher"],
                                           loader=_loader_for_suffix(path, sections["teacher"].path, registry))
    for section, kind in PLUGIN_SECTIONS.items():
        sec = sections[section]
        plugin_name = sec.loader if section == "teacher" else sec.name
        try:
            fn = registry.get(kind, plugin_name)
        except UnknownPluginError as exc:
            key = "loader" if section == "teacher" else "name"
            raise ConfigError(f"{path}: {section}.{key}: {exc}") from None
        params = _check_params(path, section, kind, plugin_name, fn, sec.params)
        if section == "teacher" and "cache_dir" not in params and _accepts(fn, "cache_dir"):
            # a teacher that caches what it computes keeps it in the run folder by default
            params["cache_dir"] = os.path.join(sections["output"].dir, "cache")
        sections[section] = attrs.evolve(sec, params=params)
    return PipelineConfig(source=path, **sections)


def _make_section(path: Path, section: str, table: dict):
    cls = SECTIONS[section]
    fixed = {f.name for f in attrs.fields(cls) if f.name != "params"}
    if section in PLUGIN_SECTIONS:
        kwargs = {k: v for k, v in table.items() if k in fixed}
        kwargs["params"] = {k: v for k, v in table.items() if k not in fixed}
    else:
        for key in table:
            if key not in fixed:
                raise ConfigError(f"{path}: unknown key {section}.{key}{did_you_mean(key, fixed)}; "
                                  f"[{section}] accepts: {', '.join(sorted(fixed))}")
        kwargs = table
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {section}.{exc}") from None


def _loader_for_suffix(path: Path, teacher_path: str, registry) -> str:
    suffix = Path(teacher_path).suffix.lower()
    for info in registry.available("teacher"):
        if suffix in getattr(info.obj, "suffixes", ()):
            return info.name
    raise ConfigError(f"{path}: teacher.loader is not set and no teacher plugin reads '{suffix or teacher_path}' "
                      f"files; set loader to one of: {', '.join(registry.names('teacher'))}")


def _check_params(path: Path, section: str, kind: str, plugin: str, fn, params: dict) -> dict:
    """Reject keys the plugin does not take; return the params with the plugin's defaults filled in."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(params)
    reserved = RESERVED[kind]
    accepted = {p.name: p for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in reserved}
    if kind == "loss":
        accepted.pop("tau", None)
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for key in params:
        if key in reserved or (kind == "loss" and key == "tau"):
            raise ConfigError(f"{path}: {section}.{key} is set by the orchestrator and cannot be given here")
        if key not in accepted and not takes_any:
            raise ConfigError(f"{path}: {section}.{key} is not a parameter of {kind} '{plugin}'"
                              f"{did_you_mean(key, accepted)}; it accepts: {', '.join(accepted) or 'no parameters'}")
    out = {}
    for pname, p in accepted.items():
        if pname in params:
            out[pname] = params[pname]
        elif p.default is not inspect.Parameter.empty and _toml_value(p.default):
            out[pname] = list(p.default) if isinstance(p.default, tuple) else p.default
    out.update({k: v for k, v in params.items() if k not in out})
    return out


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _toml_value(v) -> bool:
    if isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_toml_value(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _toml_value(x) for k, x in v.items())
    return False


# -- writing ---------------------------------------------------------------------------------
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
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_scalar(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to TOML")


def dump_toml(doc: dict) -> str:
    """Write a dict of tables as TOML (the subset the pipeline file uses)."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        for k, v in table.items():
            key = k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)
            lines.append(f"{key} = {_toml_scalar(v)}")
        lines.append("")
    return "\n".join(lines)
