"""What refine does to maps of each width: the reason for ``REFINE_MAX_DIMS``.

    python benchmarks/refine_dims.py                          # ../shared/data/stdlib.emb.npy, 2–25 dimensions
    python benchmarks/refine_dims.py --dims 5,10 --data my.npy

For each width: a student trained with ``examples/quickstart.toml``'s recipe, ``student.dim`` set to that
width and 5 epochs per stage, on benchmarks/quality.py's split (the last 20 % held out); its map of the
training rows; held-out recall@10 and trustworthiness@10 (neighbours among the held-out rows) of the
student alone and refined 6 rounds.  Refine runs here with the width limit lifted, so the figures above
the limit show what ``encode(refine=6)`` would have done there.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from atlas_plugins import refine as refine_module
from atlas_plugins.config import build_config
from atlas_plugins.evaluation import evaluate
from atlas_plugins.pipeline import assemble
from atlas_plugins.refine import build_map, refine
from atlas_plugins.student import TrainedStudent
from atlas_plugins.trainer import Trainer
from quality import DEFAULT_DATA, QUICKSTART


def measure(data: Path, dim: int) -> str:
    doc = {"teacher": {"path": str(data), "loader": "npy"}, "student": {**QUICKSTART["student"], "dim": dim},
           "loss": QUICKSTART["loss"], "schedule": QUICKSTART["schedule"],
           "train": {**QUICKSTART["train"], "epochs_per_stage": 5}, "output": {"dir": "unused", "report": False}}
    pipe = assemble(build_config(doc, data))
    t0 = time.perf_counter()
    Trainer(pipe, None, echo=lambda m: None).fit()
    seconds = time.perf_counter() - t0
    student = TrainedStudent(pipe.student.cpu().eval(), "mlp", {}, pipe.teacher.dim, dim)
    training_map = build_map(pipe.teacher, pipe.train_rows, student.encode, max_rows=50_000)
    x = pipe.teacher.rows(pipe.val_rows)
    alone = student.encode(x)
    refined = refine(training_map, x, (alone,), epochs=6)[0]
    a, r = evaluate(x, alone, None, 10), evaluate(x, refined, None, 10)
    return (f"| {dim} | {a['recall@10']:.3f} | {r['recall@10']:.3f} | {r['recall@10'] - a['recall@10']:+.3f} | "
            f"{a['trustworthiness@10']:.3f} | {r['trustworthiness@10']:.3f} | {seconds:.0f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="teacher .npy (N, D)")
    ap.add_argument("--dims", default="2,3,5,7,8,9,10,15,25", help="comma-separated widths")
    args = ap.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    refine_module.REFINE_MAX_DIMS = max(dims)  # measure refine at every width, the limit's own evidence
    print(f"\n{args.data} ({len(np.load(args.data, mmap_mode='r')):,} rows), refine 6 rounds\n")
    print("| dims | recall@10 alone | refined | change | trust@10 alone | refined | train s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for dim in dims:
        print(measure(args.data, dim), flush=True)


if __name__ == "__main__":
    main()
