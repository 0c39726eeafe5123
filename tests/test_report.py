"""The run report: axis cards and the plots."""

import html
import json
import re

import numpy as np
import pytest
import torch

from atlas_plugins import report as report_module
from atlas_plugins.pipeline import split_rows
from atlas_plugins.report import axis_cards
from conftest import EXAMPLE_META, EXAMPLE_NPY, MARKUP_TEXTS, markup_run, run_cli, write_pipeline


def test_axis_cards_show_each_text_once_from_both_ends():
    z = torch.tensor([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0], [5.0, 0.0]])
    texts = ["a", "a", "b", "c", "d", "d"]
    cards = axis_cards(z, texts, n=2)
    assert cards[0] == {"dim": 0, "low": ["a", "b"], "high": ["d", "c"]}
    assert cards[1] == {"dim": 1, "low": ["d", "c"], "high": ["a", "b"]}


def test_a_stage_that_starts_at_zero_loss_gets_no_relative_curve_and_no_warning(tmp_path, monkeypatch):
    """A stage whose loss is 0 from its first epoch (a plugin loss can be): 0 / 0 must not warn."""
    pytest.importorskip("matplotlib")
    import warnings

    from atlas_plugins.rundir import RunDir

    monkeypatch.setattr("atlas_plugins.rundir.atomic_write_bytes", lambda path, data: None)
    metrics = [{"stage": s, "train_loss": loss, "val_loss": None, "tau": 1.0}
               for s, loss in ((0, 0.0), (0, 0.0), (1, 2.0), (1, 1.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = report_module.plot(RunDir(tmp_path), metrics, {"z": np.random.rand(20, 5), "labels": None})
    assert names == ["training.png", "scatter.png"]


def test_corpus_recall_is_left_out_when_there_are_no_more_training_rows_than_k(tmp_path):
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:40])  # 8 training rows after the 80 % split
    path = write_pipeline(tmp_path, teacher='path = "t.npy"', stages=1, epochs=1, batch_size=8)
    path.write_text(path.read_text().replace("val_fraction = 0.2", "val_fraction = 0.8"))
    assert run_cli(path, "--quiet").returncode == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "corpus_recall@10 left out: it needs more than k = 10 training rows" in report["notes"]
    assert all("corpus_recall@10" not in m for m in report["methods"].values())


@pytest.mark.slow
def test_report_cards_come_from_every_row_and_plots_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "CORPUS_SCORES", 300 * 500)  # the corpus search in blocks of 500 rows
    path = write_pipeline(tmp_path, stages=2, epochs=2)
    path.write_text(path.read_text().replace("plots = false", "plots = true"))
    assert run_cli(path, "--quiet").returncode == 0
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    texts = [json.loads(line)["text"] for line in EXAMPLE_META.read_text().splitlines()]
    assert report["axis_cards_from"] == f"all {len(texts):,} teacher rows (training and validation), each text once"
    for card in report["axis_cards"]:
        assert len(set(card["low"])) == 5 and len(set(card["high"])) == 5 and set(card["low"]) <= set(texts)
    assert "from all 2,642 teacher rows" in (run / "report.md").read_text()
    assert report["plots"] == ["training.png", "scatter.png"]
    import matplotlib.image

    assert matplotlib.image.imread(run / "training.png").shape[:2] == (700, 800)  # the two panels
    assert matplotlib.image.imread(run / "scatter.png").shape[:2] == (950, 1100)  # a 5 x 5 scatter matrix

    # corpus_recall@10, computed again by full sorts in float64 from the teacher file and map.parquet
    import pyarrow.parquet as pq

    teacher = np.load(EXAMPLE_NPY).astype(np.float64)
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    table = pq.read_table(run / "map.parquet").to_pydict()
    coords = np.stack([table[f"dim_{d}"] for d in range(5)], axis=1).astype(np.float64)  # rows in file order
    split = np.array(table["split"])
    train, queries = np.flatnonzero(split == "train"), np.flatnonzero(split == "eval")
    assert len(queries) == report["rows"] == 300
    near_teacher = np.argsort(-(teacher[queries] @ teacher[train].T), axis=1)[:, :10]
    near_map = np.argsort(((coords[queries, None, :] - coords[None, train, :]) ** 2).sum(-1), axis=1)[:, :10]
    expected = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(near_teacher, near_map)])
    assert report["student"]["corpus_recall@10"] == pytest.approx(expected, abs=0.002)
    assert 0 < expected < 1 and "corpus_recall@10" in report["methods"]["PCA"]


