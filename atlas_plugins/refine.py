"""The training map (``map.pt``) and ``refine``: new points placed against it, as UMAP's ``transform`` does.

A student maps a new vector in one forward pass, but it generalises imperfectly:
held-out points keep fewer of their teacher neighbours than training points do.
Refinement moves each new point's output a few steps against the *frozen* map of
the training rows, batched in torch so thousands of points move at once:

1. its ``k`` nearest training rows by cosine similarity, compared in the map's leading principal
   components: the map keeps its unit rows rotated into their principal basis and cut to the fewest leading
   components (in steps of D/16) whose top-k still holds :data:`SEARCH_RECALL` of the exact top-k for
   :data:`SEARCH_SAMPLE` map rows, measured when the map is built (on 384-D MiniLM rows: 192 components —
   half the work and half the file, the same refined quality);
2. fuzzy memberships ``wⱼ = exp(−dⱼ/σ)`` on cosine distances ``dⱼ = 1 − cos``, σ chosen by
   bisection so that ``Σⱼ wⱼ = log₂ k`` (UMAP's smooth-kNN with ρ = 0, as in its ``transform``);
3. start at the student's output ``y`` and run ``epochs`` rounds of UMAP's layout objective with the training
   coordinates ``c`` fixed, in expectation: where UMAP samples an edge in a share ``r = w/w_max`` of its epochs
   (``w_max`` per point, so a point's result does not depend on the others encoded with it), every round applies
   every edge weighted by ``r``: a pull towards ``cⱼ`` of ``r·clip(−2ab·d²⁽ᵇ⁻¹⁾/(1 + a·d²ᵇ)·(y − cⱼ))`` and, from
   ``negatives`` random training points ``cₘ`` per edge, pushes of
   ``r·clip(2b/((0.001 + d²)(1 + a·d²ᵇ))·(y − cₘ))``; ``y += α·Σ``, clip at ±4, α falling linearly from ``alpha`` to
   0, ``d²`` the squared distance on the map.  The expected step reached in 10 rounds what UMAP's sampled one
   reached in 30 (held-out recall@10 0.348 vs 0.348, 3 seeds). Here ``a = b = 1`` (the curve ``1/(1 + d²)``): it
   placed new points as well as UMAP's ``min_dist = 0.1`` fit (a ≈ 1.58, b ≈ 0.90) at 10 epochs and better at 33;
   k = 30 neighbours beat UMAP's 15 by ~0.008 recall@10, and 4 negatives per edge did as well as UMAP's 5 (10 rounds,
   mean of 6 seeds: 3 negatives 0.3480, 4 0.3498, 5 0.3492; benchmarks/quality.py's split).
4. all of it in units of the map's own neighbour distance: each level's coordinates are divided by
   :func:`layout_unit` (the median distance from a map row to its 10th-nearest map row, over :data:`TUNED_NN10`, its
   value on the bundled example's default map) and the result multiplied back.  The curve above has a fixed width,
   but a map's scale is not fixed: a loss on cosine similarities (``relational``) leaves it arbitrary (such maps
   spread ~0.04), and a map of more rows is denser (50,000 rows in 5-D: neighbours ~0.4× as far).  In absolute units
   the pushes threw a relational student's new points far out (bundled example, held-out recall@10: 0.248 alone,
   0.224 refined 10 rounds; now 0.334), and on 100,000 PyPI summaries (5,000 held out) refine 6 raised the default
   map's recall less (0.147 alone, 0.187; now 0.199) and lowered a random-batch map's recall among the map's own
   rows (0.056 → 0.045; now 0.095).  On the default maps the constants were tuned on, nothing moves: the bundled
   example's measures 1.00, and on benchmarks/quality.py's (unit 0.79) refine 6 gives 0.350 against 0.349 in
   absolute units; 0.8–1.25 times the unit all give 0.348–0.350 there.
5. only on maps of at most :data:`REFINE_MAX_DIMS` dimensions (benchmarks/refine_dims.py).  With the
   bundled example's recipe and ``student.dim`` changed, refine 6 changed held-out recall@10 on
   benchmarks/quality.py's docstrings (6,572 rows) by +0.038 (2-D), +0.059 (3-D), +0.036 (5-D),
   +0.016 (7-D), +0.007 (8-D), −0.003 (9-D), −0.009 (10-D), −0.044 (15-D) and −0.069 (25-D); on
   100,000 PyPI summaries (benchmarks/scale.py's) by +0.052 (5-D), +0.039 (8-D), +0.026 (10-D), +0.003
   (15-D, trustworthiness −0.005) and −0.025 (25-D).  Other step sizes (0.02–0.25) and units (1–2 times
   the measured one) gained at most 0.009 at 10-D on the docstrings and nothing at 25-D.  A wider level
   (a hierarchical student's 25-D fine level) keeps the student's own output.

Every level of a multi-level student up to that width is refined the same way, on the same neighbours.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from .checkpoint import atomic_save, safe_load
from .errors import CheckpointError
from .neighbors import faiss_available, faiss_topk, graph_recall, streamed_topk

MAP_FORMAT = "atlas-map/2"  # /1: no basis (the vectors in the teacher's own axes), still read
SEARCH_BLOCK = 8192  # map rows compared with the queries at once
REFINE_BLOCK = 4096  # new points refined at once (memory: about REFINE_BLOCK × SEARCH_BLOCK similarities)
REFINE_K = 30  # training neighbours per new point
REFINE_NEGATIVES = 4  # random training points pushed from per sampled edge
SEARCH_RECALL = 0.95  # the reduced search keeps at least this share of the exact top-k on the sample
SEARCH_SAMPLE = 1000  # map rows whose exact neighbours choose search_dims
TUNED_NN10 = 0.82  # median distance from a map row to its 10th-nearest map row on the bundled example's default map
UNIT_SAMPLE = 1000  # map rows whose 10th-nearest map row sets layout_unit
REFINE_MAX_EPOCHS = 1000  # a typo guard: the layout settles within ~10 epochs (README), 1000 already take 100x that
REFINE_MAX_DIMS = 10  # wider levels keep the student's output: refine gained nothing there or lost (point 5)


@attrs.define(repr=False)
class TrainingMap:
    """The training rows a student saw, in both spaces.

    ``vectors``: ``(N, d)`` the unit teacher rows in the map's search space — projected on ``basis``
    (float16 as stored, memory-mapped when loaded: the search streams over them in blocks);
    ``coords``: one ``(N, Ds)`` float32 tensor per student level; ``rows``: ``(N,)`` teacher row ids;
    ``basis``: ``(Dt, d)`` orthonormal columns, the rows' leading principal components (``None``: the
    teacher's own axes, ``d = Dt``; maps written before the basis existed); ``student``: the
    :func:`~atlas_plugins.distributed.parameter_digest` of the weights that made ``coords``, so a map is
    never used with another run's student (``None``: not recorded, as in maps written before it was);
    ``units``: each level's :func:`layout_unit`, measured when not given (and in maps written before it
    was stored: ~2 s for 750,000 rows); ``attrs.evolve(map_, coords=...)`` keeps the old units unless it
    also passes ``units=None``.
    """

    vectors: torch.Tensor
    coords: tuple
    rows: torch.Tensor
    basis: torch.Tensor | None = None
    student: str | None = None
    units: tuple | None = None

    def __repr__(self) -> str:
        return (f"TrainingMap({self.vectors.shape[0]:,} rows, {self.vectors.shape[1]} of {self.teacher_dim} "
                f"dimensions, levels {[c.shape[1] for c in self.coords]})")

    def __attrs_post_init__(self):
        n, d = self.vectors.shape if self.vectors.dim() == 2 else (-1, -1)
        if self.vectors.dim() != 2 or self.rows.shape != (n,) or not self.coords or any(
                c.dim() != 2 or c.shape[0] != n for c in self.coords) or (
                self.basis is not None and (self.basis.dim() != 2 or self.basis.shape[1] != d
                                            or self.basis.shape[0] < d)):
            raise CheckpointError(f"training map shapes disagree: vectors {tuple(self.vectors.shape)}, rows "
                                  f"{tuple(self.rows.shape)}, coords {[tuple(c.shape) for c in self.coords]}, basis "
                                  f"{None if self.basis is None else tuple(self.basis.shape)}")
        if self.units is None:
            self.units = tuple(layout_unit(c) for c in self.coords)
        elif len(self.units) != len(self.coords) or not all(
                isinstance(u, float) and math.isfinite(u) and u > 0 for u in self.units):
            raise CheckpointError(f"layout units {self.units!r}: expected one positive number per level "
                                  f"({len(self.coords)})")

    @property
    def dims(self) -> int:
        """The number of components the search compares."""
        return self.vectors.shape[1]

    @property
    def teacher_dim(self) -> int:
        """The teacher's dimension ``Dt``."""
        return self.vectors.shape[1] if self.basis is None else self.basis.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher vectors ``x (Q, Dt)`` as unit rows in the map's search space ``(Q, d)``."""
        x = torch.nn.functional.normalize(x.float(), dim=1)
        return x if self.basis is None else x @ self.basis.to(x.device)

    def save(self, path) -> None:
        """Write ``map.pt`` atomically; vectors are stored as float16 (half the size; cosine error ~1e-3)."""
        atomic_save({"format": MAP_FORMAT, "vectors": self.vectors.to(torch.float16),
                     "coords": [c.float() for c in self.coords], "rows": self.rows.long(), "basis": self.basis,
                     "student": self.student, "units": list(self.units)}, path)

    @classmethod
    def load(cls, path) -> "TrainingMap":
        """Read ``map.pt`` (``weights_only=True``; the vectors memory-mapped, not read into memory)."""
        blob = safe_load(path, what="training map", mmap=True)
        if not isinstance(blob, dict) or blob.get("format") not in (MAP_FORMAT, "atlas-map/1"):
            raise CheckpointError(f"{path}: not an atlas training map (expected format '{MAP_FORMAT}')")
        try:
            basis = blob.get("basis")
            if basis is not None and not isinstance(basis, torch.Tensor):
                raise TypeError("basis must be a tensor")
            if not isinstance(blob.get("student"), (str, type(None))):
                raise TypeError("student must be a digest string")
            units = blob.get("units")  # None in maps written before it was stored: measured again
            return cls(blob["vectors"], tuple(c.float() for c in blob["coords"]), blob["rows"].long(),
                       None if basis is None else basis.float(), blob.get("student"),
                       None if units is None else tuple(units))
        except (KeyError, AttributeError, TypeError, CheckpointError) as exc:
            raise CheckpointError(f"{path}: damaged training map ({exc})") from None


