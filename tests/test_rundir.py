"""The run folder: nothing outside it is deleted, nothing in it is overwritten that atlas-run did not write,
and no write goes through a symbolic link."""

import json
import os

import pytest

from atlas_plugins.rundir import LOCK, MANIFEST, RunDir
from conftest import one_error_line, run_atlas, run_cli, write_pipeline

TINY = dict(stages=1, epochs=1, student='name = "mlp"\ndim = 5\nhidden = [8]')


@pytest.fixture
def victim(tmp_path):
    """Files outside the run folder that a malicious manifest names."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "precious.txt").write_text("mine")
    (folder / "linked.txt").write_text("mine too")
    return folder


def test_clear_ignores_manifest_entries_outside_the_folder(tmp_path, victim):
    run = RunDir(tmp_path / "run")
    run.write_text("report.md", "ours")
    (run.path / "escape").symlink_to(victim)
    outside = ["../victim/precious.txt", str(victim / "precious.txt"), "escape/linked.txt", ""]
    (run.path / MANIFEST).write_text(json.dumps(run.manifest() + outside + [7]))  # 7: not a name, dropped unread
    with pytest.warns(UserWarning) as warned:
        removed = run.clear()
    ignored = [str(w.message).split("ignoring manifest entry ")[1].split(" in ")[0] for w in warned]
    assert ignored == [repr(n) for n in outside]
    assert removed == ["report.md"] and not (run.path / "report.md").exists()
    assert (victim / "precious.txt").read_text() == "mine" and (victim / "linked.txt").read_text() == "mine too"


def test_overwrite_never_deletes_outside_the_run_folder(tmp_path, victim):
    pipe = write_pipeline(tmp_path, **TINY)
    assert run_cli(pipe, "--quiet").returncode == 0
    manifest = tmp_path / "run" / MANIFEST
    names = json.loads(manifest.read_text()) + ["../victim/precious.txt", str(victim / "linked.txt")]
    manifest.write_text(json.dumps(names))
    proc = run_atlas(pipe, "--quiet", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "warning: ignoring manifest entry '../victim/precious.txt'" in proc.stderr
    assert (victim / "precious.txt").read_text() == "mine" and (victim / "linked.txt").read_text() == "mine too"


def test_output_dir_may_be_the_users_own_link_and_their_files_there_survive_overwrite(tmp_path):
    """A user may point output.dir at scratch storage through a link of their own: the folder it names is the
    run folder; links inside it are still never followed (the tests above)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "notes.txt").write_text("the user's own")
    (tmp_path / "run").symlink_to(scratch)
    pipe = write_pipeline(tmp_path, **TINY)
    for extra in ((), ("--overwrite",)):
        proc = run_cli(pipe, "--quiet", *extra)
        assert proc.returncode == 0, proc.stderr
    assert (scratch / "student.pt").is_file() and (scratch / "notes.txt").read_text() == "the user's own"
    assert (tmp_path / "run").is_symlink()


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["report.md", "pipeline.toml", "student.pt", "checkpoints/latest.pt",
                                  "metrics.jsonl"])
def test_a_fresh_run_refuses_to_overwrite_a_users_file(tmp_path, name):
    users = tmp_path / "run" / name
    users.parent.mkdir(parents=True)
    users.write_text("the user's own")
    # a fresh run, --overwrite (it removes only atlas-run's files) and a dry run; the real entry point for one
    for extra in ((), ("--overwrite",), ("--dry-run",)):
        run = run_atlas if name == "report.md" and not extra else run_cli
        proc = run(write_pipeline(tmp_path, **TINY), "--quiet", *extra)
        one_error_line(proc, f"{users} exists and was not written by atlas-run", "choose another output.dir")
        assert users.read_text() == "the user's own"
    assert not (tmp_path / "run" / MANIFEST).exists() and not (tmp_path / "run" / LOCK).exists()


def test_output_dir_next_to_the_pipeline_file_keeps_the_file_and_its_comments(tmp_path):
    pipe = write_pipeline(tmp_path, **TINY, output=".")
    pipe.write_text("# my notes\n" + pipe.read_text())
    before = pipe.read_text()
    one_error_line(run_atlas(pipe, "--quiet"), f"{pipe} exists and was not written by atlas-run")
    assert pipe.read_text() == before


