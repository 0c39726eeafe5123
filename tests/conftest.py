import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_NPY = ROOT / "examples" / "data" / "stdlib-minilm.npy"
EXAMPLE_META = ROOT / "examples" / "data" / "stdlib-minilm.jsonl"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_embeddings() -> np.ndarray:
    """Real all-MiniLM-L6-v2 embeddings (N, 384) of standard-library docstrings (the bundled example)."""
    return np.load(EXAMPLE_NPY)


@pytest.fixture
def real_batch(real_embeddings):
    """A small real teacher batch (16, 384) and a random student batch (16, 5) that wants gradients."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(real_embeddings.shape[0], generator=g)[:16]
    teacher = torch.from_numpy(real_embeddings[idx.numpy()]).double()
    student = torch.randn(16, 5, generator=g, dtype=torch.float64, requires_grad=True)
    return student, teacher


@pytest.fixture
def registry():
    """A fresh registry with the built-ins only (no entry-point discovery)."""
    from atlas_plugins import Registry

    return Registry(load_entrypoints=False)


def run_atlas(*args, cwd=None, env=None, timeout=300, input=None):
    """Run the real ``atlas-run`` entry point in a subprocess."""
    import os
    import subprocess

    full_env = dict(os.environ)
    full_env.pop("ATLAS_DISABLE_PLUGIN_AUTOLOAD", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "atlas_plugins.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)
