import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_NPY = ROOT / "examples" / "data" / "stdlib-minilm.npy"
EXAMPLE_META = ROOT / "examples" / "data" / "stdlib-minilm.jsonl"
SHARED_DATA = ROOT.parent / "shared" / "data"


def example_rows(n: int, longest: int | None = 160) -> list[dict]:
    """The bundled example's first ``n`` rows (``text``, ``label``), each text cut to its first ``longest``
    characters (None: whole).  MiniLM spends its time on the few long docstrings (up to 1,370 characters, past
    its 256 tokens): on one core it embeds 120 whole texts in about 9 s, 120 cut ones in under 2 s."""
    rows = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()[:n]]
    return [{**row, "text": row["text"][:longest]} for row in rows] if longest else rows


NEW_INTERPRETER = ("run_atlas(", "popen_atlas(", "torchrun(", "subprocess.")


def pytest_configure(config):
    """Tests run in parallel, a pytest-xdist worker per core (``-n auto`` in pyproject.toml): each worker, and
    every atlas-run it starts, computes on one thread, so no core holds two workers' OpenMP threads spinning
    against each other (which made the parallel suite slower than a serial one)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests that start atlas-run in a new interpreter take seconds each (importing torch, building the first
    optimizer), so they are marked ``slow`` here, in one place, unless marked ``smoke``: ``pytest -m "not slow"``
    stays quick for the edit-test loop, with a few real end-to-end runs, while CI runs everything."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or item.get_closest_marker("smoke") or item.get_closest_marker("slow"):
            continue
        if any(call in inspect.getsource(fn) for call in NEW_INTERPRETER):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def builtin_plugins_only(monkeypatch, tmp_path):
    """In-process code sees the built-ins only, whatever is installed, and a fresh process registry per test;
    the text teacher's shared embedding cache is a folder of this test's own (subprocesses inherit it)."""
    from atlas_plugins import reset_registry

    monkeypatch.setenv("ATLAS_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("ATLAS_CACHE_DIR", str(tmp_path / "shared-cache"))
    reset_registry()
    yield
    reset_registry()


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


class MakesAFile:
    """Unpickling this calls open(path, "w"): proof that a loader executed the file's pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import builtins

        return (builtins.open, (self.path, "w"))


