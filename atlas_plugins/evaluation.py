"""How well a student keeps the teacher's neighbourhoods: exact, blocked metrics in torch.

Teacher neighbours are by cosine similarity, student neighbours by Euclidean
distance (what a 5-D map shows); a point is never its own neighbour.

- ``recall_at_k``: share of each point's k teacher neighbours found among its k student neighbours.
- ``trustworthiness``: as ``sklearn.manifold.trustworthiness(metric="cosine")``:
  1 − 2/(n k (2n − 3k − 1)) · Σᵢ Σ_{j ∈ student kNN(i)} max(0, r(i, j) − k), r the teacher rank.
- ``spearman``: rank correlation of teacher cosine similarity and negative student distance on random pairs.
- ``knn_accuracy``: leave-one-out k-NN label vote in the student space.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F


def _blocks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _sim_block(x: torch.Tensor, start: int, stop: int, metric: str) -> torch.Tensor:
    """Similarities of rows ``start:stop`` to all rows (higher = nearer), self set to −inf."""
    q = x[start:stop]
    if metric == "cosine":
        s = q @ x.T
    else:
        s = -(q.pow(2).sum(1, keepdim=True) - 2 * q @ x.T + x.pow(2).sum(1)).clamp_min(0)
    s[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")
    return s


def _prepare(x, metric: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    return F.normalize(x, dim=1) if metric == "cosine" else x


def knn(x, k: int, metric: str = "euclidean", block: int = 512) -> torch.Tensor:
    """Indices ``(N, k)`` of each row's k nearest other rows, nearest first."""
    x = _prepare(x, metric)
    out = torch.empty(x.shape[0], k, dtype=torch.long)
    for a, b in _blocks(x.shape[0], block):
        out[a:b] = _sim_block(x, a, b, metric).topk(k, dim=1).indices
    return out


def recall_at_k(teacher, student, k: int = 10) -> float:
    t, s = knn(teacher, k, "cosine"), knn(student, k, "euclidean")
    hits = (t.unsqueeze(2) == s.unsqueeze(1)).any(dim=2).sum()
    return float(hits) / (t.shape[0] * k)


def trustworthiness(teacher, student, k: int = 10, block: int = 128) -> float:
    x = _prepare(teacher, "cosine")
    n = x.shape[0]
    if k >= n / 2:
        raise ValueError(f"trustworthiness needs k < n/2, got k={k}, n={n}")
    s_nn = knn(student, k, "euclidean")
    penalty = 0.0
    for a, b in _blocks(n, block):
        sims = _sim_block(x, a, b, "cosine")
        chosen = sims.gather(1, s_nn[a:b])
        ranks = 1 + (sims.unsqueeze(1) > chosen.unsqueeze(2)).sum(dim=2)
        penalty += float((ranks - k).clamp_min(0).sum())
    return 1.0 - penalty * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))


def spearman(teacher, student, pairs: int = 20000, seed: int = 0) -> float:
    t, s = _prepare(teacher, "cosine"), _prepare(student, "euclidean")
    n = t.shape[0]
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (pairs,), generator=g)
    j = (i + torch.randint(1, n, (pairs,), generator=g)) % n
    # pairs in chunks: the same sums as one (pairs, D) product, without writing and reading it back from memory
    a = torch.cat([(t[i[c:c + 512]] * t[j[c:c + 512]]).sum(1) for c in range(0, pairs, 512)])
    b = -(s[i] - s[j]).norm(dim=1)
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-300))


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank), as ``scipy.stats.rankdata``."""
    vals, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    return ((ends - (counts - 1) / 2.0))[inverse]


def knn_accuracy(student, labels, k: int = 10) -> float | None:
    """Leave-one-out k-NN vote among the labelled rows; ties go to the label whose first occurrence is nearest.

    A row labelled None is unlabelled: neither scored nor a voter (counted as a class of its own, a corpus
    half unlabelled scored its unlabelled rows "right" wherever they sat together).  None with fewer than
    two labelled rows; ``k`` shrinks to the labelled rows less one.
    """
    labels = list(labels)
    labelled = [i for i, lab in enumerate(labels) if lab is not None]
    if len(labelled) < 2:
        return None
    if len(labelled) < len(labels):
        student, labels = student[labelled], [labels[i] for i in labelled]
    nn_idx = knn(student, min(k, len(labels) - 1), "euclidean").tolist()
    correct = 0
    for i, row in enumerate(nn_idx):
        votes = Counter(labels[j] for j in row)
        best = max(votes.values())
        winner = next(labels[j] for j in row if votes[labels[j]] == best)
        correct += winner == labels[i]
    return correct / len(labels)


def evaluate(teacher, student, labels=None, k: int = 10) -> dict:
    """All metrics for one student space ``(N, Ds)`` against teacher rows ``(N, Dt)`` that ``N`` rows allow
    (``k`` < N; trustworthiness needs k < N/2 and is left out otherwise)."""
    out = {f"recall@{k}": recall_at_k(teacher, student, k)}
    if k < student.shape[0] / 2:
        out[f"trustworthiness@{k}"] = trustworthiness(teacher, student, k)
    out["spearman"] = spearman(teacher, student)
    accuracy = knn_accuracy(student, labels, k) if labels is not None else None
    if accuracy is not None:
        out[f"knn_label_acc@{k}"] = accuracy
    return out


def pca_fit(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred PCA by SVD: ``(mean (D,), components (D, dim))``."""
    x = x.to(torch.float64)
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vh[:dim].T


def pca_transform(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.float64) - mean) @ components


def pca_projector(mean: torch.Tensor, components: torch.Tensor):
    """A fast float32 PCA transform: ``x @ W − mean @ W`` (one matrix product, no centred copy)."""
    w = components.to(torch.float32).contiguous()
    b = (mean.to(torch.float32) @ w)
    return lambda x: torch.as_tensor(x, dtype=torch.float32) @ w - b
