"""The teacher's validation scan with and without a key per row (the repeated-rows count), in one session.

    pytest benchmarks/test_bench_teacher.py --benchmark-enable -s -n 0

Every run reads the teacher's rows once before training: NaN/Inf, zero rows, the digest a checkpoint
records, and (``RowScan(copies=True)``) a 64-bit key per row that finds repeated vectors.  The ratio (with
keys / without, median times of interleaved runs on 200,000 × 384 float32 rows in memory) is printed and
stored in ``extra_info``; nothing is asserted about speed.
"""

import statistics
import time

import numpy as np
import pytest

from atlas_plugins.teacher import RowScan, TeacherData, validate_teacher

ROWS, DIM = 200_000, 384
pytestmark = pytest.mark.slow  # ~15 s of scans: CI runs it, the quick loop does not


def _scan(data: TeacherData, copies: bool) -> RowScan:
    scan = RowScan(data, digest=True, copies=copies)
    validate_teacher(data, scan=scan)
    return scan


def test_validation_scan_with_row_keys_vs_without(benchmark):
    x = np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)
    x[1000:3500] = x[7]  # 1.25 % repeats: the warning's work as well
    data = TeacherData(x, source="bench")
    times = {False: [], True: []}
    for _ in range(5):
        for copies in (False, True):
            t0 = time.perf_counter()
            scan = _scan(data, copies)
            times[copies].append(time.perf_counter() - t0)
    assert "2,500 of 200,000 rows" in scan.describe_copies()
    plain, keyed = statistics.median(times[False]), statistics.median(times[True])
    benchmark.extra_info.update(plain_s=plain, keyed_s=keyed, ratio=keyed / plain)
    print(f"\nvalidation scan of {ROWS:,} x {DIM} float32: {plain:.3f} s without row keys, {keyed:.3f} s with "
          f"({keyed / plain:.2f}x)")
    benchmark.pedantic(_scan, args=(data, True), rounds=1, iterations=1)
