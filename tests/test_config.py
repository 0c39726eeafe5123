"""The pipeline file: bounds, nesting, non-regular files, who is blamed, and a resolved file that reads back."""

import os
import tomllib

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_plugins import ConfigError, PluginError, Registry
from atlas_plugins.config import SECTIONS, build_config, dump_toml, load_config, resumable_keys
from conftest import EXAMPLE_NPY, one_error_line, run_atlas, run_cli, write_pipeline

REGISTRY = Registry(load_entrypoints=False)


def load(tmp_path, text, overrides=()):
    path = tmp_path / "p.toml"
    path.write_text(f'[teacher]\npath = "{EXAMPLE_NPY}"\n' + text)
    return load_config(path, overrides, registry=REGISTRY)


@pytest.mark.parametrize("text, message", [
    ("[schedule]\nstages = 1000000000", "schedule.stages must be a positive integer (at most 10,000)"),
    ("[student]\ndim = 1099511627776", "student.dim must be a positive integer (at most 4,096)"),
    ("[train]\nneighbors = 80", "train.neighbors must be at most neighbor_pool (60), got 80"),
    ("[loss]\ntau = 0.5\n[schedule]\nstages = 2", "loss.tau is set, but [schedule] sets τ per stage"),
    ("[loss]\ntau = -1", "loss.tau must be a positive number, got -1"),
    ("[output]\ndir = \"\"", "output.dir must be a path"),
    ("[train]\nsteps_per_stage = 100\nepochs_per_stage = 2", "train.steps_per_stage and epochs_per_stage are both set"),
    ("[train]\nsteps_per_stage = 0", "train.steps_per_stage must be a positive integer, got 0"),
    ("[train]\nsteps_per_stage = \"500\"", "train.steps_per_stage must be a positive integer, got '500'"),
    ("[train]\nneighbor_index = \"hnsw\"", "train.neighbor_index must be one of 'auto', 'exact', 'faiss'"),
    ("[train]\nneighbor_hops = 4", "train.neighbor_hops must be a positive integer (at most 3), got 4"),
    ("[train]\nneighbor_hops = true", "train.neighbor_hops must be a positive integer (at most 3), got True"),
    ("[train]\nseed = 18446744073709551615",
     "train.seed must be an integer >= 0 (at most 4,611,686,018,427,387,904), got 18446744073709551615"),
    ("[train]\nbatch_size = 1099511627777", "train.batch_size must be a positive integer (at most 1,099,511,627,776)"),
    ("[train]\nbatch_size = -1", "train.batch_size must be a positive integer, got -1"),  # no bound to name
    ("[train]\neval_rows = 1", "train.eval_rows must be an integer >= 2, got 1"),  # a row has no neighbours alone
])
def test_values_beyond_what_can_run_are_refused_with_the_bound(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load(tmp_path, text)


def test_deeply_nested_values_are_refused_not_a_recursion_error(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply|nested more than"):
        load(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="--set .*nested too deeply|nested more than"):
        load(tmp_path, "", ["student.hidden=" + "[" * 5000 + "]" * 5000])
    with pytest.raises(ConfigError, match="nested more than 8 levels"):
        load(tmp_path, "", ["loss.weights=" + "[" * 12 + "]" * 12])


def test_a_fifo_or_a_device_as_pipeline_file_is_refused_without_reading(tmp_path):
    fifo = tmp_path / "p.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(fifo, registry=REGISTRY)
    with pytest.raises(ConfigError, match="/dev/zero: is not a regular file"):
        load_config("/dev/zero", registry=REGISTRY)


def test_a_bad_value_from_set_is_blamed_on_set_not_on_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set 'train.batch_size=-1': train.batch_size must be a positive"):
        load(tmp_path, "[train]\nbatch_size = 64\n", ["train.batch_size=-1"])
    with pytest.raises(ConfigError, match=r"^--set 'student.bogus=1': student.bogus is not a parameter"):
        load(tmp_path, "", ["student.bogus=1"])
    with pytest.raises(ConfigError, match=r"p.toml: train.batch_size must be a positive integer"):
        load(tmp_path, "[train]\nbatch_size = -1\n", ["train.seed=3"])
    whole = 'teacher.embedder={ loader = "sentence-transformers", modle = "x" }'  # a table given whole
    with pytest.raises(ConfigError, match=r"^--set 'teacher\.embedder=.*': teacher.embedder.modle is not a parameter"):
        load(tmp_path, "", [whole])
    with pytest.raises(ConfigError, match=r"p.toml: teacher.embedder.modle is not a parameter"):  # a sibling's --set
        load(tmp_path, '[teacher.embedder]\nloader = "sentence-transformers"\nmodle = "x"\n',
             ['teacher.embedder.model="y"'])


@pytest.mark.parametrize("item, why", [
    ("output.dir='runs/x\ny'", "Found invalid character '\\n'"),  # was the folder "'runs/x\ny'", quotes and all
    ('output.dir="runs/x', "Unterminated string"),
    ("student.hidden=[128, 128", "Unclosed array"),
    ('teacher.embedder={ loader = "sentence-transformers"', "Unclosed inline table"),
])
def test_a_broken_toml_value_from_set_is_an_error_not_a_string(tmp_path, item, why):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "", [item])
    assert str(err.value) == (f"--set {item!r}: not a valid TOML value ({why}); a string may also be given bare, "
                              "without quotes")


@pytest.mark.parametrize("key", ["path", "meta", "cache_dir"])
def test_an_empty_teacher_path_is_named_not_read_as_the_pipeline_folder(tmp_path, key):
    # resolved against the pipeline file's folder, "" was that folder: "/tmp/...: is a folder; expected a teacher file"
    with pytest.raises(ConfigError, match=rf"^--set 'teacher.{key}= ': teacher.{key} must be a path \(a non-empty "
                                          r"string\), got ' '$"):
        load(tmp_path, "", [f"teacher.{key}= "])
    teacher = 'path = ""' if key == "path" else f'path = "{EXAMPLE_NPY}"\n{key} = ""'
    (tmp_path / "q.toml").write_text(f"[teacher]\n{teacher}\n")
    with pytest.raises(ConfigError, match=rf"q.toml: teacher.{key} must be a path \(a non-empty string\), got ''$"):
        load_config(tmp_path / "q.toml", registry=REGISTRY)


@pytest.mark.parametrize("item, hint", [
    ("epochs_per_stage=1", "; did you mean --set train.epochs_per_stage=1?"),  # the one section with that key
    ("dir = runs/x", "; did you mean --set output.dir=runs/x?"),
    ("name=mlp", ", e.g. --set train.batch_size=64"),  # a key of several sections: no guess
    ("train=1", ", e.g. --set train.batch_size=64"),
    ("epochs_per_stage", ", e.g. --set train.batch_size=64"),
])
def test_a_set_item_without_its_section_names_the_section_that_has_the_key(tmp_path, item, hint):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "", [item])
    assert str(err.value) == f"--set {item!r}: expected SECTION.KEY=VALUE{hint}"


