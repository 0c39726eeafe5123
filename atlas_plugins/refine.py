"""The training map (``map.pt``) and ``refine``: new points placed against it, as UMAP's ``transform`` does.

A student maps a new vector in one forward pass, but it generalises imperfectly:
held-out points keep fewer of their teacher neighbours than training points do.
Refinement moves each new point's output a few steps against the *frozen* map of
the training rows, batched in torch so thousands of points move at once:

1. its ``k`` nearest training rows by cosine similarity (exact, blocked over the map);
2. fuzzy memberships ``wⱼ = exp(−dⱼ/σ)`` on cosine distances ``dⱼ = 1 − cos``, σ chosen by
   bisection so that ``Σⱼ wⱼ = log₂ k`` (UMAP's smooth-kNN with ρ = 0, as in its ``transform``);
3. start at the student's output ``y`` and run ``epochs`` rounds of UMAP's layout SGD with the
   training coordinates ``c`` fixed: an edge of weight ``w`` is sampled in ``⌊epochs · w / w_max⌋``
   of the rounds (``w_max`` per point, so a point's result does not depend on the others encoded with
   it); each sample pulls ``y`` towards ``cⱼ`` by ``α·clip(−2ab·d²⁽ᵇ⁻¹⁾/(1 + a·d²ᵇ)·(y − cⱼ))`` and
   pushes it from ``negatives`` random training points by ``α·clip(2b/((0.001 + d²)(1 + a·d²ᵇ))·(y − cₖ))``;
   clip at ±4, α falls linearly from ``alpha`` to 0; ``d²`` is the squared distance on the map.

Every level of a multi-level student is refined the same way, on the same neighbours.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from .checkpoint import atomic_save, safe_load
from .errors import CheckpointError

MAP_FORMAT = "atlas-map/1"
MAP_ROWS = 50_000  # default cap on the training rows a map keeps (a uniform sample above it)
SEARCH_BLOCK = 8192  # map rows compared with the queries at once
REFINE_BLOCK = 4096  # new points refined at once (memory: about REFINE_BLOCK × SEARCH_BLOCK similarities)
REFINE_K = 30  # training neighbours per new point
REFINE_NEGATIVES = 3  # random training points pushed from per sampled edge


@attrs.define
class TrainingMap:
    """The training rows a student saw, in both spaces.

    ``vectors``: ``(N, Dt)`` unit rows (teacher vectors, normalised; float16 as stored, memory-mapped when
    loaded: the search streams over them in blocks);
    ``coords``: one ``(N, Ds)`` float32 tensor per student level; ``rows``: ``(N,)`` teacher row ids.
    """

    vectors: torch.Tensor
    coords: tuple
    rows: torch.Tensor

    def __attrs_post_init__(self):
        n = self.vectors.shape[0]
        if self.vectors.dim() != 2 or self.rows.shape != (n,) or not self.coords or any(
                c.dim() != 2 or c.shape[0] != n for c in self.coords):
            raise CheckpointError(f"training map shapes disagree: vectors {tuple(self.vectors.shape)}, rows "
                                  f"{tuple(self.rows.shape)}, coords {[tuple(c.shape) for c in self.coords]}")

    def save(self, path) -> None:
        """Write ``map.pt`` atomically; vectors are stored as float16 (half the size; cosine error ~1e-3)."""
        atomic_save({"format": MAP_FORMAT, "vectors": self.vectors.to(torch.float16),
                     "coords": [c.float() for c in self.coords], "rows": self.rows.long()}, path)

    @classmethod
    def load(cls, path) -> "TrainingMap":
        """Read ``map.pt`` (``weights_only=True``; the vectors memory-mapped, not read into memory)."""
        blob = safe_load(path, what="training map", mmap=True)
        if not isinstance(blob, dict) or blob.get("format") != MAP_FORMAT:
            raise CheckpointError(f"{path}: not an atlas training map (expected format '{MAP_FORMAT}')")
        try:
            return cls(blob["vectors"], tuple(c.float() for c in blob["coords"]), blob["rows"].long())
        except (KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"{path}: damaged training map ({exc})") from None


def build_map(teacher, rows: np.ndarray, encode, *, max_rows: int = MAP_ROWS, seed: int = 0) -> TrainingMap:
    """The map of ``rows`` (at most ``max_rows`` of them, a uniform sample by ``seed``) under ``encode``.

    ``teacher`` is a :class:`~atlas_plugins.teacher.TeacherData`; ``encode`` maps ``(n, Dt)`` to a
    tensor or a tuple of per-level tensors.  Rows are read and encoded in chunks.
    """
    rows = np.asarray(rows)
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    vectors, coords = [], []
    for start in range(0, len(rows), 16384):
        x = teacher.rows(rows[start:start + 16384]).float()
        z = encode(x)
        coords.append(z if isinstance(z, tuple) else (z,))
        vectors.append(torch.nn.functional.normalize(x, dim=1).to(torch.float16))
    levels = tuple(torch.cat([c[i] for c in coords]) for i in range(len(coords[0])))
    return TrainingMap(torch.cat(vectors), levels, torch.as_tensor(rows, dtype=torch.long))


def nearest(queries: torch.Tensor, vectors: torch.Tensor, k: int, block: int = SEARCH_BLOCK):
    """Exact top-``k`` cosine neighbours of unit ``queries (Q, D)`` among unit ``vectors (N, D)``.

    Returns ``(similarities (Q, k), indices (Q, k))``, nearest first; ``vectors`` (any float dtype, on any
    device, memory-mapped or not) are read in blocks of ``block`` rows, converted to the queries' dtype and
    device, so memory stays at ``Q × (block + k)`` similarities plus one block.
    """
    best_s = torch.full((queries.shape[0], 0), -math.inf, device=queries.device)
    best_i = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, vectors.shape[0], block):
        sims = queries @ vectors[start:start + block].to(queries.device, queries.dtype).T
        s, i = sims.topk(min(k, sims.shape[1]), dim=1)
        best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, pick)
    return best_s, best_i


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


def ab_from_min_dist(min_dist: float = 0.1, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's curve ``1/(1 + a·d²ᵇ)`` fitted to ``1`` below ``min_dist`` and ``exp(−(d − min_dist)/spread)`` above,
    by least squares over ``d ∈ (0, 3·spread]`` (Gauss–Newton in torch, no SciPy)."""
    d = torch.linspace(0, 3 * spread, 300, dtype=torch.float64)[1:]
    target = torch.where(d < min_dist, torch.ones_like(d), torch.exp(-(d - min_dist) / spread))
    params = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        opt.zero_grad()
        a, b = params
        err = (1.0 / (1.0 + a * d.pow(2 * b)) - target).pow(2).sum()
        err.backward()
        return err

    opt.step(closure)
    a, b = params.detach().tolist()
    return a, b


