"""The example third-party package, installed for real with pip, used by atlas-run, then uninstalled."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_atlas
from conftest import write_pipeline

PACKAGE = ROOT / "examples" / "atlas-plugin-example"
pytestmark = pytest.mark.slow


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed():
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = pip("install", "--no-deps", *isolation, str(PACKAGE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield
    finally:
        pip("uninstall", "-y", "atlas-plugin-example")


def test_list_plugins_shows_the_package(installed):
    listing = json.loads(run_atlas("--list-plugins", "--json", autoload=True).stdout)
    rkd = next(p for p in listing if p["name"] == "rkd-distance")
    assert (rkd["kind"], rkd["distribution"], rkd["version"]) == ("loss", "atlas-plugin-example", "0.1.0")
    assert "atlas-plugin-example 0.1.0" in run_atlas("--list-plugins", autoload=True).stdout


def test_the_package_own_tests_pass(installed):
    env = {k: v for k, v in os.environ.items() if k != "ATLAS_DISABLE_PLUGIN_AUTOLOAD"}  # it finds itself
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PACKAGE / "tests")],
                          capture_output=True, text=True, cwd=PACKAGE, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_atlas_run_trains_with_the_package_loss(installed, tmp_path):
    pipe = write_pipeline(tmp_path, loss='name = "rkd-distance"\ndelta = 0.5', stages=1, epochs=2)
    proc = run_atlas(pipe, "--quiet", autoload=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "student.pt").is_file()
    resolved = (tmp_path / "run" / "pipeline.toml").read_text()
    assert 'name = "rkd-distance"' in resolved and "delta = 0.5" in resolved
