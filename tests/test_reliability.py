"""Crash safety, one run per folder, divergence, misbehaving plugins and configuration fuzzing."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_plugins import ConfigError, Registry
from atlas_plugins.config import load_config
from conftest import run_atlas
from conftest import one_error_line, same_weights, weights, write_pipeline
from conftest import plugin_env

SLOW = dict(stages=3, epochs=2, student='name = "mlp"\ndim = 5\nhidden = [512, 512]')


def popen_atlas(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "atlas_plugins.cli", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def finish(pipe, tries=6):
    """Resume (or restart, if killed before the first checkpoint) until the run completes."""
    for _ in range(tries):
        has_ckpt = any((pipe.parent / "run" / "checkpoints").glob("*.pt"))
        proc = run_atlas(pipe, "--resume" if has_ckpt else "--overwrite", "--quiet")
        if proc.returncode == 0:
            return proc
    raise AssertionError(proc.stderr)


def assert_run_folder_is_sound(run):
    for ckpt in (run / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=True)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert not list(run.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    t0 = time.perf_counter()
    proc = run_atlas(write_pipeline(folder, **SLOW), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return weights(folder / "run" / "student.pt"), time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.85])
def test_kill_9_at_a_random_moment_then_resume_is_bit_identical(reference, tmp_path, fraction):
    ref_weights, duration = reference
    pipe = write_pipeline(tmp_path, **SLOW)
    proc = popen_atlas(pipe)
    time.sleep(duration * fraction * random.Random(fraction).uniform(0.9, 1.1))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = tmp_path / "run"
    finish(pipe)
    assert_run_folder_is_sound(run)
    assert same_weights(weights(run / "student.pt"), ref_weights)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write(reference, tmp_path):
    ref_weights, _ = reference
    pipe = write_pipeline(tmp_path, **SLOW)
    ckpts = tmp_path / "run" / "checkpoints"
    caught = None
    for _ in range(5):  # the write window is short: try a few runs until one is killed inside it
        proc = popen_atlas(pipe, "--overwrite")
        while proc.poll() is None:
            temps = list(ckpts.glob(".*.tmp")) if ckpts.is_dir() else []
            if temps:
                proc.send_signal(signal.SIGKILL)
                caught = temps[0].name
                break
        proc.wait()
        if caught:
            break
    assert caught, "never caught a checkpoint write in progress"
    finish(pipe)
    run = tmp_path / "run"
    assert_run_folder_is_sound(run)
    assert same_weights(weights(run / "student.pt"), ref_weights)


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    ref_weights, _ = reference
    pipe = write_pipeline(tmp_path, **SLOW)
    assert run_atlas(pipe, "--quiet").returncode == 0
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest.pt").unlink()
    (ckpts / "stage-2.pt").unlink()
    data = (ckpts / "stage-1.pt").read_bytes()
    (ckpts / "stage-1.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "run" / "student.pt").unlink()
    proc = run_atlas(pipe, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipping unreadable checkpoint" in proc.stderr and "stage-1.pt" in proc.stderr
    assert "stage-0.pt" in proc.stdout
    assert same_weights(weights(tmp_path / "run" / "student.pt"), ref_weights)


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused_and_stale_locks_are_taken_over(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=300)
    first = popen_atlas(pipe)
    lock = tmp_path / "run" / ".atlas.lock"
    deadline = time.time() + 60
    while not (lock.is_file() and lock.read_text().startswith("pid")) and time.time() < deadline:
        time.sleep(0.05)
    second = run_atlas(pipe, "--resume", "--quiet")
    one_error_line(second, "is in use by another atlas-run", f"pid {first.pid}")
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = run_atlas(pipe, "--overwrite", "--quiet", "--set", "train.epochs_per_stage=1")
    assert third.returncode == 0, third.stderr


NAN_PLUGIN = """
    import os
    import torch
    import atlas_plugins

    def flaky(student, teacher, *, tau=1.0, reduction="mean"):
        loss = atlas_plugins.get_loss("relational")(student, teacher, tau=tau, reduction=reduction)
        if tau < 0.1 and os.environ.get("FLAKY_NAN"):
            return loss * float("nan")
        return loss

    @atlas_plugins.hookimpl
    def register_losses(register):
        register("flaky", flaky, "NaN at low tau when FLAKY_NAN is set")