def test_texts_and_labels_that_look_like_markup_show_as_written(tmp_path):
    """Axis cards render in a CommonMark viewer as the texts themselves (newlines as spaces), and a label
    that is not valid mathtext (``$\\frac$``) no longer stops the run when scatter.png is drawn."""
    from markdown_it import MarkdownIt

    run = markup_run(tmp_path)
    assert json.loads((run / "report.json").read_text())["plots"] == ["training.png", "scatter.png"]
    page = MarkdownIt().render((run / "report.md").read_text())
    assert page.count("<h1>") == 1 and "<script>" not in page and "<img" not in page
    cards = re.findall(r"<li><strong>(?:low|high):</strong> (.*?)</li>", page)
    shown = [html.unescape(text) for card in cards for text in card.split(" · ")]
    written = {" ".join(f"{MARKUP_TEXTS[i % 3]} {i}".split()) for i in range(400)}
    assert len(cards) == 10 and len(shown) == 50 and set(shown) <= written


def test_the_report_says_how_many_rows_the_label_accuracy_counts(tmp_path):
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:400])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2] if i % 4 else None})
                                              + "\n" for i in range(400)))
    path = write_pipeline(tmp_path, teacher='path = "t.npy"\nmeta = "m.jsonl"', stages=1, epochs=1)
    assert run_cli(path, "--quiet").returncode == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    held_out = split_rows(400, 0.2, 0)[1]  # the pipeline's split: the 80 validation rows, all measured
    labelled = sum(i % 4 != 0 for i in held_out.tolist())
    assert f"knn_label_acc@10 is measured among the {labelled} of 80 rows that have a label" in report["notes"]
    assert "knn_label_acc@10" in report["student"]
    assert f"among the {labelled} of 80 rows that have a label" in (tmp_path / "run" / "report.md").read_text()


def test_labels_that_name_each_row_or_none_get_no_label_accuracy(tmp_path):
    """A meta file whose label is each row's id: k-NN label accuracy was 0.000 for every method, a metric that
    could not be anything else and read as a failed map (and 1.000 with one label for all); now it is left
    out, and the note says why."""
    np.save(tmp_path / "t.npy", np.load(EXAMPLE_NPY)[:400])
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": f"id-{i}" if i % 4 else None})
                                              + "\n" for i in range(400)))
    path = write_pipeline(tmp_path, teacher='path = "t.npy"\nmeta = "m.jsonl"', stages=1, epochs=1)
    assert run_cli(path, "--quiet").returncode == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    labelled = sum(i % 4 != 0 for i in split_rows(400, 0.2, 0)[1].tolist())
    assert f"knn_label_acc@10 left out: no two of the {labelled} rows share a label, so no neighbour can have a " \
           "row's own; labels should name groups of rows (a topic, a source), not each row" in report["notes"]
    assert not [name for name, m in report["methods"].items() if "knn_label_acc@10" in m]
    assert not [n for n in report["notes"] if "is measured among" in n]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": "io"}) + "\n" for i in range(400)))
    assert run_cli(path, "--quiet", "--overwrite").returncode == 0  # one label for all: 1.000, as meaningless
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "knn_label_acc@10 left out: every one of the 80 rows has the label 'io', so every neighbour has a row's " \
           "own; labels should name groups of rows (a topic, a source), not each row" in report["notes"]
    assert not [name for name, m in report["methods"].items() if "knn_label_acc@10" in m]


