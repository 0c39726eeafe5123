"""Every Python block of the users' quickstart guide runs unchanged against ``atlas.training``, and the files
its "Next Steps" names exist and do what it says."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from conftest import ROOT
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