def refines(width: int) -> bool:
    """Whether refine moves a level ``width`` dimensions wide: at most :data:`REFINE_MAX_DIMS` (point 5)."""
    return width <= REFINE_MAX_DIMS


def layout_unit(coords: torch.Tensor, k: int = 10, sample: int = UNIT_SAMPLE) -> float:
    """The length refine's layout counts as 1 on a map ``coords`` ``(N, Ds)``: the median distance from
    ``sample`` of its rows (seeded: the same map, the same unit) to their ``k``-th nearest other row, over
    :data:`TUNED_NN10`; 1 for a map too small or too collapsed to measure."""
    n = coords.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return 1.0
    queries = coords[torch.from_numpy(np.random.default_rng(0).choice(n, min(n, sample), replace=False))].float()
    # the k + 1 nearest by negated distance, the row itself among them
    near, _ = streamed_topk(queries, _blocks(coords, queries), k + 1,
                            block_topk=lambda q, block, m: (-torch.cdist(q, block)).topk(m, dim=1))
    return float((-near[:, k]).quantile(0.5)) / TUNED_NN10 or 1.0


def build_map(teacher, rows: np.ndarray, encode, *, max_rows: int, seed: int = 0,
              student: str | None = None) -> TrainingMap:
    """The map of ``rows`` (at most ``max_rows`` of them, a uniform sample by ``seed``; atlas-run passes
    ``output.map_rows``) under ``encode``.

    ``teacher`` is a :class:`~atlas_plugins.teacher.TeacherData`; ``encode`` maps ``(n, Dt)`` to a
    tensor or a tuple of per-level tensors.  Rows are read and encoded in chunks; the unit rows are
    rotated into their principal basis in place, and the map keeps the leading columns :func:`search_dims`
    chooses.  ``student``: the digest of the weights behind ``encode``, recorded in the map.
    """
    rows = np.asarray(rows)
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    vectors = None  # filled in place: memory stays at the map itself plus one chunk
    coords: list = []
    for start in range(0, len(rows), 16384):
        x = teacher.rows(rows[start:start + 16384]).float()
        z = encode(x)
        coords.append(z if isinstance(z, tuple) else (z,))
        if vectors is None:
            vectors = torch.empty((len(rows), x.shape[1]), dtype=torch.float16)
        vectors[start:start + len(x)] = torch.nn.functional.normalize(x, dim=1)
    levels = tuple(torch.cat([c[i] for c in coords]) for i in range(len(coords[0])))
    basis = principal_basis(vectors)
    for start in range(0, len(rows), 4096):
        vectors[start:start + 4096] = vectors[start:start + 4096].float() @ basis
    keep = search_dims(vectors, min(REFINE_K, len(rows) - 1)) or vectors.shape[1]
    if keep < vectors.shape[1]:
        vectors, basis = vectors[:, :keep].clone(), basis[:, :keep].contiguous()
    return TrainingMap(vectors, levels, torch.as_tensor(rows, dtype=torch.long), basis, student)


