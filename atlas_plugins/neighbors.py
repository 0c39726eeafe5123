"""Teacher nearest neighbours: an exact, blocked cosine top-k in torch (for neighbour batches)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalized_rows(teacher, rows: np.ndarray, chunk: int = 65536) -> torch.Tensor:
    """L2-normalised float32 teacher rows ``(len(rows), D)``, read ``chunk`` rows at a time."""
    parts = [F.normalize(teacher.rows(rows[i:i + chunk]), dim=1) for i in range(0, len(rows), chunk)]
    return torch.cat(parts) if parts else torch.empty(0, teacher.dim)


def topk_cosine(x: torch.Tensor, k: int, block: int = 1024, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Indices ``(Q, k)`` of the ``k`` most cosine-similar rows of unit rows ``x`` (N, D), self excluded.

    ``queries`` defaults to ``x`` itself (then row i never lists i).  Exact:
    every pair is compared, ``block`` query rows at a time.
    """
    q = x if queries is None else queries
    k = min(k, x.shape[0] - (1 if queries is None else 0))
    out = torch.empty(q.shape[0], k, dtype=torch.long)
    for start in range(0, q.shape[0], block):
        sims = q[start:start + block] @ x.T
        if queries is None:
            idx = torch.arange(start, min(start + block, q.shape[0]))
            sims[torch.arange(len(idx)), idx] = -float("inf")
        out[start:start + block] = sims.topk(k, dim=1).indices
    return out
