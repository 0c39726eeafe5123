"""5-D quality on real data: the default student, alone and refined, vs PCA and UMAP, all measured in this run.

    python benchmarks/quality.py                       # ../shared/data/stdlib.emb.npy (+ .meta.jsonl labels)
    python benchmarks/quality.py --sweep               # also the depth × width × noise sweep behind the default
    python benchmarks/quality.py --losses              # also the loss and batching comparison of earlier rounds
    python benchmarks/quality.py --batches             # also the default on random batches: same epochs, steps, time
    python benchmarks/quality.py --data my.npy --quick

Split: ``perm = numpy.random.default_rng(0).permutation(N)``; the first 80 % train, the last 20 % are held
out (exactly what ``[train] val_fraction = 0.2, seed = 0`` does).  Metrics are computed on the held-out rows
alone, neighbours searched among themselves (k = 10; teacher by cosine, student by Euclidean distance).
The default student is ``examples/quickstart.toml``'s recipe with ``epochs_per_stage = 6`` (this data has
2.5 times the bundled example's rows: about the same number of optimizer steps).  Encode speeds are on
the held-out rows; ``÷ UMAP`` is vectors/s over UMAP ``transform``'s in the same run on as many threads
(UMAP with a ``random_state`` runs on one thread, without one on all: both are fitted, and refine is
measured on one thread and on all).  Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from atlas_plugins.config import build_config
from atlas_plugins.evaluation import evaluate, pca_fit, pca_projector, pca_transform
from atlas_plugins.pipeline import assemble
from atlas_plugins.refine import build_map
from atlas_plugins.report import REFINE_EPOCHS
from atlas_plugins.student import TrainedStudent
from atlas_plugins.trainer import Trainer

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "stdlib.emb.npy"
QUICKSTART = tomllib.loads((HERE.parent / "examples" / "quickstart.toml").read_text())
DEFAULT = ({k: v for k, v in QUICKSTART["student"].items() if k != "name"}, QUICKSTART["loss"],
           QUICKSTART["schedule"], {**QUICKSTART["train"], "epochs_per_stage": 6})

RANDOM_TRAIN = {"batches": "random", "batch_size": 512, "learning_rate": 1e-3, "lr_schedule": "constant",
                "warmup_steps": 0}
NEIGHBOR_TRAIN = {"batches": "neighbors", "batch_size": 1024, "neighbor_pool": 60, "neighbors": 15,
                  "learning_rate": 5e-3, "lr_schedule": "cosine", "warmup_steps": 50}
COSINE = {"name": "cosine", "start": 2.0, "end": 0.4, "stages": 4}

# (label, [student], [loss], [schedule] or None, [train]) of earlier rounds; MLP 384→256→5 unless said.
LOSSES = [
    ("relational, random batches, τ 0.05", {"hidden": [256]}, {"name": "relational", "tau": 0.05}, None,
     {**RANDOM_TRAIN, "epochs_per_stage": 20}),
    ("neighbors, kNN batches, τ 0.4", {"hidden": [256]}, {"name": "neighbors", "tau": 0.4}, None,
     {**NEIGHBOR_TRAIN, "epochs_per_stage": 20}),
    ("neighbors, kNN batches, linear τ 4.0→0.5", {"hidden": [256]}, {"name": "neighbors"},
     {"name": "linear", "start": 4.0, "end": 0.5, "stages": 5}, {**NEIGHBOR_TRAIN, "epochs_per_stage": 4}),
    ("neighbors, kNN batches, cosine τ 2.0→0.4", {"hidden": [256]}, {"name": "neighbors"}, COSINE,
     {**NEIGHBOR_TRAIN, "epochs_per_stage": 6}),
]


def sweep_row(hidden, noise, epochs=6, batch_size=1024):
    label = f"MLP 384→{'→'.join(map(str, hidden))}→5, noise {noise}, {epochs} epochs/stage, batch {batch_size}"
    return (label, {"hidden": hidden}, {"name": "neighbors"}, COSINE,
            {**NEIGHBOR_TRAIN, "batch_size": batch_size, "epochs_per_stage": epochs, "input_noise": noise})


# The search behind the default (examples/quickstart.toml): depth 1–4, width 128–256, input noise 0.8–2.0.
SWEEP = [
    sweep_row([128], 0.8),  # the previous default
    sweep_row([256, 256], 1.8),
    sweep_row([128, 128, 128], 1.6),
    sweep_row([192, 192, 192], 1.6),
    sweep_row([192, 192, 192], 2.0),
    sweep_row([192, 192, 192], 1.6, batch_size=512),
    sweep_row([256, 128, 128], 1.6),
    sweep_row([256, 256, 256], 1.8),
    sweep_row([128, 128, 128, 128], 1.6),
]


def throughput(fn, x, min_seconds=0.5):
    fn(x)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn(x)
        reps += 1
        if time.perf_counter() - t0 >= min_seconds:
            return reps * len(x) / (time.perf_counter() - t0)


def one_thread(fn):
    def run(x):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(x)
        finally:
            torch.set_num_threads(threads)
    return run


def train_student(data: Path, student, loss, schedule, train, quick):
    doc = {"teacher": {"path": str(data), "loader": "npy"},
           "student": {"name": "mlp", "dim": 5, **student}, "loss": {**loss},
           "train": {**train, "val_fraction": 0.2, "seed": 0}, "output": {"dir": "unused", "report": False}}
    if quick and "epochs_per_stage" in doc["train"]:
        doc["train"]["epochs_per_stage"] = max(1, doc["train"]["epochs_per_stage"] // 4)
    if schedule:
        doc["schedule"] = schedule
    pipe = assemble(build_config(doc, data))
    t0 = time.perf_counter()
    trainer = Trainer(pipe, None, echo=lambda m: None)
    trainer.fit()
    seconds = time.perf_counter() - t0
    return pipe, TrainedStudent(pipe.student.cpu().eval(), "mlp", {}, pipe.teacher.dim, 5), seconds, trainer.global_step


def table(title, rows, ref_label, ref_speeds):
    """``rows``: (label, metrics, seconds, vectors/s, threads); each speed is divided by the reference's on
    the same number of threads (``ref_speeds[threads]``)."""
    keys = list(rows[0][1])
    print(f"\n{title}\n")
    print("| 5-D method | " + " | ".join(keys) + f" | fit/train s | encode vectors/s | ÷ {ref_label} |")
    print("|---|" + "---:|" * (len(keys) + 3))
    for label, metrics, seconds, speed, threads in rows:
        secs = "" if seconds is None else f"{seconds:.1f}"
        print(f"| {label} | " + " | ".join(f"{metrics[k]:.3f}" for k in keys)
              + f" | {secs} | {speed:,.0f} | {speed / ref_speeds[threads]:.2f} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="teacher .npy (N, D); labels from <stem>.meta.jsonl")
    ap.add_argument("--quick", action="store_true", help="a quarter of the epochs (a smoke run)")
    ap.add_argument("--sweep", action="store_true", help="also train the student sweep behind the default")
    ap.add_argument("--losses", action="store_true", help="also train the loss and batching comparison")
    ap.add_argument("--batches", action="store_true",
                    help="also train the default on random batches: the same epochs, optimizer steps and seconds")
    ap.add_argument("--no-umap", action="store_true")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        sys.exit(f"quality.py: {args.data} not found; pass --data PATH.npy")
    emb = np.load(args.data)
    meta = args.data.with_name(args.data.name.replace(".emb.npy", ".meta.jsonl"))
    labels = [json.loads(line).get("coarse") for line in meta.open()] if meta.is_file() else None
    n = len(emb)
    perm = np.random.default_rng(0).permutation(n)
    n_train = n - int(round(n * 0.2))
    train_rows, test_rows = np.sort(perm[:n_train]), np.sort(perm[n_train:])
    xt, xe = torch.from_numpy(emb[train_rows]), torch.from_numpy(emb[test_rows])
    le = [labels[i] for i in test_rows] if labels else None
    rows = []
    threads = torch.get_num_threads()

    t0 = time.perf_counter()
    mean, comps = pca_fit(xt, 5)
    pca_seconds = time.perf_counter() - t0
    pca = pca_projector(mean, comps)
    rows.append(("PCA", evaluate(xe, pca_transform(xe, mean, comps), le), pca_seconds, throughput(pca, xe), threads))
    ref_label, ref_speeds = "PCA", {threads: rows[0][3], 1: throughput(one_thread(pca), xe)}
    if not args.no_umap:
        try:
            import umap
        except ImportError:
            print("(umap-learn not installed: UMAP rows skipped; pip install umap-learn)", file=sys.stderr)
        else:
            ref_label, ref_speeds = "UMAP", {}
            # Seeded UMAP runs on one thread (numba's parallel loops off); unseeded, on all of them.
            for seed, on, label in ((0, 1, "one thread: seeded"), (None, threads, f"{threads} threads: unseeded")):
                t0 = time.perf_counter()
                reducer = umap.UMAP(n_components=5, metric="cosine", random_state=seed).fit(xt.numpy())
                fit_seconds = time.perf_counter() - t0
                ze = reducer.transform(xe.numpy())
                ref_speeds[on] = throughput(lambda a, r=reducer: r.transform(a), xe.numpy(), 2.0)
                rows.append((f"UMAP (cosine) + transform, {label}", evaluate(xe, torch.from_numpy(ze), le),
                             fit_seconds, ref_speeds[on], on))

    pipe, st, seconds, steps = train_student(args.data, *DEFAULT, args.quick)
    assert np.array_equal(pipe.val_rows, test_rows)
    widths = "→".join(map(str, DEFAULT[0]["hidden"]))
    rows.append((f"**default** student (examples/quickstart.toml: MLP 384→{widths}→5, "
                 f"noise {DEFAULT[3]['input_noise']})", evaluate(xe, st.encode(xe), le), seconds,
                 throughput(st.encode, xe), threads))
    st.training_map = build_map(pipe.teacher, pipe.train_rows, st.encode, max_rows=len(pipe.train_rows))
    print(f"map: {len(pipe.train_rows):,} rows, searched in {st.training_map.dims} of "
          f"{st.training_map.teacher_dim} principal components", file=sys.stderr, flush=True)
    for epochs in REFINE_EPOCHS:
        encode = lambda a, e=epochs: st.encode(a, refine=e)  # noqa: E731
        metrics = evaluate(xe, encode(xe), le)
        rows.append((f"default + refine {epochs}", metrics, None, throughput(encode, xe, 2.0), threads))
        rows.append((f"default + refine {epochs}, one thread", metrics, None,
                     throughput(one_thread(encode), xe, 2.0), 1))
    print(f"done: default ({seconds:.0f} s)", file=sys.stderr, flush=True)
    batch_rows = []
    if args.batches:
        batch_rows = batch_comparison(args, st, seconds, steps, xe, le, threads)
    table(f"Held-out {len(xe)} of {n} rows ({args.data.name}), k = 10; fit/train seconds and encode vectors/s on "
          f"{threads} threads unless said; ÷ {ref_label} = vectors/s over {ref_label} transform's on as many threads.",
          rows, ref_label, ref_speeds)

    if batch_rows:
        table("Neighbour batches (the default) vs random batches, same split; a neighbour-batch epoch makes each "
              "training row an anchor once, so it holds many more optimizer steps than a random-batch epoch:",
              batch_rows, ref_label, ref_speeds)

    for flag, title, configs in ((args.sweep, "Student sweep (same split; train s and encode on "
                                  f"{torch.get_num_threads()} threads):", SWEEP),
                                 (args.losses, "Losses and batching (same split):", LOSSES)):
        if not flag:
            continue
        extra = []
        for label, student, loss, schedule, train in configs:
            pipe, st, seconds, _ = train_student(args.data, student, loss, schedule, train, args.quick)
            extra.append((label, evaluate(xe, st.encode(xe), le), seconds, throughput(st.encode, xe), threads))
            print(f"done: {label} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        table(title, extra, ref_label, ref_speeds)


def batch_comparison(args, st, seconds, steps, xe, le, threads) -> list:
    """The default student (neighbour batches) beside random batches at the same epochs, the same optimizer
    steps and (about) the same training seconds: which part of neighbour batches' lead is their step count."""
    student, loss, schedule, train = DEFAULT
    stages = schedule["stages"]
    refine = 6

    def measured(label, student_, seconds_, steps_):
        refined = evaluate(xe, student_.encode(xe, refine=refine), le)
        return [(f"{label}, {steps_:,} steps", evaluate(xe, student_.encode(xe), le), seconds_,
                 throughput(student_.encode, xe), threads),
                (f"{label} + refine {refine}", refined, None,
                 throughput(lambda a: student_.encode(a, refine=refine), xe), threads)]

    out = measured("neighbour batches (default)", st, seconds, steps)
    same_steps_seconds = None
    for what in ("epochs", "steps", "seconds"):
        budget = {"epochs_per_stage": train["epochs_per_stage"]}
        if what == "steps":
            budget = {"steps_per_stage": steps // stages}
        elif what == "seconds":  # the step count that fits the default's training time, from the same-steps run
            budget = {"steps_per_stage": max(1, round(steps // stages * seconds / same_steps_seconds))}
        rtrain = {k: v for k, v in train.items() if k != "epochs_per_stage"}
        p, s_, secs, n_steps = train_student(args.data, student, loss, schedule,
                                             {**rtrain, **budget, "batches": "random"}, args.quick)
        s_.training_map = build_map(p.teacher, p.train_rows, s_.encode, max_rows=len(p.train_rows))
        same_steps_seconds = secs if what == "steps" else same_steps_seconds
        out += measured(f"random batches, same {what}", s_, secs, n_steps)
        print(f"done: random batches, same {what} ({secs:.0f} s)", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