def test_a_bare_string_from_set_is_a_string(tmp_path):
    config = load(tmp_path, "", ["output.dir=runs/my run", "train.device=cpu"])
    assert config.output.dir == str(tmp_path / "runs" / "my run") and config.train.device == "cpu"


def test_loss_tau_is_a_field_and_becomes_a_one_stage_schedule(tmp_path):
    config = load(tmp_path, "[loss]\ntau = 0.3\n")
    assert config.loss.tau == 0.3
    assert (config.schedule.start, config.schedule.end, config.schedule.stages) == (0.3, 0.3, 1)
    assert config.schedule.name == "linear"  # as 0.1 resolved it: a run with a fixed tau resumes across the upgrade
    assert "tau" not in config.to_dict()["loss"]  # the resolved file holds it in [schedule]


def test_teacher_and_output_alone_train_the_quickstart_recipe(tmp_path):
    """The defaults are examples/quickstart.toml's measured recipe (a curriculum, input noise, the deep student):
    a file of [teacher] path and [output] dir alone differs from it only in data, split and output."""
    quickstart = load_config(EXAMPLE_NPY.parent.parent / "quickstart.toml", registry=REGISTRY).to_dict()
    alone = load(tmp_path, "[output]\ndir = \"run\"\n").to_dict()
    for section in ("student", "loss", "schedule"):
        assert alone[section] == quickstart[section]
    differ = {key for key in quickstart["train"] if alone["train"][key] != quickstart["train"][key]}
    assert differ == {"val_fraction", "batches"} and alone["train"]["batches"] == "auto"  # auto: neighbours here


