"""The distillation guide's full training example on real data, next to the pipeline atlas-run runs.

    python examples/distillation_example.py                 # about 2 minutes on 2 CPU cores
    python examples/distillation_example.py --epochs 3      # a quicker look

The guide's "Full Training Example (CPU-only)" trains a linear student with ``curriculum_distill_step`` in
a hand-written loop. This script runs that loop on the bundled example (2,642 Python docstrings embedded
by all-MiniLM-L6-v2), then trains on the same rows with ``train()`` — the pipeline ``atlas-run`` runs: a
deeper student, the ``neighbors`` loss, batches of teacher neighbours — and measures both, and PCA, on the
same held-out rows. The measure is recall@10: of each held-out row's 10 nearest rows by teacher cosine,
the share that stay among its 10 nearest on the 5-D map (Euclidean).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from atlas.training import (DistillationConfig, create_curriculum_schedule, curriculum_distill_step,
                            load_teacher_checkpoint, train)
from atlas_plugins.evaluation import recall_at_k

EXAMPLE = Path(__file__).resolve().parent / "data" / "stdlib-minilm.npy"


def split(n: int, held_out: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, held_out)``: a seeded shuffle, the last ``held_out`` share kept back."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n - round(n * held_out)
    return np.sort(order[:cut]), np.sort(order[cut:])


def guide_loop(config: DistillationConfig) -> torch.nn.Module:
    """The guide's loop: a linear student, the relational loss at τ from a linear 4.0 → 0.5 curriculum.

    Two changes from the guide, both what its troubleshooting section advises: batches are shuffled each
    epoch (the guide walks the rows in file order), and the learning rate is 1e-3.
    """
    teacher = load_teacher_checkpoint(config.teacher_checkpoint, device=config.device)["embeddings"]  # (N, D)
    torch.manual_seed(0)
    student = torch.nn.Linear(config.teacher_dim, config.student_dim)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    schedule = create_curriculum_schedule(*config.curriculum_tau_schedule, config.curriculum_stages, "linear")
    for stage in range(config.curriculum_stages):
        for epoch in range(config.epochs_per_stage):
            total = 0.0
            batches = torch.randperm(len(teacher)).split(config.batch_size)
            for rows in batches:
                loss, tau = curriculum_distill_step(student(teacher[rows]), teacher[rows], stage=stage,
                                                    tau_schedule=schedule, alpha=config.alpha)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
        print(f"  guide loop, stage {stage}: tau {tau:.2f}, last epoch's loss {total / len(batches):.4f}")
    return student


def pca(train_rows: np.ndarray, rows: np.ndarray, dim: int) -> np.ndarray:
    """``rows`` projected on the ``dim`` principal axes of ``train_rows``."""
    mean = train_rows.mean(axis=0)
    axes = np.linalg.svd(train_rows - mean, full_matrices=False)[2][:dim]
    return (rows - mean) @ axes.T


def positive(text: str) -> int:
    """``--epochs``: a whole number of at least 1 (argparse reports anything else in one line)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive, default=10, help="epochs in each curriculum stage, for both (default 10)")
    p.add_argument("--out", type=Path, default=Path("runs/distillation-example"),
                   help="where the teacher checkpoint and the pipeline's run folder go")
    args = p.parse_args(argv)

    vectors = np.load(EXAMPLE).astype(np.float32)
    train_idx, held_idx = split(len(vectors))
    args.out.mkdir(parents=True, exist_ok=True)
    teacher_path = args.out / "teacher.pt"
    torch.save({"embeddings": torch.from_numpy(vectors[train_idx])}, teacher_path)  # what the guide loads
    held_out = torch.from_numpy(vectors[held_idx])

    guide = DistillationConfig(teacher_checkpoint=str(teacher_path), teacher_dim=vectors.shape[1], student_dim=5,
                               curriculum=True, curriculum_stages=5, curriculum_tau_schedule=(4.0, 0.5),
                               alpha=0.7, batch_size=32, learning_rate=1e-3, epochs_per_stage=args.epochs)
    start = time.perf_counter()
    student = guide_loop(guide)
    guide_seconds = time.perf_counter() - start
    with torch.no_grad():
        guide_map = student(held_out)

    # The quickstart's recipe (examples/quickstart.toml) as a DistillationConfig: the defaults of the
    # `neighbors` loss, a 4 x 128 student and neighbour batches, with a cosine τ curriculum 2.0 -> 0.4.
    recipe = DistillationConfig(teacher_dim=vectors.shape[1], student_dim=5, curriculum=True, curriculum_stages=4,
                                curriculum_tau_schedule=(2.0, 0.4), schedule_type="cosine", batch_size=1024,
                                learning_rate=5e-3, epochs_per_stage=args.epochs)
    pipeline = recipe.pipeline(str(teacher_path), str(args.out / "pipeline"))
    pipeline["output"]["plots"] = False
    start = time.perf_counter()
    trained = train(pipeline, quiet=True, overwrite=True)  # a rerun replaces the last run's files, and only them
    pipeline_seconds = time.perf_counter() - start

    scores = {
        "PCA": recall_at_k(held_out, torch.from_numpy(pca(vectors[train_idx], vectors[held_idx], 5))),
        "guide loop": recall_at_k(held_out, guide_map),
        "train()": recall_at_k(held_out, torch.from_numpy(trained.encode(held_out.numpy()))),
        "train() + refine 6": recall_at_k(held_out, torch.from_numpy(trained.encode(held_out.numpy(), refine=6))),
    }
    seconds = {"guide loop": guide_seconds, "train()": pipeline_seconds}
    print(f"{len(held_idx):,} held-out rows, recall@10 on the 5-D map (seconds to train, train()'s with its "
          "report):")
    for name, score in scores.items():
        took = f"  ({seconds[name]:.0f} s)" if name in seconds else ""
        print(f"  {name:<20} {score:.3f}{took}")
    print(f"the pipeline's run folder: {args.out / 'pipeline'} (student.pt, report.md, map.parquet, ...)")
    return scores


if __name__ == "__main__":
    main()
