"""Assembly: plugins resolved through the registry the pipeline is assembled with; students declare what they can do."""

import numpy as np
import pytest
import torch

from atlas_plugins import Registry
from atlas_plugins.config import build_config
from atlas_plugins.pipeline import assemble
from conftest import EXAMPLE_NPY, run_cli, write_pipeline


def doc(tmp_path, **loss):
    return {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"hidden": [8]}, "loss": loss,
            "train": {"batch_size": 128, "epochs_per_stage": 1}, "output": {"dir": str(tmp_path / "run")}}


def test_a_base_loss_is_found_in_the_registry_the_pipeline_was_assembled_with(tmp_path):
    registry = Registry(load_entrypoints=False)
    calls = []

    def counted(student, teacher, *, tau=1.0, reduction="mean"):
        calls.append(student.shape)
        return registry.get("loss", "relational")(student, teacher, tau=tau, reduction=reduction)

    registry.register("loss", "counted-relational", counted)
    pipe = assemble(build_config(doc(tmp_path, name="combined", base="counted-relational"), tmp_path / "p.toml",
                                 registry), registry)
    assert pipe.loss_params["base"] is counted and calls  # the smoke test ran it
    assert pipe.config.to_dict()["loss"]["base"] == "counted-relational"  # the file keeps the name
    with pytest.raises(Exception, match="unknown loss 'counted-relational'"):
        build_config(doc(tmp_path, name="combined", base="counted-relational"), tmp_path / "p.toml",
                     Registry(load_entrypoints=False))


def test_combined_called_directly_takes_a_function_or_a_builtin_name():
    registry = Registry(load_entrypoints=False)
    combined = registry.get("loss", "combined")
    s, t = torch.randn(8, 5), torch.randn(8, 32)
    relational = registry.get("loss", "relational")
    assert torch.equal(combined(s, t, base=relational), combined(s, t, base="relational"))
    with pytest.raises(Exception, match="base must be a loss function or one of"):
        combined(s, t, base="rank-margin")


def test_a_loss_for_one_level_on_a_two_level_student_names_the_ways_out(tmp_path):
    from atlas_plugins import ConfigError
    d = {"teacher": {"path": str(EXAMPLE_NPY)}, "student": {"name": "hierarchical", "hidden": [16]},
         "loss": {"name": "neighbors"}, "output": {"dir": str(tmp_path / "run")}}
    with pytest.raises(ConfigError, match=r"student 'hierarchical' returns 2 levels: use loss 'hierarchical' .*"
                                          r"or leave \[loss\] name out to get the student's own$"):
        assemble(build_config(d, tmp_path / "p.toml"))
    del d["loss"]["name"]  # the way out it names
    assert assemble(build_config(d, tmp_path / "p.toml")).config.loss.name == "hierarchical"
    d["loss"]["weights"] = [1.0]  # the right loss with one weight: no advice to use the loss it uses
    with pytest.raises(ConfigError, match=r"got \[1.0\]; student 'hierarchical' returns 2 levels$"):
        assemble(build_config(d, tmp_path / "p.toml"))
    d["student"]["name"] = "mlp"  # the file's two weights, a one-level student
    d["loss"].update(name="hierarchical", weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"weights must be one positive number .*; student 'mlp' returns 1 level$"):
        assemble(build_config(d, tmp_path / "p.toml"))


def test_reconstruction_is_a_capability_the_student_declares(tmp_path):
    registry = Registry(load_entrypoints=False)
    d = doc(tmp_path, name="combined")
    d["student"]["reconstruct"] = True
    pipe = assemble(build_config(d, tmp_path / "p.toml", registry), registry)
    assert pipe.reconstruct and pipe.student.reconstructs


def test_plots_are_written_atomically_through_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import numpy as np

    from atlas_plugins import report
    from atlas_plugins.rundir import RunDir

    written = {}
    monkeypatch.setattr("atlas_plugins.rundir.atomic_write_bytes", lambda path, data: written.update({path.name: data}))
    metrics = [{"stage": 0, "train_loss": 1.0, "val_loss": 0.9, "tau": 1.0},
               {"stage": 1, "train_loss": 0.5, "val_loss": None, "tau": 0.5}]
    names = report.plot(RunDir(tmp_path), metrics, {"z": np.random.rand(50, 5), "labels": ["a", "b"] * 25})
    assert names == ["training.png", "scatter.png"]
    assert all(written[n].startswith(b"\x89PNG") for n in names) and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("hidden, message", [([1] * 1_000_000, "at most 64 positive integers"),
                                             ([10**9], "of at most 65,536")])
def test_student_sizes_are_bounded_by_what_can_run(hidden, message):
    from atlas_plugins import ConfigError

    with pytest.raises(ConfigError, match=message):
        Registry(load_entrypoints=False).get("student", "mlp")(384, 5, hidden=hidden)


