"""Crash safety, one run per folder, divergence, misbehaving plugins and configuration fuzzing."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atlas_plugins import ConfigError, Registry
from atlas_plugins.config import load_config
from conftest import EXAMPLE_META, EXAMPLE_NPY, run_atlas, run_cli
from conftest import one_error_line, same_weights, weights, write_pipeline
from conftest import plugin_env

# long enough to land a kill mid-run, checkpoints large enough (a 512 x 512 MLP with Adam) to catch one being written
SLOW = dict(stages=2, epochs=2, student='name = "mlp"\ndim = 5\nhidden = [512, 512]', batches="neighbors",
            batch_size=512)


def popen_atlas(*args, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "atlas_plugins.cli", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def finish(pipe):
    """Resume the killed run: it must really continue from a checkpoint, never start over."""
    proc = run_atlas(pipe, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout, proc.stdout
    return proc


def wait_for(ready, proc, what, limit=1200):
    """Poll until ``ready()``; the limit is a hang guard only, far above any real run."""
    deadline = time.time() + limit
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.time() < deadline, f"hang guard: no {what} after {limit} s"
        time.sleep(0.005)


def assert_run_folder_is_sound(run):
    for ckpt in (run / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=True)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert not list(run.rglob("*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its folder (``pipeline.toml`` and ``run/``) and its weights."""
    folder = tmp_path_factory.mktemp("reference")
    proc = run_atlas(write_pipeline(folder, **SLOW), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(folder=folder, weights=weights(folder / "run" / "student.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_kill_9_at_a_random_moment_then_resume_is_bit_identical(reference, tmp_path, fraction):
    pipe = write_pipeline(tmp_path, **SLOW)
    run = tmp_path / "run"
    proc = popen_atlas(pipe)
    wait_for((run / "checkpoints" / "latest.pt").is_file, proc, "a first checkpoint")
    epoch_s = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
    # somewhere in the next 1.5 epochs of the 3 still to go, wherever the batch loop is then
    time.sleep(epoch_s * 1.5 * fraction * random.Random(fraction).uniform(0.9, 1.1))
    assert proc.poll() is None, "the run finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finish(pipe)
    assert_run_folder_is_sound(run)
    assert same_weights(weights(run / "student.pt"), reference.weights)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write(reference, tmp_path):
    pipe = write_pipeline(tmp_path, **SLOW)
    ckpts = tmp_path / "run" / "checkpoints"
    caught = None
    for _ in range(5):  # the write window is short: try a few runs until one is killed inside it
        proc = popen_atlas(pipe, "--overwrite")
        wait_for((ckpts / "latest.pt").is_file, proc, "a first checkpoint")
        while proc.poll() is None:
            temps = list(ckpts.glob(".*.tmp"))
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
    assert same_weights(weights(run / "student.pt"), reference.weights)


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    shutil.copytree(reference.folder, tmp_path, dirs_exist_ok=True)  # a finished run, moved: resumable
    pipe = tmp_path / "pipeline.toml"
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest.pt").unlink()
    data = (ckpts / "stage-1.pt").read_bytes()
    (ckpts / "stage-1.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "run" / "student.pt").unlink()
    proc = run_atlas(pipe, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipping unreadable checkpoint" in proc.stderr and "stage-1.pt" in proc.stderr
    assert "stage-0.pt" in proc.stdout
    assert same_weights(weights(tmp_path / "run" / "student.pt"), reference.weights)


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_refused_and_stale_locks_are_taken_over(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=300)
    first = popen_atlas(pipe)
    lock = tmp_path / "run" / ".atlas.lock"
    wait_for(lambda: lock.is_file() and lock.read_text().startswith("pid"), first, "the lock")
    second = run_cli(pipe, "--resume", "--quiet")
    one_error_line(second, "is in use by another atlas-run", f"pid {first.pid}")
    one_error_line(run_cli(pipe, "--dry-run", "--resume"), "is in use by another atlas-run", f"pid {first.pid}")
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
    # a tenth of the learning rate in force when it diverged (below the configured 0.002: cosine decay)
    in_force = float(re.search(r"learning rate ([0-9.e-]+)\)", last).group(1))
    proposed = float(re.search(r"--resume --set train.learning_rate=([0-9.e-]+)$", last).group(1))
    assert in_force < 2e-3 and proposed == pytest.approx(in_force / 10, rel=0.01)
    assert "Traceback" not in proc.stderr
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

    class Frozen(Wrong):
        def __init__(self, input_dim, dim):
            super().__init__(input_dim, dim)
            self.lin.requires_grad_(False)
        def forward(self, x):
            return self.lin(x)

    def only_eight(student, teacher, *, tau=1.0, reduction="mean"):
        if student.shape[0] != 8:
            raise IndexError("index 8 is out of bounds")
        return student.pow(2).mean()

    @atlas_plugins.hookimpl
    def register_losses(register):
        register("returns-float", lambda student, teacher, *, tau=1.0, reduction="mean": 0.5)
        register("returns-vector", lambda student, teacher, *, tau=1.0, reduction="mean": student.sum(1))
        register("constant", lambda student, teacher, *, tau=1.0, reduction="mean": torch.tensor(0.5))
        register("detached", lambda student, teacher, *, tau=1.0, reduction="mean": student.detach().pow(2).mean())
        register("only-eight", only_eight)

    @atlas_plugins.hookimpl
    def register_students(register):
        register("wrong-shape", lambda input_dim, dim: Wrong(input_dim, dim))
        register("not-a-module", lambda input_dim, dim: "model")
        register("frozen", lambda input_dim, dim: Frozen(input_dim, dim))
"""


@pytest.mark.parametrize("override, fragments", [
    ('loss.name="returns-float"', ["loss 'returns-float' (atlas-bad) returned float", "scalar tensor"]),
    ('loss.name="returns-vector"', ["loss 'returns-vector' (atlas-bad) returned shape (3,)"]),
    ('student.name="wrong-shape"', ["student 'wrong-shape' returned (1, 5); expected a tensor of shape (3, D)",
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
    assert run_cli(pipe, "--quiet").returncode == 0
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
    pipe = write_pipeline(tmp_path, **SLOW)
    proc = popen_atlas(pipe)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 1200  # a hang guard only
    while not metrics.is_file() and time.time() < deadline:  # wait until training is under way
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 130, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("atlas-run: error: interrupted") and "checkpoint saved" in line
    assert f"atlas-run {pipe} --resume" in line
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")}
    assert "interrupt.pt" in ckpts or "latest.pt" in ckpts
    resumed = run_atlas(pipe, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(tmp_path / "run" / "student.pt"), reference.weights)


# -- issue 10: crashes a real user hits, misbehaving plugins, honest hints ----------------------
def small_teacher(folder, rows, labels=True):
    """The first ``rows`` rows of the bundled example (with its texts and labels) as a pipeline's teacher."""
    np.save(folder / "t.npy", np.load(EXAMPLE_NPY)[:rows])
    lines = EXAMPLE_META.read_text().splitlines()[:rows]
    if not labels:
        lines = [json.dumps({"text": json.loads(line)["text"]}) for line in lines]
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    return 'path = "t.npy"\nmeta = "m.jsonl"'


TINY_STUDENT = 'name = "mlp"\ndim = 5\nhidden = [8]'


@pytest.mark.parametrize("rows, sets", [
    (1000, ["train.batch_size=98"]),                                        # validation: 98 + a tail of 2
    (1000, ["train.batch_size=449", 'train.batches="random"']),             # training: 2 x 449 + 2
    (1000, ["train.neighbors=1", "train.batch_size=358", 'train.batches="neighbors"']),  # 179 + 1 anchors
])
def test_no_batch_is_ever_too_small_for_the_loss(tmp_path, rows, sets):
    pipe = write_pipeline(tmp_path, teacher=small_teacher(tmp_path, rows), stages=1, epochs=1, student=TINY_STUDENT,
                          loss='name = "neighbors"')
    proc = run_cli(pipe, "--quiet", *sum((["--set", s] for s in sets), []))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("rows, sets, note", [
    (5, [], "k = 4 instead of 10: only 5 rows"),
    (10, [], "k = 9 instead of 10: only 10 rows"),
    (200, ["train.eval_rows=15"], "trustworthiness@10 left out"),
    (200, ["train.eval_rows=2"], "k = 1 instead of 10: only 2 rows"),  # the fewest: 1 ended training in a traceback
])
def test_the_report_fits_k_to_the_rows_there_are(tmp_path, rows, sets, note):
    pipe = write_pipeline(tmp_path, teacher=small_teacher(tmp_path, rows), stages=1, epochs=1, student=TINY_STUDENT,
                          loss='name = "neighbors"', extra="report = true\n")
    proc = run_cli(pipe, "--quiet", "--set", "train.neighbors=1", "--set", "train.val_fraction=0.0", *sum(
        (["--set", s] for s in sets), []))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any(note in n for n in report["notes"]), report["notes"]
    assert report["k"] == min(10, report["rows"] - 1) and f"recall@{report['k']}" in report["student"]
    trivial = [n for n in report["notes"] if n.startswith(f"recall@{report['k']} is 1 for any map here")]
    assert len(trivial) == (report["k"] == report["rows"] - 1)  # a row's k nearest are all the others: say so


def test_a_small_eval_rows_still_measures_held_out_rows(tmp_path):
    """train.eval_rows = 20 with 40 validation rows measured 20 training rows instead (and left refine out)."""
    pipe = write_pipeline(tmp_path, teacher=small_teacher(tmp_path, 200), stages=1, epochs=1, student=TINY_STUDENT,
                          loss='name = "neighbors"', extra="report = true\n")
    proc = run_cli(pipe, "--quiet", "--set", "train.neighbors=1", "--set", "train.eval_rows=20")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["rows"], report["held_out"]) == (20, True) and "student + refine 6" in report["methods"]
    assert report["rows_available"] == 40  # a sample, and the report says of what
    assert "\n20 of the 40 held-out rows (train.eval_rows), k = 10\n" in proc.stdout
    assert "Measured on 20 of the 40 held-out rows (`train.eval_rows`); neighbours k = 10" in (
        tmp_path / "run" / "report.md").read_text()


def test_a_batch_larger_than_the_data_is_a_warning(tmp_path):
    pipe = write_pipeline(tmp_path, teacher=small_teacher(tmp_path, 300), stages=1, epochs=1, student=TINY_STUDENT)
    proc = run_cli(pipe, "--quiet", "--set", "train.batch_size=5000", "--set", 'train.batches="random"')
    assert proc.returncode == 0, proc.stderr
    assert "warning: train.batch_size = 5000 is larger than the 240 training rows" in proc.stderr


@pytest.mark.parametrize("sets, fragments", [
    (['loss.name="constant"'], ["loss 'constant' (atlas-bad) returned a tensor without a gradient"]),
    (['loss.name="detached"'], ["loss 'detached' (atlas-bad) returned a tensor without a gradient"]),
    (['loss.name="only-eight"'], ["[loss] loss 'only-eight' (atlas-bad) failed: IndexError: index 8"]),
    (['student.name="frozen"'], ["student 'frozen' (atlas-bad) has no trainable parameters"]),
])
def test_misbehaving_plugins_are_caught_by_a_real_backward_before_anything_is_written(tmp_path, sets, fragments):
    env = plugin_env(tmp_path, "atlas-bad", "atlas_bad", BAD_PLUGINS)
    pipe = write_pipeline(tmp_path, student='name = "mlp"\ndim = 5')
    one_error_line(run_atlas(pipe, *sum((["--set", s] for s in sets), []), env=env), *fragments)
    assert not (tmp_path / "run").exists()


def test_broken_installed_plugins_do_not_stop_list_plugins(tmp_path):
    env = plugin_env(tmp_path, "atlas-typo", "atlas_typo", """
        import atlas_plugins

        @atlas_plugins.hookimpl
        def register_loss(register):
            pass
    """)
    proc = run_atlas("--list-plugins", env=env)
    assert proc.returncode == 0 and "relational" in proc.stdout
    assert "warning: plugin 'atlas_typo' from distribution 'atlas-typo 1.0' failed to load" in proc.stderr


def test_a_broken_pipe_exits_quietly(tmp_path):
    cmd = f"{sys.executable} -m atlas_plugins.cli --list-plugins --json | head -n 1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=1200)
    assert proc.stdout == "[\n" and proc.stderr == ""
    assert proc.returncode in (0, 141)


@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' in the environment is not a number of processes"),
    ({"WORLD_SIZE": "2", "RANK": "", "MASTER_ADDR": "", "MASTER_PORT": ""},
     "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not: start the run with torchrun"),
])
def test_a_stray_world_size_is_one_line(tmp_path, env, fragment):
    one_error_line(run_cli(write_pipeline(tmp_path, stages=1, epochs=1), "--quiet", env=env), fragment)


def test_a_huge_seed_works_with_neighbour_batches(tmp_path):
    pipe = write_pipeline(tmp_path, teacher=small_teacher(tmp_path, 400), stages=1, epochs=1, student=TINY_STUDENT)
    proc = run_cli(pipe, "--quiet", "--set", "train.seed=100000000000000", "--set", 'train.batches="neighbors"')
    assert proc.returncode == 0, proc.stderr


ENOSPC_AFTER = """
import errno, os, sys
from atlas_plugins.cli import main
real, calls = os.fsync, [0]
def fsync(fd):
    calls[0] += 1
    if calls[0] > int(os.environ["FSYNCS"]):
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(fd)
os.fsync = fsync
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path):
    pipe = write_pipeline(tmp_path, stages=2, epochs=1, student=TINY_STUDENT)
    proc = subprocess.run([sys.executable, "-c", ENOSPC_AFTER, str(pipe), "--quiet"], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "FSYNCS": "12"})
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("atlas-run: error: ") and "could not be written (No space left on device)" in line
    assert "previous version of this file and every file written before are intact" in line
    assert "Traceback" not in proc.stderr and not list((tmp_path / "run").rglob("*.tmp"))
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        torch.load(ckpt, weights_only=True)


@pytest.mark.slow
def test_a_teacher_file_truncated_during_the_run_does_not_kill_it(tmp_path):
    """A small teacher file is read through a memory map; had the run kept the map, the next page it read
    after another program truncated the file would kill it with SIGBUS (exit -7, no message)."""
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY))
    pipe = write_pipeline(tmp_path, teacher=f'path = "{tmp_path / "t.npy"}"', stages=2, epochs=2, batches="neighbors")
    proc = popen_atlas(pipe)
    wait_for((tmp_path / "run" / "checkpoints" / "latest.pt").is_file, proc, "a first checkpoint")
    os.truncate(tmp_path / "t.npy", 4096)
    assert proc.poll() is None, "the run finished before the file was truncated"
    _, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 0, (proc.returncode, stderr)
    assert (tmp_path / "run" / "student.pt").is_file()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    pipe = write_pipeline(tmp_path, **SLOW)
    proc = popen_atlas(pipe)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 1200  # a hang guard only
    while not metrics.is_file() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 143, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("atlas-run: error: interrupted (SIGTERM)") and f"atlas-run {pipe} --resume" in line


@pytest.mark.parametrize("make, sets, fragment", [
    (lambda p: np.save(p / "t.npy", np.load(EXAMPLE_NPY)[:600] * 1e30) or 'path = "t.npy"', [],
     "the teacher rows hold values up to"),
    (None, ["schedule.end=1e-300", "schedule.start=1e-300"], "tau = 1e-300 is too small for float32"),
])
def test_divergence_names_the_likely_cause(tmp_path, make, sets, fragment):
    teacher = make(tmp_path) if make else None
    pipe = write_pipeline(tmp_path, teacher=teacher, stages=1, epochs=1, student=TINY_STUDENT,
                          loss='name = "neighbors"')
    proc = run_cli(pipe, "--quiet", *sum((["--set", s] for s in sets), []))
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
    assert fragment in proc.stderr.strip().splitlines()[-1] and "learning_rate" not in proc.stderr


def test_after_a_failure_before_the_first_checkpoint_the_hint_is_a_command_that_works(tmp_path):
    env = plugin_env(tmp_path, "atlas-flaky", "atlas_flaky", NAN_PLUGIN)
    pipe = write_pipeline(tmp_path, loss='name = "flaky"', stages=1, epochs=1)
    proc = run_atlas(pipe, "--quiet", "--set", "schedule.start=0.05", env={**env, "FLAKY_NAN": "1"})
    assert proc.returncode in (1, 2)
    again = run_atlas(pipe, "--quiet", "--set", "schedule.start=0.05", env=env)
    line = one_error_line(again, "already holds a run")
    assert "--resume" not in line and "--overwrite" in line
    assert run_atlas(pipe, "--quiet", "--overwrite", "--set", "schedule.start=0.05", env=env).returncode == 0


# -- the whole command, fuzzed: exit 0 or one error line with exit 2, never a traceback or a hang ------
def _plugin_parameters():
    from atlas_plugins.config import RESERVED

    keys = {}
    for info in Registry(load_entrypoints=False).available():
        section = info.kind
        for name in __import__("inspect").signature(info.obj).parameters:
            if name not in RESERVED[section]:
                keys.setdefault(section, set()).add(name)
    return {k: sorted(v) for k, v in keys.items()}


PLUGIN_KEYS = _plugin_parameters()
FIXED_KEYS = {"student": ["name", "dim"], "loss": ["name", "tau"], "schedule": ["name", "start", "end", "stages"],
              "train": ["epochs_per_stage", "batch_size", "learning_rate", "weight_decay", "lr_schedule",
                        "warmup_steps", "device", "seed", "val_fraction", "accumulate", "input_noise", "batches",
                        "neighbors", "neighbor_pool", "neighbor_hops", "eval_rows"],
              "output": ["report", "plots"]}
any_value = st.recursive(
    st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(), st.booleans(), st.text(max_size=8),
              st.sampled_from(["mlp", "linear", "hierarchical", "neighbors", "relational", "combined", "kl", "cosine",
                               "linear", "exponential", "gaussian", "student-t", "true", "false", "random", "auto",
                               "cpu", "1e999", 0, 1, 2, 3, 0.5, 10**14, 2**40])),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6)
NAMES = {"student": ["mlp", "linear", "hierarchical"], "loss": ["neighbors", "relational", "combined", "mse", "cosine",
                                                               "hierarchical"],
         "schedule": ["linear", "exponential", "cosine"]}


def _plausible(section, key):
    """Values that are often valid for ``section.key``: its default, and a few of its kind."""
    import attrs as _attrs

    from atlas_plugins.config import SECTIONS

    if key == "name":
        return st.sampled_from(NAMES[section])
    fields = {f.name: f.default for f in _attrs.fields(SECTIONS[section])}
    default = fields.get(key, {"alpha": 0.5, "base": "relational", "kernel": "gaussian", "dof": 1.0, "hidden": [8],
                               "reconstruct": False, "weights": [0.5, 0.5]}.get(key, 1))
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(1, 40)
    if isinstance(default, float):
        return st.floats(0.01, 0.9)
    return st.just(default)


fuzz_sections = st.fixed_dictionaries({
    section: st.sampled_from(FIXED_KEYS.get(section, []) + PLUGIN_KEYS.get(section, [])).flatmap(
        lambda key, section=section: st.tuples(st.just(key), st.one_of(_plausible(section, key),
                                                                       _plausible(section, key), any_value))
    ).map(lambda kv: dict([kv])) | st.just({})
    for section in ("student", "loss", "schedule", "train", "output")})


def _toml_set(section, key, value):
    from atlas_plugins.config import dump_toml

    return f"{section}.{key}={dump_toml({'x': {'v': value}}).splitlines()[1][4:]}"


@pytest.fixture(scope="module")
def fuzz_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    np.save(folder / "t.npy", np.load(EXAMPLE_NPY)[:120])
    return folder


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=fuzz_sections, sets=st.lists(st.tuples(st.sampled_from(["student", "loss", "schedule", "train"]),
                                                     st.sampled_from(sorted({k for v in FIXED_KEYS.values() for k in v}
                                                                            | {k for v in PLUGIN_KEYS.values()
                                                                               for k in v})),
                                                     any_value), max_size=2))
def test_fuzzed_commands_exit_0_or_with_one_error_line(fuzz_teacher, monkeypatch, capsys, tables, sets):
    from atlas_plugins import reset_registry
    from atlas_plugins.cli import main
    from atlas_plugins.config import dump_toml

    monkeypatch.setenv("ATLAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setattr("warnings.showwarning", __import__("warnings").showwarning)
    reset_registry()
    doc = {"teacher": {"path": str(fuzz_teacher / "t.npy")}, **{k: v for k, v in tables.items() if v},
           "output": {**tables["output"], "dir": str(fuzz_teacher / "run")}}
    path = fuzz_teacher / "fuzz.toml"
    try:
        path.write_text(dump_toml(doc))
    except ConfigError:
        return  # a value TOML cannot hold (nan in a list is fine; this is e.g. a huge int)
    argv = [str(path), "--dry-run"] + sum((["--set", _toml_set(*s)] for s in sets), [])

    def hang(signum, frame):
        raise AssertionError(f"hang: atlas-run {' '.join(argv)}")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)  # a hang guard only
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        reset_registry()
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if not line.startswith("atlas-run: warning: ")]
    one_error = code == 2 and len(errors) == 1 and errors[0].startswith("atlas-run: error: ")
    assert (code, errors) == (0, []) or one_error, (code, err, argv)
