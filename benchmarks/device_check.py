"""What only a CUDA GPU can check, in one call (CI has no GPU; run this where one is):

    python benchmarks/device_check.py [--out DIR] [--rows 200000,1000000]

1. The exact neighbour graph built on the GPU against a float64 full sort on the CPU (real example rows and
   a 20,000-row set built from them): the share of the reference's neighbours found (1.0 but for ties).
2. Its speed: ``neighbor_graph(method="exact")`` on the GPU for each of ``--rows`` (rows from the example,
   noised), peak GPU memory, and both the CPU's and the GPU's on 50,000 of them in the same run (the ratio).
3. The bundled example (``examples/quickstart.toml``) trained by ``atlas-run`` on CUDA and on the CPU:
   training seconds, samples/s and the report's held-out recall@10 / trustworthiness@10 for each.
4. ``atlas-run`` on 200,000 such rows with neighbour batches on CUDA (2,000 steps): graph seconds, training
   seconds, samples/s.
5. ``torchrun --nproc_per_node=1`` on CUDA (NCCL), then ``--resume`` of a finished run: both exit 0; then one
   process more than the host's GPUs: exit code and atlas-run's lines (one per rank, no traceback).
6. Memory: what ``neighbor_index = "auto"`` / ``"exact"`` make of this GPU's free memory for 10⁶ and 10⁸
   rows, and atlas-run with a tiny GPU memory allowance (a real out-of-memory): exit code and stderr.

7. Where a training step's time goes (``step_profile``, 200,000 such rows, neighbour batches): the trainer's
   milliseconds a step against the same steps on one batch already on the GPU, the host's share (a batch's
   read and copy, an epoch's batches drawn), then (unless ``--no-profile``) the synchronising calls per step
   with their places in the code, and cProfile's and torch.profiler's busiest calls.

``--only memory,graph_speed`` runs some of them.

Prints a table last and writes every figure to ``DIR/device_check.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atlas_plugins.errors import ConfigError
from atlas_plugins.neighbors import choose_method, graph_recall, neighbor_graph, topk_cosine
from atlas_plugins.teacher import TeacherData

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "data" / "stdlib-minilm.npy"
QUICKSTART = ROOT / "examples" / "quickstart.toml"
GPU = "cuda"
CUDA = torch.device(GPU)
K = 60  # the trainer's graph width: train.neighbor_pool's default
REFERENCE_ROWS = 50_000  # the exact graph on the CPU and the GPU alike, for a same-run ratio


def noised_rows(n: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit rows: the example's real rows, repeated, each with its own Gaussian noise (float32)."""
    base = np.load(EXAMPLE).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    for s in range(0, n, chunk):
        part = base[rng.integers(0, len(base), min(chunk, n - s))]
        part += rng.standard_normal(part.shape, dtype=np.float32) * 0.04
        out[s:s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def reference_neighbours(x: np.ndarray, k: int) -> torch.Tensor:
    """Every similarity in float64 on the CPU, self masked, fully sorted: ``(N, k)``."""
    t = torch.from_numpy(x).double()
    t = t / t.norm(dim=1, keepdim=True)
    out = []
    for s in range(0, len(t), 2048):
        sims = t[s:s + 2048] @ t.T
        sims[torch.arange(len(sims)), torch.arange(s, s + len(sims))] = -2
        out.append(sims.argsort(dim=1, descending=True)[:, :k])
    return torch.cat(out)


def agreement() -> dict:
    out = {}
    for name, x in (("example", np.load(EXAMPLE).astype(np.float32)), ("noised 20k", noised_rows(20_000, seed=1))):
        ref = reference_neighbours(x, 15)
        got = topk_cosine(F.normalize(torch.from_numpy(x).to(CUDA), dim=1), 15)
        graph, _ = neighbor_graph(TeacherData(x), np.arange(len(x)), 15, method="exact", device=CUDA, digest="-")
        out[name] = {"rows": len(x), "topk_recall": graph_recall(got, ref),
                     "graph_recall": graph_recall(graph.long(), ref)}
    return out


def graph_speed(sizes: list[int]) -> dict:
    out = {}
    x = noised_rows(max(sizes + [REFERENCE_ROWS]))
    for n, device in [(REFERENCE_ROWS, torch.device("cpu")), (REFERENCE_ROWS, CUDA)] + [(n, CUDA) for n in sizes]:
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        graph, info = neighbor_graph(TeacherData(x[:n]), np.arange(n), K, method="exact", device=device, digest="-")
        out[f"{device.type} {n}"] = {"seconds": round(time.perf_counter() - t0, 2), "shape": list(graph.shape),
                                     "gpu_peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return out


def atlas_run(pipeline: Path, *sets: str, torchrun: int = 0, extra=()) -> tuple[int, float, str]:
    """``atlas-run`` in a new interpreter (under ``torchrun`` with that many processes): exit code, seconds, log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", "--master_addr=127.0.0.1",
           "--master_port=29533", "-m", "atlas_plugins.cli"] if torchrun else [sys.executable, "-m",
                                                                                "atlas_plugins.cli"]
    args = [str(pipeline), *extra] + [a for s in sets for a in ("--set", s)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + args, capture_output=True, text=True, timeout=900)
    return proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr


def run_summary(folder: Path, rc: int, wall: float, log: str, report: bool = True) -> dict:
    res = {"rc": rc, "wall_s": round(wall, 1), "samples_per_s": [float(s.replace(",", "")) for s in
                                                                    re.findall(r"([\d,]+) samples/s", log)]}
    graph = re.search(r"neighbour graph: .* in ([\d.]+)s", log)
    res["graph_s"] = float(graph.group(1)) if graph else None
    if rc != 0:
        res["log_tail"] = log[-2000:]
    if rc != 0 or not report:
        return res
    report = json.loads((folder / "report.json").read_text())
    student = report["methods"]["student"]
    res.update(train_s=report["train_seconds"], recall10=round(student["recall@10"], 4),
               trust10=round(student["trustworthiness@10"], 4))
    return res


def example(tmp: Path) -> dict:
    out = {}
    for device in (GPU, "cpu"):
        folder = tmp / f"example-{device}"
        rc, wall, log = atlas_run(QUICKSTART, f'train.device="{device}"',
                                  f'output.dir="{folder}"', "output.plots=false")
        out[device] = run_summary(folder, rc, wall, log)
    return out


def large(tmp: Path, n: int = 200_000, dim: int = 384, quick: bool = False) -> dict:
    """``atlas-run`` with neighbour batches on ``n`` rows of ``dim`` (wider than the example's 384: its rows
    through a fixed random projection, which keeps their neighbours); ``quick``: 250 steps a stage, no report."""
    x = noised_rows(n, seed=2)
    if dim != x.shape[1]:
        x = x @ np.random.default_rng(5).standard_normal((x.shape[1], dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp / f"noised-{n}x{dim}.npy"
    np.save(path, x)
    del x
    pipe = tmp / "large.toml"
    pipe.write_text(f'[teacher]\nloader = "npy"\npath = "{path}"\n[output]\ndir = "{tmp / "large"}"\nplots = false\n'
                    f'report = {str(not quick).lower()}\n[train]\nsteps_per_stage = {250 if quick else 500}\n'
                    f'device = "{GPU}"\nbatches = "neighbors"\n')
    rc, wall, log = atlas_run(pipe)
    if quick:
        stages = re.findall(r"^stage \d+/\d+ .*  ([\d.]+)s  [\d,]+ samples/s$", log, re.M)
        res = run_summary(tmp / "large", rc, wall, log, report=False)
        res.update(dim=dim, stage_s=[float(v) for v in stages], train_s=round(sum(map(float, stages)), 2))
        return res
    return run_summary(tmp / "large", rc, wall, log)


def ddp(tmp: Path) -> dict:
    folder = tmp / "ddp"
    sets = (f'train.device="{GPU}"', f'output.dir="{folder}"', "output.plots=false", "train.epochs_per_stage=2")
    first = run_summary(folder, *atlas_run(QUICKSTART, *sets, torchrun=1))
    rc, wall, log = atlas_run(QUICKSTART, *sets, torchrun=1, extra=("--resume",))
    out = {"first": first, "resume": {"rc": rc, "wall_s": round(wall, 1), "log_tail": log[-600:]}}
    # one process more than the host's GPUs: every rank stops with one line before joining
    over = torch.cuda.device_count() + 1 if GPU == "cuda" else 2
    rc, wall, log = atlas_run(QUICKSTART, *sets, torchrun=over, extra=("--overwrite",))
    out[f"{over} processes"] = {"rc": rc, "atlas_lines": [line for line in log.splitlines() if "atlas-run" in line],
                                "log_head": log[:1500]}
    return out


def memory(tmp: Path) -> dict:
    """``choose_method`` against this GPU's free memory, and a real CUDA out-of-memory through atlas-run."""
    out = {"free_gib": round(torch.cuda.mem_get_info()[0] / 2**30, 1),
           "auto 1M x 384": choose_method(10**6, CUDA, "auto", 384)}
    for choice in ("exact", "auto"):
        try:
            out[f"{choice} 100M x 1536"] = choose_method(10**8, CUDA, choice, 1536)
        except ConfigError as exc:
            out[f"{choice} 100M x 1536"] = f"ConfigError: {exc}"
    code = ("import sys, torch; torch.cuda.set_per_process_memory_fraction(1e-5); "  # about 1.4 MB
            "from atlas_plugins.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(QUICKSTART), "--set",
                           f'train.device="{GPU}"', "--set", f'output.dir="{tmp / "oom"}"'],
                          capture_output=True, text=True, timeout=300)
    out["out of memory"] = {"rc": proc.returncode, "stderr": proc.stderr[-1500:]}
    return out


def step_profile(tmp: Path, n: int = 200_000, profile: bool = True) -> dict:
    """Where a training step's time goes on the GPU: the trainer's steps (neighbour batches on ``n`` rows)
    against the same student, loss and optimizer stepping on one batch already on the GPU (the bare compute),
    the host's part of a step (the batch's gather, its copy), the synchronising calls in a step (their places in
    the code) and the profiler's busiest operations, host and GPU (those three with ``profile``)."""
    import cProfile
    import pstats
    import warnings

    from atlas_plugins.config import config_from_dict
    from atlas_plugins.pipeline import assemble
    from atlas_plugins.trainer import Trainer

    path = tmp / f"profile-{n}.npy"
    np.save(path, noised_rows(n, seed=3))

    def trainer(steps: int, stages: int = 2) -> Trainer:
        config = config_from_dict({"teacher": {"loader": "npy", "path": str(path)},
                                   "schedule": {"stages": stages},
                                   "train": {"steps_per_stage": steps, "device": GPU, "batches": "neighbors"},
                                   "output": {"dir": str(tmp / "profile"), "plots": False}})
        return Trainer(assemble(config, device=CUDA, progress=False), None, echo=lambda m: None)

    out = {}
    trainer(20, 1).fit()  # the GPU's first kernels, cuBLAS's set-up: not a step's cost
    t = trainer(500)
    t0 = time.perf_counter()
    t.fit()
    torch.cuda.synchronize()
    out["trainer_ms_per_step"] = round((time.perf_counter() - t0) * 1000 / t.global_step, 3)
    out["trainer_steps"] = t.global_step

    pipe, batch = t.pipe, t.batches(0)[0]
    x = pipe.teacher.rows(batch).to(CUDA)
    for _ in range(2):  # a warm-up pass, then the timed one
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(300):
            t._step(x, 1.0)
            t._optimizer_step()
        torch.cuda.synchronize()
    out["bare_ms_per_step"] = round((time.perf_counter() - t0) * 1000 / 300, 3)
    out["trainer_over_bare"] = round(out["trainer_ms_per_step"] / out["bare_ms_per_step"], 2)
    batches = t.batches(1)[:300]
    t0 = time.perf_counter()
    xs = [pipe.teacher.rows(b) for b in batches]
    out["gather_ms_per_batch"] = round((time.perf_counter() - t0) * 1000 / len(batches), 3)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for xb in xs:
        xb.to(CUDA, non_blocking=True)
    torch.cuda.synchronize()
    out["copy_ms_per_batch"] = round((time.perf_counter() - t0) * 1000 / len(xs), 3)
    t0 = time.perf_counter()
    t.batches(2)
    out["batches_ms_per_epoch"] = round((time.perf_counter() - t0) * 1000, 1)
    if not profile:
        return out

    t = trainer(100)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit()
    torch.cuda.set_sync_debug_mode(0)
    places: dict = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            places[key] = places.get(key, 0) + 1
    out["syncs_per_step"] = {k: round(v / t.global_step, 3) for k, v in sorted(places.items(), key=lambda kv: -kv[1])}

    t = trainer(100)
    prof = cProfile.Profile()
    prof.enable()
    t.fit()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    out["cprofile_tottime"] = text.getvalue()[-6000:]

    t = trainer(100)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as p:
        t.fit()
        torch.cuda.synchronize()
    table = p.key_averages()
    for key in ("self_cpu_time_total", "self_cuda_time_total"):
        try:
            out[f"top by {key}"] = table.table(sort_by=key, row_limit=18, max_name_column_width=60)
        except Exception as exc:  # the sort keys' names change between torch versions
            out[f"top by {key}"] = f"{type(exc).__name__}: {exc}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for device_check.json (default: here)")
    ap.add_argument("--rows", default="200000,1000000", help="graph sizes on the GPU, comma-separated")
    ap.add_argument("--only", help="run only these checks, comma-separated (default: all)")
    ap.add_argument("--dim", type=int, default=384, help="large: the rows' width (default: 384, the example's)")
    ap.add_argument("--quick", action="store_true", help="large: 250 steps a stage and no report")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="step_profile: the timings only, not the synchronising calls and profiler tables")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("device_check.py needs a CUDA GPU; this machine has none")
    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in [("agreement", agreement),
                            ("graph_speed", lambda: graph_speed([int(r) for r in args.rows.split(",")])),
                            ("example", lambda: example(Path(tmp))),
                            ("large", lambda: large(Path(tmp), dim=args.dim, quick=args.quick)),
                            ("ddp", lambda: ddp(Path(tmp))), ("memory", lambda: memory(Path(tmp))),
                            ("step_profile", lambda: step_profile(Path(tmp), profile=args.profile))]:
            if args.only and name not in args.only.split(","):
                continue
            t0 = time.perf_counter()
            try:
                results[name] = check()
            except Exception:  # one check failing must not lose the others' figures
                results[name] = {"error": traceback.format_exc()[-2000:]}
            print(f"== {name} ({time.perf_counter() - t0:.0f}s)\n{json.dumps(results[name], indent=1)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