def test_a_hierarchical_student_alone_trains_the_hierarchical_example(tmp_path):
    """A multi-level student declares the loss it needs (``default_loss``): naming the student is enough."""
    example = load_config(EXAMPLE_NPY.parent.parent / "hierarchical.toml", registry=REGISTRY).to_dict()
    alone = load(tmp_path, "[student]\nname = \"hierarchical\"\n").to_dict()
    assert alone["student"] == example["student"] and alone["schedule"] == example["schedule"]
    assert example["loss"].pop("weights") == [0.5, 0.5] and alone["loss"] == example["loss"]  # weights: equal
    assert load(tmp_path, "[student]\nname = \"hierarchical\"\n[loss]\nbase = \"relational\"\n").loss.params[
        "base"] == "relational"                                                    # [loss]'s keys on top
    assert load(tmp_path, "[student]\nname = \"mlp\"\n").loss.name == "neighbors"


def test_a_misdeclared_default_loss_names_the_student_and_the_way_out(tmp_path):
    registry = Registry(load_entrypoints=False)
    registry.register("student", "two-level", lambda input_dim, dim=5: None)
    registry.get("student", "two-level").default_loss = "hierarchical"
    path = tmp_path / "p.toml"
    path.write_text(f'[teacher]\npath = "{EXAMPLE_NPY}"\n[student]\nname = "two-level"\n')
    with pytest.raises(PluginError, match=r"^student 'two-level' \(__main__\) declares default_loss = "
                                          r"'hierarchical'; expected a \[loss\] table with a name.*set \[loss\] name$"):
        load_config(path, registry=registry)
    path.write_text(path.read_text() + '[loss]\nname = "hierarchical"\n')
    assert load_config(path, registry=registry).loss.name == "hierarchical"


@pytest.mark.parametrize("text, taus", [
    ("", (2.0, 0.4)),                                                       # neighbors: standardised similarities
    ("[loss]\nname = \"relational\"\n", (0.2, 0.05)),                      # raw cosines: a tenth of the spread
    ("[loss]\nname = \"combined\"\n", (0.2, 0.05)),                        # as its default base, relational
    ("[loss]\nname = \"hierarchical\"\nbase = \"neighbors\"\n", (2.0, 0.4)),
    ("[loss]\nname = \"mse\"\n", (1.0, 1.0)),                               # declares none (τ is unused)
    ("[loss]\nname = \"relational\"\n[schedule]\nstart = 0.3\n", (0.3, 0.05)),  # each key defaults alone
])
def test_schedule_start_and_end_default_to_the_range_the_loss_declares(tmp_path, text, taus):
    config = load(tmp_path, text)
    assert (config.schedule.start, config.schedule.end) == taus
    assert tomllib.loads(dump_toml(config.to_dict()))["schedule"]["start"] == taus[0]  # written out in full


def test_a_third_party_loss_declares_its_tau_range_or_is_told_what_is_wrong(tmp_path):
    registry = Registry(load_entrypoints=False)
    registry.register("loss", "sharp", lambda student, teacher, *, tau=1.0, reduction="mean": student.sum())
    registry.get("loss", "sharp").tau_range = (3.0, 1.5)
    registry.register("loss", "wrapper", lambda student, teacher, *, tau=1.0, reduction="mean", inner="sharp": 0)
    registry.get("loss", "wrapper").tau_range = "inner"
    path = tmp_path / "p.toml"

    def schedule(loss_table):
        path.write_text(f'[teacher]\npath = "{EXAMPLE_NPY}"\n[loss]\n{loss_table}\n')
        config = load_config(path, registry=registry)
        return config.schedule.start, config.schedule.end

    assert schedule('name = "sharp"') == (3.0, 1.5)
    assert schedule('name = "wrapper"') == (3.0, 1.5)
    assert schedule('name = "wrapper"\ninner = "neighbors"') == (2.0, 0.4)
    registry.get("loss", "sharp").tau_range = (-1, 2)
    with pytest.raises(PluginError, match=r"^loss 'sharp' \(__main__\) declares tau_range = \(-1, 2\); expected "
                                          r"\(start, end\), two positive numbers"):
        schedule('name = "sharp"')
    registry.get("loss", "wrapper").tau_range = "missing"
    with pytest.raises(PluginError, match="from parameter 'missing', which names no registered loss .*set "
                                          r"\[schedule\] start and end"):
        schedule('name = "wrapper"')
    registry.register("loss", "selfish", lambda student, teacher, *, tau=1.0, reduction="mean", inner="selfish": 0)
    registry.get("loss", "selfish").tau_range = "inner"
    with pytest.raises(PluginError, match="loss 'selfish' .* from parameter 'inner', which loops back"):
        schedule('name = "selfish"')
    assert schedule('name = "selfish"\n[schedule]\nstart = 1.0\nend = 0.5') == (1.0, 0.5)  # the way out it names


