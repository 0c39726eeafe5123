"""Batches of teacher row positions: random, or anchors plus their teacher neighbours.

Every in-batch loss compares each row with the others, so no batch is ever smaller
than :data:`MIN_BATCH_ROWS`: a short tail joins the batch before it.

Random batches almost never hold a point's true neighbours, so a relational loss
rarely sees the pairs that matter most.  Neighbour batches take ``A`` anchors and,
for each, ``m`` neighbours drawn from its top-``pool`` teacher neighbours (or, with
more hops, from their neighbours).
"""

from __future__ import annotations

import numpy as np
import torch

MIN_BATCH_ROWS = 3  # the built-in in-batch losses need each row compared with at least two others


def chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
    """``order`` cut into pieces of ``size``; a tail shorter than half a piece (or than
    :data:`MIN_BATCH_ROWS`) joins the piece before it."""
    pieces = [order[i:i + size] for i in range(0, len(order), size)]
    if len(pieces) > 1 and len(pieces[-1]) < max(MIN_BATCH_ROWS, size // 2):
        pieces[-2:] = [np.concatenate(pieces[-2:])]
    return pieces


def random_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive pieces of a shuffled ``order``; none smaller than :data:`MIN_BATCH_ROWS`."""
    return [b for b in chunks(order, batch_size) if len(b) >= MIN_BATCH_ROWS]


def neighbor_batches(order: np.ndarray, graph: torch.Tensor, batch_size: int, neighbors: int,
                     generator: torch.Generator, hops: int = 1) -> list[np.ndarray]:
    """Batches of positions: each holds ``batch_size // (1 + neighbors)`` anchors from ``order`` and, for each
    anchor, ``neighbors`` partners: positions drawn without replacement from its row of ``graph`` (``(n, pool)``
    positions), each then moved ``hops - 1`` more steps to a random position in the row it reached.  Two hops
    reach a row's neighbours' neighbours, the scale between its nearest rows and the rest of the data.
    Duplicates within a batch are dropped; a batch left with fewer than :data:`MIN_BATCH_ROWS` rows joins the
    one before it."""
    pool = graph.shape[1]
    m = min(neighbors, pool)
    batches: list[np.ndarray] = []
    for anchors in chunks(order, max(1, batch_size // (1 + neighbors))):
        anchors = torch.as_tensor(anchors, dtype=torch.long)
        pick = torch.rand(len(anchors), pool, generator=generator).argsort(dim=1)[:, :m]
        partners = graph[anchors].gather(1, pick).long()
        for _ in range(hops - 1):
            partners = graph[partners, torch.randint(pool, partners.shape, generator=generator)].long()
        rows = torch.cat([anchors, partners.flatten()]).numpy()
        batch = _unique_in_order(rows)
        if len(batch) < MIN_BATCH_ROWS and batches:
            batches[-1] = _unique_in_order(np.concatenate([batches[-1], batch]))
        else:
            batches.append(batch)
    return [b for b in batches if len(b) >= MIN_BATCH_ROWS]


def _unique_in_order(rows: np.ndarray) -> np.ndarray:
    _, first = np.unique(rows, return_index=True)
    return rows[np.sort(first)]