def test_the_reserved_names_are_exactly_what_assembly_passes_to_plugins(tmp_path):
    """``config.RESERVED`` (names a pipeline file may not set) must stay in step with how plugins are called."""
    import numpy as np
    from torch import nn

    from atlas_plugins import TeacherData
    from atlas_plugins.config import RESERVED

    seen = {}
    registry = Registry(load_entrypoints=False)

    def teacher(path, **kw):
        seen["teacher"] = {"path", *kw}
        return TeacherData(np.load(EXAMPLE_NPY)[:200], source=str(path))

    def student(input_dim, dim, **kw):
        seen["student"] = {"input_dim", "dim", *kw}
        return nn.Linear(input_dim, dim)

    def loss(student, teacher, **kw):
        seen["loss"] = {"student", "teacher", *kw}
        return student.pow(2).mean()

    def schedule(start, end, num_stages, **kw):
        seen["schedule"] = {"start", "end", "num_stages", *kw}
        return lambda stage: 1.0

    for kind, fn in (("teacher", teacher), ("student", student), ("loss", loss), ("schedule", schedule)):
        registry.register(kind, f"spy-{kind}", fn)
    doc = {"teacher": {"path": "x.spy", "loader": "spy-teacher"}, "student": {"name": "spy-student"},
           "loss": {"name": "spy-loss"}, "schedule": {"name": "spy-schedule"}, "train": {"batch_size": 64},
           "output": {"dir": str(tmp_path / "run")}}
    assemble(build_config(doc, tmp_path / "p.toml", registry), registry)
    assert seen == {"teacher": RESERVED["teacher"], "student": RESERVED["student"],
                    "loss": RESERVED["loss"] - {"reduction", "reconstruction_loss"}, "schedule": RESERVED["schedule"]}


@pytest.mark.parametrize("run_shows_bars, in_file, teacher_gets", [(True, True, True), (True, False, False),
                                                                   (False, True, False), (False, False, False)])
def test_a_run_without_bars_turns_off_the_teachers_own(tmp_path, run_shows_bars, in_file, teacher_gets):
    """``--quiet`` (or no terminal) passes ``progress=False`` to a teacher that has the parameter; its
    ``progress = true`` in the file only allows a bar."""
    import numpy as np

    from atlas_plugins import TeacherData

    seen = []
    registry = Registry(load_entrypoints=False)

    def teacher(path, progress: bool = True):
        seen.append(progress)
        return TeacherData(np.load(EXAMPLE_NPY)[:300], source=str(path))

    registry.register("teacher", "with-bar", teacher)
    d = doc(tmp_path)
    d["teacher"] = {"path": "x.bin", "loader": "with-bar", "progress": in_file}
    assemble(build_config(d, tmp_path / "p.toml", registry), registry, progress=run_shows_bars)
    assert seen == [teacher_gets]


def test_the_pipeline_takes_the_teacher_digest_from_validation_s_one_read(tmp_path, monkeypatch):
    from atlas_plugins import teacher as teacher_module
    from atlas_plugins.teacher import teacher_digest

    reads = []
    real_chunks = teacher_module.TeacherData.chunks
    monkeypatch.setattr(teacher_module.TeacherData, "chunks", lambda self, *a: reads.append(1) or real_chunks(self, *a))
    pipe = assemble(build_config(doc(tmp_path, name="relational"), tmp_path / "p.toml"))
    assert len(reads) == 1  # the validation scan: no second pass for the digest
    assert pipe.teacher_digest == teacher_digest(pipe.teacher)  # the same value a pass of its own gives


def test_a_student_as_wide_as_its_teacher_is_told_it_maps_nothing_away(tmp_path):
    """4-D vectors mapped to 5-D: the map cannot keep anything the vectors do not; it trained in silence."""
    np.save(tmp_path / "t.npy", np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32))
    proc = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"', stages=1, epochs=1), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert ("atlas-run: warning: the teacher's vectors are 4-D and student.dim is 5: a map no smaller than its vectors "
            "keeps nothing they do not; plot them as they are, or set student.dim below 4") in proc.stderr
    np.save(tmp_path / "one.npy", np.random.default_rng(0).standard_normal((300, 1)).astype(np.float32))
    one = write_pipeline(tmp_path, teacher='path = "one.npy"', stages=1, epochs=1, name="p1.toml")
    proc = run_cli(one, "--dry-run")
    assert ("atlas-run: warning: the teacher's vectors are 1-D and student.dim is 5: a map no smaller than its vectors "
            "keeps nothing they do not; plot them as they are\n") in proc.stderr  # no 'student.dim below 1'
    quiet = run_cli(write_pipeline(tmp_path, teacher='path = "t.npy"', stages=1, epochs=1, name="p3.toml",
                                   student='name = "mlp"\ndim = 3\nhidden = [32]'), "--dry-run")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
