"""What refine does to maps of each width: the evidence behind ``REFINE_MAX_DIMS``.

    python benchmarks/refine_dims.py                          # ../shared/data/stdlib.emb.npy, 2–25 dimensions
    python benchmarks/refine_dims.py --dims 5,10 --data my.npy
    python benchmarks/refine_dims.py --runs RUN...            # students atlas-run trained, any width

Default: for each width, a student trained with ``examples/quickstart.toml``'s recipe, ``student.dim`` set
to that width and 5 epochs per stage, on benchmarks/quality.py's split (the last 20 % held out).
``--runs``: the students of finished run folders, on their own split (``val_fraction`` and ``seed`` of
the run's ``pipeline.toml``; at most ``--held-out`` held-out rows, evenly spaced).  Either way a map of at
most 50,000 training rows is built here, and held-out recall@10 and trustworthiness@10 (neighbours among
the held-out rows) are measured for each level of the student, alone and refined 6 rounds.  Refine runs
with the width limit lifted, so the rows above it show what ``encode(refine=6)`` would do there.  Prints a
Markdown table, a row per level.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from atlas_plugins import load_student, refine as refine_module
from atlas_plugins.config import build_config
from atlas_plugins.evaluation import evaluate
from atlas_plugins.pipeline import assemble
from atlas_plugins.refine import build_map, refine
from atlas_plugins.student import TrainedStudent
from atlas_plugins.teacher import TeacherData
from atlas_plugins.trainer import Trainer
from quality import DEFAULT_DATA, QUICKSTART
from refine_units import run_split

MAP_ROWS = 50_000  # output.map_rows' default


def trained_here(data: Path, dim: int):
    doc = {"teacher": {"path": str(data), "loader": "npy"}, "student": {**QUICKSTART["student"], "dim": dim},
           "loss": QUICKSTART["loss"], "schedule": QUICKSTART["schedule"],
           "train": {**QUICKSTART["train"], "epochs_per_stage": 5}, "output": {"dir": "unused", "report": False}}
    pipe = assemble(build_config(doc, data))
    Trainer(pipe, None, echo=lambda m: None).fit()
    student = TrainedStudent(pipe.student.cpu().eval(), "mlp", {}, pipe.teacher.dim, dim)
    return "", student, pipe.teacher, pipe.train_rows, pipe.teacher.rows(pipe.val_rows)


def from_run(run: Path, limit: int):
    array, train_rows, val_rows = run_split(run, limit)
    student, teacher = load_student(run), TeacherData(array)
    return run.name, student, teacher, train_rows, teacher.rows(val_rows)


def measure(name, student, teacher, train_rows, x) -> str:
    """One table row per level of ``student`` (a hierarchical student's fine level too)."""
    training_map = build_map(teacher, train_rows, student.encode, max_rows=MAP_ROWS)
    alone = student.encode(x)
    alone = alone if isinstance(alone, tuple) else (alone,)
    rows = []
    for level, refined in zip(alone, refine(training_map, x, alone, epochs=6)):
        a, r = evaluate(x, level, None, 10), evaluate(x, refined, None, 10)
        rows.append(f"| {level.shape[1]}{f' ({name})' if name else ''} | {len(x):,} | {a['recall@10']:.3f} | "
                    f"{r['recall@10']:.3f} | {r['recall@10'] - a['recall@10']:+.3f} | "
                    f"{a['trustworthiness@10']:.3f} | {r['trustworthiness@10']:.3f} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="teacher .npy (N, D)")
    ap.add_argument("--dims", default="2,3,5,7,8,9,10,15,25", help="comma-separated widths")
    ap.add_argument("--runs", nargs="+", type=Path, help="measure these run folders' students instead")
    ap.add_argument("--held-out", type=int, default=5000, help="with --runs: held-out rows measured, at most")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # norm warnings: these are the teachers' own rows
    refine_module.REFINE_MAX_DIMS = 1 << 30  # refine at every width: the limit's own evidence
    print("\n| dims | held-out rows | recall@10 alone | refine 6 | change | trust@10 alone | refine 6 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    if args.runs:
        cases = (from_run(run, args.held_out) for run in args.runs)
    else:
        cases = (trained_here(args.data, int(d)) for d in args.dims.split(","))
    for case in cases:
        print(measure(*case), flush=True)


if __name__ == "__main__":
    main()
