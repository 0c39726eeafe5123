"""The teacher k-NN graph: exact and faiss searches checked against a full sort, the cache and its key,
a build killed midway resumed from its parts, and the one-line answer when faiss is needed but missing."""

import importlib.util
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atlas_plugins import neighbors
from atlas_plugins.errors import ConfigError
from atlas_plugins.neighbors import (choose_method, graph_recall, neighbor_graph, streamed_topk,
                                     topk_cosine)
from atlas_plugins.rundir import RunDir
from atlas_plugins.teacher import TeacherData
from conftest import one_error_line, run_cli, write_pipeline

CPU = torch.device("cpu")


def full_sort_neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """The reference: every similarity, self masked, sorted."""
    sims = (x @ x.T).fill_diagonal_(-2)
    return sims.argsort(dim=1, descending=True)[:, :k]


@pytest.fixture
def run(tmp_path):
    folder = RunDir(tmp_path / "run")
    folder.acquire()
    yield folder
    folder.release()


def test_streamed_exact_search_matches_a_full_sort(real_embeddings):
    x = F.normalize(torch.from_numpy(real_embeddings[:700].copy()), dim=1)
    ids = torch.tensor([0, 3, 127, 128, 350, 699])
    blocks = ((s, x[s:s + 128]) for s in range(0, 700, 128))  # the queries' own rows fall in different blocks
    _, got = streamed_topk(x[ids], blocks, 12, query_ids=ids)
    assert torch.equal(got, full_sort_neighbours(x, 12)[ids])
    assert torch.equal(topk_cosine(x, 12, block=100), full_sort_neighbours(x, 12))


def test_exact_graph_parts_join_into_the_full_sort(real_embeddings, monkeypatch):
    monkeypatch.setattr(neighbors, "PART_ROWS", 300)  # 1,000 rows: four parts
    releases = []
    monkeypatch.setattr(neighbors, "release_freed_memory", lambda: releases.append(1))
    teacher = TeacherData(real_embeddings[:1000])
    graph, info = neighbor_graph(teacher, np.arange(1000), 10, method="exact", device=CPU)
    assert len(releases) == 1 + 4  # after the index is built, then after each part
    x = F.normalize(torch.from_numpy(real_embeddings[:1000].copy()), dim=1)
    assert graph.dtype == torch.int32 and info["method"] == "exact" and info["recall"] == 1.0
    assert torch.equal(graph.long(), full_sort_neighbours(x, 10))


def test_faiss_graph_agrees_with_exact_and_reports_its_recall(real_embeddings):
    pytest.importorskip("faiss")
    n, k = len(real_embeddings), 15
    teacher, rows = TeacherData(real_embeddings), np.arange(n)
    exact, _ = neighbor_graph(teacher, rows, k, method="exact", device=CPU)
    approx, info = neighbor_graph(teacher, rows, k, method="faiss", device=CPU)
    true_recall = graph_recall(approx, exact)
    assert info["method"] == "faiss-hnsw-flat" and info["M"] == 32 and info["ef_search"] >= k + 1
    assert true_recall >= 0.9 and info["recall"] >= 0.9
    assert abs(info["recall"] - true_recall) < 0.03  # the sample's estimate is close to the whole graph's
    assert info["recall_sample"] == 2000
    assert not (approx.long() == torch.arange(n).unsqueeze(1)).any()  # a row is never its own neighbour
    assert approx.min() >= 0 and approx.max() < n


