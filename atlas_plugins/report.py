"""The run report: student vs PCA on held-out rows (``report.json``, ``report.md``), plots and axis cards."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from typing import Callable

import numpy as np
import torch

from .evaluation import evaluate, pca_fit, pca_projector, pca_transform
from .rundir import RunDir

K = 10
PCA_FIT_ROWS = 20000


def _throughput(fn, x, min_seconds: float = 0.2) -> float:
    fn(x)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return reps * x.shape[0] / elapsed


def axis_cards(z: torch.Tensor, texts, n: int = 5) -> list[dict]:
    """For each student dimension, the texts at its low and high extremes."""
    cards = []
    for d in range(z.shape[1]):
        order = torch.argsort(z[:, d])
        cards.append({"dim": d, "low": [texts[i] for i in order[:n].tolist()],
                      "high": [texts[i] for i in order[-n:].flip(0).tolist()]})
    return cards


def build_report(pipe, student, metrics: list[dict]) -> tuple[dict, dict]:
    """Compute the report; returns ``(report, arrays)`` where arrays holds what the plots need."""
    cfg = pipe.config
    rows = pipe.val_rows[: cfg.train.eval_rows]
    held_out = len(rows) > 3 * K
    if not held_out:  # no validation split: measure on (a sample of) the training rows, and say so
        rows = pipe.train_rows[np.random.default_rng(cfg.train.seed).permutation(len(pipe.train_rows))
                               [: cfg.train.eval_rows]]
        rows.sort()
    x = pipe.teacher.rows(rows)
    labels = [pipe.teacher.labels[i] for i in rows] if pipe.teacher.labels is not None else None
    k = min(K, len(rows) - 1)  # a point's neighbours are the other rows: at most N - 1 of them
    notes = [f"k = {k} instead of {K}: only {len(rows)} rows to measure on"] if k < K else []
    if k >= len(rows) / 2:
        notes.append(f"trustworthiness@{k} left out: it needs k < rows / 2")
    student.module.to("cpu")
    z = student.encode(x)
    levels = z if isinstance(z, tuple) else (z,)
    rng = np.random.default_rng(cfg.train.seed)
    fit_rows = np.sort(rng.permutation(len(pipe.train_rows))[:PCA_FIT_ROWS])
    mean, comps = pca_fit(pipe.teacher.rows(pipe.train_rows[fit_rows]), levels[0].shape[1])
    pca_z = pca_transform(x, mean, comps)
    report = {
        "rows": len(rows), "held_out": held_out, "k": k, "notes": notes,
        "student": evaluate(x, levels[0], labels, k),
        "pca": evaluate(x, pca_z, labels, k),
        "encode_vectors_per_s": _throughput(student.encode, x),
        "pca_transform_vectors_per_s": _throughput(pca_projector(mean, comps), x),
        "train_seconds": round(sum(m["seconds"] for m in metrics), 3),
        "final_train_loss": metrics[-1]["train_loss"] if metrics else None,
        "final_val_loss": metrics[-1]["val_loss"] if metrics else None,
    }
    if len(levels) > 1:
        report["levels"] = {f"level {i} ({lv.shape[1]}-D)": evaluate(x, lv, labels, k) for i, lv in enumerate(levels)}
    if pipe.teacher.texts is not None:
        texts = [pipe.teacher.texts[i] for i in rows]
        report["axis_cards"] = axis_cards(levels[0], texts)
    return report, {"z": levels[0].numpy(), "labels": labels}


def headline(report: dict) -> str:
    """The table ``atlas-run`` prints at the end."""
    where = "held-out" if report["held_out"] else "training"
    lines = [f"{'metric (' + where + ', ' + str(report['rows']) + ' rows)':<40}{'student':>10}{'PCA':>10}"]
    for key, value in report["student"].items():
        lines.append(f"{key:<40}{value:>10.3f}{report['pca'][key]:>10.3f}")
    lines.append(f"{'encode vectors/s':<40}{report['encode_vectors_per_s']:>10.3g}"
                 f"{report['pca_transform_vectors_per_s']:>10.3g}")
    return "\n".join(lines)


def markdown(report: dict, pipe) -> str:
    cfg = pipe.config
    out = [f"# Atlas Distill report: {cfg.source.name}", "",
           f"Student `{cfg.student.name}` ({cfg.student.dim}-D), loss `{cfg.loss.name}`, schedule `{cfg.schedule.name}` "
           f"(τ {', '.join(f'{t:.3g}' for t in pipe.taus)}), teacher `{cfg.teacher.path}` "
           f"({pipe.teacher.num_rows} × {pipe.teacher.dim}).", "",
           f"Measured on {report['rows']} {'held-out' if report['held_out'] else 'training'} rows; neighbours k = "
           f"{report['k']} (teacher by cosine, student by Euclidean distance). PCA is fitted on the training rows.", "",
           "| metric | student | PCA |", "|---|---:|---:|"]
    for key, value in report["student"].items():
        out.append(f"| {key} | {value:.3f} | {report['pca'][key]:.3f} |")
    out.append(f"| encode vectors/s | {report['encode_vectors_per_s']:,.0f} | "
               f"{report['pca_transform_vectors_per_s']:,.0f} |")
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
        out += ["", "## Axis cards", "", "The texts at both ends of each student dimension.", ""]
        for card in report["axis_cards"]:
            out.append(f"### Dimension {card['dim']}")
            out.append("- **low:** " + " · ".join(_short(t) for t in card["low"]))
            out.append("- **high:** " + " · ".join(_short(t) for t in card["high"]))
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _short(text: str, n: int = 90) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def plot(run: RunDir, metrics: list[dict], arrays: dict) -> list[str]:
    """``training.png`` (loss and τ per epoch) and ``scatter.png`` (first two student dims, by label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = np.arange(1, len(metrics) + 1)
    ax.plot(epochs, [m["train_loss"] for m in metrics], label="train loss")
    if any(m["val_loss"] is not None for m in metrics):
        ax.plot(epochs, [m["val_loss"] if m["val_loss"] is not None else np.nan for m in metrics], label="val loss")
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [m["tau"] for m in metrics], color="grey", linestyle="--", label="τ")
    ax2.set_ylabel("τ")
    ax.legend(loc="upper right")
    fig.tight_layout()
    _save_png(run, "training.png", fig)
    written.append("training.png")

    z, labels = arrays["z"], arrays["labels"]
    fig, ax = plt.subplots(figsize=(6, 6))
    y = z[:, 1] if z.shape[1] > 1 else np.zeros(len(z))
    if labels is not None:
        top = [lab for lab, _ in Counter(labels).most_common(10)]
        for lab in top:
            m = np.array([lab_i == lab for lab_i in labels])
            ax.scatter(z[m, 0], y[m], s=4, label=str(lab))
        rest = np.array([lab_i not in top for lab_i in labels])
        ax.scatter(z[rest, 0], y[rest], s=3, c="lightgrey", label="other")
        ax.legend(markerscale=3, fontsize=7, loc="best")
    else:
        ax.scatter(z[:, 0], y, s=3)
    ax.set_xlabel("student dim 0")
    ax.set_ylabel("student dim 1")
    fig.tight_layout()
    _save_png(run, "scatter.png", fig)
    written.append("scatter.png")
    return written


def _save_png(run: RunDir, rel: str, fig) -> None:
    """Render ``fig`` in memory, then write it atomically like every other file of the run."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    run.write_bytes(rel, buf.getvalue())


def write_report(pipe, student, metrics, run: RunDir, *, echo: Callable = print, warn: Callable = print) -> dict:
    report, arrays = build_report(pipe, student, metrics)
    if pipe.config.output.plots:
        try:
            report["plots"] = plot(run, metrics, arrays)
        except ImportError:
            warn("plots skipped: matplotlib is not installed; pip install 'atlas-distill[plots]'")
    run.write_text("report.json", json.dumps(report, indent=2) + "\n")
    run.write_text("report.md", markdown(report, pipe))
    echo(headline(report))
    return report
