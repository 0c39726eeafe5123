"""``map.parquet`` / ``map.csv`` and ``map.html``: every row's coordinates, for other tools and for a browser."""

import csv
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atlas_plugins import load_student
from atlas_plugins.pipeline import split_rows
from conftest import EXAMPLE_META, EXAMPLE_NPY, MARKUP_LABELS, MARKUP_TEXTS, markup_run, run_cli, write_pipeline

N = len(np.load(EXAMPLE_NPY, mmap_mode="r"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small run on the bundled example with plots (training.png, scatter.png, map.html)."""
    folder = tmp_path_factory.mktemp("maps")
    path = write_pipeline(folder, stages=1, epochs=1)
    path.write_text(path.read_text().replace("plots = false", "plots = true"))
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    return folder / "run"


def test_map_parquet_holds_every_row_with_its_split_text_and_label(run):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(run / "map.parquet")
    assert table.column_names == ["dim_0", "dim_1", "dim_2", "dim_3", "dim_4", "id", "split", "text", "label"]
    assert table.num_rows == N and table["id"].to_pylist() == list(range(N))
    meta = [json.loads(line) for line in EXAMPLE_META.read_text().splitlines()]
    assert table["text"].to_pylist() == [m["text"] for m in meta]
    assert table["label"].to_pylist() == [m["label"] for m in meta]
    train, val = split_rows(N, 0.2, 0)  # the pipeline's split: val_fraction 0.2, seed 0; eval_rows = 300
    split = np.array(table["split"].to_pylist())
    assert (split[train] == "train").all() and (split[val[:300]] == "eval").all() and (split[val[300:]] == "val").all()
    z = np.stack([table[f"dim_{i}"].to_numpy() for i in range(5)], 1)
    assert np.allclose(z, load_student(run).encode(np.load(EXAMPLE_NPY)), atol=1e-6)


def test_without_pyarrow_the_map_is_a_csv(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    done = run_cli(write_pipeline(tmp_path, stages=1, epochs=1), "--quiet")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "run" / "map.parquet").exists()
    with open(tmp_path / "run" / "map.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N and rows[0]["text"] and rows[0]["split"] in ("train", "val", "eval")
    z = np.array([[float(r[f"dim_{i}"]) for i in range(5)] for r in rows], dtype=np.float32)
    assert np.array_equal(z, load_student(tmp_path / "run").encode(np.load(EXAMPLE_NPY)))


def test_map_html_is_self_contained_with_axis_menus(run):
    needs_plotly()
    html = (run / "map.html").read_text()
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and not [tag for tag in scripts if "src=" in tag]  # plotly.js inlined: nothing is fetched
    assert not re.findall(r"<link\b[^>]*>", html)
    assert len(html) > 1_000_000 and '"x: dim_4"' in html and '"y: dim_0"' in html
    assert "Abstract Base Classes" in html  # the texts are the hover text


@pytest.mark.slow
def test_without_plotly_map_html_is_skipped_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)
    path = write_pipeline(tmp_path, stages=1, epochs=1)
    path.write_text(path.read_text().replace("plots = false", "plots = true"))
    done = run_cli(path, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "map.html skipped: plotly is not installed; pip install 'atlas-distill[plots]'" in done.stderr
    assert not (tmp_path / "run" / "map.html").exists() and (tmp_path / "run" / "scatter.png").is_file()


@pytest.mark.slow
def test_a_hierarchical_map_offers_both_levels(tmp_path):
    needs_plotly()
    path = write_pipeline(tmp_path, stages=1, epochs=1, student='name = "hierarchical"\ndim = 2',
                          loss='name = "hierarchical"')
    path.write_text(path.read_text().replace("plots = false", "plots = true"))
    assert run_cli(path, "--quiet").returncode == 0
    html = (tmp_path / "run" / "map.html").read_text()
    assert '"x: level1_3"' in html and '"y: dim_1"' in html


def needs_plotly() -> None:
    pytest.importorskip("plotly", reason="map.html needs the 'plots' extra")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("needs headless Chromium (Debian: apt-get install chromium; .ci/run installs it)")
    return found


@pytest.mark.slow
def test_map_html_renders_every_point_in_a_real_browser(run):
    needs_plotly()
    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    url = (run / "map.html").as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout
    assert dom.count('class="point"') == N  # one SVG marker per row of the example (below the 5,000 shown)
    assert dom.count('class="legendtext"') == 11  # the ten most common labels and "other"
    shot = run / "map-screenshot.png"
    subprocess.run([*flags, "--window-size=1200,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=300, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1200) and pixels.std() > 0.05  # a picture, not a blank page


def test_rows_without_a_label_are_drawn_as_other_not_as_a_label_named_none():
    needs_plotly()
    from atlas_plugins.mapfiles import map_figure

    z = np.arange(10, dtype=np.float64).reshape(5, 2)
    fig = map_figure(z, ["x", "y"], ["a", None, "a", None, None], ["h"] * 5, "t")
    assert [(trace.name, list(trace.x)) for trace in fig.data] == [("a", [0.0, 4.0]), ("other", [2.0, 6.0, 8.0])]


HOVER_EACH_TRACE = """<script>
const gd = document.querySelector(".plotly-graph-div"), seen = [];
function hover(k) {  // the first point of each trace in turn; what its hover label shows goes into <pre>
  if (k > 0) seen.push(document.querySelector(".hoverlayer .hovertext").textContent);
  if (k == gd.data.length) { document.body.insertAdjacentHTML("beforeend", "<pre id=seen></pre>");
                             document.getElementById("seen").textContent = JSON.stringify(seen); return; }
  Plotly.Fx.hover(gd, [{curveNumber: k, pointNumber: 0}]);
  setTimeout(() => hover(k + 1), 200);
}
setTimeout(() => hover(0), 500);
</script>"""


@pytest.mark.slow
def test_texts_and_labels_that_look_like_html_show_as_written_in_a_browser(tmp_path):
    """Plotly reads hover texts, legend names and the title as a subset of HTML: unescaped, a legend showed
    ``a<b and c>d`` as ``a`` and a bold ``d``, and ``<module>`` not at all."""
    needs_plotly()
    browser = chromium()
    run = markup_run(tmp_path)
    page = run / "hover.html"
    page.write_text((run / "map.html").read_text().replace("</body>", HOVER_EACH_TRACE + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=300).stdout
    legend = [html.unescape(t) for t in re.findall(r'class="legendtext"[^>]*>(.*?)</text>', dom)]
    assert legend == MARKUP_LABELS
    hovered = json.loads(html.unescape(re.search(r'<pre id="seen">(.*?)</pre>', dom).group(1)))
    # trace k holds label k, and its first point is row k (each trace keeps the rows in file order)
    split = ["eval" if k in split_rows(400, 0.2, 0)[1] else "train" for k in range(4)]
    shows = [" ".join(text.split()) for text in MARKUP_TEXTS]  # a newline shows as a space
    assert hovered == [f"{shows[k % 3]} {k}label: {MARKUP_LABELS[k]}id {k} · {split[k]}" for k in range(4)]
    assert "<img" not in dom  # no element came from a text


@pytest.mark.slow
def test_map_parquet_opens_in_embedding_atlas(run, tmp_path):
    atlas = shutil.which("embedding-atlas") or str(Path(sys.executable).with_name("embedding-atlas"))
    if not Path(atlas).exists():
        pytest.skip("needs Apple's embedding-atlas (pip install embedding-atlas)")
    pq = pytest.importorskip("pyarrow.parquet")
    import zipfile

    proc = subprocess.run([atlas, run / "map.parquet", "--x", "dim_0", "--y", "dim_1", "--text", "text",
                           "--export-application", tmp_path / "app.zip"], capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "app.zip") as app:
        meta = json.loads(app.read("data/metadata.json"))
        app.extract("data/dataset.parquet", tmp_path)
    data = meta["props"]["data"]
    assert data["projection"] == {"x": "dim_0", "y": "dim_1"} and data["text"] == "text"
    assert pq.read_table(tmp_path / "data" / "dataset.parquet").num_rows == N
