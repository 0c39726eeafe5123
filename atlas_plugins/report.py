"""The run report: the student (alone and refined) vs PCA, and UMAP on request, on held-out rows.

``report.json`` and ``report.md`` hold one row per method (metrics and encode speed), plots and axis cards.
Besides the metrics among the held-out rows themselves (:func:`atlas_plugins.evaluation.evaluate`), each
method gets ``corpus_recall@10``: the share of each held-out row's 10 nearest *training* rows (teacher
cosine) that are among its 10 nearest training rows on the map (student Euclidean, the training rows at their
encoded coordinates).  That is what a user sees placing a new text on a map of their corpus; among 5,000
held-out rows of 200,000, the first metric's 10 nearest are about the corpus's 400 nearest.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .evaluation import evaluate, pca_fit, pca_projector, pca_transform
from .neighbors import graph_recall, release_freed_memory, streamed_topk
from .refine import REFINE_MAX_DIMS, refines
from .rundir import RunDir

K = 10
PCA_FIT_ROWS = 20000
CORPUS_SCORES = 2**23  # query x training-row scores the corpus search holds at once (32 MB of float32)
REFINE_EPOCHS = (3, 6, 10)  # the refine settings the report (and benchmarks/quality.py) measure


def _throughput(fn, x, min_seconds: float = 0.2, warmed_up: bool = False) -> float:
    """Vectors per second of ``fn(x)``: repeated until ``min_seconds`` have passed (once at least), after a
    warm-up call unless the caller has just made one (``warmed_up``)."""
    if not warmed_up:
        fn(x)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return reps * x.shape[0] / elapsed


def axis_cards(z: torch.Tensor, texts, n: int = 5) -> list[dict]:
    """For each student dimension, the ``n`` distinct texts at its low and at its high end (``z`` ``(N, D)``,
    one text per row; a text repeated in the data is shown once, a row without one ("") not at all)."""
    def distinct(order):
        seen: list[str] = []
        for i in order:
            if texts[i] and texts[i] not in seen:
                seen.append(texts[i])
                if len(seen) == n:
                    break
        return seen
    cards = []
    for d in range(z.shape[1]):
        order = torch.argsort(z[:, d]).tolist()
        cards.append({"dim": d, "low": distinct(order), "high": distinct(reversed(order))})
    return cards


def build_report(pipe, student, metrics: list[dict], coords: np.ndarray) -> tuple[dict, dict]:
    """Compute the report; returns ``(report, arrays)`` where arrays holds what the plots need.

    ``coords``: the first level's coordinates of every teacher row ``(N, D)`` (from ``map.parquet``'s pass
    over the file, :func:`atlas_plugins.mapfiles.write_map_table`), for the axis cards.

    ``report["methods"]`` maps each method's name to its metrics and ``vectors_per_s``; ``report["student"]``
    and ``report["pca"]`` are the student's and PCA's metrics alone.
    """
    cfg = pipe.config
    rows = pipe.val_rows[: cfg.train.eval_rows]
    held_out = len(pipe.val_rows) > 3 * K  # a train.eval_rows below that still measures held-out rows, as asked
    if not held_out:  # no validation split: measure on (a sample of) the training rows, and say so
        rows = pipe.train_rows[np.random.default_rng(cfg.train.seed).permutation(len(pipe.train_rows))
                               [: cfg.train.eval_rows]]
        rows.sort()
    x = pipe.teacher.rows(rows)
    labels = [pipe.teacher.labels[i] for i in rows] if pipe.teacher.labels is not None else None
    k = min(K, len(rows) - 1)  # a point's neighbours are the other rows: at most N - 1 of them
    notes = [f"k = {k} instead of {K}: only {len(rows)} rows to measure on"] if k < K else []
    if k == len(rows) - 1:  # true of any map, the student's, PCA's or a random one: not a finding
        notes.append(f"recall@{k} is 1 for any map here: among {len(rows)} rows a row's {k} nearest are all the "
                     "others; measure on more rows (train.eval_rows, train.val_fraction) to compare maps")
    if k >= len(rows) / 2:
        notes.append(f"trustworthiness@{k} left out: it needs k < rows / 2")
    labelled = sum(lab is not None for lab in labels) if labels is not None else 0
    kinds = {lab for lab in labels if lab is not None} if labels is not None else set()
    scored = labels  # what knn_label_acc reads: not labels every neighbour has, or none can (each row's own)
    if labelled >= 2 and len(kinds) in (1, labelled):
        why = (f"every one of the {labelled:,} rows has the label {next(iter(kinds))!r}, so every neighbour has a "
               "row's own" if len(kinds) == 1 else f"no two of the {labelled:,} rows share a label, so no neighbour "
               "can have a row's own")
        notes.append(f"knn_label_acc@{k} left out: {why}; labels should name groups of rows (a topic, a source), "
                     "not each row")
        scored = None
    elif labels is not None and labelled < len(rows):
        notes.append(f"knn_label_acc@{k} is measured among the {labelled:,} of {len(rows):,} rows that have a label"
                     if labelled >= 2 else f"knn_label_acc@{k} left out: it needs at least 2 rows with a label")
    student.module.to("cpu")
    z = student.encode(x)
    levels = z if isinstance(z, tuple) else (z,)
    rng = np.random.default_rng(cfg.train.seed)
    fit_rows = np.sort(rng.permutation(len(pipe.train_rows))[:PCA_FIT_ROWS])
    t0 = time.perf_counter()
    mean, comps = pca_fit(pipe.teacher.rows(pipe.train_rows[fit_rows]), levels[0].shape[1])
    placed = {"PCA": pca_transform(x, mean, comps), "student": levels[0]}  # what corpus_recall measures
    methods = {"PCA": {**evaluate(x, placed["PCA"], scored, k),
                       "fit_seconds": round(time.perf_counter() - t0, 3),
                       "vectors_per_s": _throughput(pca_projector(mean, comps), x)}}
    if cfg.output.umap:
        methods["UMAP + transform"] = _umap(pipe, x, scored, k, levels[0].shape[1], fit_rows)
    methods["student"] = {**evaluate(x, levels[0], scored, k),
                          "vectors_per_s": _throughput(student.encode, x, warmed_up=True)}
    training_map = student.training_map
    wide = [f"{lv.shape[1]}-D" for lv in levels if not refines(lv.shape[1])]
    if training_map is not None and held_out:
        notes.append(f"refine searches the map's {training_map.vectors.shape[0]:,} training rows in "
                     f"{training_map.dims} of {training_map.teacher_dim} principal components")
        if wide:
            notes.append(f"refine keeps the student's output on its {', '.join(wide)} level: it moves maps of at most "
                         f"{REFINE_MAX_DIMS} dimensions")
        for epochs in REFINE_EPOCHS:
            encode = lambda v, e=epochs: student.encode(v, refine=e, seed=cfg.train.seed)  # noqa: E731
            refined = encode(x)
            placed[f"student + refine {epochs}"] = refined[0] if isinstance(refined, tuple) else refined
            methods[f"student + refine {epochs}"] = {
                **evaluate(x, placed[f"student + refine {epochs}"], scored, k),
                "vectors_per_s": _throughput(encode, x, min_seconds=0.0, warmed_up=True)}
    elif student.training_map is not None:
        notes.append("refine left out: the rows measured are training rows, already in the map")
    elif len(wide) == len(levels):
        notes.append(f"refine left out: it places points on maps of at most {REFINE_MAX_DIMS} dimensions, and this "
                     f"student's is {wide[0]}")
    if held_out and len(pipe.train_rows) <= k:
        notes.append(f"corpus_recall@{k} left out: it needs more than k = {k} training rows")
    elif held_out:
        truth, pca_corpus = _corpus_neighbours(pipe, x, k, pca_projector(mean, comps))
        corpus = {"PCA": pca_corpus, "student": torch.from_numpy(coords[pipe.train_rows])}
        for name, z in placed.items():
            methods[name][f"corpus_recall@{k}"] = _corpus_recall(truth, z, corpus.get(name, corpus["student"]))
        if "UMAP + transform" in methods:
            notes.append("UMAP has no corpus_recall: it places only the rows it was fitted on, not every "
                         "training row")
        if training_map is not None:
            notes += _sparse_map_note(methods, f"corpus_recall@{k}", len(training_map.vectors), len(pipe.train_rows))
    notes += _below_pca_note(methods, k, cfg.train)
    report = {
        "rows": len(rows), "held_out": held_out, "k": k, "notes": notes, "methods": methods,
        "rows_available": len(pipe.val_rows if held_out else pipe.train_rows),  # rows is a sample of these
        "student": _metrics(methods["student"]), "pca": _metrics(methods["PCA"]),
        "encode_vectors_per_s": methods["student"]["vectors_per_s"],
        "pca_transform_vectors_per_s": methods["PCA"]["vectors_per_s"],
        "train_seconds": round(sum(m["seconds"] for m in metrics), 3),
        "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
        "final_val_loss": metrics[-1]["val_loss"] if metrics else None,
    }
    if len(levels) > 1:
        report["levels"] = {f"level {i} ({lv.shape[1]}-D)": evaluate(x, lv, scored, k) for i, lv in enumerate(levels)}
    if pipe.teacher.texts is not None:
        report["axis_cards"] = axis_cards(torch.from_numpy(coords), pipe.teacher.texts)
        report["axis_cards_from"] = (f"all {pipe.teacher.num_rows:,} teacher rows (training and validation), "
                                     "each text once")
    return report, {"z": levels[0].numpy(), "labels": labels}


def _sparse_map_note(methods: dict, key: str, map_rows: int, train_rows: int) -> list[str]:
    """A note when refine lowers ``key`` (corpus recall) because ``map.pt`` holds a sample of the training rows:
    refine pulls a new point towards its nearest *map* rows, which in a sample a tenth of the corpus are about
    its 100 nearest training rows, not its 10 (200,000 PyPI summaries: 0.040 → 0.030 with 20,000 map rows,
    0.045 with 50,000; docs/scaling.md).  Measured, not predicted: the note appears only when every refine
    setting measured lowered it (a short refine alone can dip while longer ones gain: 0.064 → 0.061 at refine 3,
    0.065 at 6, 50,000 of 195,000 rows)."""
    refined = {n: m[key] for n, m in methods.items() if n.startswith("student + refine") and key in m}
    alone = methods["student"].get(key)
    if map_rows >= train_rows or alone is None or not refined or max(refined.values()) >= alone:
        return []
    epochs = "/".join(n.removeprefix("student + refine ") for n in refined)
    return [f"refine lowers {key} (student {alone:.3f}, refine {epochs} "
            f"{'/'.join(f'{v:.3f}' for v in refined.values())}): map.pt holds {map_rows:,} of {train_rows:,} training "
            f"rows, too few to place new points among their nearest; raise output.map_rows (up to {train_rows:,}; "
            "refine slows with it)"]


def _below_pca_note(methods: dict, k: int, train) -> list[str]:
    """A note when the student keeps fewer of the measured rows' ``k`` nearest neighbours than PCA, a projection
    fitted in a second: a map below it is usually under-trained (the bundled example's recipe at 1 epoch a stage
    keeps 0.062 against PCA's 0.214, at the default 10 epochs 0.364), and otherwise not worth training."""
    student, pca = methods["student"][f"recall@{k}"], methods["PCA"][f"recall@{k}"]
    if student >= pca:
        return []
    budget = (f"train.steps_per_stage is {train.steps_per_stage:,}" if train.steps_per_stage is not None
              else f"train.epochs_per_stage is {train.epochs_per_stage:,}")
    return [f"the student keeps fewer of each row's {k} nearest neighbours than PCA (recall@{k} {student:.3f} against "
            f"{pca:.3f}): train longer ({budget}); a map that stays below PCA is not worth training on this data"]


def _corpus_neighbours(pipe, x: torch.Tensor, k: int, project) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of ``x`` ``(Q, Dt)``: its ``k`` nearest training rows by teacher cosine ``(Q, k)``, as
    positions in ``pipe.train_rows``; and ``project`` of every training row ``(N, d)``: one pass over the
    training rows in blocks of ``CORPUS_SCORES / Q`` (never the whole file in memory)."""
    projected, chunk = [], max(1, CORPUS_SCORES // len(x))

    def blocks():
        for start in range(0, len(pipe.train_rows), chunk):
            release_freed_memory()  # without it resident memory grew ~3 MB a block (200,000 rows: +380 MB)
            rows = pipe.teacher.rows(pipe.train_rows[start:start + chunk])
            projected.append(project(rows))
            yield start, F.normalize(rows, dim=1)

    _, truth = streamed_topk(F.normalize(x.float(), dim=1), blocks(), k)
    return truth, torch.cat(projected)


def _corpus_recall(truth: torch.Tensor, placed: torch.Tensor, corpus: torch.Tensor) -> float:
    """Share of ``truth`` ``(Q, k)`` found among the ``k`` rows of ``corpus`` ``(N, d)`` nearest (Euclidean)
    to each row of ``placed`` ``(Q, d)``."""
    chunk = max(1, CORPUS_SCORES // len(placed))
    blocks = ((a, corpus[a:a + chunk].float()) for a in range(0, len(corpus), chunk))
    # nearest first by 2 q·c − |c|², which is |q|² − |q − c|²: the order of distances, without square roots
    _, found = streamed_topk(placed.float(), blocks, truth.shape[1], block_topk=lambda q, block, k: torch.addmm(
        block.pow(2).sum(1), q, block.T, beta=-1, alpha=2).topk(k, dim=1))
    return graph_recall(found, truth)


def _metrics(method: dict) -> dict:
    return {key: v for key, v in method.items() if key not in ("vectors_per_s", "fit_seconds")}


def _umap(pipe, x, labels, k: int, dim: int, fit_rows) -> dict:
    """UMAP (cosine, 15 neighbours) fitted on the same training rows as PCA, new rows placed by ``transform``."""
    import umap  # installed: checked with the configuration (OutputSection)

    t0 = time.perf_counter()
    reducer = umap.UMAP(n_components=dim, metric="cosine", random_state=pipe.config.train.seed)
    reducer.fit(pipe.teacher.rows(pipe.train_rows[fit_rows]).numpy())
    fit_seconds = time.perf_counter() - t0
    placed = torch.from_numpy(reducer.transform(x.numpy()))
    return {**evaluate(x, placed, labels, k), "fit_seconds": round(fit_seconds, 3),
            "vectors_per_s": _throughput(lambda v: reducer.transform(v.numpy()), x, min_seconds=0.0,
                                         warmed_up=True)}


def _measured(report: dict, quote: str = "") -> str:
    """``5,000 of the 20,000 held-out rows (train.eval_rows)``, or ``264 held-out rows`` when that is all
    (``quote``: around the key, a backtick in markdown)."""
    where, total = "held-out" if report["held_out"] else "training", report["rows_available"]
    if report["rows"] < total:
        return f"{report['rows']:,} of the {total:,} {where} rows ({quote}train.eval_rows{quote})"
    return f"{report['rows']:,} {where} rows"


def headline(report: dict) -> str:
    """The table ``atlas-run`` prints at the end: one line per method, then the report's notes."""
    keys = list(report["student"])
    width = max(len(name) for name in report["methods"]) + 2
    lines = [f"{_measured(report)}, k = {report['k']}",
             f"{'method':<{width}}" + "".join(f"{key:>{len(key) + 2}}" for key in keys) + f"{'vectors/s':>12}"]
    for name, m in report["methods"].items():
        lines.append(f"{name:<{width}}" + "".join(f"{_cell(m, key):>{len(key) + 2}}" for key in keys)
                     + f"{m['vectors_per_s']:>12,.0f}")
    return "\n".join(lines + [f"note: {note}" for note in report.get("notes", [])])


def _cell(method: dict, key: str) -> str:
    return f"{method[key]:.3f}" if key in method else "—"


def markdown(report: dict, pipe) -> str:
    cfg = pipe.config
    keys = list(report["student"])
    methods = report["methods"]
    ref = "UMAP + transform" if "UMAP + transform" in methods else "PCA"
    out = [f"# Atlas Distill report: {_md(cfg.source.name)}", "",
           f"Student `{cfg.student.name}` ({cfg.student.dim}-D), loss `{cfg.loss.name}`, "
           f"schedule `{cfg.schedule.name}` "
           f"(τ {', '.join(f'{t:.3g}' for t in pipe.taus)}), teacher `{cfg.teacher.path}` "
           f"({pipe.teacher.num_rows:,} × {pipe.teacher.dim}).", "",
           f"Measured on {_measured(report, '`')}; neighbours k = "
           f"{report['k']} (teacher by cosine, student by Euclidean distance). PCA"
           + (" and UMAP are" if ref != "PCA" else " is") + " fitted on the training rows"
           + ("; `refine N` places each new point N epochs against the frozen training map (`map.pt`)."
              if any(name.startswith("student + refine") for name in methods) else ".")
           + (f" `corpus_recall@{report['k']}`: of each held-out row's {report['k']} nearest training rows "
              f"(teacher), the share among its {report['k']} nearest training rows on the map."
              if f"corpus_recall@{report['k']}" in keys else "")
           + f" Speed: vectors/s on this machine, and as a multiple of {ref}'s.", "",
           "| method | " + " | ".join(keys) + f" | encode vectors/s | ÷ {ref} |", "|---|" + "---:|" * (len(keys) + 2)]
    for name, m in methods.items():
        out.append(f"| {name} | " + " | ".join(_cell(m, key) for key in keys)
                   + f" | {m['vectors_per_s']:,.0f} | {_ratio(m['vectors_per_s'] / methods[ref]['vectors_per_s'])} |")
    out += [f"\nNote: {note}." for note in report.get("notes", [])]
    out += ["", f"Training took {report['train_seconds']:.1f} s; final train loss "
                f"{report['final_train_loss']:.4f}" + (f", validation loss {report['final_val_loss']:.4f}."
                                                       if report["final_val_loss"] is not None else ".")]
    if "levels" in report:
        out += ["", "## Per level", "", "| level | " + " | ".join(next(iter(report["levels"].values()))) + " |",
                "|---|" + "---:|" * len(next(iter(report["levels"].values())))]
        for name, vals in report["levels"].items():
            out.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals.values()) + " |")
    if "axis_cards" in report:
        out += ["", "## Axis cards", "", f"The texts at both ends of each student dimension, from "
                f"{report['axis_cards_from']}.", ""]
        for card in report["axis_cards"]:
            out.append(f"### Dimension {card['dim']}")
            out.append("- **low:** " + " · ".join(_short(t) for t in card["low"]))
            out.append("- **high:** " + " · ".join(_short(t) for t in card["high"]))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _ratio(r: float) -> str:
    """Two decimals, or two significant digits below 0.1 (refine's 0.0017 of PCA's speed is not 0.00)."""
    return f"{r:.2f}" if r >= 0.1 else f"{r:#.2g}"


