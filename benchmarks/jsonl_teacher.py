"""The vector teachers that convert a file (``jsonl``, ``csv``, ``parquet``): read into memory against converted
into the run's cache, and the cache read.

    python benchmarks/jsonl_teacher.py [--rows 20000] [--dim 1536] [--data /tmp/atlas-jsonl]
        [--format jsonl|csv|jsonl-base64|parquet-text|parquet]

Writes ``rows`` random ``dim``-D vectors with a text each as JSON lines (what an embeddings API's answers
make; ``jsonl-base64``: each vector as base64 float32, what ``encoding_format = "base64"`` gives), as a CSV
table with an ``embedding`` column of JSON lists (what pandas' ``to_csv`` writes), or as a Parquet table
whose ``embedding`` column holds those lists' text (that CSV read by pandas and saved as Parquet; ``parquet``:
the float lists themselves, in one row group, as pandas writes up to a million rows); kept in ``--data``,
outside the repository; then reads them in three fresh processes, one after the
other: without ``cache_dir`` (the reference: every row in memory), with an empty ``cache_dir`` (parsed and
written to a memory-mapped ``.npy``), and with that cache in place.  Prints seconds and peak resident memory
for each and the ratios to the reference.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

READ = """
import resource, sys, time
from builtin_plugins import tables
from atlas_plugins.teacher import validate_teacher
t0 = time.perf_counter()
data = validate_teacher(getattr(tables, sys.argv[3])(sys.argv[1], cache_dir=sys.argv[2] or None))
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, data.num_rows)
"""


TEACHERS = {"jsonl": ("jsonl", "jsonl"), "csv": ("csv", "csv"), "jsonl-base64": ("jsonl", "jsonl"),
            "parquet-text": ("parquet", "parquet"), "parquet": ("parquet", "parquet")}  # --format -> teacher, suffix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--format", choices=list(TEACHERS), default="jsonl")
    ap.add_argument("--data", type=Path, default=Path("/tmp/atlas-jsonl"))
    args = ap.parse_args()
    teacher, suffix = TEACHERS[args.format]
    path = args.data / f"vectors-{args.rows}x{args.dim}-{args.format}.{suffix}"
    if not path.exists():
        args.data.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        cells = []
        with open(path.with_suffix(".tmp"), "w", newline="") as fh:
            table = csv.writer(fh)
            if args.format == "csv":
                table.writerow(["id", "text", "embedding"])
            for i in range(args.rows):
                vec = rng.standard_normal(args.dim).astype(np.float32)
                if args.format == "csv":
                    table.writerow([i, f"text {i}", json.dumps(vec.tolist())])
                elif args.format.startswith("parquet"):
                    cells.append(json.dumps(vec.tolist()) if args.format == "parquet-text" else vec)
                else:
                    cell = base64.b64encode(vec.tobytes()).decode() if args.format == "jsonl-base64" else vec.tolist()
                    fh.write(json.dumps({"id": i, "embedding": cell, "text": f"text {i}"}) + "\n")
        if args.format.startswith("parquet"):
            import pyarrow as pa
            import pyarrow.parquet as pq

            column = cells if args.format == "parquet-text" else pa.FixedSizeListArray.from_arrays(
                pa.array(np.concatenate(cells)), args.dim)
            pq.write_table(pa.table({"id": range(args.rows), "text": [f"text {i}" for i in range(args.rows)],
                                     "embedding": column}), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        # Linux keeps a process's peak memory across fork and exec: readers started by this writer would
        # report its peak as theirs, so a fresh interpreter, which finds the file, starts them
        os.execv(sys.executable, [sys.executable, *sys.argv])
    cache = args.data / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    results = {}
    reads = (("in memory (reference)", ""), ("into the cache", str(cache)), ("from the cache", str(cache)))
    for name, cache_dir in reads:
        out = subprocess.run([sys.executable, "-c", READ, str(path), cache_dir, teacher], capture_output=True,
                             text=True, check=True).stdout.split()
        results[name] = (float(out[0]), float(out[1]))
    ref_s, ref_mb = results["in memory (reference)"]
    print(f"{args.rows:,} x {args.dim} vectors, {path.stat().st_size / 2**20:,.0f} MiB of {args.format}")
    print(f"{'read':<24}{'seconds':>9}{'peak MB':>9}{'÷ ref s':>9}{'÷ ref MB':>9}")
    for name, (s, mb) in results.items():
        print(f"{name:<24}{s:>9.2f}{mb:>9.0f}{s / ref_s:>9.3f}{mb / ref_mb:>9.2f}")


if __name__ == "__main__":
    main()
