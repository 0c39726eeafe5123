"""Scaling on one machine: epoch time vs rows, encode throughput vs memory bandwidth, peak memory vs file size.

    python benchmarks/scale.py            # about 2 minutes on 2 cores; writes ~2.6 GB of temporary files

1. Epochs (median of 3; random batches of 1024, relational loss, MLP 1536→128→5) on N = 50k, 100k, 200k memory-mapped
   1536-D rows; time per epoch, samples/s and the ratio time(200k)/time(50k) (linear: 4).
2. Encode throughput of the trained student against a memory-bandwidth reference measured on the same array in
   the same run (a plain ``sum`` over it: reading every byte once), as a ratio.
3. Peak resident memory of ``atlas-run`` (one epoch) on a 2 GB teacher file vs a 100 MB one, and without map.pt.
4. ``encode(refine=10)`` vectors/s against training maps of 5k–50k rows (``map.pt`` written and memory-mapped
   back, as ``load_student`` does), with the student alone as the same-run reference.

    python benchmarks/scale.py --only-refine     # section 4 alone, under a minute

5. Cold reads of scattered rows (neighbour batches from a file the page cache does not hold) against a
   sequential read of the same bytes, and the same gathers warm (``--only-gather``: section 5 alone).
6. Real texts at scale (``--pypi 100000,200000``, only this section; the corpus comes from
   ``benchmarks/make_pypi.py``): ``atlas-run`` with neighbour batches vs random batches on the same held-out
   5,000 rows and the same step budget: neighbour-graph method, build seconds and recall on a 2,000-row
   sample, training time, peak RSS, held-out recall@10 and trustworthiness among the held-out rows and
   recall@10 among the training rows (the report's ``corpus_recall@10``), the student alone and with
   ``refine`` 6 (the run's map.pt: ``output.map_rows`` sampled training rows). ``--umap`` adds the
   reference: UMAP (cosine, 15 neighbours) fitted on all the run's training rows, held-out rows placed by
   ``transform`` (about 4 minutes at 200k rows on 2 cores). ``--same-time`` adds random batches given as many
   steps as fit the neighbour run's training seconds plus its graph build's (as a first run on new data pays).
   ``--epochs E`` gives both kinds E epochs in each stage instead of ``--steps`` (the default budget is 10);
   ``--profile`` adds each student's recall@10 among samples of 2,000–50,000 training rows: the map at
   coarse to fine neighbourhood scales; ``--hops 2`` draws the neighbour batches' partners two steps out on
   the graph (``train.neighbor_hops``); ``--kernel student-t`` gives both kinds the loss's heavy-tailed kernel.
   ``--held-out 20000`` holds out atlas-run's default share at 200,000 rows (10 %) instead of 5,000 rows; the
   report still measures 5,000 of them, and ``--profile`` adds recall@10 among samples of the held-out rows,
   up to all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atlas_plugins.config import MAX_HOPS, build_config
from atlas_plugins.pipeline import assemble
from atlas_plugins.refine import TrainingMap, build_map
from atlas_plugins.student import TrainedStudent
from atlas_plugins.trainer import Trainer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "stdlib-minilm.npy"
DIM = 1536


def make_teacher(path: Path, rows: int, chunk: int = 20_000) -> Path:
    """``rows`` 1536-D rows built from the real 384-D example (4 noisy copies side by side), written in chunks."""
    base = np.load(EXAMPLE)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, DIM))
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        block = np.tile(base[rng.integers(0, len(base), n)], (1, 4))
        out[start:start + n] = block + 0.02 * rng.standard_normal(block.shape, dtype=np.float32)
    out.flush()
    del out
    return path


def doc(path: Path, out: Path) -> dict:
    return {"teacher": {"path": str(path)}, "student": {"name": "mlp", "dim": 5, "hidden": [128]},
            "loss": {"name": "relational", "tau": 0.1},
            "train": {"epochs_per_stage": 1, "batch_size": 1024, "learning_rate": 1e-3, "val_fraction": 0.01,
                      "batches": "random",
                      "eval_rows": 1000},
            "output": {"dir": str(out), "report": False}}


def epoch_seconds(path: Path, tmp: Path, epochs: int = 3):
    """Median seconds of one epoch's batch loop over ``epochs`` epochs (set-up and validation excluded)."""
    d = doc(path, tmp / "unused")
    d["train"]["epochs_per_stage"] = epochs
    pipe = assemble(build_config(d, path))
    trainer = Trainer(pipe, None, echo=lambda m: None)
    trainer.fit()
    return statistics.median(m["seconds"] for m in trainer.metrics), pipe, len(pipe.train_rows)


