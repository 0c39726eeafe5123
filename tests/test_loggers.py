"""Loggers, the fifth plugin kind: ``jsonl`` (metrics.jsonl), ``tensorboard``, and a third-party one."""

import json
import re
import sys
import tomllib

import pytest

from atlas_plugins import ConfigError, PluginError, Registry
from atlas_plugins.config import load_config
from atlas_plugins.orchestrator import run_pipeline
from conftest import one_error_line, run_cli, write_pipeline


class Collect:
    """A logger that remembers every call."""

    def __init__(self, calls, fail_at=None):
        self.calls, self.fail_at = calls, fail_at

    def start(self, info):
        self.calls.append(("start", sorted(info)))

    def log(self, metrics):
        if metrics["epoch"] == self.fail_at:
            raise RuntimeError("tracker unreachable")
        self.calls.append(("log", metrics["stage"], metrics["epoch"]))

    def end(self, summary):
        self.calls.append(("end", summary["status"], "report" in summary))


def run_with(tmp_path, logger_factory, loggers='["collect"]'):
    registry = Registry(load_entrypoints=False)
    registry.register("logger", "collect", logger_factory)
    path = write_pipeline(tmp_path, f"loggers = {loggers}", stages=2, epochs=2)
    config = load_config(path, registry=registry)
    return run_pipeline(config, registry=registry, echo=lambda m: None, warn=lambda m: None)


def test_a_logger_sees_the_start_every_epoch_and_the_end(tmp_path):
    calls = []
    run_with(tmp_path, lambda path: Collect(calls))
    assert calls == [("start", ["config", "metrics", "run_dir"]), ("log", 0, 0), ("log", 0, 1), ("log", 1, 0),
                     ("log", 1, 1), ("end", "completed", True)]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # only the loggers named are used


def test_a_failing_logger_is_named_and_still_told_the_end(tmp_path):
    calls = []
    with pytest.raises(PluginError, match=r"\[logger\] logger 'collect' failed: RuntimeError: tracker unreachable"):
        run_with(tmp_path, lambda path: Collect(calls, fail_at=1))
    assert calls[-1] == ("end", "failed", False)


def test_a_logger_must_have_log(tmp_path):
    with pytest.raises(PluginError, match="logger 'collect' .* returned object, which has no log"):
        run_with(tmp_path, lambda path: object())


def test_unknown_logger_is_a_config_error(tmp_path):
    path = write_pipeline(tmp_path, 'loggers = ["tensorbord"]', stages=1, epochs=1)
    one_error_line(run_cli(path, "--dry-run"), "output.loggers: unknown logger 'tensorbord'",
                   "did you mean 'tensorboard'?")
    path.write_text(path.read_text().replace('["tensorbord"]', '"jsonl"'))
    one_error_line(run_cli(path, "--dry-run"), "output.loggers must be a list of logger names or tables", "got 'jsonl'")
    for twice in ('["jsonl", "jsonl"]', '["jsonl", { name = "jsonl" }]'):  # metrics.jsonl had each line twice
        one_error_line(run_cli(path, "--dry-run", "--set", f"output.loggers={twice}"),
                       "output.loggers names 'jsonl' twice; name each logger once")


def test_a_table_passes_the_logger_its_parameters(tmp_path):
    made = []

    def tracker(path, project: str, every: int = 1, tags: list[str] = ()):
        made.append((project, every, tags))
        return Collect([])

    run_with(tmp_path, tracker, loggers='[{ name = "collect", project = "maps", tags = ["5-D"] }]')
    assert made == [("maps", 1, ["5-D"])]
    resolved = tomllib.loads((tmp_path / "run" / "pipeline.toml").read_text())
    assert resolved["output"]["loggers"] == [{"name": "collect", "project": "maps", "every": 1, "tags": ["5-D"]}]
    for loggers, message in [
            ('[{ name = "collect", project = 7 }]', "output.loggers.collect.project must be a string for logger "
                                                   "'collect', got 7"),
            ('[{ name = "collect", projet = "maps" }]', "output.loggers.collect.projet is not a parameter of logger "
                                                       "'collect' (did you mean 'project'?); it accepts: project, "
                                                       "every, tags"),
            ('[{ name = "collect", project = "maps", path = "x" }]', "output.loggers.collect.path is set by the "
                                                                    "orchestrator"),
            ('[{ project = "maps" }]', "output.loggers must be a list of logger names or tables")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_with(tmp_path, tracker, loggers=loggers)
    assert len(made) == 1


def test_a_logger_table_from_the_command_line(tmp_path):
    path = write_pipeline(tmp_path, stages=1, epochs=1)
    proc = run_cli(path, "--dry-run", "--set", 'output.loggers=[{ name = "jsonl", every = 2 }]')
    one_error_line(proc, "--set 'output.loggers=[{ name = \"jsonl\", every = 2 }]': output.loggers.jsonl.every is "
                         "not a parameter of logger 'jsonl'; it accepts: no parameters")
    assert not (tmp_path / "run").exists()
    proc = run_cli(path, "--quiet", "--set", 'output.loggers=[{ name = "jsonl", every = 2 }]')  # a real run too
    one_error_line(proc, "output.loggers.jsonl.every is not a parameter of logger 'jsonl'")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert run_cli(path, "--quiet", "--set", 'output.loggers=[{ name = "jsonl" }]').returncode == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_jsonl_and_tensorboard_record_the_same_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = write_pipeline(tmp_path, 'loggers = ["jsonl", "tensorboard"]', stages=2, epochs=2)
    assert run_cli(path, "--quiet").returncode == 0
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train_loss")
    assert [e.step for e in loss] == [m["step"] for m in metrics]
    assert [e.value for e in loss] == pytest.approx([m["train_loss"] for m in metrics], rel=1e-6)
    assert [e.value for e in events.Scalars("tau")] == pytest.approx([m["tau"] for m in metrics], rel=1e-6)
    files = list((run / "tensorboard").iterdir())
    manifest = json.loads((run / ".atlas-manifest.json").read_text())
    assert len(files) == 1 and f"tensorboard/{files[0].name}" in manifest  # the run's own file
    assert run_cli(path, "--quiet", "--overwrite").returncode == 0
    assert not files[0].exists() and len(list((run / "tensorboard").iterdir())) == 1  # replaced, not piled up


def test_tensorboard_without_the_extra_is_a_clear_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorboard"] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (imported submodules too)
    path = write_pipeline(tmp_path, 'loggers = ["tensorboard"]', stages=1, epochs=1)
    one_error_line(run_cli(path, "--dry-run"), "[logger] logger 'tensorboard' (atlas-distill): logger 'tensorboard' "
                                               "needs the optional extra: pip install 'atlas-distill[tensorboard]'")
    assert not (tmp_path / "run").exists()
