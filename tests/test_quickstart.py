"""Every Python block of the users' quickstart guide runs unchanged against ``atlas.training``, and the files
its "Next Steps" names exist and do what it says."""

import contextlib
import io
from collections import Counter
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EXAMPLE_NPY, ROOT
from mdblocks import code_blocks

GUIDE = Path(__file__).parent / "data" / "distillation-quickstart.md"


@pytest.fixture
def guide_workdir(tmp_path, monkeypatch, real_embeddings):
    """The folder the guide assumes: ``models/teacher_1536d.pt`` exists (a real, small teacher)."""
    (tmp_path / "models").mkdir()
    emb = torch.from_numpy(real_embeddings[:96]).repeat(1, 4)  # 384 -> 1536-D, still real directions
    torch.save({"embeddings": emb, "model_state": {"w": torch.zeros(2)}}, tmp_path / "models" / "teacher_1536d.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_python_block_runs_unchanged(guide_workdir):
    blocks = code_blocks(GUIDE, "python")
    assert len(blocks) >= 14
    # The multi-level section uses per-level tensors that the guide leaves to the reader.
    namespace = {"student_coarse": torch.randn(8, 5), "teacher_coarse": torch.randn(8, 5),
                 "student_fine": torch.randn(8, 25), "teacher_fine": torch.randn(8, 1536)}
    outputs = {}
    for _, code, line in blocks:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"{GUIDE.name}:{line}", "exec"), namespace)
        outputs[line] = buf.getvalue()
    assert "Training complete!" in "".join(outputs.values())
    assert torch.isfinite(namespace["total_loss"])


def test_curriculum_output_matches_the_guide(guide_workdir):
    blocks = code_blocks(GUIDE)
    for i, (lang, code, _) in enumerate(blocks):
        if "CURRICULUM_CONFIG" in code and "get_tau_for_stage" in code:
            expected = blocks[i + 1][1]
            break
    else:
        pytest.fail("curriculum block not found in the guide")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})
    assert buf.getvalue() == expected


def test_loaded_teacher_checkpoint_gives_embeddings_and_state(guide_workdir):
    from atlas.training import load_teacher_checkpoint

    ckpt = load_teacher_checkpoint("models/teacher_1536d.pt", device="cpu")
    assert ckpt["embeddings"].shape == (96, 1536)
    assert torch.equal(ckpt["model_state"]["w"], torch.zeros(2))


def test_facade_reexports_the_same_objects():
    import atlas.training
    import atlas_plugins

    for name in atlas.training.__all__:
        assert getattr(atlas.training, name) is getattr(atlas_plugins, name)


def test_the_files_the_guide_names_next_exist():
    named = re.findall(r"`((?:examples|docs|tests)/[^`]+)`", GUIDE.read_text().split("## Next Steps")[1])
    assert named == ["examples/distillation_example.py", "docs/HIERARCHICAL_IMPLEMENTATION.md",
                     "tests/test_distill.py"]
    assert all((ROOT / path).is_file() for path in named)


def _recall_at_10(teacher: np.ndarray, coords: np.ndarray) -> float:
    """Of each row's 10 nearest rows by teacher cosine, the share among its 10 nearest by map distance."""
    unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    near_t = np.argsort(-(unit @ unit.T) + np.eye(len(unit)) * 9, axis=1)[:, :10]
    dist = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1) + np.eye(len(coords)) * 1e9
    near_s = np.argsort(dist, axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(near_t, near_s)]))


@pytest.mark.slow
def test_the_example_script_trains_both_ways_and_prints_its_maps_recall(tmp_path):
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


def test_the_example_script_names_a_bad_epoch_count_and_trains_nothing(tmp_path):
    proc = subprocess.run([sys.executable, ROOT / "examples" / "distillation_example.py", "--epochs", "0",
                           "--out", tmp_path / "out"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == ("distillation_example.py: error: argument --epochs: expected a whole "
                                            "number >= 1, got '0'")
    assert not (tmp_path / "out").exists()