PEAK = ("import resource, subprocess, sys; "
        "p = subprocess.run([sys.executable, '-m', 'atlas_plugins.cli', *sys.argv[1:]], capture_output=True); "
        "sys.stderr.write(p.stderr.decode()[-3000:]); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss_mb(pipeline: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", PEAK, str(pipeline), "--quiet", "--overwrite"],
                          capture_output=True, text=True, check=True)
    out = proc.stdout.split()
    if out[0] != "0":
        raise SystemExit(f"atlas-run failed on {pipeline}: {proc.stderr.strip().splitlines()[-1:]}")
    return int(out[1]) / 1024


def toml(d: dict) -> str:
    from atlas_plugins.config import dump_toml

    return dump_toml(d)


def refine_vs_map_rows(tmp: Path) -> None:
    """Refine's speed as the training map grows: 384-D rows from the real example (noisy copies)."""
    from builtin_plugins.students import mlp

    torch.manual_seed(0)
    base = torch.from_numpy(np.load(EXAMPLE))
    student = TrainedStudent(mlp(base.shape[1], 5).eval(), "mlp", {}, base.shape[1], 5)
    rng = np.random.default_rng(0)
    queries = base[rng.integers(0, len(base), 2000)] + 0.02 * torch.randn(2000, base.shape[1])
    alone = len(queries) / _seconds(lambda: student.encode(queries))
    print("\n| map rows | build s | searched dims | map.pt MB | refine 10 vectors/s "
          f"| ÷ student alone ({alone:,.0f}/s) |"
          "\n|---:|---:|---:|---:|---:|---:|")
    for rows in (5_000, 20_000, 50_000):
        x = base[rng.integers(0, len(base), rows)] + 0.02 * torch.randn(rows, base.shape[1])

        class Teacher:
            def rows(self, index):
                return x[index]

        t0 = time.perf_counter()
        build_map(Teacher(), np.arange(rows), student.encode, max_rows=rows).save(tmp / "map.pt")
        build = time.perf_counter() - t0
        student.training_map = TrainingMap.load(tmp / "map.pt")
        speed = len(queries) / _seconds(lambda: student.encode(queries, refine=10))
        print(f"| {rows:,} | {build:.1f} | {student.training_map.dims} | {(tmp / 'map.pt').stat().st_size / 2**20:.0f} "
              f"| {speed:,.0f} | {speed / alone:.4f} |", flush=True)


