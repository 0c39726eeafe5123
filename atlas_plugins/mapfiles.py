"""The map of every teacher row, for other tools and for people: ``map.parquet`` and ``map.html``.

``map.parquet`` (``map.csv`` without pyarrow) has one row per teacher row: its
coordinates (the columns of :func:`atlas_plugins.encode.column_names`), ``id``
(the teacher's ids, else the row number), ``split`` (``train``; ``eval``: the
validation rows the report measures; ``val``: the other validation rows), and
``text`` and ``label`` when the teacher has them.  It opens in Apple's Embedding
Atlas, pandas, polars and DuckDB.

``map.html`` is a self-contained interactive scatter (plotly, its JavaScript
inlined: it opens without a network): any two coordinates on the axes, one
colour per label, the text on hover, zoom and pan.  It shows up to
:data:`HTML_POINTS` rows (all eval rows first, then a seeded sample).  Plotly reads
its labels as a subset of HTML, so texts, labels and the title are escaped: a
docstring's ``a<b and c>d`` shows as written, not as ``a`` and a bold ``d``.
"""

from __future__ import annotations

from collections import Counter
from html import escape

import numpy as np

from .checkpoint import atomic_open
from .encode import WRITERS, column_names, side_by_side
from .rundir import RunDir

HTML_POINTS = 5000  # SVG points stay responsive in a browser up to a few thousand
TOP_LABELS = 10
HOVER_CHARS = 160


def splits(pipe) -> np.ndarray:
    """``train`` / ``val`` / ``eval`` for each teacher row (eval: the validation rows the report measures)."""
    out = np.full(pipe.teacher.num_rows, "train", dtype=object)
    out[pipe.val_rows] = "val"
    out[pipe.val_rows[: pipe.config.train.eval_rows]] = "eval"
    return out


def write_map_table(run: RunDir, pipe, student) -> np.ndarray:
    """Write ``map.parquet`` (or ``map.csv`` without pyarrow), streaming the teacher in chunks; return the first
    level's coordinates of every row ``(N, D)`` (what the report's axis cards read: one pass over the file)."""
    try:
        import pyarrow  # noqa: F401

        name = "map.parquet"
    except ImportError:
        name = "map.csv"
    teacher = pipe.teacher
    split = splits(pipe)
    extras = ["id", "split"] + [k for k, v in (("text", teacher.texts), ("label", teacher.labels)) if v is not None]
    levels = student.levels
    first = []
    with atomic_open(run.file(name)) as fh:
        writer = WRITERS["." + name.split(".")[1]](fh, column_names(levels), extras)
        for start, block in teacher.chunks():
            stop = start + len(block)
            z = side_by_side(student.encode(block))
            first.append(z[:, :levels[0]])
            cols = {"id": list(teacher.ids[start:stop]) if teacher.ids is not None else list(range(start, stop)),
                    "split": split[start:stop].tolist(), "text": teacher.texts and list(teacher.texts[start:stop]),
                    "label": teacher.labels and list(teacher.labels[start:stop])}
            writer.write(z, cols)
        writer.close()
    return np.concatenate(first)


def html_rows(pipe, limit: int = HTML_POINTS) -> np.ndarray:
    """The rows ``map.html`` shows: the eval rows, then a seeded sample of the others, at most ``limit``, sorted."""
    n = pipe.teacher.num_rows
    if n <= limit:
        return np.arange(n)
    first = pipe.val_rows[: min(pipe.config.train.eval_rows, limit)]
    rest = np.setdiff1d(np.arange(n), first)
    more = np.random.default_rng(pipe.config.train.seed).choice(rest, limit - len(first), replace=False)
    return np.sort(np.concatenate([first, more]))


def map_figure(z: np.ndarray, names: list[str], labels, hover: list[str], title: str):
    """A plotly figure: one scatter trace per label (the most common :data:`TOP_LABELS`, then "other"), and
    two menus that put any column of ``z`` ``(N, C)`` on the x or the y axis."""
    import plotly.graph_objects as go

    if labels is None:
        groups = [("points", np.arange(len(z)))]
    else:
        top = [lab for lab, _ in Counter(str(lab) for lab in labels if lab is not None).most_common(TOP_LABELS)]
        as_text = np.array([None if lab is None else str(lab) for lab in labels], dtype=object)  # None: "other"
        groups = [(escape(lab, quote=False), np.flatnonzero(as_text == lab)) for lab in top]
        rest = np.flatnonzero(~np.isin(as_text, top))
        groups += [("other", rest)] if len(rest) else []
    hover = np.array(hover, dtype=object)
    fig = go.Figure([go.Scatter(x=z[idx, 0], y=z[idx, 1 if z.shape[1] > 1 else 0], mode="markers", name=name,
                                hovertext=hover[idx], hoverinfo="text",
                                marker={"size": 5, **({"color": "lightgrey"} if name == "other" else {})})
                     for name, idx in groups])

    def menu(axis: str, x: float, initial: int):
        buttons = [{"label": f"{axis}: {col}", "method": "update",
                    "args": [{axis: [z[idx, c] for _, idx in groups]}, {f"{axis}axis.title.text": col}]}
                   for c, col in enumerate(names)]
        return {"buttons": buttons, "active": initial, "x": x, "y": 1.02, "xanchor": "left", "yanchor": "bottom"}
    fig.update_layout(title={"text": title, "x": 0.01, "y": 0.98, "xanchor": "left"}, margin={"t": 120},
                      template="plotly_white", height=780, legend={"itemsizing": "constant"},
                      xaxis_title=names[0], yaxis_title=names[1 if len(names) > 1 else 0],
                      updatemenus=[menu("x", 0.0, 0), menu("y", 0.2, 1 if len(names) > 1 else 0)])
    return fig


def write_map_html(run: RunDir, pipe, student) -> str:
    """Write ``map.html`` (needs plotly: ImportError otherwise); return its name."""
    import plotly.io as pio

    teacher = pipe.teacher
    rows = html_rows(pipe)
    z = side_by_side(student.encode(teacher.rows(rows)))
    labels = [teacher.labels[i] for i in rows] if teacher.labels is not None else None
    split = splits(pipe)[rows]
    hover = []
    for j, i in enumerate(rows.tolist()):
        text = teacher.texts[i] if teacher.texts is not None else ""
        text = text if len(text) <= HOVER_CHARS else text[: HOVER_CHARS - 1] + "…"
        rid = teacher.ids[i] if teacher.ids is not None else i
        label = f"label: {labels[j]}" if labels and labels[j] is not None else ""
        hover.append("<br>".join(escape(p, quote=False) for p in (text, label, f"id {rid} · {split[j]}") if p))
    shown = f"{len(rows):,} of {teacher.num_rows:,} rows" if len(rows) < teacher.num_rows else f"{len(rows):,} rows"
    title = f"{pipe.config.source.name}: {pipe.config.student.name} map, {shown}"
    fig = map_figure(z, column_names(student.levels), labels, hover, escape(title, quote=False))
    run.write_text("map.html", pio.to_html(fig, include_plotlyjs=True, full_html=True))
    return "map.html"
