"""``atlas_plugins.train``: a run from Python, the same run as ``atlas-run``'s."""

import json

import numpy as np
import pytest
import torch

import atlas_plugins
from atlas_plugins import ConfigError, RunDirError, load_student, train
from atlas_plugins.orchestrator import atlas_run_command
from conftest import EXAMPLE_NPY, run_atlas, same_weights, weights, write_pipeline


def test_train_returns_the_student_atlas_run_writes(tmp_path, capsys):
    pipeline = write_pipeline(tmp_path, stages=1, epochs=1)
    student = train(pipeline, ["train.epochs_per_stage=2"], quiet=True)
    assert capsys.readouterr().out == ""  # quiet: no report table, no progress
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"]) for m in metrics] == [(0, 0), (0, 1)]  # the override took effect
    x = np.load(EXAMPLE_NPY)[:200]
    saved = load_student(run)
    np.testing.assert_array_equal(student.encode(x), saved.encode(x))
    np.testing.assert_array_equal(student.encode(x, refine=3, seed=1), saved.encode(x, refine=3, seed=1))

    proc = run_atlas(pipeline, "--set", "train.epochs_per_stage=2", "--set", "output.dir='cli'", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert same_weights(weights(run), weights(tmp_path / "cli"))  # the same run as atlas-run's


def test_train_keeps_the_run_folder_rules_and_names_the_command_to_run(tmp_path, capsys):
    pipeline = write_pipeline(tmp_path, stages=1, epochs=1)
    train(pipeline)
    shown = capsys.readouterr()
    assert "stage 1/1  tau 0.2" in shown.out and "student + refine 10" in shown.out  # as atlas-run prints them
    assert "loss=" in shown.err  # the progress bar
    with pytest.raises(RunDirError, match=r"already holds a run; continue it with: atlas-run .*pipeline.toml --resume"):
        train(pipeline, quiet=True)
    before = weights(tmp_path / "run")
    again = train(pipeline, "train.learning_rate=0.01", overwrite=True, quiet=True)  # one override as a string
    assert not same_weights(before, again.module.state_dict())
    with pytest.raises(ConfigError, match="resume=True and overwrite=True cannot be used together"):
        train(pipeline, resume=True, overwrite=True)
    with pytest.raises(ConfigError, match=r"--set 'train.batch_size=\"64\"'.*train.batch_size must be"):
        train(pipeline, ['train.batch_size="64"'], overwrite=True)
    assert same_weights(again.module.state_dict(), weights(tmp_path / "run"))  # the refused calls changed nothing


def test_train_takes_the_tables_as_a_dict_and_trains_what_the_file_would(tmp_path, monkeypatch):
    """Paths and tuples as Python holds them; relative paths against the working folder; the run's own
    pipeline.toml stands for the file in what to run next."""
    import tomllib
    pipeline = write_pipeline(tmp_path, stages=1, epochs=1)
    tables = tomllib.loads(pipeline.read_text())
    monkeypatch.chdir(EXAMPLE_NPY.parent)
    tables["teacher"] = {"path": EXAMPLE_NPY.relative_to(EXAMPLE_NPY.parent)}          # a Path, relative
    tables["student"]["hidden"] = tuple(tables["student"]["hidden"])
    tables["output"]["dir"] = str(tmp_path / "from-dict")
    student = train(tables, ["train.epochs_per_stage=2"], quiet=True)
    proc = run_atlas(pipeline, "--set", "train.epochs_per_stage=2", "--set", "output.dir='cli'", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert same_weights(student.module.state_dict(), weights(tmp_path / "cli"))  # meta aside, the same run
    with pytest.raises(RunDirError, match=rf"continue it with: atlas-run {tmp_path}/from-dict/pipeline.toml --resume"):
        train(tables, quiet=True)
    again = run_atlas(tmp_path / "from-dict" / "pipeline.toml", "--resume", "--quiet")  # that command works
    assert again.returncode == 0, again.stderr
    with pytest.raises(ConfigError, match=r"^pipeline dict: train.batch_size must be a positive integer, got -1$"):
        train({**tables, "train": {"batch_size": -1}}, overwrite=True)
    with pytest.raises(ConfigError, match=r"^pipeline dict: output.dir is required .*add \"output\": \{\"dir\""):
        train({"teacher": tables["teacher"]})
    with pytest.raises(ConfigError, match="a pipeline is a pipeline file's path or a dict of its tables, got list"):
        atlas_plugins.config.config_from_dict([])
    for other in (123, None, ["p.toml"]):  # were a TypeError from inside pathlib
        with pytest.raises(ConfigError, match="a pipeline is a pipeline file's path or a dict of its tables, got "):
            train(other)


def test_overrides_may_be_a_dict_and_every_argument_is_checked_before_anything_runs(tmp_path):
    pipeline = write_pipeline(tmp_path, stages=1, epochs=1)
    student = train(pipeline, {"train.epochs_per_stage": 2, "output.dir": "as-dict", "output.umap": False},
                    quiet=True)
    proc = run_atlas(pipeline, "--set", "train.epochs_per_stage=2", "--set", "output.dir=as-cli", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert same_weights(student.module.state_dict(), weights(tmp_path / "as-cli"))
    bad = {  # each was a TypeError or AttributeError from inside, or (resume="no") a resumed run
        "overrides are --set items: a list of 'SECTION.KEY=VALUE' strings or a dict {'train.seed': 1}, got 5":
            dict(overrides=5),
        "overrides are --set items: .*, got \\[5\\]": dict(overrides=[5]),
        "overrides: keys are SECTION.KEY strings": dict(overrides={1: 2}),
        "overrides: cannot write .*; give numbers, booleans, strings and lists": dict(overrides={"x.y": object()}),
        "^resume must be True or False, got 'no'$": dict(resume="no"),
        "^quiet must be True or False, got 1$": dict(quiet=1),
    }
    for message, kwargs in bad.items():
        with pytest.raises(ConfigError, match=message):
            train(pipeline, **kwargs)
    with pytest.raises(ConfigError, match=r"^pipeline dict: keys are names \(strings\), got 1 in "):
        train({"output": {"dir": "x"}, 1: 2})
    with pytest.raises(ConfigError, match="^load_student takes a run folder or its student.pt, got int$"):
        load_student(3)
    assert not (tmp_path / "run").exists()


def test_the_facade_and_the_command_line_hint():
    assert atlas_plugins.train is train
    from atlas.training import train as facade_train

    assert facade_train is train
    assert atlas_run_command("my pipe.toml", ["train.seed=1"]) == "atlas-run 'my pipe.toml' --set train.seed=1"


def test_a_run_on_the_cpu_says_so_when_a_cuda_gpu_sits_idle(tmp_path, monkeypatch):
    """train.device defaults to 'cpu'; a user with a CUDA GPU is told it sits idle and how to use it."""
    from atlas_plugins.config import load_config
    from atlas_plugins.orchestrator import run_pipeline

    config = load_config(write_pipeline(tmp_path, stages=1, epochs=1))
    shown = []
    run_pipeline(config, dry_run=True, echo=shown.append)
    assert torch.cuda.is_available() or not any("CUDA GPU" in m for m in shown)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    shown.clear()
    run_pipeline(config, dry_run=True, echo=shown.append)
    assert shown[0] == "note: this machine has a CUDA GPU, left idle: train.device = 'cpu': --set train.device=auto " \
                       "trains on it"
    from atlas_plugins.orchestrator import idle_gpu

    texts = load_config(write_pipeline(tmp_path, teacher='loader = "sentence-transformers"\npath = "t.txt"',
                                       name="texts.toml"))
    assert idle_gpu(texts, torch.device("cpu")) == (
        "train.device = 'cpu': --set train.device=auto trains on it; teacher.device = 'cpu': --set "
        "teacher.device=cuda runs the teacher (its model) on it")
    on_gpu = load_config(write_pipeline(tmp_path, teacher='loader = "sentence-transformers"\npath = "t.txt"\n'
                                        'device = "cuda"', name="gpu.toml"))
    assert idle_gpu(on_gpu, torch.device("cuda")) == ""
