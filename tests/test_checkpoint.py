"""No code from data: every .pt load is weights_only; atomic writes; student files."""

import os
import re
import shutil

import numpy as np
import pytest
import torch

from atlas_plugins import CheckpointError, TeacherData, WriteError, load_student, load_teacher_checkpoint
from atlas_plugins.checkpoint import (_sampled_rows_hash, atomic_open, atomic_save, atomic_write_bytes,
                                     check_same_teacher)
from atlas_plugins.teacher import teacher_digest
from conftest import EXAMPLE_NPY, run_atlas, run_cli
from conftest import one_error_line, write_pipeline


@pytest.mark.parametrize("load, message", [  # the pickle names io.open on Python 3.11, _io.open from 3.12
    (load_teacher_checkpoint, "refused to load teacher file.*weights_only=True.*it would import _?io.open"),
    (load_student, "refused to load student file.*it would import _?io.open"),
])
def test_files_with_code_are_refused(evil_teacher, load, message):
    path, marker = evil_teacher
    with pytest.raises(CheckpointError, match=message):
        load(path)
    assert not marker.exists()


@pytest.mark.parametrize("load, what", [(load_teacher_checkpoint, "teacher file"), (load_student, "student file")])
def test_a_sparse_tensor_with_indices_outside_it_is_refused_as_it_loads(tmp_path, load, what):
    """torch leaves sparse checks off by default: such a tensor would load and fail later, in memory."""
    bad = torch.sparse_coo_tensor(torch.tensor([[0, 5_000_000], [0, 1]]), torch.tensor([1.0, 2.0]), (600, 384),
                                  check_invariants=False)
    torch.save({"embeddings": bad}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError) as err:
        load(tmp_path / "t.pt")
    assert str(err.value) == (f"{tmp_path / 't.pt'}: not a readable {what} (RuntimeError: size is inconsistent "
                              "with indices: for dim 0, size is 600 but found index 5000000)")
    assert not torch.sparse.check_sparse_tensor_invariants.is_enabled()  # on again only while loading


@pytest.mark.smoke
def test_atlas_run_refuses_a_pickled_teacher(evil_teacher, tmp_path):
    path, marker = evil_teacher
    proc = run_atlas(write_pipeline(tmp_path, teacher=f'path = "{path}"'), "--dry-run")
    one_error_line(proc, "evil.pt: refused to load teacher file", "trust = true")
    assert not marker.exists()


