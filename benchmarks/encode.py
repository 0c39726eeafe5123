"""``atlas-encode`` throughput against ``TrainedStudent.encode`` alone, in the same run.

    python benchmarks/encode.py [--rows 1000000]      # about a minute on 2 cores; ~1.6 GB of temporary files

A 1M × 384 float32 ``.npy`` (rows of the real example with a little noise) is encoded by the default student
(MLP 384→128×4→5, weights as initialised: speed does not depend on training):

1. reference: ``TrainedStudent.encode`` on the memory-mapped array (read and encode, nothing written);
2. ``encode_file`` in this process, ``.npy`` → ``.parquet`` (what ``atlas-encode`` does after it starts);
3. the ``atlas-encode`` command in a new process, ``.npy`` → ``.parquet``, ``.npy`` and ``.csv``
   (interpreter and torch start-up included).

Each is reported in vectors/s and as a ratio to the reference (goal for ``.parquet``: ≥ 0.8).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from atlas_plugins.encode import encode_file
from atlas_plugins.student import TrainedStudent, load_student
from builtin_plugins.students import mlp

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "data" / "stdlib-minilm.npy"
ENCODE = Path(sys.executable).with_name("atlas-encode")


def make_input(path: Path, rows: int, chunk: int = 100_000) -> None:
    base = np.load(EXAMPLE)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, base.shape[1]))
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        out[start:start + n] = base[rng.integers(0, len(base), n)] + 0.01 * rng.standard_normal((n, base.shape[1]),
                                                                                              dtype=np.float32)
    out.flush()


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="atlas-encode-bench-") as tmp:
        tmp = Path(tmp)
        make_input(tmp / "x.npy", args.rows)
        TrainedStudent(mlp(384, 5).eval(), "mlp", {}, 384, 5).save(tmp / "student.pt")
        student = load_student(tmp / "student.pt")
        x = np.load(tmp / "x.npy", mmap_mode="r")
        student.encode(x[:65536])
        ref, _ = best_of(lambda: student.encode(x))
        rows = [("TrainedStudent.encode (reference, nothing written)", ref)]
        inproc, _ = best_of(lambda: encode_file(student, str(tmp / "x.npy"), str(tmp / "in.parquet"), overwrite=True))
        rows.append(("encode_file .npy → .parquet (in process)", inproc))
        np.save(tmp / "small.npy", np.asarray(x[:1000]))
        startup = {}

        def cli_run(source, out):
            return subprocess.run([ENCODE, tmp / "student.pt", source, "-o", out, "--overwrite", "--quiet"],
                                  check=True, capture_output=True)

        for suffix in (".parquet", ".npy", ".csv"):
            out = tmp / f"out{suffix}"
            startup[suffix], _ = best_of(lambda: cli_run(tmp / "small.npy", out))
            cli, _ = best_of(lambda: cli_run(tmp / "x.npy", out), repeats=2 if suffix != ".csv" else 1)
            rows.append((f"atlas-encode .npy → {suffix} (new process)", cli))
        print(f"\n{args.rows:,} × 384 float32 rows, default student (MLP 384→128×4→5), best of 3 (CLI: 2, csv: 1)\n")
        print("| path | seconds | vectors/s | ÷ reference | ÷ reference after start-up |\n|---|---:|---:|---:|---:|")
        for name, secs in rows:
            fixed = next((v for k, v in startup.items() if name.endswith(f"{k} (new process)")), 0.0)
            after = f"{ref / (secs - fixed):.2f}" if fixed else "—"
            print(f"| {name} | {secs:.2f} | {args.rows / secs:,.0f} | {ref / secs:.2f} | {after} |")
        print("\nstart-up (the same command on 1,000 rows: interpreter, torch, pyarrow imports): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in startup.items()))


if __name__ == "__main__":
    main()