def test_resumable_fields_are_marked_next_to_their_definition():
    assert resumable_keys() == {"teacher.embedder", "train.learning_rate", "train.device", "train.eval_rows",
                                "output.loggers"}


def test_dry_run_checks_the_output_folder(tmp_path):
    pipe = write_pipeline(tmp_path, stages=1, epochs=1)
    assert run_atlas(pipe, "--quiet").returncode == 0  # the real entry point; the dry runs in this process
    one_error_line(run_cli(pipe, "--dry-run"), "already holds a run", "--resume")
    assert run_cli(pipe, "--dry-run", "--resume").returncode == 0
    assert run_cli(pipe, "--dry-run", "--overwrite").returncode == 0


# -- the resolved pipeline.toml reads back as the same configuration ---------------------------
text_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
paths = text_values.filter(lambda s: s.strip() and "\x00" not in s and s.strip() not in ("/", "."))
numbers = st.floats(1e-6, 1e3, allow_nan=False)
EVERY_FIELD = {
    "teacher": st.fixed_dictionaries({"path": paths.map(lambda p: p + ".npy"), "loader": st.just("npy"),
                                      "dim": st.none() | st.integers(1, 2**31), "meta": paths, "key": st.none()}),
    "student": st.fixed_dictionaries({"name": st.sampled_from(["mlp", "hierarchical"]), "dim": st.integers(1, 256),
                                      "hidden": st.lists(st.integers(1, 64), max_size=3),
                                      "reconstruct": st.booleans()}),
    "loss": st.fixed_dictionaries({"name": st.just("neighbors"), "kernel": st.sampled_from(["gaussian", "student-t"]),
                                   "dof": numbers}),
    "schedule": st.fixed_dictionaries({"name": st.sampled_from(["linear", "exponential", "cosine"]), "start": numbers,
                                       "end": numbers, "stages": st.integers(1, 10_000)}),
    "train": st.fixed_dictionaries({
        "epochs_per_stage": st.integers(1, 10**6), "batch_size": st.integers(1, 10**6),
        "learning_rate": numbers, "weight_decay": st.floats(0, 1),
        "lr_schedule": st.sampled_from(["constant", "cosine"]),
        "warmup_steps": st.integers(0, 10**6), "device": st.sampled_from(["cpu", "cuda", "cuda:3", "mps", "auto"]),
        "seed": st.integers(0, 2**62), "val_fraction": st.floats(0, 0.99), "accumulate": st.integers(1, 100),
        "input_noise": st.floats(0, 5), "batches": st.sampled_from(["auto", "random", "neighbors"]),
        "neighbors": st.integers(1, 60), "neighbor_pool": st.integers(60, 500),
        "neighbor_hops": st.integers(1, 3), "eval_rows": st.integers(2, 10**6)}),
    "output": st.fixed_dictionaries({"dir": paths, "report": st.booleans(), "plots": st.booleans(),
                                    "loggers": st.lists(st.sampled_from(["jsonl", "tensorboard"]), max_size=2,
                                                        unique=True)}),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.fixed_dictionaries(EVERY_FIELD))
def test_dump_toml_round_trips_every_field(tmp_path, doc):
    doc["teacher"] = {k: v for k, v in doc["teacher"].items() if v is not None}
    config = build_config(doc, tmp_path / "p.toml", REGISTRY)
    resolved = config.to_dict()
    for section, cls in SECTIONS.items():  # every field of every section is written out (τ lives in [schedule])
        obj = getattr(config, section)
        fields = {f.name for f in attrs.fields(cls) if f.name not in ("params", "tau")}
        assert {f for f in fields if getattr(obj, f) is not None} <= set(resolved[section]), section
        assert set(getattr(obj, "params", {})) <= set(resolved[section]), section
    again = tomllib.loads(dump_toml(resolved))
    assert again == resolved
    assert build_config(again, tmp_path / "p.toml", REGISTRY).to_dict() == resolved