def test_resume_skips_a_checkpoint_with_code(evil_teacher, tmp_path):
    path, marker = evil_teacher
    pipe = write_pipeline(tmp_path, stages=2, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0
    (tmp_path / "run" / "checkpoints" / "stage-9.pt").write_bytes(path.read_bytes())
    proc = run_atlas(pipe, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "skipping unreadable checkpoint" in proc.stderr and "stage-9.pt: refused to load checkpoint" in proc.stderr
    assert not marker.exists()


def test_trust_is_an_explicit_opt_in(tmp_path):
    path = tmp_path / "numpy-inside.pt"
    torch.save({"embeddings": np.load(EXAMPLE_NPY)[:400]}, path)  # a NumPy array: not allowed by weights_only
    pipe = write_pipeline(tmp_path, teacher=f'path = "{path}"', stages=1, epochs=1)
    one_error_line(run_cli(pipe, "--dry-run"), "refused to load teacher file")
    proc = run_atlas(pipe, "--dry-run", "--set", "teacher.trust=true")
    assert proc.returncode == 0, proc.stderr
    assert "(400 x 384 float32)" in proc.stdout
    [line] = proc.stderr.splitlines()  # NumPy 1 pickles numpy.core..., NumPy 2 numpy._core...
    assert re.fullmatch(f"atlas-run: warning: {re.escape(str(path))}: unpickled in full \\(trust = true\\), importing "
                        r"numpy\._?core\.multiarray\._reconstruct: only for a file you trust", line), line


def test_trust_unpickles_only_a_file_that_needs_it(tmp_path, monkeypatch):
    """A teacher of plain tensors loads the safe way even with trust = true, and without a warning."""
    import warnings

    from atlas_plugins.checkpoint import safe_load

    modes, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: modes.append(k["weights_only"]) or real_load(*a, **k))
    torch.save({"embeddings": torch.ones(3, 4)}, tmp_path / "plain.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert safe_load(tmp_path / "plain.pt", trust=True)["embeddings"].shape == (3, 4)
    assert modes == [True]
    torch.save({"embeddings": np.ones((3, 4))}, tmp_path / "numpy.pt")
    with pytest.warns(UserWarning, match=r"numpy.pt: unpickled in full \(trust = true\), importing numpy"):
        assert safe_load(tmp_path / "numpy.pt", trust=True)["embeddings"].shape == (3, 4)
    assert modes == [True, True, False]


def test_corrupt_and_non_torch_files(tmp_path):
    trunc = tmp_path / "trunc.pt"
    torch.save({"embeddings": torch.randn(10, 4)}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.pt: not a readable teacher file"):
        load_teacher_checkpoint(trunc)
    with pytest.raises(CheckpointError, match="expected a tensor or a dict with 'embeddings'"):
        torch.save({"vectors": torch.randn(3, 3)}, tmp_path / "k.pt")
        load_teacher_checkpoint(tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_teacher_checkpoint(tmp_path / "missing.pt")


def test_load_teacher_checkpoint_names_vectors_kept_in_another_format_and_the_call_that_reads_them(tmp_path):
    import threading

    x = np.ones((6, 4), np.float32)
    np.save(tmp_path / "v.npy", x)
    np.savez(tmp_path / "v.npz", embeddings=x)
    (tmp_path / "v.npy").rename(tmp_path / "npy-named.pt")
    for name, what, call in (("v.npz", "a NumPy .npz archive", "numpy.load(path)[name]"),
                             ("npy-named.pt", "a NumPy .npy file", "numpy.load(path)")):
        with pytest.raises(CheckpointError) as caught:
            load_teacher_checkpoint(tmp_path / name)
        assert str(caught.value) == (f"{tmp_path / name}: is {what}, and load_teacher_checkpoint reads torch files; "
                                     f"read the vectors with {call}, or train on the file as it is (a pipeline's "
                                     "[teacher] path)")
    (tmp_path / "out").mkdir()  # what a script that embeds in batches leaves: the pipeline's teacher reads it
    with pytest.raises(CheckpointError, match="out: is a folder; expected a teacher file$"):
        load_teacher_checkpoint(tmp_path / "out")
    np.save(tmp_path / "out" / "batch-0.npy", x)
    with pytest.raises(CheckpointError) as caught:
        load_teacher_checkpoint(tmp_path / "out")
    assert str(caught.value) == (f"{tmp_path / 'out'}: is a folder of .npy parts, and load_teacher_checkpoint reads "
                                 "torch files; train on the folder as it is (a pipeline's [teacher] path)")
    os.mkfifo(tmp_path / "fifo")  # looking at a file's first bytes never opens a FIFO (that would wait forever)
    answer = []
    reader = threading.Thread(target=lambda: answer.append(pytest.raises(CheckpointError, load_teacher_checkpoint,
                                                                        tmp_path / "fifo")), daemon=True)
    reader.start()
    reader.join(120)  # a hang guard only
    assert answer and "not a regular file" in str(answer[0].value)


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_save({"w": torch.ones(3)}, tmp_path / "s.pt")
    assert torch.equal(torch.load(tmp_path / "s.pt", weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.bin", "s.pt", "sub"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.bin"
    atomic_write_bytes(target, b"good")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(WriteError, match="keep.bin: could not be written .disk full.; the previous version"):
        atomic_write_bytes(target, b"bad")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_a_pickle_that_calls_os_system_is_refused_with_the_documented_message(tmp_path):
    import os

    class RunsAShellCommand:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"embeddings": torch.randn(10, 4), "x": RunsAShellCommand()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load teacher file: it holds pickled objects that "
                                              r"weights_only=True does not allow \(it would import posix.system\); "
                                              r"unpickling could run code; set trust = true in \[teacher\] only"):
        load_teacher_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "damaged.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="damaged.pt: not a readable teacher file"):
        load_teacher_checkpoint(tmp_path / "damaged.pt")


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """A finished two-stage run folder, copied by the tests that tamper with its checkpoints."""
    folder = tmp_path_factory.mktemp("two-stage")
    assert run_atlas(write_pipeline(folder, stages=2, epochs=1, student='name = "mlp"\ndim = 5\nhidden = [8]'),
                     "--quiet").returncode == 0
    return folder / "run"


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b.pop("config"), "'config' is missing"),
    (lambda b: b.update(student={}), "no student weights"),
    (lambda b: b.update(rng="not a tensor"), "'rng' is missing or not a Tensor"),
    (lambda b: b.update(format="something-else/9"), "not an atlas checkpoint"),
    (lambda b: b.update(world="2"), "'world' is not a number of processes"),
])
def test_crafted_checkpoints_are_skipped_with_a_warning(two_stage_run, tmp_path, damage, reason):
    from atlas_plugins.checkpoint import find_resume_checkpoint
    from atlas_plugins.rundir import RunDir

    shutil.copytree(two_stage_run, tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    blob = torch.load(ckpts / "latest.pt", weights_only=True)
    damage(blob)
    torch.save(blob, ckpts / "stage-7.pt")
    warnings = []
    best = find_resume_checkpoint(RunDir(tmp_path / "run"), warnings.append)
    assert best["_path"].endswith("stage-1.pt") or best["_path"].endswith("latest.pt")
    assert any("stage-7.pt" in w and reason in w for w in warnings), warnings


@pytest.mark.parametrize("hard_links", [True, False])
def test_atomic_open_without_replace_never_writes_over_a_file_that_appeared(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a filesystem that refuses os.link: the same promise, kept by a check before the rename
        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr("atlas_plugins.checkpoint.os.link", no_link)
    target = tmp_path / "coords.npy"
    with atomic_open(target, replace=False) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
    target.unlink()
    with pytest.raises(WriteError, match=r"coords.npy: could not be written \(File exists\)"):
        with atomic_open(target, replace=False) as fh:
            fh.write(b"new")
            target.write_bytes(b"someone else's")  # appears while the new file is being written
    assert target.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coords.npy"]  # no temporary file left behind


def test_a_resume_reads_a_key_the_checkpoint_lacks_as_its_default(tmp_path):
    """A checkpoint written before ``train.neighbor_hops`` existed resumes while it stays at its default."""
    from atlas_plugins import Registry
    from atlas_plugins.checkpoint import check_resumable
    from atlas_plugins.config import build_config

    def resolved(**train):
        doc = {"teacher": {"path": str(EXAMPLE_NPY)}, "train": train}
        return build_config(doc, tmp_path / "p.toml", Registry(load_entrypoints=False)).to_dict()

    older = resolved()
    del older["train"]["neighbor_hops"]
    assert check_resumable({"config": older}, resolved(), "ckpt.pt") == []
    with pytest.raises(CheckpointError, match=r"ckpt.pt: cannot resume: .*\(train.neighbor_hops: 1 -> 2\)"):
        check_resumable({"config": older}, resolved(neighbor_hops=2), "ckpt.pt")


@pytest.mark.parametrize("was, now, message", [
    (2, 1, "the checkpoint was trained by 2 processes (torchrun) and this run has 1; the global batch, the steps "
           "and the learning-rate schedule would change: resume with torchrun with 2 processes in all, or start a "
           "fresh run with --overwrite"),
    (1, 4, "the checkpoint was trained by one process and this run has 4; the global batch, the steps and the "
           "learning-rate schedule would change: resume with atlas-run without torchrun, or start a fresh run with "
           "--overwrite"),
    (None, 2, None),  # a checkpoint from before the count was recorded: nothing to compare
    (3, 3, None),
])
def test_a_resume_keeps_the_number_of_processes(tmp_path, was, now, message):
    """torchrun's process count sets the global batch (batch_size per rank), the steps per epoch and so the
    learning-rate schedule: a resume on another count went on with a jump in the schedule, unsaid."""
    from atlas_plugins import Registry
    from atlas_plugins.checkpoint import check_resumable
    from atlas_plugins.config import build_config

    config = build_config({"teacher": {"path": str(EXAMPLE_NPY)}}, tmp_path / "p.toml",
                          Registry(load_entrypoints=False)).to_dict()
    blob = {"config": config, **({"world": was} if was is not None else {})}
    if message is None:
        assert check_resumable(blob, config, "p.toml", now) == []
    else:
        with pytest.raises(CheckpointError) as err:
            check_resumable(blob, config, "p.toml", now)
        assert str(err.value) == f"p.toml: cannot resume: {message}"


def test_the_teacher_s_files_may_move_on_resume_when_the_checkpoint_can_prove_the_rows_are_the_same(tmp_path):
    """Moving a project to another disk refused --resume ("teacher.path: '/old/t.npy' -> '/new/t.npy'"); the
    rows' digest (check_same_teacher) is what keeps a resume on the same data, not the path."""
    from atlas_plugins import Registry
    from atlas_plugins.checkpoint import check_resumable
    from atlas_plugins.config import build_config

    def resolved(folder):
        doc = {"teacher": {"path": f"{folder}/t.npy", "meta": f"{folder}/m.jsonl"}}
        return build_config(doc, tmp_path / "p.toml", Registry(load_entrypoints=False)).to_dict()

    moved = check_resumable({"config": resolved("/old"), "teacher_digest": "d"}, resolved("/new"), "ckpt.pt")
    assert moved == ["teacher.meta: '/old/m.jsonl' -> '/new/m.jsonl'", "teacher.path: '/old/t.npy' -> '/new/t.npy'"]
    with pytest.raises(CheckpointError, match=r"cannot resume: .*teacher.path: '/old/t.npy' -> '/new/t.npy'"):
        check_resumable({"config": resolved("/old")}, resolved("/new"), "ckpt.pt")  # no digest: nothing to prove


def test_a_resume_compares_every_row_and_an_older_checkpoint_its_sampled_rows():
    rows = np.load(EXAMPLE_NPY)[:600]
    teacher = TeacherData(rows, source="t.npy")
    edited = rows.copy()
    edited[5] = rows[300]  # one row between the 64 that checkpoints used to sample
    other = TeacherData(edited, source="t.npy")
    refused = "t.npy: cannot resume: the teacher's rows are not the ones the checkpoint was trained on"
    blob = {"teacher_digest": teacher_digest(teacher)}
    check_same_teacher(blob, teacher, teacher_digest(TeacherData(torch.from_numpy(rows.copy()))), "t.npy")  # as .pt
    with pytest.raises(CheckpointError, match=refused):
        check_same_teacher(blob, other, teacher_digest(other), "t.npy")
    older = {"teacher_rows": _sampled_rows_hash(teacher)}  # what checkpoints recorded before
    check_same_teacher(older, teacher, teacher_digest(teacher), "t.npy")
    reordered = TeacherData(rows[::-1].copy(), source="t.npy")
    with pytest.raises(CheckpointError, match=refused):
        check_same_teacher(older, reordered, teacher_digest(reordered), "t.npy")
    check_same_teacher({}, other, teacher_digest(other), "t.npy")  # older still: recorded nothing, not checked