"""


def test_divergence_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
    env = plugin_env(tmp_path, "atlas-flaky", "atlas_flaky", NAN_PLUGIN)
    pipe = write_pipeline(tmp_path, loss='name = "flaky"', stages=2, epochs=1)
    proc = run_atlas(pipe, "--quiet", env={**env, "FLAKY_NAN": "1"})
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("atlas-run: error: the loss became nan at stage 2, epoch 1, step 1 (tau 0.05")
    assert "--resume --set train.learning_rate=0.0002" in last and "Traceback" not in proc.stderr
    run = tmp_path / "run"
    assert not (run / "student.pt").exists()
    assert torch.load(run / "checkpoints" / "stage-0.pt", weights_only=True)["position"]["stage"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = run_atlas(pipe, "--resume", "--quiet", "--set", "train.learning_rate=2e-4", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with changed train.learning_rate: 0.002 -> 0.0002" in resumed.stdout


BAD_PLUGINS = """
    import torch
    from torch import nn
    import atlas_plugins

    class Wrong(nn.Module):
        def __init__(self, input_dim, dim):
            super().__init__()
            self.lin = nn.Linear(input_dim, dim)
        def forward(self, x):
            return self.lin(x)[:1]

    @atlas_plugins.hookimpl
    def register_losses(register):
        register("returns-float", lambda student, teacher, *, tau=1.0, reduction="mean": 0.5)
        register("returns-vector", lambda student, teacher, *, tau=1.0, reduction="mean": student.sum(1))

    @atlas_plugins.hookimpl
    def register_students(register):
        register("wrong-shape", lambda input_dim, dim: Wrong(input_dim, dim))
        register("not-a-module", lambda input_dim, dim: "model")
"""


@pytest.mark.parametrize("override, fragments", [
    ('loss.name="returns-float"', ["loss 'returns-float' (atlas-bad) returned float", "scalar tensor"]),
    ('loss.name="returns-vector"', ["loss 'returns-vector' (atlas-bad) returned shape (8,)"]),
    ('student.name="wrong-shape"', ["student 'wrong-shape' returned (1, 5); expected a tensor of shape (8, D)",
                                    "distribution 'atlas-bad'"]),
    ('student.name="not-a-module"', ["student 'not-a-module' (atlas-bad) returned str"]),
])
def test_misbehaving_plugins_are_named_and_nothing_is_written(tmp_path, override, fragments):
    env = plugin_env(tmp_path, "atlas-bad", "atlas_bad", BAD_PLUGINS)
    pipe = write_pipeline(tmp_path, student='name = "mlp"\ndim = 5')
    one_error_line(run_atlas(pipe, "--set", override, env=env), *fragments)
    assert not (tmp_path / "run").exists()


def test_run_into_a_folder_of_user_files_keeps_them(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "old.bin").write_text("keep me too")
    pipe = write_pipeline(tmp_path, stages=1, epochs=1, output="mine")
    assert run_atlas(pipe, "--quiet").returncode == 0
    assert run_atlas(pipe, "--quiet", "--overwrite").returncode == 0
    assert (out / "notes.md").read_text() == "keep me"
    assert (out / "checkpoints" / "old.bin").read_text() == "keep me too"


# -- configuration fuzzing -------------------------------------------------------------------
SECTIONS = ["teacher", "student", "loss", "schedule", "train", "output", "trian", "ünïcode", ""]
KEYS = ["path", "loader", "name", "dim", "hidden", "tau", "alpha", "weights", "base", "start", "end", "stages",
        "epochs_per_stage", "batch_size", "learning_rate", "device", "seed", "val_fraction", "accumulate",
        "batches", "dir", "report", "plots", "key", "meta", "trust", "reconstruct", "bogus", "ключ"]
scalars = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True),
                    st.booleans(), st.text(max_size=12), st.sampled_from(["mlp", "relational", "cosine", "npy",
                                                                          "t.npy", "cpu", "auto", "cuda"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=2))
documents = st.dictionaries(st.sampled_from(SECTIONS),
                            st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), scalars),
                            max_size=6)
overrides = st.lists(st.one_of(
    st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(SECTIONS), st.sampled_from(KEYS),
              st.one_of(st.text(max_size=10), st.integers().map(str), st.sampled_from(["[1, 2]", "true", "1e999",
                                                                                       '"x"', "{a = 1}", "-0"]))),
    st.text(max_size=15)), max_size=3)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml(doc):
    top = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"[{json.dumps(k)}]\n" + "\n".join(f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents, sets=overrides, raw=st.one_of(st.none(), st.text(max_size=40)))
def test_fuzzed_configurations_load_or_raise_config_error(tmp_path, doc, sets, raw):
    path = tmp_path / "fuzz.toml"
    path.write_text(raw if raw is not None else _toml(doc), encoding="utf-8")
    try:
        load_config(path, sets, registry=_REGISTRY)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)) or message.startswith("--set"), message
        assert "\n" not in message.strip() or "not valid TOML" in message


_REGISTRY = Registry(load_entrypoints=False)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_identical(reference, tmp_path):
    ref_weights, _ = reference
    pipe = write_pipeline(tmp_path, **SLOW)
    proc = popen_atlas(pipe)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.is_file() and time.time() < deadline:  # wait until training is under way
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("atlas-run: error: interrupted") and "checkpoint saved" in line
    assert f"atlas-run {pipe} --resume" in line
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    assert "interrupt.pt" in ckpts or "latest.pt" in ckpts
    resumed = run_atlas(pipe, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(tmp_path / "run" / "student.pt"), ref_weights)