def principal_basis(vectors: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``(D, D)`` orthonormal eigenvectors of the covariance of ``vectors (N, D)``, largest variance first
    (accumulated in float64 over chunks)."""
    n, d = vectors.shape
    mean = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, chunk):
        mean += vectors[start:start + chunk].double().sum(0)
    mean /= max(n, 1)
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = vectors[start:start + chunk].double() - mean
        cov += x.T @ x
    _, eigenvectors = torch.linalg.eigh(cov)  # ascending
    return eigenvectors.flip(1).float().contiguous()


def search_dims(vectors: torch.Tensor, k: int, sample: int = SEARCH_SAMPLE, target: float = SEARCH_RECALL) -> int:
    """The fewest leading columns of ``vectors (N, D)`` (rows in their principal basis), in steps of D/16
    up to 3/4 of D, whose top-``k`` inner products find ``target`` of the exact top-``k`` for ``sample``
    evenly spaced rows (each excluding itself); 0 (all columns) when none does."""
    n, d = vectors.shape
    if k < 1 or d < 16:
        return 0
    ids = torch.as_tensor(np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64)))
    queries = vectors[ids].float()

    def top(dims):
        q = queries[:, :dims].contiguous()
        return streamed_topk(q, _blocks(vectors, q), k, query_ids=ids)[1]

    exact = top(d)
    for dims in range(d // 16, 3 * d // 4 + 1, d // 16):
        if graph_recall(top(dims), exact) >= target:
            return dims
    return 0


def nearest(queries: torch.Tensor, vectors: torch.Tensor, k: int, block: int = SEARCH_BLOCK):
    """Top-``k`` inner products of ``queries (Q, d)`` with ``vectors (N, d)``: exact cosine neighbours for
    unit rows.

    Returns ``(similarities (Q, k), indices (Q, k))``, nearest first; ``vectors`` (any float dtype, on any
    device, memory-mapped or not) are read in blocks of ``block`` rows, converted to the queries' dtype and
    device, so memory stays at ``Q × (block + k)`` similarities plus one block.  On a CPU with faiss
    installed (the ``scale`` extra) each block is searched by :func:`~atlas_plugins.neighbors.faiss_topk`.
    """
    on_cpu = queries.device.type == "cpu" and queries.dtype == torch.float32
    return streamed_topk(queries, _blocks(vectors, queries, block), k,
                         block_topk=faiss_topk if on_cpu and faiss_available() else None)


def _blocks(vectors: torch.Tensor, queries: torch.Tensor, block: int = SEARCH_BLOCK):
    """``(start, rows)`` pairs over ``vectors`` in blocks of ``block`` rows, cut to the queries' columns and
    converted to their dtype and device (one block in memory at a time)."""
    d = queries.shape[1]
    return ((start, vectors[start:start + block, :d].to(queries.device, queries.dtype))
            for start in range(0, vectors.shape[0], block))


def memberships(dist: torch.Tensor, iterations: int = 64) -> torch.Tensor:
    """``exp(−d/σ)`` per row of distances ``(Q, k)``, σ bisected so that each row sums to ``log₂ k``."""
    target = math.log2(dist.shape[1])
    lo = torch.zeros(dist.shape[0], 1, dtype=dist.dtype, device=dist.device)
    hi = torch.full_like(lo, math.inf)
    sigma = torch.ones_like(lo)
    for i in range(iterations):
        total = torch.exp(-dist / sigma).sum(1, keepdim=True)
        if i % 8 == 7 and bool(((total - target).abs() < 1e-5 * target).all()):
            break
        too_big = total > target  # memberships too wide: shrink σ
        hi = torch.where(too_big, sigma, hi)
        lo = torch.where(too_big, lo, sigma)
        sigma = torch.where(torch.isinf(hi), sigma * 2, (lo + hi) / 2)
    return torch.exp(-dist / sigma)


def refine(map_: TrainingMap, queries: torch.Tensor, start: tuple, *, epochs: int, k: int = REFINE_K,
           negatives: int = REFINE_NEGATIVES, alpha: float = 0.25, generator: torch.Generator | None = None,
           seed: int = 0) -> tuple:
    """Move ``start`` (one ``(Q, Ds)`` tensor per level: the student's output for ``queries (Q, Dt)``)
    ``epochs`` rounds against the frozen map; returns new tensors and leaves the map untouched.  A level
    wider than :data:`REFINE_MAX_DIMS` is returned as given.  Memory: ``Q × k × negatives × Ds`` floats
    per round besides the search.

    Negative samples come from ``generator`` (else a new one seeded with ``seed``): same inputs, same result.
    """
    if not any(refines(y0.shape[1]) for y0 in start):
        return tuple(start)
    device = start[0].device
    k = min(k, map_.vectors.shape[0])
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    sims, idx = nearest(map_.project(queries), map_.vectors, k)
    w = memberships((1.0 - sims).clamp_min(0.0))
    rate = w / w.max(dim=1, keepdim=True).values  # (Q, k): the nearest edge has weight 1
    rate_negative = rate.repeat_interleave(negatives, dim=1)  # (Q, k·negatives), edge by edge
    out = []
    for y0, coords, unit in zip(start, map_.coords, map_.units):
        if not refines(y0.shape[1]):
            out.append(y0)
            continue
        # Laid out (Ds, Q, edges), contiguous: each elementwise pass runs over long rows (~3x faster than Ds last).
        coords_t = coords.to(device).T.div(unit).contiguous()  # (Ds, N), in the map's own units
        near = coords_t.index_select(1, idx.view(-1).to(device)).view(-1, *idx.shape)
        y = y0.float().T.div(unit).contiguous()  # (Ds, Q)
        for n in range(1, epochs + 1):
            diff = y.unsqueeze(2) - near
            move = diff.mul_(-2.0 / (1.0 + _squared_norms(diff))).clamp_(-4.0, 4.0).mul_(rate).sum(2)  # a = b = 1
            if negatives:
                drawn = torch.randint(0, coords_t.shape[1], (rate_negative.numel(),), generator=g).to(device)
                diff = y.unsqueeze(2) - coords_t.index_select(1, drawn).view(-1, *rate_negative.shape)
                d2 = _squared_norms(diff)
                move += diff.mul_(2.0 / ((0.001 + d2) * (1.0 + d2))).clamp_(-4.0, 4.0).mul_(rate_negative).sum(2)
            y.add_(move, alpha=alpha * (1.0 - (n - 1) / epochs))
        out.append(y.mul_(unit).T.contiguous())
    return tuple(out)


def _squared_norms(diff: torch.Tensor) -> torch.Tensor:
    """``Σ_c diff[c]²`` of ``(C, ...)``, one fused multiply-add per component (a few components: faster
    than a reduction over the first dimension)."""
    total = diff[0] * diff[0]
    for c in range(1, diff.shape[0]):
        total.addcmul_(diff[c], diff[c])
    return total
