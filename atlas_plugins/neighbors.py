"""The teacher k-NN graph behind neighbour batches: exact (blocked torch top-k) or approximate (a faiss index).

Exact search compares every pair of training rows, ``O(N²·D)``: fine up to :data:`EXACT_MAX_ROWS` on a
CPU, and on a GPU while it holds the rows (:func:`exact_bytes`; a million 384-D rows took 32 s on an H200).
Beyond that the graph comes from a faiss HNSW index (the optional
extra ``scale``, ``pip install 'atlas-distill[scale]'``): a navigable small-world graph of the rows
(``M`` links each), searched greedily with a candidate list of ``efSearch``.  ``efSearch`` grows through
:data:`EF_SEARCH` until the graph's recall on :data:`RECALL_SAMPLE` sampled rows — the share of their exact
top-k the index finds — reaches :data:`TARGET_RECALL`.  (An inverted-file index was tried first: on
384-D text embeddings it needed a quarter of its cells probed for recall@60 ≥ 0.95 and was slower than exact
search.)  Rows are stored as float32 while they fit in :data:`FLAT_BUDGET_BYTES`, as 8-bit scalars above.
faiss builds the graph in parallel, so two builds can differ slightly; a run's graph is cached, so a
resumed run uses the one it started with.

The teacher is read in chunks (the file is never loaded whole; the index, or the exact search's tensor,
holds one unit copy of the training rows), and the graph is searched in parts of :data:`PART_ROWS` query
rows, each saved in the run folder's ``cache/`` as it completes: a run killed while building resumes from
the parts it finished (the index itself is built again; the whole graph, index and search, took 146 s at
200,000 rows, 465 s at 500,000 and 776 s at 741,307 with 8-bit rows on 2 cores).
Parts and graph are keyed by a hash of the teacher's every row (:func:`graph_key`), the training rows, ``k`` and
the method, so a teacher with any row changed builds a new graph, and a copied or touched file reuses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import safe_load
from .config import hash_dict
from .errors import CheckpointError, ConfigError
from .teacher import teacher_digest

EXACT_MAX_ROWS = 100_000  # exact CPU search up to here (about 100 s at 384-D on 2 cores); faiss above
SIMS_BUDGET_BYTES = 2**30  # one block of the exact search's query-by-row similarities (float32), at most
RECALL_SAMPLE = 2_000  # training rows whose exact neighbours measure the approximate graph's recall
TARGET_RECALL = 0.95  # efSearch grows until the sample's recall reaches this
WARN_RECALL = 0.9  # a graph below this is reported with a warning
HNSW_M = 32  # graph links per row (memory: 2·M ints per row beside the row itself)
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH = (64, 96, 128, 192, 256, 384, 512)  # tried in turn until the sample's recall reaches TARGET_RECALL
FLAT_BUDGET_BYTES = 2**30  # float32 rows in the index up to 1 GiB; 8-bit rows (a quarter) above
PART_ROWS = 20_000  # query rows per saved part
CHUNK_ROWS = 16_384  # teacher rows read at a time
GRAPH_FORMAT = "atlas-knn/2"


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def choose_method(n_rows: int, device: torch.device, choice: str = "auto", dim: int = 0) -> str:
    """``"exact"`` or ``"faiss"`` for a graph over ``n_rows`` rows of ``dim``; the one rule for
    ``train.neighbor_index``.

    ``"auto"``: exact up to :data:`EXACT_MAX_ROWS` on a CPU, and on a GPU while the search fits in its free
    memory (:func:`exact_bytes`); faiss otherwise.  Needing faiss without it installed, or exact search on a
    GPU too small for it, is a :class:`ConfigError` (never a silent switch to worse batches, nor a crash).
    """
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    fits = free is None or exact_bytes(n_rows, dim) <= free
    method = choice if choice != "auto" else (
        "exact" if (device.type != "cpu" and fits) or n_rows <= EXACT_MAX_ROWS else "faiss")
    if method == "exact" and not fits:
        raise ConfigError(f"the exact neighbour search over {n_rows:,} training rows of {dim} needs about "
                          f"{exact_bytes(n_rows, dim) / 2**30:.1f} GiB on {device}, which has "
                          f"{free / 2**30:.1f} GiB free: set train.neighbor_index = "
                          "\"auto\" (faiss, the 'scale' extra) or train.device = \"cpu\"")
    if method == "faiss" and not faiss_available():
        why = (f"{n_rows:,} training rows is above the exact neighbour search's limit ({EXACT_MAX_ROWS:,} on a CPU"
               f"{', or what this GPU holds' if device.type == 'cuda' else ''})"
               if choice == "auto" else "train.neighbor_index = 'faiss'")
        exact_fits = fits and (device.type != "cpu" or n_rows <= EXACT_MAX_ROWS)
        instead = ("train.neighbor_index = \"auto\": the exact search, at this size" if exact_fits else
                   "train.batches = \"random\": at this size they keep about a tenth fewer neighbours for the same "
                   "steps; see docs/scaling.md")
        raise ConfigError(f"{why} and the approximate index needs faiss: pip install 'atlas-distill[scale]' "
                          f"(or set {instead})")
    return method


def normalized_rows(teacher, rows: np.ndarray, chunk: int = 65536, device: torch.device | None = None
                    ) -> torch.Tensor:
    """L2-normalised float32 teacher rows ``(len(rows), D)`` on ``device``, read ``chunk`` rows at a time
    (each chunk moves to the device as it is read: host memory holds one chunk, not all of them)."""
    parts = [F.normalize(teacher.rows(rows[i:i + chunk]), dim=1).to(device or "cpu")
             for i in range(0, len(rows), chunk)]
    return torch.cat(parts) if parts else torch.empty(0, teacher.dim, device=device)


def exact_block(n_rows: int) -> int:
    """Query rows per block of the exact search over ``n_rows``: 1,024, fewer where a ``(block, n_rows)``
    float32 block of similarities would pass :data:`SIMS_BUDGET_BYTES` (268 at a million rows)."""
    return max(1, min(1024, SIMS_BUDGET_BYTES // (4 * max(n_rows, 1))))


def exact_bytes(n_rows: int, dim: int) -> int:
    """Memory the exact search holds: the unit rows ``(N, D)`` and twice a block of similarities (the block
    and top-k's workspace)."""
    return 4 * n_rows * dim + 2 * 4 * exact_block(n_rows) * n_rows


def topk_cosine(x: torch.Tensor, k: int, block: int | None = None, queries: torch.Tensor | None = None,
                query_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``(Q, k)`` of the ``k`` most cosine-similar rows of unit rows ``x`` (N, D), on ``x``'s device.

    ``queries`` defaults to ``x`` itself; then (or with ``query_ids``, each query's own row in ``x``)
    a row never lists itself.  Exact: every pair is compared, ``block`` query rows at a time
    (default :func:`exact_block`).
    """
    block = block or exact_block(x.shape[0])
    q = x if queries is None else queries
    if queries is None:
        query_ids = torch.arange(x.shape[0], device=x.device)
    k = min(k, x.shape[0] - (1 if query_ids is not None else 0))
    out = torch.empty(q.shape[0], k, dtype=torch.long)
    for start in range(0, q.shape[0], block):
        sims = q[start:start + block] @ x.T
        if query_ids is not None:
            own = query_ids[start:start + block].to(x.device)
            sims[torch.arange(len(own), device=x.device), own] = -float("inf")
        out[start:start + block] = sims.topk(k, dim=1).indices.cpu()
    return out


def graph_key(digest: str, rows: np.ndarray, k: int, method: str) -> str:
    """The cache key of a graph: the teacher's every row (``digest``, :func:`~atlas_plugins.teacher.teacher_digest`),
    the training rows, ``k`` and the method.  Not the file's name or time: a copy, or a file touched, reuses it."""
    return hash_dict({"teacher": digest, "k": k, "method": method, "format": GRAPH_FORMAT,
                      "rows": hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()})[:16]


def graph_width(k: int, n_rows: int) -> int:
    """Neighbours per row in the graph of ``n_rows`` rows asked for ``k``: every other row at most."""
    return min(k, n_rows - 1)


def neighbor_graph(teacher, rows: np.ndarray, k: int, *, method: str, device: torch.device, run=None,
                   writer: bool = True, echo=None, digest: str | None = None) -> tuple[torch.Tensor, dict]:
    """The ``k`` nearest training rows of every training row: ``(len(rows), k)`` positions into ``rows``
    (int32), and what was measured (method, recall on a sample, seconds, index parameters).

    With a run folder the graph is cached in ``cache/knn-<key>.pt`` and built in parts saved beside it;
    only a ``writer`` (rank 0 under DDP) writes there; ``digest``: the teacher's, when already known.
    """
    key = graph_key(digest or teacher_digest(teacher), rows, k, method)
    final = f"cache/knn-{key}.pt"
    cached = _load(run, final, len(rows))
    if cached is not None:
        return cached[0], {**cached[1], "cached": True}
    t0 = time.perf_counter()
    k = graph_width(k, len(rows))
    if method == "exact":
        build = _ExactSearch(teacher, rows, device)
    else:
        build = _FaissSearch(teacher, rows, k, echo)
    release_freed_memory()
    parts = []
    for i, start in enumerate(range(0, len(rows), PART_ROWS)):
        rel = f"cache/knn-{key}-part-{i:05d}.pt"
        part = _load(run, rel, min(PART_ROWS, len(rows) - start), k, limit=len(rows))
        if part is None:
            part = build.search(start, min(start + PART_ROWS, len(rows)), k)
            release_freed_memory()
            if run is not None and writer:
                run.save(rel, part)
        parts.append(part)
    graph = torch.cat(parts)
    info = {"method": build.name, "rows": len(rows), "k": k, **build.params,
            "recall": build.recall, "recall_sample": build.recall_rows, "seconds": round(time.perf_counter() - t0, 2)}
    if build.recall < WARN_RECALL:
        warnings.warn(f"atlas: the approximate neighbour graph finds {build.recall:.3f} of the exact {k} nearest "
                      f"neighbours on {build.recall_rows:,} sampled rows (below {WARN_RECALL}); neighbour batches "
                      "hold fewer true neighbours: set train.neighbor_index = \"exact\" if time allows", stacklevel=2)
    if run is not None and writer:
        run.save(final, {"format": GRAPH_FORMAT, "graph": graph, "info": info})
        for i in range(len(parts)):
            run.remove(f"cache/knn-{key}-part-{i:05d}.pt")
    return graph, {**info, "cached": False}


def _load(run, rel: str, n: int, k: int | None = None, limit: int | None = None):
    """A cached part (tensor ``(n, k)``) or graph (``(graph, info)``) if it is there and well-formed: positions
    in ``[0, limit)`` (default ``n``), so a damaged or crafted cache file is rebuilt, never indexed with."""
    path = run.inside(rel) if run is not None else None
    if path is None or not path.is_file():
        return None
    try:
        blob = safe_load(path, what="neighbour cache")
    except CheckpointError:
        return None
    if k is None:
        if not isinstance(blob, dict) or blob.get("format") != GRAPH_FORMAT:
            return None
        graph, info = blob.get("graph"), blob.get("info")
    else:
        graph, info = blob, None
    ok = (isinstance(graph, torch.Tensor) and graph.dtype == torch.int32 and graph.dim() == 2
          and graph.shape[0] == n and (k is None or graph.shape[1] == k) and graph.numel() > 0
          and int(graph.min()) >= 0 and int(graph.max()) < (limit or n))
    return None if not ok else graph if k is not None else (graph, info)


class _ExactSearch:
    """Every pair compared: the unit training rows held on ``device``, queried in blocks."""

    name = "exact"
    recall, recall_rows, params = 1.0, 0, {}

    def __init__(self, teacher, rows: np.ndarray, device: torch.device):
        self.x = normalized_rows(teacher, rows, device=device)

    def search(self, start: int, stop: int, k: int) -> torch.Tensor:
        ids = torch.arange(start, stop, device=self.x.device)
        return topk_cosine(self.x, k, queries=self.x[start:stop], query_ids=ids).to(torch.int32)


def release_freed_memory() -> bool:
    """glibc only: hand the heap's free pages back to the OS (``malloc_trim(0)``); returns whether it ran.

    Each part of the graph's search allocates and frees ~30 MB of query and result arrays.  glibc raises
    its mmap threshold to the largest block freed so far, so after the first part these come from the heap,
    whose freed holes stay resident: at 741,307 rows resident memory grew ~29 MB a part (peak 2.3 GB,
    against 1.2 GB with the graph cached).  Trimming after each part stops that without changing how
    anything is allocated (a fixed mmap threshold did too, but made the training that follows ~16 % slower
    a step: 4 MB similarity matrices were mapped and unmapped every step).  The report's corpus pass
    (:mod:`atlas_plugins.report`) trims after each block for the same reason.
    """
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc (macOS, musl, Windows)
        return False
    return True


class _FaissSearch:
    """A faiss HNSW index over the unit training rows, filled from the teacher in chunks; ``efSearch``
    calibrated on a sample against exact neighbours (see the module's docstring)."""

    def __init__(self, teacher, rows: np.ndarray, k: int, echo=None):
        import faiss

        self.teacher, self.rows = teacher, rows
        n, d = len(rows), teacher.dim
        rng = np.random.default_rng(0)
        sq8 = n * d * 4 > FLAT_BUDGET_BYTES
        if sq8:
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.train(self._unit(np.sort(rng.choice(n, size=min(n, 100_000), replace=False))))
        else:
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        for start in range(0, n, CHUNK_ROWS):
            index.add(self._unit(np.arange(start, min(start + CHUNK_ROWS, n))))
        self.index = index
        self.name = "faiss-hnsw-sq8" if sq8 else "faiss-hnsw-flat"
        self.recall, self.recall_rows, ef = self._calibrate(k, rng)
        self.params = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": ef}
        if echo is not None:
            echo(f"neighbour index: {self.name}, {n:,} rows, efSearch {ef}, recall@{k} {self.recall:.3f} "
                 f"on {self.recall_rows:,} sampled rows")

    def _unit(self, positions: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(F.normalize(self.teacher.rows(self.rows[positions]), dim=1).numpy())

    def _calibrate(self, k: int, rng) -> tuple[float, int, int]:
        n = len(self.rows)
        sample = np.sort(rng.choice(n, size=min(n, RECALL_SAMPLE), replace=False))
        queries = torch.from_numpy(self._unit(sample))
        _, exact = streamed_topk(queries, self._chunks(), k, query_ids=torch.from_numpy(sample))
        for ef in EF_SEARCH:
            self.index.hnsw.efSearch = max(ef, k + 1)
            recall = graph_recall(self._search(queries.numpy(), sample, k), exact)
            if recall >= TARGET_RECALL:
                break
        return recall, len(sample), self.index.hnsw.efSearch

    def _chunks(self):
        n = len(self.rows)
        for start in range(0, n, CHUNK_ROWS):
            yield start, torch.from_numpy(self._unit(np.arange(start, min(start + CHUNK_ROWS, n))))

    def _search(self, q: np.ndarray, own: np.ndarray, k: int) -> torch.Tensor:
        """Top-k positions for queries ``q`` whose own positions are ``own``, each row without itself."""
        _, ids = self.index.search(q, k + 1)
        keep = ids != own[:, None]
        keep[keep.all(axis=1), -1] = False  # the row itself was not among the k + 1: drop the last instead
        ids = ids[keep].reshape(len(q), k)
        missing = ids < 0  # the search found fewer than k rows: repeat the nearest one found
        if missing.any():
            ids = np.where(missing, ids[:, :1], ids)
        return torch.from_numpy(np.maximum(ids, 0).astype(np.int32))

    def search(self, start: int, stop: int, k: int) -> torch.Tensor:
        own = np.arange(start, stop)
        return self._search(self._unit(own), own, k)


def streamed_topk(queries: torch.Tensor, blocks, k: int, query_ids: torch.Tensor | None = None, block_topk=None):
    """Exact top-``k`` by inner product of ``queries (Q, D)`` over rows given as ``(start, block)`` pairs,
    a stream (one block in memory at a time), merged as they come.

    Returns ``(similarities, positions)``, each ``(Q, min(k, rows seen))``, nearest first.  With
    ``query_ids`` (each query's own position) a query never lists itself.  ``block_topk(queries, block, k)``,
    when given (and without ``query_ids``), replaces the matrix product and ``torch.topk`` for a block.
    """
    best_s = torch.full((queries.shape[0], 0), -math.inf, device=queries.device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start, block in blocks:
        if block_topk is not None and query_ids is None:
            s, i = block_topk(queries, block, min(k, block.shape[0]))
        else:
            sims = queries @ block.T
            if query_ids is not None:
                hit = (query_ids >= start) & (query_ids < start + block.shape[0])
                sims[hit.nonzero()[:, 0], query_ids[hit] - start] = -math.inf
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
        if best_s.shape[1] == 0:  # the first block: nothing to merge with
            best_s, best_i = s, i + start
            continue
        best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    return best_s, best_i


def faiss_topk(queries: torch.Tensor, block: torch.Tensor, k: int):
    """``streamed_topk``'s exact per-block search by ``faiss.knn`` (CPU, on torch's thread count): the same
    neighbours as the matrix product and ``torch.topk``, about 1.5x faster on one thread (its top-k keeps a
    heap per query instead of selecting from every similarity after the product)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())
    try:
        sims, idx = faiss.knn(np.ascontiguousarray(queries.float().numpy()),
                              np.ascontiguousarray(block.float().numpy()), k, metric=faiss.METRIC_INNER_PRODUCT)
    finally:
        faiss.omp_set_num_threads(threads)
    return torch.from_numpy(sims), torch.from_numpy(idx)


def graph_recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over rows of ``|found ∩ exact| / k`` (both ``(Q, k)``)."""
    k = exact.shape[1]
    hits = (found.long().unsqueeze(2) == exact.long().unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.float().mean() / k)
