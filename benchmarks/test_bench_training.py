"""Training throughput: the orchestrator's Trainer against a hand-written plain-torch loop, same maths and data.

    pytest benchmarks/test_bench_training.py --benchmark-enable -s -n 0

Both train an MLP 384→256→5 with the relational loss (τ 0.1, Adam 1e-3,
batch 512) for 3 epochs on 20,000 real MiniLM vectors (the bundled example,
tiled).  The trainer's time includes everything it does per epoch (metrics
file, checkpoint); the ratio is plain-loop time / trainer time (≥ 1 means the
trainer is as fast), medians of 5 interleaved runs.
"""

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atlas_plugins.config import build_config
from atlas_plugins.pipeline import assemble
from atlas_plugins.rundir import RunDir
from atlas_plugins.trainer import Trainer
EXAMPLE_NPY = Path(__file__).resolve().parent.parent / "examples" / "data" / "stdlib-minilm.npy"

N, EPOCHS, BATCH, TAU, LR = 20000, 3, 512, 0.1, 1e-3


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    emb = np.load(EXAMPLE_NPY)
    path = tmp_path_factory.mktemp("bench") / "teacher.npy"
    tiled = np.resize(emb, (N, emb.shape[1]))  # the example 7.6 times over, each copy moved a little: not repeats
    np.save(path, tiled + np.random.default_rng(0).normal(0, 1e-3, tiled.shape).astype(np.float32))
    return path


def _config(teacher_file, out):
    doc = {"teacher": {"path": str(teacher_file)}, "student": {"name": "mlp", "dim": 5, "hidden": [256]},
           "loss": {"name": "relational", "tau": TAU},
           "train": {"epochs_per_stage": EPOCHS, "batch_size": BATCH, "learning_rate": LR, "val_fraction": 0.0,
                     "batches": "random", "lr_schedule": "constant", "warmup_steps": 0},
           "output": {"dir": str(out), "report": False}}
    return build_config(doc, teacher_file)


def run_trainer(teacher_file, out):
    pipe = assemble(_config(teacher_file, out))
    run = RunDir(out)
    t0 = time.perf_counter()
    Trainer(pipe, run).fit()
    return time.perf_counter() - t0


def run_plain(teacher_file):
    x_all = torch.from_numpy(np.load(teacher_file))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(384, 256), torch.nn.GELU(), torch.nn.Linear(256, 5))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        perm = torch.randperm(N)
        for i in range(0, N, BATCH):
            x = x_all[perm[i:i + BATCH]]
            with torch.no_grad():
                tn = F.normalize(x, dim=1)
                t_sim = tn @ tn.T
            sn = F.normalize(model(x), dim=1)
            eye = torch.eye(len(x), dtype=torch.bool)
            log_p = torch.log_softmax((t_sim / TAU).masked_fill(eye, -float("inf")), dim=1)
            log_q = torch.log_softmax((sn @ sn.T / TAU).masked_fill(eye, -float("inf")), dim=1)
            loss = ((log_p.exp() * (log_p - log_q)).masked_fill(eye, 0.0).sum(1) * TAU**2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


@pytest.mark.slow  # 11 short trainings (~15 s; 2 under --benchmark-disable, as in CI): a measurement, not a check
@pytest.mark.benchmark(group="training")
def test_trainer_throughput_vs_plain_loop(benchmark, teacher_file, tmp_path):
    runs = iter(range(1000))
    benchmark.pedantic(lambda: run_trainer(teacher_file, tmp_path / f"r{next(runs)}"), rounds=1, iterations=1)
    if benchmark.disabled:  # --benchmark-disable (CI): each loop runs once, nothing is measured
        run_plain(teacher_file)
        return
    ours_t, plain_t = [], []
    for i in range(5):  # interleaved, so drift in machine load hits both alike
        ours_t.append(run_trainer(teacher_file, tmp_path / f"m{i}"))
        plain_t.append(run_plain(teacher_file))
    ours, plain = statistics.median(ours_t), statistics.median(plain_t)
    ratio = plain / ours
    benchmark.extra_info.update(trainer_samples_per_s=round(N * EPOCHS / ours),
                                plain_samples_per_s=round(N * EPOCHS / plain), throughput_ratio=round(ratio, 3))
    print(f"\ntrainer {N * EPOCHS / ours:,.0f} samples/s, plain loop {N * EPOCHS / plain:,.0f} samples/s: "
          f"throughput ratio {ratio:.2f}")