def gather_vs_sequential(path: Path, batches: int = 30, batch: int = 1024) -> None:
    """Cold reads of scattered rows (neighbour batches) vs a sequential read of the same number of bytes.

    The machine's page cache (24 GB) holds any file this benchmark can write, so every measurement starts
    by evicting the file's pages (``posix_fadvise(DONTNEED)``): the reads that follow come from the disk,
    as they would for a file larger than memory."""
    from atlas_plugins import teacher as teacher_module

    emb = np.load(path, mmap_mode="r")
    data = teacher_module.TeacherData(emb)
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(emb), batch, replace=False) for _ in range(batches)]
    row_bytes = emb.shape[1] * emb.itemsize

    def cold(fn) -> float:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        return _timed(fn)

    def sequential():
        fd = os.open(path, os.O_RDONLY)
        total, at = batches * batch * row_bytes, emb.offset + len(emb) // 3 * row_bytes
        for off in range(0, total, 8 * 2**20):
            os.pread(fd, min(8 * 2**20, total - off), at + off)
        os.close(fd)

    def one_pread_per_row():  # what TeacherData.rows did before: serial, one request in flight
        fd = os.open(path, os.O_RDONLY)
        for rows in picks:
            order, out = np.argsort(rows), np.empty((len(rows), emb.shape[1]), dtype=np.float32)
            for pos, r in zip(order.tolist(), rows[order].tolist()):
                out[pos] = np.frombuffer(os.pread(fd, row_bytes, emb.offset + r * row_bytes), dtype=emb.dtype)
        os.close(fd)

    n = batches * batch
    seq = n / cold(sequential)
    print(f"\n| cold read of {n:,} rows ({row_bytes:,} B each) | rows/s | ÷ sequential |\n|---|---:|---:|")
    print(f"| sequential (same bytes, one range) | {seq:,.0f} | 1.00 |")
    old = n / cold(one_pread_per_row)
    print(f"| scattered, one pread per row (before) | {old:,.0f} | {old / seq:.2f} |")
    saved = teacher_module.GATHER_THREADS
    for threads in (4, 16, 32):
        teacher_module.GATHER_THREADS, teacher_module._gather_pool = threads, None
        speed = n / cold(lambda: [data.rows(rows) for rows in picks])
        print(f"| scattered, TeacherData.rows, {threads} threads | {speed:,.0f} | {speed / seq:.2f} |", flush=True)
    teacher_module.GATHER_THREADS, teacher_module._gather_pool = saved, None
    # now in the page cache: the common case of a file that fits in memory (best of 3 each)
    warm_old, warm = n / _seconds(one_pread_per_row), n / _seconds(lambda: [data.rows(rows) for rows in picks])
    print(f"| warm (page cache): one pread per row / TeacherData.rows ({saved} threads) | {warm_old:,.0f} / "
          f"{warm:,.0f} | ratio {warm / warm_old:.2f} |")


