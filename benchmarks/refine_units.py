"""Refine in each map's own units against refine in absolute units: the same students, held-out rows and seed.

    python benchmarks/refine_units.py runs/quickstart                              # the bundled example
    python benchmarks/refine_units.py ~/.cache/atlas-distill-bench/run-100000-neighbors --epochs 6

For each run folder: its teacher file and split from the run's own ``pipeline.toml`` (``val_fraction`` and
``seed``: the rows its report measures, at most ``--held-out`` of them), held-out recall@10 (neighbours
searched among the held-out rows) and recall among map rows (of each held-out row's 10 nearest
``map.pt`` rows by teacher cosine, the share placed among its 10 nearest map rows on the map), for the
student alone, refined in the map's own units (``TrainingMap.units``, what ``encode(refine=N)`` does) and
refined with every unit set to 1 (absolute coordinates, as before).  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tomllib
import warnings
from pathlib import Path

import numpy as np
import torch

from atlas_plugins import load_student
from atlas_plugins.evaluation import recall_at_k
from atlas_plugins.pipeline import split_rows
from atlas_plugins.refine import nearest


def run_split(run: Path, limit: int):
    """A run folder's teacher (memory-mapped), training rows and at most ``limit`` evenly spaced held-out rows,
    from its own ``pipeline.toml``."""
    cfg = tomllib.loads((run / "pipeline.toml").read_text())
    path = Path(cfg["teacher"]["path"])
    teacher = np.load(path if path.is_absolute() else run / path, mmap_mode="r")
    train = cfg.get("train", {})
    train_rows, rows = split_rows(len(teacher), train.get("val_fraction", 0.1), train.get("seed", 0))
    return teacher, train_rows, rows[np.linspace(0, len(rows) - 1, min(len(rows), limit)).astype(np.int64)]


def held_out_rows(run: Path, limit: int) -> torch.Tensor:
    teacher, _, rows = run_split(run, limit)
    return torch.from_numpy(np.asarray(teacher[rows], dtype=np.float32))


def measure(run: Path, epochs: int, limit: int) -> str:
    student = load_student(run)
    training_map = student.load_map()
    x = held_out_rows(run, limit)
    coords = training_map.coords[0]
    _, truth = nearest(training_map.project(x), training_map.vectors.float(), 10)

    def scores(z) -> str:
        z = z[0] if isinstance(z, tuple) else z
        found = torch.cdist(z, coords).topk(10, largest=False).indices
        among = float((truth.unsqueeze(2) == found.unsqueeze(1)).any(2).float().mean())
        return f"{recall_at_k(x, z):.3f} | {among:.3f}"

    units = training_map.units
    own = scores(student.encode(x, refine=epochs, seed=0))
    training_map.units = (1.0,) * len(units)
    absolute = scores(student.encode(x, refine=epochs, seed=0))
    training_map.units = units
    return (f"| {run} | {len(x):,} | {', '.join(f'{u:.3f}' for u in units)} | {scores(student.encode(x))} | "
            f"{absolute} | {own} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (student.pt, map.pt, pipeline.toml)")
    ap.add_argument("--epochs", type=int, default=10, help="refine rounds (default 10)")
    ap.add_argument("--held-out", type=int, default=5000, help="held-out rows measured, at most (default 5000)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # norm warnings: these are the runs' own rows
    torch.set_num_threads(2)
    print(f"| run | held-out rows | unit | alone: recall@10 | among map rows | refine {args.epochs}, absolute "
          f"units | among map rows | refine {args.epochs}, own units | among map rows |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        print(measure(run, args.epochs, args.held_out), flush=True)


if __name__ == "__main__":
    main()