def test_a_path_with_an_unknown_user_is_kept_as_written(tmp_path):
    config = build_config({"teacher": {"path": "~no-such-user-here/t.npy"}, "output": {"dir": "~no-such-user/run"}},
                          tmp_path / "p.toml", REGISTRY)
    assert config.teacher.path == str(tmp_path / "~no-such-user-here" / "t.npy")


def test_a_step_budget_replaces_the_default_epochs(tmp_path):
    steps = load(tmp_path, "[train]\nsteps_per_stage = 300").train
    assert steps.steps_per_stage == 300 and steps.epochs_per_stage is None
    plain = load(tmp_path, "").train
    assert plain.epochs_per_stage == 10 and plain.steps_per_stage is None
    assert "steps_per_stage" not in load(tmp_path, "").to_dict()["train"]  # unchanged hash for epoch runs
    assert load(tmp_path, "", ["train.steps_per_stage=50"]).train.steps_per_stage == 50
    switched = load(tmp_path, "[train]\nepochs_per_stage = 6", ["train.steps_per_stage=50"]).train
    assert (switched.steps_per_stage, switched.epochs_per_stage) == (50, None)  # --set replaces the file's budget
    back = load(tmp_path, "[train]\nsteps_per_stage = 50", ["train.epochs_per_stage=2"]).train
    assert (back.steps_per_stage, back.epochs_per_stage) == (None, 2)


def test_a_model_folder_beside_the_pipeline_file_resolves_against_its_folder(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "texts.txt").write_text("parse a CSV file\n")
    monkeypatch.chdir(tmp_path.parent)  # run from elsewhere: the pipeline's folder decides, not the working one
    doc = {"teacher": {"loader": "sentence-transformers", "path": "texts.txt", "model": "models/mine",
                       "embedder": {"loader": "sentence-transformers", "model": "models/mine"}}}
    config = build_config(doc, tmp_path / "p.toml", REGISTRY)
    assert config.teacher.params["model"] == str(tmp_path / "models" / "mine")
    assert config.teacher.embedder["model"] == str(tmp_path / "models" / "mine")
    # a name (nothing of that name beside the file) and an absolute path are passed on as written
    doc["teacher"]["model"] = doc["teacher"]["embedder"]["model"] = "sentence-transformers/all-MiniLM-L6-v2"
    config = build_config(doc, tmp_path / "p.toml", REGISTRY)
    assert config.teacher.params["model"] == config.teacher.embedder["model"] == doc["teacher"]["model"]
    doc["teacher"]["model"] = "/elsewhere/model"
    assert build_config(doc, tmp_path / "p.toml", REGISTRY).teacher.params["model"] == "/elsewhere/model"


def test_a_set_path_found_only_in_the_working_folder_is_named_with_the_rule(tmp_path, monkeypatch):
    """Relative paths resolve against the pipeline file's folder, also from --set; a file that the shell
    completed from the working folder gets a message saying so, not a bare "not found"."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "work").mkdir()
    pipe = write_pipeline(tmp_path / "cfg")
    (tmp_path / "work" / "mine.npy").write_bytes((EXAMPLE_NPY).read_bytes())
    monkeypatch.chdir(tmp_path / "work")
    one_error_line(run_cli(pipe, "--dry-run", "--set", "teacher.path=mine.npy"),
                   f"--set 'teacher.path=mine.npy': {tmp_path / 'cfg' / 'mine.npy'} does not exist: relative paths "
                   f"resolve against the pipeline file's folder ({tmp_path / 'cfg'}); the file is in the current "
                   f"folder, so give {tmp_path / 'work' / 'mine.npy'}")
    assert run_cli(pipe, "--dry-run", "--set", f"teacher.path={tmp_path / 'work' / 'mine.npy'}").returncode == 0
    (tmp_path / "cfg" / "mine.npy").write_bytes((EXAMPLE_NPY).read_bytes())  # beside the file: that one is read
    assert run_cli(pipe, "--dry-run", "--set", "teacher.path=mine.npy").returncode == 0


def test_a_bad_neighbor_hops_from_set_is_one_line_and_writes_nothing(tmp_path):
    pipe = write_pipeline(tmp_path)
    proc = run_cli(pipe, "--set", "train.neighbor_hops=4")
    one_error_line(proc, "train.neighbor_hops must be a positive integer (at most 3), got 4")
    assert not (tmp_path / "run").exists()