@pytest.mark.parametrize("value, fragment", [('""', "output.dir must be a path"),
                                             ('"/"', "output.dir must not be the file system's root")])
def test_output_dir_may_not_be_empty_or_the_root(tmp_path, value, fragment):
    one_error_line(run_cli(write_pipeline(tmp_path, **TINY), "--dry-run", "--set", f"output.dir={value}"),
                   fragment)


def test_the_lock_is_never_followed_through_a_symbolic_link_and_is_removed_at_the_end(tmp_path):
    target = tmp_path / "somefile"
    target.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(target)
    proc = run_cli(write_pipeline(tmp_path, **TINY), "--quiet")
    one_error_line(proc, f"{run / LOCK} is a symbolic link", "remove it")
    assert target.read_text() == "keep"
    (run / LOCK).unlink()
    proc = run_atlas(write_pipeline(tmp_path, **TINY), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert not (run / LOCK).exists() and (run / "student.pt").is_file()


def test_a_symlinked_checkpoint_folder_is_refused_before_training(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(elsewhere)
    proc = run_atlas(write_pipeline(tmp_path, **TINY), "--quiet")
    one_error_line(proc, "checkpoints exists and was not written by atlas-run")
    assert list(elsewhere.iterdir()) == []


def test_writes_refuse_symlinks_and_foreign_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (tmp_path / "outside.txt").write_text("x")
    os.symlink(tmp_path / "outside.txt", run.path / "report.md")
    (run.path / "notes.md").write_text("mine")
    from atlas_plugins import RunDirError

    with pytest.raises(RunDirError, match="refused to write through a symbolic link"):
        run.write_text("report.md", "ours")
    with pytest.raises(RunDirError, match="notes.md exists and was not written by atlas-run"):
        run.write_text("notes.md", "ours")
    assert (tmp_path / "outside.txt").read_text() == "x" and (run.path / "notes.md").read_text() == "mine"


def test_a_failed_assembly_leaves_no_folder_behind(tmp_path):
    proc = run_atlas(write_pipeline(tmp_path, **TINY), "--quiet", "--set", "teacher.dim=100")
    one_error_line(proc, "embeddings have dimension 384")
    assert not (tmp_path / "run").exists()


def test_a_failed_run_removes_the_empty_folders_it_made_and_no_others(tmp_path):
    """``runs/my-map`` where there was no ``runs/``: a run that fails leaves neither; a folder that was there
    before, or that holds anything, stays."""
    pipeline = write_pipeline(tmp_path, **TINY)
    bad = ("--dry-run", "--set", "teacher.dim=100")
    one_error_line(run_cli(pipeline, *bad, "--set", "output.dir=runs/deeper/my-map"), "embeddings have dimension 384")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "other").mkdir(parents=True)
    one_error_line(run_cli(pipeline, *bad, "--set", "output.dir=runs/deeper/my-map"), "embeddings have dimension 384")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other"]
    run = RunDir(tmp_path / "runs" / "a" / "b")  # another process fills a folder this one made
    run.acquire()
    (tmp_path / "runs" / "a" / "theirs.txt").write_text("x")
    run.release()
    assert not (tmp_path / "runs" / "a" / "b").exists() and (tmp_path / "runs" / "a" / "theirs.txt").is_file()


def test_without_posix_file_locks_the_import_says_which_systems_work(monkeypatch):
    """On Windows (no ``fcntl``) importing the toolkit names the systems it runs on, not a bare missing module."""
    import importlib.util
    import sys

    import atlas_plugins.rundir

    monkeypatch.setitem(sys.modules, "fcntl", None)  # what `import fcntl` finds on Windows: ImportError
    spec = importlib.util.spec_from_file_location("atlas_plugins._rundir_without_fcntl", atlas_plugins.rundir.__file__)
    with pytest.raises(ImportError, match=r"runs on Linux and macOS: .*fcntl.*run it under WSL"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