def test_a_graph_below_the_recall_floor_is_reported(real_embeddings, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(neighbors, "WARN_RECALL", 1.01)  # any approximate graph falls below it
    with pytest.warns(UserWarning, match=r"finds [01]\.\d+ of the exact 15 nearest neighbours on 2,000 sampled rows"):
        neighbor_graph(TeacherData(real_embeddings), np.arange(len(real_embeddings)), 15, method="faiss",
                       device=CPU)


def test_large_maps_store_8_bit_rows_and_still_find_neighbours(real_embeddings, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(neighbors, "FLAT_BUDGET_BYTES", 0)
    teacher, rows = TeacherData(real_embeddings), np.arange(len(real_embeddings))
    exact, _ = neighbor_graph(teacher, rows, 15, method="exact", device=CPU)
    approx, info = neighbor_graph(teacher, rows, 15, method="faiss", device=CPU)
    assert info["method"] == "faiss-hnsw-sq8" and graph_recall(approx, exact) >= 0.85


def test_the_graph_of_a_subset_lists_positions_within_it(real_embeddings):
    rows = np.arange(0, 2000, 2)  # every other row: the graph lists positions 0..999, not row ids
    graph, _ = neighbor_graph(TeacherData(real_embeddings), rows, 8, method="exact", device=CPU)
    x = F.normalize(torch.from_numpy(real_embeddings[rows].copy()), dim=1)
    assert torch.equal(graph.long(), full_sort_neighbours(x, 8))


def test_the_cache_is_reused_and_rebuilt_when_the_teacher_changes(tmp_path, real_embeddings, run):
    path = tmp_path / "t.npy"
    np.save(path, real_embeddings[:1500])
    rows = np.arange(1500)
    load = lambda: TeacherData(np.load(path, mmap_mode="r"), source=str(path))  # noqa: E731
    first, info = neighbor_graph(load(), rows, 10, method="exact", device=CPU, run=run)
    again, info2 = neighbor_graph(load(), rows, 10, method="exact", device=CPU, run=run)
    assert not info["cached"] and info2["cached"] and torch.equal(first, again)
    assert [p.name for p in (run.path / "cache").iterdir()] == [next((run.path / "cache").iterdir()).name]
    changed = real_embeddings[:1500].copy()
    changed[[700, 701]] = changed[[701, 700]]  # two rows swapped: same shape, same sampled rows' bytes elsewhere
    np.save(path, changed)
    rebuilt, info3 = neighbor_graph(load(), rows, 10, method="exact", device=CPU, run=run)
    assert not info3["cached"] and not torch.equal(rebuilt, first)
    other_k, info4 = neighbor_graph(load(), rows, 5, method="exact", device=CPU, run=run)
    assert not info4["cached"] and other_k.shape == (1500, 5)
    os.utime(path, ns=(1, 1))  # touched, or copied: the same rows keep their graph
    assert neighbor_graph(load(), rows, 10, method="exact", device=CPU, run=run)[1]["cached"]


def test_a_teacher_not_from_a_file_rebuilds_when_any_row_changes(real_embeddings, run):
    rows = np.arange(1500)
    teacher = real_embeddings[:1500].copy()
    first, _ = neighbor_graph(TeacherData(teacher), rows, 10, method="exact", device=CPU, run=run)
    teacher[5] = real_embeddings[1600]  # one row, none of the others: a plugin's rows re-embedded in part
    graph, info = neighbor_graph(TeacherData(teacher), rows, 10, method="exact", device=CPU, run=run)
    assert not info["cached"] and not torch.equal(graph, first)
    assert torch.equal(graph, neighbor_graph(TeacherData(teacher), rows, 10, method="exact", device=CPU)[0])


def test_a_build_killed_midway_resumes_from_its_saved_parts(real_embeddings, run, monkeypatch):
    monkeypatch.setattr(neighbors, "PART_ROWS", 400)  # 1,500 rows: parts at 0, 400, 800, 1200
    teacher, rows = TeacherData(real_embeddings[:1500]), np.arange(1500)
    reference, _ = neighbor_graph(teacher, rows, 10, method="exact", device=CPU)
    real_search, searched = neighbors._ExactSearch.search, []

    def dies_at_800(self, start, stop, k):
        if start == 800:
            raise KeyboardInterrupt  # the process is stopped here: what was saved stays
        searched.append(start)
        return real_search(self, start, stop, k)

    monkeypatch.setattr(neighbors._ExactSearch, "search", dies_at_800)
    with pytest.raises(KeyboardInterrupt):
        neighbor_graph(teacher, rows, 10, method="exact", device=CPU, run=run)
    assert searched == [0, 400] and len(list((run.path / "cache").glob("knn-*-part-*.pt"))) == 2

    searched.clear()
    monkeypatch.setattr(neighbors._ExactSearch, "search", lambda self, *a: searched.append(a[0]) or
                        real_search(self, *a))
    graph, info = neighbor_graph(teacher, rows, 10, method="exact", device=CPU, run=run)
    assert searched == [800, 1200]  # the two saved parts were read back, not searched again
    assert torch.equal(graph, reference) and not info["cached"]
    assert not list((run.path / "cache").glob("knn-*-part-*.pt"))  # parts give way to the whole graph
    assert len(list((run.path / "cache").glob("knn-*.pt"))) == 1


def test_a_run_killed_while_building_continues_with_the_command_it_names(tmp_path, monkeypatch):
    """No checkpoint exists yet, so the message names --overwrite; it keeps the parts (caches) and reuses them."""
    monkeypatch.setattr(neighbors, "PART_ROWS", 500)  # 2,114 training rows: parts at 0, 500, ..., 2000
    real_search, searched = neighbors._ExactSearch.search, []

    def search(self, start, *a):
        if start >= 1000 and "again" not in searched:
            raise KeyboardInterrupt  # the first run is stopped here
        searched.append(start)
        return real_search(self, start, *a)

    monkeypatch.setattr(neighbors._ExactSearch, "search", search)
    pipe = write_pipeline(tmp_path, batches="neighbors", epochs=1, stages=1)
    assert run_cli(pipe, "--quiet").returncode == 130
    searched.append("again")
    line = one_error_line(run_cli(pipe, "--quiet"), "already holds a run")
    assert line.endswith("--overwrite")
    proc = run_cli(pipe, "--quiet", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert searched == [0, 500, "again", 1000, 1500, 2000]
    graph = json.loads((tmp_path / "run" / "report.json").read_text())["neighbor_graph"]
    assert graph["method"] == "exact" and graph["rows"] == 2114 and graph["k"] == 60 and not graph["cached"]


def gpu_with_free(monkeypatch, gib: float) -> torch.device:
    """A CUDA device with ``gib`` GiB free, as ``torch.cuda.mem_get_info`` reports it."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(gib * 2**30), 80 * 2**30))
    return torch.device("cuda")


def test_auto_uses_exact_search_on_small_data_and_a_gpu_and_faiss_above(monkeypatch):
    monkeypatch.setattr(neighbors, "faiss_available", lambda: True)
    assert choose_method(100_000, CPU) == "exact"
    assert choose_method(100_001, CPU) == "faiss"
    assert choose_method(5_000_000, gpu_with_free(monkeypatch, 40), dim=384) == "exact"  # 7.2 + 2 GiB
    assert choose_method(5_000_000, gpu_with_free(monkeypatch, 8), dim=384) == "faiss"
    assert choose_method(10, CPU, "faiss") == "faiss" and choose_method(10**7, CPU, "exact") == "exact"


def test_the_exact_search_s_memory_is_bounded_whatever_the_rows():
    assert neighbors.exact_block(2_000) == 1024 and neighbors.exact_block(1_000_000) == 268
    for n in (1_000, 1_000_000, 10**8):
        assert 4 * neighbors.exact_block(n) * n <= neighbors.SIMS_BUDGET_BYTES or neighbors.exact_block(n) == 1
    assert neighbors.exact_bytes(1_000_000, 384) == 4 * 1_000_000 * 384 + 8 * 268 * 1_000_000  # 1.4 + 2.0 GiB


def test_exact_search_on_a_gpu_too_small_is_one_line_not_a_crash(monkeypatch):
    monkeypatch.setattr(neighbors, "faiss_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        choose_method(5_000_000, gpu_with_free(monkeypatch, 6.5), "exact", dim=1536)
    assert str(err.value) == ("the exact neighbour search over 5,000,000 training rows of 1536 needs about 30.6 GiB "
                              "on cuda, which has 6.5 GiB free: set train.neighbor_index = \"auto\" (faiss, the "
                              "'scale' extra) or train.device = \"cpu\"")
    with pytest.raises(ConfigError, match=r"above the exact neighbour search's limit \(100,000 on a CPU, or what "
                                          r"this GPU holds\) .*atlas-distill\[scale\]"):
        choose_method(5_000_000, gpu_with_free(monkeypatch, 6.5), dim=1536)


def test_needing_faiss_without_it_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(neighbors, "faiss_available", lambda: False)
    with pytest.raises(ConfigError, match=r"200,000 training rows is above .*atlas-distill\[scale\].*random"):
        choose_method(200_000, CPU)
    with pytest.raises(ConfigError) as err:
        choose_method(10, CPU, "faiss")  # asked for by name, where the exact search would do
    assert str(err.value) == ("train.neighbor_index = 'faiss' and the approximate index needs faiss: pip install "
                              "'atlas-distill[scale]' (or set train.neighbor_index = \"auto\": the exact search, at "
                              "this size)")
    with pytest.raises(ConfigError, match=r"neighbor_index = 'faiss' .*atlas-distill\[scale\].*batches = \"random\""):
        choose_method(200_000, CPU, "faiss")


@pytest.mark.parametrize("line, fragments", [
    ("", ("above the exact neighbour search's limit", "pip install 'atlas-distill[scale]'", 'batches = \\"random\\"')),
    ('neighbor_index = "faiss"', ("train.neighbor_index = 'faiss'", "atlas-distill[scale]", 'batches = \\"random\\"')),
])
def test_atlas_run_without_faiss_stops_before_writing(tmp_path, monkeypatch, line, fragments):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    monkeypatch.setattr(neighbors, "EXACT_MAX_ROWS", 1000)  # the bundled example's 2,114 training rows are above
    pipe = write_pipeline(tmp_path, batches="auto")
    pipe.write_text(pipe.read_text().replace("[train]\n", f"[train]\n{line}\n"))
    one_error_line(run_cli(pipe), *(f.replace('\\"', '"') for f in fragments))
    assert not (tmp_path / "run").exists()
    assert run_cli(pipe, "--set", 'train.batches="random"', "--dry-run").returncode == 0


def test_a_damaged_or_crafted_cache_is_rebuilt_not_used(real_embeddings, run):
    teacher, rows = TeacherData(real_embeddings[:600]), np.arange(600)
    graph, _ = neighbor_graph(teacher, rows, 10, method="exact", device=CPU, run=run)
    (cached,) = (run.path / "cache").glob("knn-*.pt")
    torch.save({"format": neighbors.GRAPH_FORMAT, "graph": graph + 10_000, "info": {}}, cached)  # out of range
    again, info = neighbor_graph(teacher, rows, 10, method="exact", device=CPU, run=run)
    assert not info["cached"] and torch.equal(again, graph)
    cached.write_bytes(b"not a torch file")
    assert not neighbor_graph(teacher, rows, 10, method="exact", device=CPU, run=run)[1]["cached"]


def test_atlas_run_with_the_faiss_index_reports_its_graph(tmp_path):
    pytest.importorskip("faiss")
    pipe = write_pipeline(tmp_path, batches="neighbors", epochs=1, stages=1)
    pipe.write_text(pipe.read_text().replace("[train]\n", '[train]\nneighbor_index = "faiss"\n'))
    assert "(neighbors batches, faiss neighbours)" in run_cli(pipe, "--dry-run").stdout
    proc = run_cli(pipe)
    assert proc.returncode == 0, proc.stderr
    assert "neighbour index: faiss-hnsw-flat, 2,114 rows" in proc.stdout
    graph = json.loads((tmp_path / "run" / "report.json").read_text())["neighbor_graph"]
    assert graph["method"] == "faiss-hnsw-flat" and graph["recall"] >= 0.9 and graph["recall_sample"] == 2000


FREED_BLOCKS = """
import sys
import numpy as np
from atlas_plugins.neighbors import release_freed_memory
def rss_mb():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0]) / 1024
pins = []
before = rss_mb()
for _ in range(5):
    block = np.ones(30 * 2**20 // 8)  # a 30 MB array, as one part's query rows
    pins.append(np.ones(4096))        # a small array kept, allocated after it
    del block
    if sys.argv[1] == "released":
        assert release_freed_memory()
print(rss_mb() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_large_blocks_go_back_to_the_os_while_the_graph_is_searched():
    """glibc keeps a freed 30 MB block resident below a small live one (the graph's search grew ~29 MB a
    part at 741k rows); released after each part, as the graph's build does, it goes back to the OS."""
    def growth(mode):
        out = subprocess.run([sys.executable, "-c", FREED_BLOCKS, mode], capture_output=True, text=True,
                             timeout=120, check=True)
        return float(out.stdout)

    assert growth("kept") >= 25
    assert growth("released") < 5
