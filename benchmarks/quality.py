"""5-D quality on real data: students vs PCA (and UMAP when installed), all measured in this run.

    python benchmarks/quality.py                       # ../shared/data/stdlib.emb.npy (+ .meta.jsonl labels)
    python benchmarks/quality.py --data my.npy --quick

Split: ``perm = numpy.random.default_rng(0).permutation(N)``; the first 80 % train, the last 20 % are held
out (exactly what ``[train] val_fraction = 0.2, seed = 0`` does).  Metrics are computed on the held-out rows
alone, neighbours searched among themselves (k = 10; teacher by cosine, student by Euclidean distance).
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from atlas_plugins.config import build_config
from atlas_plugins.evaluation import evaluate, pca_fit, pca_projector, pca_transform
from atlas_plugins.pipeline import assemble
from atlas_plugins.student import TrainedStudent
from atlas_plugins.trainer import Trainer

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "stdlib.emb.npy"
RANDOM_TRAIN = {"batches": "random", "batch_size": 512, "learning_rate": 1e-3, "lr_schedule": "constant",
                "warmup_steps": 0}
NEIGHBOR_TRAIN = {"batches": "neighbors", "batch_size": 1024, "neighbor_pool": 60, "neighbors": 15,
                  "learning_rate": 5e-3, "lr_schedule": "cosine", "warmup_steps": 50}

# (label, [student], [loss], [schedule] or None, [train]); every student sees 20 or 24 epochs; MLP 384→256→5 unless said.
CONFIGS = [
    ("relational, random batches, τ 0.05", {}, {"name": "relational", "tau": 0.05}, None,
     {**RANDOM_TRAIN, "epochs_per_stage": 20}),
    ("relational, random batches, quickstart curriculum τ 4.0→0.5", {}, {"name": "relational"},
     {"name": "linear", "start": 4.0, "end": 0.5, "stages": 5}, {**RANDOM_TRAIN, "epochs_per_stage": 4}),
    ("neighbors, kNN batches, τ 0.4", {}, {"name": "neighbors", "tau": 0.4}, None,
     {**NEIGHBOR_TRAIN, "epochs_per_stage": 20}),
    ("neighbors, kNN batches, quickstart curriculum τ 4.0→0.5", {}, {"name": "neighbors"},
     {"name": "linear", "start": 4.0, "end": 0.5, "stages": 5}, {**NEIGHBOR_TRAIN, "epochs_per_stage": 4}),
    ("neighbors, kNN batches, cosine τ 2.0→0.4", {}, {"name": "neighbors"},
     {"name": "cosine", "start": 2.0, "end": 0.4, "stages": 4}, {**NEIGHBOR_TRAIN, "epochs_per_stage": 6}),
    ("same, MLP 384→128→5", {"hidden": [128]}, {"name": "neighbors"},
     {"name": "cosine", "start": 2.0, "end": 0.4, "stages": 4}, {**NEIGHBOR_TRAIN, "epochs_per_stage": 6}),
    ("**default** (examples/quickstart.toml): neighbors, kNN batches, cosine τ 2.0→0.4, MLP 384→128→5, "
     "input noise 0.8", {"hidden": [128]}, {"name": "neighbors"},
     {"name": "cosine", "start": 2.0, "end": 0.4, "stages": 4},
     {**NEIGHBOR_TRAIN, "epochs_per_stage": 6, "input_noise": 0.8}),
]


def throughput(fn, x, min_seconds=0.5):
    fn(x)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn(x)
        reps += 1
    return reps * len(x) / (time.perf_counter() - t0)


def train_student(data: Path, label, student, loss, schedule, train, quick):
    doc = {"teacher": {"path": str(data), "loader": "npy"},
           "student": {"name": "mlp", "dim": 5, "hidden": [256], **student}, "loss": {**loss},
           "train": {"val_fraction": 0.2, "seed": 0, **train}, "output": {"dir": "unused", "report": False}}
    if quick:
        doc["train"]["epochs_per_stage"] = max(1, doc["train"]["epochs_per_stage"] // 4)
    if schedule:
        doc["schedule"] = schedule
    pipe = assemble(build_config(doc, data))
    t0 = time.perf_counter()
    Trainer(pipe, None, echo=lambda m: None).fit()
    seconds = time.perf_counter() - t0
    return pipe, TrainedStudent(pipe.student.cpu(), "mlp", {}, pipe.teacher.dim, 5), seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="teacher .npy (N, D); labels from <stem>.meta.jsonl")
    ap.add_argument("--quick", action="store_true", help="a quarter of the epochs (a smoke run)")
    ap.add_argument("--no-umap", action="store_true")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"quality.py: {args.data} not found; pass --data PATH.npy")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    emb = np.load(args.data)
    meta = args.data.with_name(args.data.name.replace(".emb.npy", ".meta.jsonl"))
    labels = [json.loads(line).get("coarse") for line in meta.open()] if meta.is_file() else None
    n = len(emb)
    perm = np.random.default_rng(0).permutation(n)
    n_train = n - int(round(n * 0.2))
    train_rows, test_rows = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    xt, xe = torch.from_numpy(emb[train_rows]), torch.from_numpy(emb[test_rows])
    le = [labels[i] for i in test_rows] if labels else None
    big = xe.repeat(max(1, 100_000 // len(xe)), 1)
    rows = []

    t0 = time.perf_counter()
    mean, comps = pca_fit(xt, 5)
    pca_seconds = time.perf_counter() - t0
    pca_fn = pca_projector(mean, comps)
    pca_speed = throughput(pca_fn, big)
    rows.append(("PCA", evaluate(xe, pca_transform(xe, mean, comps), le), pca_seconds, pca_speed))

    if not args.no_umap:
        try:
            import umap

            t0 = time.perf_counter()
            reducer = umap.UMAP(n_components=5, metric="cosine", random_state=0).fit(xt.numpy())
            fit_seconds = time.perf_counter() - t0
            ze = reducer.transform(xe.numpy())
            umap_speed = throughput(lambda a: reducer.transform(a), xe.numpy(), 0.1)
            rows.append(("UMAP (cosine) + transform", evaluate(xe, torch.from_numpy(ze), le), fit_seconds, umap_speed))
        except ImportError:
            print("(umap-learn not installed: UMAP row skipped; pip install umap-learn)", file=sys.stderr)

    for label, student, loss, schedule, train in CONFIGS:
        pipe, st, seconds = train_student(args.data, label, student, loss, schedule, train, args.quick)
        assert np.array_equal(pipe.val_rows, test_rows)
        ze = st.encode(xe)
        rows.append((label, evaluate(xe, ze, le), seconds, throughput(st.encode, big)))
        if label.startswith("**default**"):
            bf16 = lambda a: st.encode(a, precision="bfloat16")
            rows.append(("default, `encode(precision=\"bfloat16\")`", evaluate(xe, bf16(xe), le), seconds,
                         throughput(bf16, big)))
        print(f"done: {label} ({seconds:.0f} s)", file=sys.stderr, flush=True)

    keys = list(rows[0][1])
    print(f"\nHeld-out {len(xe)} of {n} rows ({args.data.name}), k = 10; fit/train seconds and encode vectors/s on "
          f"{torch.get_num_threads()} threads; encode ratio = vectors/s ÷ PCA's.\n")
    print("| 5-D method | " + " | ".join(keys) + " | fit/train s | encode vectors/s | encode ÷ PCA |")
    print("|---|" + "---:|" * (len(keys) + 3))
    for label, metrics, seconds, speed in rows:
        print(f"| {label} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys)
              + f" | {seconds:.1f} | {speed:,.0f} | {speed / pca_speed:.2f} |")


if __name__ == "__main__":
    main()
