"""``atlas-run`` driven as a user drives it: the real entry point, in a subprocess, on real data."""

import contextlib
import io
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_plugins import cli, load_student
from conftest import (EXAMPLE_NPY, ROOT, one_error_line, run_atlas, run_cli, run_in_terminal, same_weights, weights,
                      write_pipeline)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full")
    proc = run_atlas(write_pipeline(folder), "--quiet")
    assert proc.returncode == 0, proc.stderr
    return folder, proc


def test_full_run_leaves_everything_it_promises(finished_run):
    folder, proc = finished_run
    run = folder / "run"
    assert proc.stdout.splitlines()[-1] == f"done: student written to {run / 'student.pt'}; see {run / 'report.md'}"
    resolved = tomllib.loads((run / "pipeline.toml").read_text())
    assert resolved["train"]["accumulate"] == 1 and resolved["train"]["weight_decay"] == 0.0
    assert resolved["student"]["reconstruct"] is False and resolved["output"]["dir"] == str(run)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"]) for m in metrics] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert {"stage", "epoch", "tau", "train_loss", "val_loss", "seconds", "samples_per_s"} <= set(metrics[0])
    assert metrics[0]["tau"] == pytest.approx(0.2) and metrics[-1]["tau"] == pytest.approx(0.05)
    assert (run / "checkpoints" / "stage-0.pt").is_file() and (run / "checkpoints" / "stage-1.pt").is_file()
    ckpt = torch.load(run / "checkpoints" / "stage-0.pt", weights_only=True)
    assert {"student", "optimizer", "rng", "position", "config_hash"} <= set(ckpt)
    student = load_student(run / "student.pt")
    x = np.load(EXAMPLE_NPY, mmap_mode="r")
    z = student.encode(x)
    assert isinstance(z, np.ndarray) and z.shape == (x.shape[0], 5) and np.isfinite(z).all()  # NumPy in, NumPy out
    report = json.loads((run / "report.json").read_text())
    assert report["student"]["recall@10"] > 0 and "axis_cards" in report
    assert "stage 1/2" in proc.stdout and "stage 2/2" in proc.stdout and "recall@10" in proc.stdout


