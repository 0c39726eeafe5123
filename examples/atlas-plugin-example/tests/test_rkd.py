import math

import numpy as np
import torch

import atlas_plugins


def reference(s, t, delta=1.0):
    """Plain loops: normalised pairwise distances, Huber of their differences, mean over j≠i."""
    b = len(s)

    def psi(x):
        d = [[math.dist(x[i], x[j]) for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[d[i][j] / mu for j in range(b)] for i in range(b)]

    def huber(u):
        return 0.5 * u * u if abs(u) < delta else delta * (abs(u) - 0.5 * delta)

    ps, pt = psi(s), psi(t)
    return np.array([np.mean([huber(ps[i][j] - pt[i][j]) for j in range(b) if j != i]) for i in range(b)])


def test_rkd_distance_is_registered_and_matches_the_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(9, 5)), rng.normal(size=(9, 32)) * 3
    loss = atlas_plugins.get_loss("rkd-distance")
    got = loss(torch.from_numpy(s), torch.from_numpy(t), reduction="none").numpy()
    np.testing.assert_allclose(got, reference(s, t), rtol=1e-9)
    scaled = loss(torch.from_numpy(s * 10), torch.from_numpy(t), reduction="mean")
    assert abs(scaled.item() - reference(s, t).mean()) < 1e-9  # invariant to the student's scale
    assert atlas_plugins.get_registry().info("loss", "rkd-distance").distribution == "atlas-plugin-example"