@pytest.fixture
def evil_teacher(tmp_path):
    """A teacher ``.pt`` whose pickle would create the file ``marker`` when loaded without weights_only."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"embeddings": torch.randn(300, 384), "payload": MakesAFile(marker)}, path)
    return path, marker


def run_atlas(*args, cwd=None, env=None, timeout=1200, input=None, autoload=None):
    """Run the real ``atlas-run`` entry point in a subprocess.

    Installed third-party plugins are loaded only when the test asks (``autoload=True``, or an ``env`` from
    :func:`plugin_env`, which adds a plugin site to ``PYTHONPATH``), so no test depends on which plugins
    happen to be installed."""
    full_env = dict(os.environ)
    full_env.pop("ATLAS_DISABLE_PLUGIN_AUTOLOAD", None)
    if not (autoload if autoload is not None else "PYTHONPATH" in (env or {})):
        full_env["ATLAS_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "atlas_plugins.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def run_in_terminal(*args, program="atlas-run", env=None, inherit_env=True, timeout=1200):
    """``atlas-run`` (or ``atlas-encode``) in a subprocess whose stderr is a 100-column pseudo-terminal:
    ``(returncode, stdout, what the terminal showed)``.  ``env`` is added to this process's environment
    (``inherit_env=False``: it is the whole environment); built-in plugins only.  Stdout is read once the
    terminal closes, so it must fit in a pipe's buffer (a report, not JSON lines of every row)."""
    import fcntl
    import pty
    import struct
    import termios

    full_env = {**(os.environ if inherit_env else {}), "ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing at 0 columns
    command = ([sys.executable, "-m", "atlas_plugins.cli"] if program == "atlas-run"
               else [str(Path(sys.executable).with_name(program))])
    proc = subprocess.Popen([*command, *map(str, args)], stdout=subprocess.PIPE, stderr=terminal,
                            stdin=subprocess.DEVNULL, text=True, env=full_env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not data:
            break
        chunks.append(data.decode(errors="replace"))
    out = proc.stdout.read()
    proc.wait(timeout=timeout)
    os.close(controller)
    return proc.returncode, out, "".join(chunks)


def run_cli(*args, env=None, program="atlas-run", stdin=b""):
    """``atlas-run`` in this process (``atlas_plugins.cli.main``): the same code and messages as
    :func:`run_atlas` without a new interpreter (torch takes seconds to import), for the many bad-input
    cases; built-in plugins only. The real entry point in a subprocess is :func:`run_atlas`."""
    import contextlib
    import io
    import warnings

    from atlas_plugins import reset_registry
    from atlas_plugins.cli import encode_main, main

    saved, saved_stdin = dict(os.environ), sys.stdin
    os.environ.update({"ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})})
    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.StringIO()  # .buffer, as sys.stdout has
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    reset_registry()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = {"atlas-run": main, "atlas-encode": encode_main}[program]([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sys.stdin = saved_stdin
        reset_registry()
    out.flush()
    return subprocess.CompletedProcess([program, *map(str, args)], code, out.buffer.getvalue().decode(), err.getvalue())


def write_pipeline(folder, extra="", *, teacher=None, stages=2, epochs=2, name="pipeline.toml",
                   student="name = \"mlp\"\ndim = 5\nhidden = [32]", loss="name = \"relational\"", output="run",
                   batches="random", batch_size=128):
    """A small pipeline on the bundled example; random batches keep test runs short (neighbour batches of 128
    rows hold 8 anchors, so an epoch takes 16 times the steps)."""
    teacher = teacher or f'path = "{EXAMPLE_NPY}"\nmeta = "{EXAMPLE_META}"'
    sched = f'[schedule]\nname = "cosine"\nstart = 0.2\nend = 0.05\nstages = {stages}\n'
    text = (f"[teacher]\n{teacher}\n[student]\n{student}\n[loss]\n{loss}\n{sched}"
            "[train]\n" + (f"epochs_per_stage = {epochs}\n" if epochs is not None else "")
            + f"batch_size = {batch_size}\nlearning_rate = 2e-3\nseed = 0\n"
            f"batches = \"{batches}\"\n"
            f"val_fraction = 0.2\neval_rows = 300\n[output]\ndir = \"{output}\"\nplots = false\n{extra}")
    path = folder / name
    path.write_text(text)
    return path


MARKUP_TEXTS = ["super(__class__, <first argument>): a<b and c>d, **kwargs, `code`, [a](x) & __init__",
                "</script><img src=x onerror=alert(1)>\n# not a heading", "costs $5 and $10, or $\\frac$"]
MARKUP_LABELS = ["$\\frac$", "_private", "<module>", "a*b*"]


def markup_run(folder):
    """A one-epoch run with plots on 400 rows of the example whose texts and labels are full of characters
    Markdown, HTML, plotly and matplotlib's mathtext would read as markup; returns the run folder."""
    np.save(folder / "t.npy", np.load(EXAMPLE_NPY)[:400])
    meta = [{"text": f"{MARKUP_TEXTS[i % 3]} {i}", "label": MARKUP_LABELS[i % 4]} for i in range(400)]
    (folder / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in meta))
    path = write_pipeline(folder, teacher='path = "t.npy"\nmeta = "t.jsonl"', stages=1, epochs=1)
    path.write_text(path.read_text().replace("plots = false", "plots = true"))
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    run = folder / "run"
    assert done.stdout.splitlines()[-1].endswith(f"; see {run / 'report.md'} and {run / 'map.html'}")  # where to look
    return run


def weights(path):
    from atlas_plugins import load_student

    return load_student(path).module.state_dict()


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_error_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    program = "atlas-encode" if "encode" in str(proc.args[0]) else "atlas-run"
    assert len(lines) == 1 and lines[0].startswith(f"{program}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def make_distribution(root, dist, module, code, ep_name=None, version="1.0"):
    """Make ``dist`` visible to importlib.metadata: a module plus a ``*.dist-info`` with entry_points.txt."""
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[atlas.plugins]\n{ep_name or module} = {module}\n")


def plugin_env(tmp_path, dist, module, code):
    """Environment for a subprocess that sees ``dist`` as an installed distribution (via PYTHONPATH)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    make_distribution(site, dist, module, code)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