def test_same_seed_gives_bit_identical_student(finished_run, tmp_path):
    folder, _ = finished_run
    proc = run_atlas(write_pipeline(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert same_weights(weights(tmp_path / "run" / "student.pt"), weights(folder / "run" / "student.pt"))


def test_resume_from_a_stage_checkpoint_ends_bit_identical(finished_run, tmp_path):
    folder, _ = finished_run
    assert run_cli(write_pipeline(tmp_path), "--quiet").returncode == 0  # in this process; the resume is a new one
    run = tmp_path / "run"
    for name in ("checkpoints/stage-1.pt", "checkpoints/latest.pt", "student.pt"):  # as if killed in stage 2
        (run / name).unlink()
    proc = run_atlas(tmp_path / "pipeline.toml", "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stdout and "stage-0.pt" in proc.stdout
    assert "stage 1/2" not in proc.stdout and "stage 2/2" in proc.stdout
    assert same_weights(weights(run / "student.pt"), weights(folder / "run" / "student.pt"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.smoke
def test_dry_run_checks_and_writes_nothing(tmp_path):
    proc = run_atlas(write_pipeline(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "teacher    npy:" in proc.stdout and "(2642 x 384 float32, with labels and texts)" in proc.stdout
    assert "tau 0.2, 0.05 over 2 stage(s)" in proc.stdout
    assert "steps      68 optimizer steps: 2 stage(s) x 2 epoch(s) of 17 steps" in proc.stdout  # 2,114 rows / 128
    assert not (tmp_path / "run").exists()


def test_a_dry_run_s_conversion_is_the_run_s_own_file_and_reused(tmp_path):
    """A dry run reads the teacher as the run will, and a vector table is converted into ``cache/`` then. That
    file was written without the folder's lock and left out of the manifest: atlas-run did not know it as its
    own. Now the dry run holds the lock, records the file, and the run and ``--overwrite`` keep and reuse it."""
    from atlas_plugins.rundir import MANIFEST

    x = np.load(EXAMPLE_NPY)[:300]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"embedding": v.tolist()}) + "\n" for v in x))
    pipeline = write_pipeline(tmp_path, teacher='path = "v.jsonl"', stages=1, epochs=1)
    assert run_cli(pipeline, "--dry-run").returncode == 0
    cached = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    assert [p.suffix for p in map(Path, cached)] == [".json", ".npy"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MANIFEST, "cache"]  # the lock is gone again
    assert json.loads((tmp_path / "run" / MANIFEST).read_text()) == [f"cache/{name}" for name in cached]
    stamp = (tmp_path / "run" / "cache" / cached[1]).stat().st_mtime_ns
    for extra in ((), ("--overwrite",)):  # a fresh run (the cache is no run), then one that replaces it
        assert run_cli(pipeline, "--quiet", *extra).returncode == 0
        assert sorted(p.name for p in (tmp_path / "run" / "cache").iterdir()) == cached
        assert (tmp_path / "run" / "cache" / cached[1]).stat().st_mtime_ns == stamp  # read, not written again


def test_its_warnings_stay_warning_lines_when_python_warnings_are_errors(tmp_path):
    """PYTHONWARNINGS=error (common in CI) turns other code's warnings into errors, not atlas-run's messages."""
    proc = run_atlas(write_pipeline(tmp_path, batch_size=5000), "--dry-run", env={"PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ("atlas-run: warning: train.batch_size = 5000 is larger than the 2114 training rows; "
                           "each batch holds all of them\n")


def test_set_overrides_values(tmp_path):
    proc = run_atlas(write_pipeline(tmp_path), "--set", "train.epochs_per_stage=1", "--set", "schedule.stages=1",
                     "--set", 'output.dir="other"', "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "other" / "metrics.jsonl").read_text().splitlines()) == 1
    resolved = tomllib.loads((tmp_path / "other" / "pipeline.toml").read_text())
    assert resolved["train"]["epochs_per_stage"] == 1


def test_relative_paths_resolve_against_the_pipeline_folder(tmp_path):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "t.npy", np.load(EXAMPLE_NPY)[:600])
    sub = tmp_path / "configs"
    sub.mkdir()
    write_pipeline(sub, teacher='path = "../data/t.npy"', stages=1, epochs=1)
    proc = run_atlas("configs/pipeline.toml", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (sub / "run" / "student.pt").is_file()


THIRD_PARTY = """
    import atlas_plugins
    from atlas_plugins.checks import check_pair, reduce

    def sq_relational(student, teacher, *, tau=1.0, reduction="mean", power=2.0):
        check_pair(student, teacher, min_batch=2)
        s = atlas_plugins.get_loss("mse")(student, teacher, tau=tau, reduction="none")
        return reduce(s ** (power / 2), reduction)

    @atlas_plugins.hookimpl
    def register_losses(register):
        register("sq-relational", sq_relational, "a third-party test loss")
"""


def test_third_party_loss_named_in_the_pipeline(tmp_path):
    from conftest import plugin_env

    env = plugin_env(tmp_path, "atlas-sq", "atlas_sq_plugin", THIRD_PARTY)
    pipe = write_pipeline(tmp_path, loss='name = "sq-relational"\npower = 3.0', stages=1, epochs=1)
    listing = run_atlas("--list-plugins", env=env)
    assert "sq-relational" in listing.stdout and "atlas-sq 1.0" in listing.stdout
    proc = run_atlas(pipe, "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert tomllib.loads((tmp_path / "run" / "pipeline.toml").read_text())["loss"] == {"name": "sq-relational",
                                                                                      "power": 3.0}
    bad = run_atlas(pipe, "--dry-run", "--set", "loss.powr=1", env=env)
    one_error_line(bad, "loss.powr is not a parameter of loss 'sq-relational'", "did you mean 'power'?")


@pytest.mark.parametrize("teacher_kind", ["pt", "npz", "safetensors"])
def test_teacher_loaders_by_name_and_by_suffix(tmp_path, teacher_kind):
    emb = np.load(EXAMPLE_NPY)[:500]
    if teacher_kind == "pt":
        torch.save({"embeddings": torch.from_numpy(emb), "labels": list(range(500))}, tmp_path / "t.pt")
        teacher = f'path = "{tmp_path / "t.pt"}"'
    elif teacher_kind == "npz":
        np.savez(tmp_path / "t.npz", vectors=emb)
        teacher = f'loader = "npy"\npath = "{tmp_path / "t.npz"}"\nkey = "vectors"'
    else:
        from safetensors.torch import save_file

        save_file({"embeddings": torch.from_numpy(emb)}, tmp_path / "t.safetensors")
        teacher = f'path = "{tmp_path / "t.safetensors"}"'
    proc = run_cli(write_pipeline(tmp_path, teacher=teacher, stages=1, epochs=1), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert load_student(tmp_path / "run" / "student.pt").encode(torch.from_numpy(emb)).shape == (500, 5)


def test_hierarchical_student_with_hierarchical_loss(tmp_path):
    pipe = write_pipeline(tmp_path, student='name = "hierarchical"\ndim = 5\nhidden = [32]',
                          loss='name = "hierarchical"\nweights = [0.7, 0.3]\nbase = "relational"',
                          stages=1, epochs=1)
    proc = run_cli(pipe, "--quiet")
    assert proc.returncode == 0, proc.stderr
    coarse, fine = load_student(tmp_path / "run" / "student.pt").encode(torch.from_numpy(np.load(EXAMPLE_NPY)[:10]))
    assert coarse.shape == (10, 5) and fine.shape == (10, 25)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["levels"]) == ["level 0 (5-D)", "level 1 (25-D)"]
    assert "student + refine 6" in report["methods"]  # the 5-D level, refined
    assert "refine keeps the student's output on its 25-D level: it moves maps of at most 10 dimensions" in \
        report["notes"]


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.toml")))
def test_every_bundled_example_pipeline_trains(tmp_path, example):
    proc = run_cli(ROOT / "examples" / example, "--quiet", "--set", "train.epochs_per_stage=3", "--set",
                   "output.plots=false", "--set", "output.map_rows=0", "--set", f'output.dir="{tmp_path / "run"}"')
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["student"]["recall@10"] > report["pca"]["recall@10"]  # 3 epochs a stage: 0.298 against 0.214
    assert not [note for note in report["notes"] if "than PCA" in note]
    if example == "hierarchical.toml":
        assert list(report["levels"]) == ["level 0 (5-D)", "level 1 (25-D)"]


def test_reconstructing_student_with_combined_loss(tmp_path):
    pipe = write_pipeline(tmp_path, student='name = "linear"\ndim = 5\nreconstruct = true',
                          loss='name = "combined"\nalpha = 0.7\nbase = "mse"', epochs=1)
    proc = run_cli(pipe, "--quiet", "--set", 'schedule.name="exponential"')
    assert proc.returncode == 0, proc.stderr
    resolved = tomllib.loads((tmp_path / "run" / "pipeline.toml").read_text())
    assert resolved["loss"] == {"name": "combined", "alpha": 0.7, "base": "mse"}
    assert resolved["schedule"]["name"] == "exponential"


def test_list_plugins_table_and_json():
    table = run_atlas("--list-plugins")
    assert table.returncode == 0
    header, *rows = table.stdout.strip().splitlines()
    assert header.split() == ["KIND", "NAME", "DESCRIPTION", "PROVIDED", "BY", "PARAMETERS", "(default)"]
    assert any(r.split()[:2] == ["loss", "relational"] and "atlas-distill" in r for r in rows)
    mlp = next(r for r in rows if r.split()[:2] == ["student", "mlp"])
    assert mlp.endswith("hidden=[128, 128, 128, 128], reconstruct=false")  # input_dim and dim are set by atlas-run
    listing = json.loads(run_cli("--list-plugins", "--json").stdout)  # the same listing, in this process
    assert {"kind": "schedule", "name": "cosine"}.items() <= next(p for p in listing if p["name"] == "cosine"
                                                                  and p["kind"] == "schedule").items()
    assert all(p["distribution"] == "atlas-distill" for p in listing if p["name"] in ("mse", "npy"))
    assert "[tau 0.2 -> 0.05]" in next(r for r in rows if r.split()[:2] == ["loss", "relational"])
    assert "[tau as base 0.2 -> 0.05]" in next(r for r in rows if r.split()[:2] == ["loss", "hierarchical"])
    assert "[loss hierarchical]" in next(r for r in rows if r.split()[:2] == ["student", "hierarchical"])
    assert next(p for p in listing if p["kind"] == "student" and p["name"] == "hierarchical")["default_loss"] == \
        {"name": "hierarchical", "base": "neighbors"}
    taus = {p["name"]: p.get("tau_range") for p in listing if p["kind"] == "loss"}
    assert taus["neighbors"] == [2.0, 0.4] and taus["combined"] == [0.2, 0.05] and taus["mse"] == [1.0, 1.0]
    pt = next(p for p in listing if p["name"] == "pt")
    assert pt["params"] == [{"name": "key", "default": "embeddings", "type": "a string"},
                            {"name": "trust", "default": False, "type": "true or false"},
                            {"name": "meta", "default": None, "type": "a string"}]


def test_list_plugins_names_a_misdeclared_tau_range_and_lists_the_rest(monkeypatch):
    from atlas_plugins import Registry, cli
    registry = Registry(load_entrypoints=False)
    registry.register("loss", "odd", lambda student, teacher, *, tau=1.0, reduction="mean": 0)
    registry.get("loss", "odd").tau_range = "0.1 to 0.01"  # a string names a parameter, and there is none
    monkeypatch.setattr(cli, "get_registry", lambda: registry)
    table = cli.list_plugins(as_json=False)
    assert "[invalid tau_range]" in next(r for r in table.splitlines() if r.split()[:2] == ["loss", "odd"])
    assert "[tau 2 -> 0.4]" in table
    assert next(p for p in json.loads(cli.list_plugins(as_json=True)) if p["name"] == "odd")["tau_range"] is None


def test_version():
    from importlib.metadata import version

    for program in ("atlas-run", "atlas-encode"):
        proc = run_cli("--version", program=program)
        assert proc.returncode == 0 and proc.stdout.strip() == f"{program} {version('atlas-distill')}"


# -- error paths: exit code 2, one line naming the file and key, no traceback -------------------
@pytest.mark.parametrize("extra_args, edit, fragments", [
    ((), lambda t: t.replace("batch_size = 128", "batchsize = 128"),
     ["pipeline.toml: unknown key train.batchsize", "did you mean 'batch_size'?"]),
    ((), lambda t: t.replace("batch_size = 128", "batch_size = -4"),
     ["pipeline.toml: train.batch_size must be a positive integer, got -4"]),
    ((), lambda t: t.replace("learning_rate = 2e-3", 'learning_rate = "fast"'),
     ["train.learning_rate must be a positive number, got 'fast'"]),
    ((), lambda t: t.replace('name = "relational"', 'name = "relatinal"'),
     ["pipeline.toml: loss.name: unknown loss 'relatinal'", "did you mean 'relational'?"]),
    ((), lambda t: t.replace("hidden = [32]", "hiden = [32]"),
     ["student.hiden is not a parameter of student 'mlp'", "did you mean 'hidden'?"]),
    ((), lambda t: t.replace("[output]", "[outptu]"), ["unknown section [outptu]", "did you mean 'output'?"]),
    ((), lambda t: t.replace("[train]", "[train"), ["pipeline.toml: not valid TOML"]),
    ((), lambda t: t.replace(str(EXAMPLE_NPY), "/nonexistent/t.npy"), ["/nonexistent/t.npy: teacher file not found"]),
    ((), lambda t: t.replace(str(EXAMPLE_NPY), "/tmp/t.emb"),
     ["teacher.loader is not set and no teacher plugin reads '.emb'"]),
    (("--set", "train.seed"), None, ["--set 'train.seed': expected SECTION.KEY=VALUE"]),
    (("--set", "trian.seed=1"), None, ["unknown section 'trian'", "did you mean 'train'?"]),
    (("--set", "train.batches=\"neighbours\""), None,
     ["train.batches must be one of 'auto', 'random', 'neighbors', got 'neighbours' (did you mean 'neighbors'?)"]),
    (("--set", "train.device=\"cpus\""), None, ["train.device must be", "got 'cpus' (did you mean 'cpu'?)"]),
    (("--set", "train.device=\"cuda:x\""), None,
     ["--set 'train.device=\"cuda:x\"': train.device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"]),
    (("--set", "teacher.dim=100"), None,
     ["stdlib-minilm.npy: embeddings have dimension 384, but the configuration expects 100"]),
    (("--set", "loss.name=\"kl\"", "--set", "schedule.stages=1"), None, ["[loss] loss 'kl'", "same number of classes"]),
    (("--bogus",), None, ["unrecognized arguments: --bogus"]),
])
def test_bad_input_is_one_clear_line_with_exit_code_2(tmp_path, extra_args, edit, fragments):
    pipe = write_pipeline(tmp_path)
    if edit:
        pipe.write_text(edit(pipe.read_text()))
    proc = run_cli(pipe, "--dry-run", *extra_args)
    one_error_line(proc, *fragments)


def test_a_pipeline_file_saved_with_a_byte_order_mark_reads_as_toml(tmp_path):
    """Windows editors may start a UTF-8 file with one; tomllib refused it: "Invalid statement (at line 1...)"."""
    path = write_pipeline(tmp_path, stages=1, epochs=1)
    path.write_text(path.read_text(), encoding="utf-8-sig")
    assert run_cli(path, "--dry-run").returncode == 0


def test_missing_pipeline_file(tmp_path):
    one_error_line(run_atlas(tmp_path / "nope.toml"), "nope.toml: pipeline file not found")


def test_a_data_file_given_as_the_pipeline_is_told_the_pipeline_to_write_and_that_pipeline_runs(tmp_path):
    import shutil

    hint = ("; it looks like teacher data: atlas-run takes a pipeline file, and one that holds only [teacher] with "
            'path = "vectors.npy" is enough (every other key has a default)')
    data = shutil.copy(EXAMPLE_NPY, tmp_path / "vectors.npy")  # 4 MB: refused unread, whatever its size
    one_error_line(run_cli(data, "--dry-run"), "vectors.npy: is larger than 1 MiB, which no pipeline file is; "
                   "expected a pipeline .toml file" + hint)
    np.save(data, np.load(EXAMPLE_NPY)[:100])
    one_error_line(run_cli(data, "--dry-run"), "vectors.npy: not valid TOML: the file is not UTF-8 text" + hint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy"]  # nothing written
    (tmp_path / "vectors.toml").write_text('[teacher]\npath = "vectors.npy"\n', encoding="utf-16")
    one_error_line(run_cli(tmp_path / "vectors.toml", "--dry-run"), "vectors.toml: not valid TOML: the file is "
                   "UTF-16 text (what Windows PowerShell's > writes); save it as UTF-8 (Out-File -Encoding utf8)")
    (tmp_path / "vectors.toml").write_bytes(b'[teacher]\npath = "caf\xe9.npy"\n')  # a Windows (cp1252) editor
    one_error_line(run_cli(tmp_path / "vectors.toml", "--dry-run"),
                   "vectors.toml: not valid TOML: the file is not UTF-8 text; save it as UTF-8")
    (tmp_path / "vectors.toml").write_text('[teacher]\npath = "vectors.npy"\n')
    proc = run_cli(tmp_path / "vectors.toml", "--dry-run")
    assert proc.returncode == 0 and "schedule   cosine: tau 2, " in proc.stdout, proc.stderr


def test_fresh_run_into_an_occupied_folder_is_refused_unless_overwrite(finished_run, tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0
    (tmp_path / "run" / "notes.txt").write_text("mine")
    one_error_line(run_cli(pipe, "--quiet"), "already holds a run", "--resume", "--overwrite")
    proc = run_atlas(pipe, "--quiet", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_changed_configuration(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0
    line = one_error_line(run_cli(pipe, "--resume", "--set", "train.seed=7", "--set", "student.hidden=[16]"),
                          "cannot resume: the configuration changed")
    assert "train.seed: 0 -> 7" in line and "student.hidden: [32] -> [16]" in line


def test_resume_follows_a_teacher_file_that_moved_and_refuses_other_rows_there(tmp_path):
    rows = np.load(EXAMPLE_NPY)[:600]
    for folder in ("old", "new"):
        (tmp_path / folder).mkdir()
    np.save(tmp_path / "old" / "t.npy", rows)
    pipe = write_pipeline(tmp_path, teacher='path = "old/t.npy"', stages=2, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0
    (tmp_path / "old" / "t.npy").rename(tmp_path / "new" / "t.npy")
    pipe.write_text(pipe.read_text().replace('"old/t.npy"', '"new/t.npy"'))
    proc = run_cli(pipe, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"note: resuming with changed teacher.path: '{tmp_path}/old/t.npy' -> '{tmp_path}/new/t.npy'" in proc.stdout
    np.save(tmp_path / "new" / "t.npy", rows[::-1])  # other rows where the file now is
    one_error_line(run_cli(pipe, "--resume", "--quiet"), "cannot resume: the teacher's rows are not the ones")


def test_resume_refuses_a_teacher_file_with_other_rows_and_accepts_a_copy(tmp_path):
    rows = np.load(EXAMPLE_NPY)[:600]
    np.save(tmp_path / "t.npy", rows)
    pipe = write_pipeline(tmp_path, teacher='path = "t.npy"', stages=1, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0
    edited = rows.copy()
    edited[5] = rows[300]
    for changed in (rows[::-1], edited):  # the same values in another order; one row re-embedded
        np.save(tmp_path / "t.npy", changed)
        one_error_line(run_cli(pipe, "--resume", "--quiet"), f"{tmp_path / 't.npy'}: cannot resume: the teacher's "
                       "rows are not the ones the checkpoint was trained on (the file changed since); restore it, "
                       "or start a fresh run with --overwrite")
    (tmp_path / "t.npy").unlink()
    np.save(tmp_path / "t.npy", rows)  # the same rows in a new file (a copy, a new modification time)
    done = run_cli(pipe, "--resume", "--quiet")
    assert done.returncode == 0, done.stderr


def test_resume_with_nothing_to_resume(tmp_path):
    one_error_line(run_atlas(write_pipeline(tmp_path), "--resume"), "nothing to resume")


def test_progress_bar_on_a_terminal_only(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=2)
    code, out, shown = run_in_terminal(pipe)
    assert code == 0
    assert "stage 1/1" in shown and "tau=0.2" in shown and "loss=" in shown  # the tqdm bar, on stderr
    assert "stage 1/1  tau 0.2" in out  # the one-line summary, always
    quiet = run_atlas(pipe, "--overwrite")  # stderr is a pipe here: no bar
    assert "it/s" not in quiet.stderr and "stage 1/1  tau 0.2" in quiet.stdout


def test_a_gpu_out_of_memory_is_one_line_with_what_to_change(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError(  # as torch 2.11 wrote it on an H200 given a tiny allowance
            "CUDA out of memory. Tried to allocate 2.00 MiB. GPU 0 has a total capacity of 139.80 GiB of which "
            "132.85 GiB is free. Process 480 has 6.44 GiB memory in use. Including non-PyTorch memory, ...")
    monkeypatch.setattr(cli, "run_pipeline", out_of_memory)
    proc = run_cli(write_pipeline(tmp_path, stages=1, epochs=1))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("atlas-run: error: the GPU ran out of memory (CUDA out of memory. Tried to allocate "
                           '2.00 MiB); lower train.batch_size or train.eval_rows, or set train.device = '
                           '"cpu" (--resume continues a run with either of the last two changed)\n')


def test_without_the_text_extra_texts_name_it(tmp_path, monkeypatch):
    """Without sentence-transformers (and transformers, which it brings), a text teacher and texts given to
    atlas-encode name the extra to install. It was 'teacher ... failed: ModuleNotFoundError: No module named
    'transformers'' from atlas-run and a traceback from atlas-encode."""
    import sys

    from builtin_plugins import text

    for module in ("sentence_transformers", "transformers"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now raises ImportError
    text._encoder.cache_clear()  # a model an earlier test loaded
    extra = "embedding texts needs the optional extra: pip install 'atlas-distill[text]' (sentence-transformers)"
    (tmp_path / "notes.txt").write_text("parse a CSV file\nopen a socket\nsort a list\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "notes.txt"\n')
    env = {"ATLAS_CACHE_DIR": str(tmp_path / "cache")}  # nothing cached: the texts need the model
    refused = one_error_line(run_cli(tmp_path / "p.toml", env=env))
    assert refused == f"atlas-run: error: [teacher] teacher 'sentence-transformers' (atlas-distill): {extra}"
    embedder = '\nembedder = { loader = "sentence-transformers", model = "all-MiniLM-L6-v2" }'
    pipe = write_pipeline(tmp_path, teacher=f'path = "{EXAMPLE_NPY}"' + embedder, stages=1, epochs=1)
    assert run_cli(pipe, "--quiet").returncode == 0  # vectors need no model
    encoded = run_cli(tmp_path / "run", "-", program="atlas-encode", stdin=b"parse a CSV file\n", env=env)
    assert one_error_line(encoded) == f"atlas-encode: error: {extra}"


class Writes(io.StringIO):
    """A stderr that keeps each ``write`` call apart."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def write(self, text):
        self.calls.append(text)
        return super().write(text)


def test_a_message_line_is_one_write_so_torchrun_ranks_do_not_run_together(tmp_path):
    """The ranks of a torchrun run share stderr, unbuffered: ``print`` wrote a line's text, then its newline,
    and two ranks' lines came out as one (``...--overwrite (...)atlas-run: error: ...``)."""
    errors = Writes()
    with contextlib.redirect_stderr(errors):
        code = cli.main([str(tmp_path / "missing.toml")])
    assert code == 2
    assert errors.calls == [f"atlas-run: error: {tmp_path / 'missing.toml'}: pipeline file not found\n"]