def pypi_runs(sizes: list[int], steps: int, modes=("neighbors", "random"), umap_reference: bool = False,
              same_time: bool = False, epochs: int | None = None, profile: bool = False, hops: int = 1,
              kernel: str | None = None, held_out: int = 5000) -> None:
    """Real texts at scale: ``atlas-run`` on the first N rows of benchmarks/make_pypi.py's corpus (PyPI package
    summaries, MiniLM), neighbour batches vs random batches, the same ``held_out`` rows (the report measures
    the first 5,000 of them) and step budget (``epochs``: the same epochs per stage instead, as the default
    budget counts them; ``hops``: the neighbour batches' ``train.neighbor_hops``; ``kernel``: the ``neighbors``
    loss's ``kernel`` for both kinds);
    optionally random batches given the neighbour run's seconds including its graph build (``same_time``),
    UMAP fitted on the same training rows as the reference, and each student's recall at several
    neighbourhood scales (``profile``, :func:`scale_profile`)."""
    import json
    import tomllib

    from make_pypi import cache_dir, done_rows

    folder = cache_dir()
    quick = tomllib.loads((Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml").read_text())
    print("\n| rows | batches | neighbour graph | graph s | graph recall | train s | ms/step | peak RSS MB | "
          "held-out recall@10 | trust@10 | corpus recall@10 | + refine 6 recall@10 | trust@10 | corpus recall@10 |\n"
          "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def run(n, path, meta, mode, label, steps_per_stage):
        same_time_run = label != mode
        budget = {"epochs_per_stage": epochs} if epochs and not same_time_run else {"steps_per_stage": steps_per_stage}
        label += f"-epochs{epochs}" if "epochs_per_stage" in budget else ""
        hop = {"neighbor_hops": hops} if mode == "neighbors" and hops > 1 else {}
        label += f"-hops{hops}" if hop else ""
        loss = {**quick["loss"], "kernel": kernel} if kernel else quick["loss"]
        label += f"-{kernel}" if kernel else ""
        label += f"-held{held_out}" if held_out != 5000 else ""
        out = folder / f"run-{n}-{label}"
        d = {"teacher": {"path": str(path), "meta": str(meta)}, "student": quick["student"],
             "loss": loss, "schedule": quick["schedule"],
             "train": {**{k: v for k, v in quick["train"].items() if k != "epochs_per_stage"},
                       **budget, **hop, "batches": mode, "val_fraction": held_out / n, "eval_rows": 5000},
             "output": {"dir": str(out), "plots": False}}
        pipeline = folder / f"run-{n}-{label}.toml"
        pipeline.write_text(toml(d))
        rss = peak_rss_mb(pipeline)
        report = json.loads((out / "report.json").read_text())
        graph = report.get("neighbor_graph") or {}
        st, refined = report["student"], report["methods"]["student + refine 6"]
        with open(out / "metrics.jsonl") as fh:
            total_steps = [json.loads(line) for line in fh][-1]["step"]
        cached = " (cached)" if graph.get("cached") else ""
        name = (f"{mode}, {total_steps:,} steps" + (f", {hops} hops" if hop else "")
                + (f", {kernel} kernel" if kernel else "")
                + (" (the neighbour run's seconds with its graph)" if same_time_run else ""))
        built = f"{graph['seconds']:.0f}{cached} | {graph['recall']:.3f}" if graph else "— | —"
        print(f"| {n:,} | {name} | {graph.get('method', '—')} | {built} | {report['train_seconds']:.0f} | "
              f"{1000 * report['train_seconds'] / total_steps:.1f} | {rss:,.0f} | {st['recall@10']:.3f} | "
              f"{st['trustworthiness@10']:.3f} | {st['corpus_recall@10']:.3f} | {refined['recall@10']:.3f} | "
              f"{refined['trustworthiness@10']:.3f} | {refined['corpus_recall@10']:.3f} |", flush=True)
        return report, tuple(m[key] for m in (st, refined) for key in ("recall@10", "corpus_recall@10")), out

    def ratio_row(n, what, a, b):
        held_out, corpus, held_out_refined, corpus_refined = (x / y for x, y in zip(a, b))
        print(f"| {n:,} | {what} | | | | | | | {held_out:.2f} | | {corpus:.2f} | {held_out_refined:.2f} | | "
              f"{corpus_refined:.2f} |", flush=True)

    for n in sizes:
        if done_rows(folder) < n:
            raise SystemExit(f"only {done_rows(folder):,} rows embedded; run: python benchmarks/make_pypi.py "
                             f"--rows {n}")
        path, meta = folder / f"pypi-{n}.npy", folder / f"pypi-{n}.jsonl"
        if not path.is_file():
            np.save(path, np.load(folder / "pypi-minilm.npy", mmap_mode="r")[:n])
            with open(folder / "pypi-texts.jsonl", encoding="utf-8") as src:
                meta.write_text("".join(next(src) for _ in range(n)), encoding="utf-8")
        reports, recall, run_dirs = {}, {}, {}
        for mode in modes:
            reports[mode], recall[mode], run_dirs[mode] = run(n, path, meta, mode, mode, steps)
        if len(recall) == 2:
            ratio_row(n, "neighbours ÷ random", recall["neighbors"], recall["random"])
        if same_time and len(recall) == 2:
            graph_s = (reports["neighbors"].get("neighbor_graph") or {}).get("seconds", 0.0)
            budget = (graph_s + reports["neighbors"]["train_seconds"]) / reports["random"]["train_seconds"]
            _, longer, _ = run(n, path, meta, "random", "random-same-time", max(1, round(steps * budget)))
            ratio_row(n, "neighbours ÷ random in the same seconds", recall["neighbors"], longer)
        if umap_reference:
            m = umap_fit_transform(path, held_out / n, quick["train"]["seed"])
            print(f"| {n:,} | UMAP on all training rows (reference; fit {m['fit_seconds']:.0f} s) | | | | | | | "
                  f"{m['recall@10']:.3f} | {m['trustworthiness@10']:.3f} | — | | | |", flush=True)
        if profile:
            scale_profile(path, held_out / n, quick["train"]["seed"], run_dirs)
            if held_out > 5000:
                scale_profile(path, held_out / n, quick["train"]["seed"], run_dirs, held=True,
                              sizes=(*(v for v in (2_000, 5_000, 10_000) if v < held_out), held_out))


def scale_profile(path: Path, val_fraction: float, seed: int, runs: dict[str, Path],
                  sizes=(2_000, 5_000, 20_000, 50_000), held: bool = False) -> None:
    """Recall@10 among random samples of the training rows (``held``: of the held-out rows, the largest
    sample all of them), one sample per size, for each run's student.

    Among ``m`` of ``N`` training rows a row's 10 nearest are about its ``10·N/m`` nearest in the whole set,
    so the sizes read the map at scales from coarse to fine; the held-out metric (5,000 rows) is one of
    them.  A student generalises about as well as it fits at these sizes (200,000 rows, 10 epochs a stage:
    0.194 on the 5,000 held-out rows, 0.195 on 5,000 training rows), so training rows stand in for held-out
    rows of any number."""
    from atlas_plugins.evaluation import recall_at_k
    from atlas_plugins.pipeline import split_rows
    from atlas_plugins.student import load_student

    x_all = np.load(path, mmap_mode="r")
    train, val = split_rows(len(x_all), val_fraction, seed)
    pool = val if held else train
    order = np.random.default_rng(seed + 1).permutation(pool)
    students = {name: load_student(folder / "student.pt") for name, folder in runs.items()}
    names = list(students)
    print(f"\n| sample of the {len(pool):,} {'held-out' if held else 'training'} rows | about the whole set's | "
          + " | ".join(f"{n} recall@10" for n in names) + " | ratio |\n|---:|---:|" + "---:|" * (len(names) + 1))
    for m in sizes:
        if m > len(pool):
            continue
        x = torch.from_numpy(np.asarray(x_all[np.sort(order[:m])], dtype=np.float32))
        got = []
        for st in students.values():
            z = st.encode(x)
            got.append(recall_at_k(x, z[0] if isinstance(z, tuple) else z, 10))
        ratio = f"{got[0] / got[1]:.2f}" if len(got) == 2 else "—"
        print(f"| {m:,} | {10 * len(x_all if held else train) // m:,} nearest | " + " | ".join(f"{g:.3f}" for g in got)
              + f" | {ratio} |", flush=True)


def umap_fit_transform(path: Path, val_fraction: float, seed: int) -> dict:
    """UMAP (cosine, 15 neighbours, 5-D, all threads) fitted on the training rows atlas-run uses for
    ``path``, its first 5,000 held-out rows placed with ``transform``; metrics as in the report."""
    import umap

    from atlas_plugins.evaluation import evaluate
    from atlas_plugins.pipeline import split_rows

    x = np.load(path, mmap_mode="r")
    train, held = split_rows(len(x), val_fraction, seed)
    t0 = time.perf_counter()
    reducer = umap.UMAP(n_components=5, metric="cosine", low_memory=True).fit(np.ascontiguousarray(x[train]))
    fit = time.perf_counter() - t0
    held_x = torch.from_numpy(np.ascontiguousarray(x[held[:5000]]))
    placed = torch.from_numpy(reducer.transform(held_x.numpy()))
    return {**evaluate(held_x, placed, None, 10), "fit_seconds": fit}


def peak_rss_section(tmp: Path) -> None:
    """Peak RSS of ``atlas-run`` (one epoch) on a 100 MB and a 2 GB teacher, and on the 2 GB one without
    ``map.pt`` (``output.map_rows = 0``): what the run keeps in memory besides the file."""
    results = {}
    for name, rows, map_rows in (("100 MB", 16_000, None), ("2 GB", 350_000, None), ("2 GB, no map", 350_000, 0)):
        path = tmp / f"rss{rows}.npy"
        if not path.is_file():
            make_teacher(path, rows)
        d = doc(path, tmp / f"run{rows}")
        if map_rows is not None:
            d["output"]["map_rows"] = map_rows
        pipeline = tmp / f"rss{rows}-{map_rows}.toml"
        pipeline.write_text(toml(d))
        results[name] = peak_rss_mb(pipeline)
        print(f"\npeak RSS of atlas-run, one epoch on a {path.stat().st_size / 2**30:.2f} GiB teacher"
              f"{' without map.pt' if map_rows == 0 else ''}: {results[name]:,.0f} MB", flush=True)
    print(f"growth from 100 MB to 2 GB file: {results['2 GB'] - results['100 MB']:,.0f} MB "
          f"({results['2 GB, no map'] - results['100 MB']:,.0f} MB without map.pt)")


def _seconds(fn, repeats: int = 3) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-rss", action="store_true", help="skip the 2 GB peak-memory measurement")
    ap.add_argument("--only-refine", action="store_true", help="only section 4 (refine vs training-map rows)")
    ap.add_argument("--only-gather", action="store_true", help="only section 5 (cold scattered reads)")
    ap.add_argument("--only-rss", action="store_true", help="only section 3 (peak memory vs file size)")
    ap.add_argument("--pypi", default="", help="only section 6: comma-separated row counts of the PyPI corpus, "
                    "e.g. 100000,200000 (embed them first with benchmarks/make_pypi.py)")
    ap.add_argument("--steps", type=int, default=500, help="section 6: optimizer steps per stage")
    ap.add_argument("--epochs", type=int, help="section 6: epochs per stage instead of --steps (the default "
                    "budget is 10): equal epochs, not equal steps")
    ap.add_argument("--hops", type=int, default=1, choices=range(1, MAX_HOPS + 1),
                    help="section 6: the neighbour batches' train.neighbor_hops (2: partners also among the "
                         "neighbours' neighbours)")
    ap.add_argument("--kernel", help="section 6: the neighbors loss's kernel for both kinds (default: the "
                    "quickstart's, gaussian; student-t is heavy-tailed)")
    ap.add_argument("--profile", action="store_true", help="section 6: also each student's recall@10 among "
                    "samples of 2,000-50,000 training rows, coarse to fine neighbourhood scales")
    ap.add_argument("--held-out", type=int, default=5000, help="section 6: rows held out (atlas-run's default "
                    "holds out 10%%: 20000 at 200000 rows); the report measures 5,000 of them, --profile all")
    ap.add_argument("--same-time", action="store_true",
                    help="section 6: also random batches given the neighbour run's seconds, its graph build included")
    ap.add_argument("--umap", action="store_true", help="section 6: also fit UMAP on the same training rows "
                    "(the reference; needs umap-learn)")
    args = ap.parse_args(argv)
    if args.epochs and args.same_time:
        ap.error("--same-time compares at a budget in steps; leave out --epochs")
    if args.pypi:
        pypi_runs([int(v) for v in args.pypi.split(",")], args.steps, umap_reference=args.umap,
                  same_time=args.same_time, epochs=args.epochs, profile=args.profile, hops=args.hops,
                  kernel=args.kernel, held_out=args.held_out)
        return
    if args.only_refine or args.only_gather or args.only_rss:
        with tempfile.TemporaryDirectory() as d:
            if args.only_rss:
                peak_rss_section(Path(d))
            elif args.only_refine:
                refine_vs_map_rows(Path(d))
            else:
                gather_vs_sequential(make_teacher(Path(d) / "t.npy", 200_000))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("| rows | epoch s | samples/s | time ÷ time(50k) |\n|---:|---:|---:|---:|")
        base_t, pipe = None, None
        for rows in (50_000, 100_000, 200_000):
            path = make_teacher(tmp / f"t{rows}.npy", rows)
            secs, pipe, n_train = epoch_seconds(path, tmp)
            base_t = base_t or secs
            print(f"| {rows:,} | {secs:.2f} | {n_train / secs:,.0f} | {secs / base_t:.2f} |", flush=True)
        gather_vs_sequential(path)
        student = TrainedStudent(pipe.student.cpu(), "mlp", {}, DIM, 5)
        x = torch.from_numpy(np.load(path))  # the 200k x 1536 array, in memory (1.2 GB)
        t0 = time.perf_counter()
        for _ in range(3):
            x.sum()
        bandwidth = 3 * len(x) / (time.perf_counter() - t0)
        student.encode(x[:65536])
        for precision in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            student.encode(x, precision=precision)
            speed = len(x) / (time.perf_counter() - t0)
            print(f"\nencode ({precision}): {speed:,.0f} vectors/s; memory-bandwidth reference (sum over the same "
                  f"array): {bandwidth:,.0f} vectors/s ({bandwidth * DIM * 4 / 1e9:.1f} GB/s); "
                  f"ratio {speed / bandwidth:.3f}")
        del x
        if not args.skip_rss:
            peak_rss_section(tmp)
        refine_vs_map_rows(tmp)


if __name__ == "__main__":
    main()
