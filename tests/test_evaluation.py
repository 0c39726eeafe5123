"""Metrics against independent implementations (scikit-learn, SciPy, plain NumPy loops) on real embeddings."""

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness as sk_trustworthiness
from sklearn.neighbors import NearestNeighbors

from atlas_plugins import evaluation as ev


@pytest.fixture(scope="module")
def spaces(real_embeddings):
    rng = np.random.default_rng(0)
    teacher = real_embeddings[rng.choice(len(real_embeddings), 400, replace=False)].astype(np.float64)
    student = teacher[:, :5] * 3 + 0.05 * rng.normal(size=(400, 5))
    labels = rng.integers(0, 6, 400).tolist()
    return teacher, student, labels


def test_knn_matches_sklearn(spaces):
    _, student, _ = spaces
    ours = ev.knn(student, 10).numpy()
    theirs = NearestNeighbors(n_neighbors=10).fit(student).kneighbors(return_distance=False)
    assert (ours == theirs).mean() > 0.999  # exact up to float ties


def test_recall_at_k_matches_a_plain_loop(spaces):
    teacher, student, _ = spaces
    tn = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    hits = 0
    for i in range(len(teacher)):
        sims = tn @ tn[i]
        sims[i] = -np.inf
        dists = np.linalg.norm(student - student[i], axis=1)
        dists[i] = np.inf
        hits += len(set(np.argsort(-sims)[:10]) & set(np.argsort(dists)[:10]))
    assert ev.recall_at_k(teacher, student, 10) == pytest.approx(hits / (10 * len(teacher)))


@pytest.mark.parametrize("k", [5, 10])
def test_trustworthiness_matches_sklearn(spaces, k):
    teacher, student, _ = spaces
    want = sk_trustworthiness(teacher, student, n_neighbors=k, metric="cosine")
    assert ev.trustworthiness(teacher, student, k) == pytest.approx(want, abs=1e-12)


def test_spearman_matches_scipy_on_the_same_pairs(spaces):
    teacher, student, _ = spaces
    g = torch.Generator().manual_seed(3)
    i = torch.randint(0, 400, (5000,), generator=g)
    j = (i + torch.randint(1, 400, (5000,), generator=g)) % 400
    tn = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    a = (tn[i] * tn[j]).sum(1)
    b = -np.linalg.norm(student[i] - student[j], axis=1)
    assert ev.spearman(teacher, student, pairs=5000, seed=3) == pytest.approx(spearmanr(a, b).statistic, abs=1e-10)
    v = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0])
    assert ev._ranks(v).tolist() == rankdata(v.numpy()).tolist()


def test_knn_accuracy_matches_a_plain_vote(spaces):
    _, student, labels = spaces
    nn_idx = NearestNeighbors(n_neighbors=10).fit(student).kneighbors(return_distance=False)  # self excluded
    correct = 0
    for i, row in enumerate(nn_idx):
        votes = Counter(labels[j] for j in row)
        top = max(votes.values())
        correct += next(labels[j] for j in row if votes[labels[j]] == top) == labels[i]
    assert ev.knn_accuracy(student, labels, 10) == pytest.approx(correct / len(labels))


def test_knn_accuracy_leaves_unlabelled_rows_out_as_queries_and_as_voters(spaces):
    """Rows without a label (None) were a class of their own: a half-unlabelled corpus scored its unlabelled
    rows right wherever they sat together."""
    _, student, labels = spaces
    partial = [None if i % 3 == 0 else lab for i, lab in enumerate(labels)]
    kept = [i for i, lab in enumerate(partial) if lab is not None]
    nn_idx = NearestNeighbors(n_neighbors=10).fit(student[kept]).kneighbors(return_distance=False)
    correct = 0
    for i, row in enumerate(nn_idx):  # the plain vote above, among the labelled rows alone
        votes = Counter(partial[kept[j]] for j in row)
        top = max(votes.values())
        correct += next(partial[kept[j]] for j in row if votes[partial[kept[j]]] == top) == partial[kept[i]]
    assert ev.knn_accuracy(student, partial, 10) == pytest.approx(correct / len(kept))
    assert ev.knn_accuracy(student, [None] * 399 + ["a"], 10) is None
    assert "knn_label_acc@10" not in ev.evaluate(student, student, [None] * 399 + ["a"])
    line = np.array([[0.0], [1.0], [10.0]])  # k shrinks to 2; ties go to the nearer row's label: a, a, then a ≠ b
    assert ev.knn_accuracy(line, ["a", "a", "b"], 10) == pytest.approx(2 / 3)


def test_pca_matches_sklearn_up_to_sign(spaces):
    teacher, _, _ = spaces
    mean, comps = ev.pca_fit(torch.from_numpy(teacher), 5)
    ours = ev.pca_transform(torch.from_numpy(teacher), mean, comps).numpy()
    theirs = PCA(n_components=5, svd_solver="full").fit_transform(teacher)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)
    fast = ev.pca_projector(mean, comps)(torch.from_numpy(teacher)).numpy()
    np.testing.assert_allclose(fast, ours, atol=1e-4)


def test_a_perfect_map_scores_one_and_a_shuffled_one_does_not(spaces):
    teacher, _, _ = spaces
    tn = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    assert ev.recall_at_k(teacher, tn, 10) == pytest.approx(1.0)
    shuffled = tn[np.random.default_rng(1).permutation(len(tn))]
    assert ev.recall_at_k(teacher, shuffled, 10) < 0.1