def test_a_map_too_sparse_for_the_corpus_is_named_when_refine_lowers_corpus_recall(tmp_path):
    """map.pt with 60 of 2,114 training rows: refine pulls new points towards rows far from their nearest."""
    student = 'name = "mlp"\ndim = 5\nhidden = [64, 64]'
    shown = {}
    for rows in (60, 50_000):
        path = write_pipeline(tmp_path, f"map_rows = {rows}\n", loss='name = "neighbors"', student=student,
                              stages=2, epochs=3, output=f"run{rows}")
        proc = run_cli(path, "--quiet")
        assert proc.returncode == 0, proc.stderr
        report = json.loads((tmp_path / f"run{rows}" / "report.json").read_text())
        corpus = {name: m["corpus_recall@10"] for name, m in report["methods"].items()}
        shown[rows] = [n for n in report["notes"] if n.startswith("refine lowers")], corpus, proc.stdout
    (note,), corpus, stdout = shown[60]
    assert min(corpus[f"student + refine {e}"] for e in (3, 6, 10)) < corpus["student"]
    assert note.startswith(f"refine lowers corpus_recall@10 (student {corpus['student']:.3f}, refine 3/6/10 "
                           f"{corpus['student + refine 3']:.3f}/")
    assert note.endswith("map.pt holds 60 of 2,114 training rows, too few to place new points among their "
                         "nearest; raise output.map_rows (up to 2,114; refine slows with it)")
    assert f"note: {note}\n" in stdout and f"Note: {note}." in (tmp_path / "run60" / "report.md").read_text()
    assert shown[50_000][0] == []  # every training row is in the map


@pytest.mark.parametrize("refined, noted", [((0.025, 0.031, 0.035), True), ((0.061, 0.065, 0.066), False)])
def test_the_sparse_map_note_needs_every_refine_setting_below_the_student(refined, noted):
    key = "corpus_recall@10"
    methods = {"student": {key: 0.064}, **{f"student + refine {e}": {key: v} for e, v in zip((3, 6, 10), refined)}}
    expected = [f"refine lowers {key} (student 0.064, refine 3/6/10 {refined[0]:.3f}/{refined[1]:.3f}/"
                f"{refined[2]:.3f}): map.pt holds 50,000 of 195,000 training rows, too few to place new points "
                "among their nearest; raise output.map_rows (up to 195,000; refine slows with it)"]
    assert report_module._sparse_map_note(methods, key, 50_000, 195_000) == (expected if noted else [])
    assert report_module._sparse_map_note(methods, key, 195_000, 195_000) == []  # every training row is in the map


def test_atlas_run_names_a_student_below_pca(tmp_path):
    """One epoch of one stage: the map keeps fewer neighbours than a PCA projection, and the run says so."""
    proc = run_cli(write_pipeline(tmp_path, stages=1, epochs=1), "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    student, pca = report["student"]["recall@10"], report["pca"]["recall@10"]
    assert student < pca
    note = (f"the student keeps fewer of each row's 10 nearest neighbours than PCA (recall@10 {student:.3f} against "
            f"{pca:.3f}): train longer (train.epochs_per_stage is 1); a map that stays below PCA is not worth "
            "training on this data")
    assert note in report["notes"]
    assert f"note: {note}\n" in proc.stdout and f"Note: {note}." in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("student, budget, noted", [
    (0.062, {"epochs_per_stage": 1}, "train.epochs_per_stage is 1"),
    (0.150, {"steps_per_stage": 2000}, "train.steps_per_stage is 2,000"),
    (0.214, {"epochs_per_stage": 1}, None),  # as many as PCA: no note
    (0.364, {"epochs_per_stage": 10}, None)])
def test_a_student_below_pca_is_named_with_its_budget(student, budget, noted):
    from atlas_plugins.config import TrainSection

    methods = {"PCA": {"recall@10": 0.214}, "student": {"recall@10": student}}
    expected = [f"the student keeps fewer of each row's 10 nearest neighbours than PCA (recall@10 {student:.3f} "
                f"against 0.214): train longer ({noted}); a map that stays below PCA is not worth training on this "
                "data"] if noted else []
    assert report_module._below_pca_note(methods, 10, TrainSection(**budget)) == expected