MARKUP = re.compile(r"([\\`*_\[\]<>|~&#])")


def _md(text: str) -> str:
    """``text`` as literal Markdown on one line: runs of whitespace (newlines too) become one space, and each
    character Markdown could read as markup is backslash-escaped, so a docstring's ``__init__`` is not bold
    and its ``<first argument>`` not an HTML tag."""
    return MARKUP.sub(r"\\\1", " ".join(text.split()))


def _short(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return _md(text if len(text) <= n else text[: n - 1] + "…")


MATRIX_DIMS = 8  # scatter.png shows at most this many dimensions (a grid of MATRIX_DIMS² panels)


def plot(run: RunDir, metrics: list[dict], arrays: dict) -> list[str]:
    """``training.png`` (loss and τ per epoch, stages marked, and each stage's loss relative to its first
    epoch) and ``scatter.png`` (a scatter matrix of the student's dimensions, coloured by label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rel) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    epochs = np.arange(1, len(metrics) + 1)
    stages = np.array([m["stage"] for m in metrics])
    train = np.array([m["train_loss"] for m in metrics])
    ax.plot(epochs, train, label="train loss")
    if any(m["val_loss"] is not None for m in metrics):
        ax.plot(epochs, [m["val_loss"] if m["val_loss"] is not None else np.nan for m in metrics], label="val loss")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [m["tau"] for m in metrics], color="grey", linestyle="--", label="τ")
    ax2.set_ylabel("τ")
    for stage in np.unique(stages):
        where = np.flatnonzero(stages == stage)
        if stage > stages[0]:
            for a in (ax, rel):
                a.axvline(where[0] + 0.5, color="lightgrey", linewidth=1)
        first = train[where[0]]  # a stage that starts at loss 0 has no relative curve
        relative = train[where] / first if first != 0 else np.full(len(where), np.nan)
        rel.plot(epochs[where], relative, marker="o", markersize=3, label=f"stage {stage + 1}")
    rel.axhline(1.0, color="lightgrey", linewidth=0.8, linestyle=":")
    rel.set_ylabel("train loss ÷ stage's first epoch")
    rel.set_xlabel("epoch (all stages; grey lines: stage boundaries)")
    ax.legend(loc="upper right")
    ax.set_title("The loss's scale changes with τ, so each stage is also shown relative to its first epoch (below)",
                 fontsize=9)
    fig.tight_layout()
    _save_png(run, "training.png", fig)

    z, labels = arrays["z"], arrays["labels"]
    d = min(z.shape[1], MATRIX_DIMS)
    fig, axes = plt.subplots(d, d, figsize=(1.9 * d + 1.5, 1.9 * d), squeeze=False)
    if labels is not None:  # the 10 commonest labels in colour; the rest grey, drawn first (underneath)
        top = [lab for lab, _ in Counter(lab for lab in labels if lab is not None).most_common(10)]  # None: grey
        rank = {lab: k + 1 for k, lab in enumerate(top)}
        group = np.array([rank.get(v, 0) for v in labels])
        names = ["other"] + [str(lab).replace("$", r"\$") for lab in top]  # a label is text, not mathtext
        colours = ["lightgrey"] + [f"C{k}" for k in range(len(top))]
    else:
        group, names, colours = np.zeros(len(z), dtype=int), ["rows"], ["C0"]
    order = np.argsort(group, kind="stable")
    point_colours = np.array(colours)[group[order]]
    for i in range(d):
        for j in range(d):
            a = axes[i, j]
            if i == j:
                a.hist(z[:, i], bins=40, color="grey")
            else:  # one call per panel (a call per label: 0.3 s more for 5 x 5 panels and 11 labels)
                a.scatter(z[order, j], z[order, i], s=1, c=point_colours)
            a.set_xticks([])
            a.set_yticks([])
            if i == d - 1:
                a.set_xlabel(f"dim {j}", fontsize=8)
            if j == 0:
                a.set_ylabel(f"dim {i}", fontsize=8)
    if labels is not None and d > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", markersize=1, color=c) for c in colours]
        fig.legend(handles, names, loc="center right", markerscale=6, fontsize=7)
    shown = f"dims 0–{d - 1} of {z.shape[1]}" if d < z.shape[1] else f"all {d} dims"
    fig.suptitle(f"Student map, {shown}: {len(z)} evaluation rows", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.85 if labels is not None else 1, 0.97))
    _save_png(run, "scatter.png", fig)
    return ["training.png", "scatter.png"]


def _save_png(run: RunDir, rel: str, fig) -> None:
    """Render ``fig`` in memory, then write it atomically like every other file of the run."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    run.write_bytes(rel, buf.getvalue())


def write_report(pipe, student, metrics, run: RunDir, coords: np.ndarray, *, echo: Callable = print,
                 warn: Callable = print, neighbor_graph: dict | None = None) -> dict:
    """Build the report, write report.json, report.md and the plots; ``coords`` as for :func:`build_report`;
    ``neighbor_graph``: how the neighbour batches' graph was built (method, recall on a sample, seconds),
    recorded as it is."""
    report, arrays = build_report(pipe, student, metrics, coords)
    if neighbor_graph is not None:
        report["neighbor_graph"] = neighbor_graph
    if pipe.config.output.plots:
        try:
            report["plots"] = plot(run, metrics, arrays)
        except ImportError:
            warn("plots skipped: matplotlib is not installed; pip install 'atlas-distill[plots]'")
    run.write_text("report.json", json.dumps(report, indent=2) + "\n")
    run.write_text("report.md", markdown(report, pipe))
    echo(headline(report))
    return report