def refine(map_: TrainingMap, queries: torch.Tensor, start: tuple, *, epochs: int, k: int = REFINE_K,
           negatives: int = REFINE_NEGATIVES, alpha: float = 0.25, a: float = 1.0, b: float = 1.0,
           generator: torch.Generator | None = None, seed: int = 0) -> tuple:
    """Move ``start`` (one ``(Q, Ds)`` tensor per level: the student's output for ``queries (Q, Dt)``)
    ``epochs`` rounds against the frozen map; returns new tensors and leaves the map untouched.

    Negative samples come from ``generator`` (else a new one seeded with ``seed``): same inputs, same result.
    """
    device = start[0].device
    k = min(k, map_.vectors.shape[0])
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    sims, idx = nearest(torch.nn.functional.normalize(queries.float(), dim=1), map_.vectors, k)
    w = memberships((1.0 - sims).clamp_min(0.0))
    rate = (w / w.max(dim=1, keepdim=True).values).double()  # samples per epoch, the nearest edge every epoch
    counts = torch.floor(torch.arange(epochs + 1, device=device, dtype=torch.float64).view(-1, 1, 1) * rate)
    out = []
    for y0, coords in zip(start, map_.coords):
        coords = coords.to(device)
        near = coords[idx].flatten(0, 1)  # (Q·k, Ds): edge (i, j) at row i·k + j
        y = y0.float().clone()
        for n in range(1, epochs + 1):
            point, j = (counts[n] > counts[n - 1]).nonzero(as_tuple=True)  # the edges sampled this epoch
            here = y.index_select(0, point)  # (E, Ds)
            diff = here - near.index_select(0, point * k + j)
            d2 = diff.pow(2).sum(1, keepdim=True)
            if b == 1.0:
                coeff = -2.0 * a / (1.0 + a * d2)
            else:
                coeff = -2.0 * a * b * d2.clamp_min(1e-12).pow(b - 1.0) / (1.0 + a * d2.pow(b))
            step = (coeff * diff).clamp_(-4.0, 4.0)
            if negatives:
                drawn = torch.randint(0, coords.shape[0], (negatives * point.shape[0],), generator=g).to(device)
                diff = here - coords.index_select(0, drawn).view(negatives, -1, coords.shape[1])  # (neg, E, Ds)
                d2 = diff.pow(2).sum(2, keepdim=True)
                coeff = 2.0 * b / ((0.001 + d2) * (1.0 + a * (d2 if b == 1.0 else d2.pow(b))))
                step += (coeff * diff).clamp_(-4.0, 4.0).sum(0)
            y.index_add_(0, point, step, alpha=alpha * (1.0 - (n - 1) / epochs))
        out.append(y)
    return tuple(out)
