"""SC-CAM sub-category labels: numpy k-means (blobs, determinism, k > distinct rows, empty
clusters), the C*K multi-hot layout by hand, feature normalisation, batch targets and purity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainables.pseudo.subcategory as sc
from trainables.pseudo.subcategory import (
    SubcategoryLabels,
    cluster_purity,
    kmeans,
    normalise_features,
    subcategory_labels,
    subcategory_targets,
)

JITTER = np.array([[0.0, 0.0], [0.3, -0.2], [-0.4, 0.1], [0.2, 0.4], [-0.1, -0.3]])


def _blobs(order: list[int]) -> np.ndarray:
    """One point per entry of ``order``, near blob (0,0), (10,0) or (0,10); jitter cycles."""
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    return np.stack([centres[b] + JITTER[i % 5] for i, b in enumerate(order)])


# --- kmeans -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_kmeans_recovers_blobs_with_canonical_ids(seed):
    order = [1, 0, 2, 0, 1, 2, 2, 0, 1, 1, 0, 2, 0, 1, 2]  # 5 points per blob, blob 1 first
    assign, centres = kmeans(_blobs(order), 3, seed=seed)
    # canonical ids follow first appearance: blob 1 -> 0, blob 0 -> 1, blob 2 -> 2
    assert assign.tolist() == [{1: 0, 0: 1, 2: 2}[b] for b in order]
    assert assign.dtype == np.int64 and centres.shape == (3, 2)
    assert np.allclose(centres, [[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]], atol=0.3)


def test_kmeans_deterministic_and_k_capped_by_distinct_rows():
    x = np.random.default_rng(3).normal(size=(40, 5))
    a1, c1 = kmeans(x, 4, seed=11)
    a2, c2 = kmeans(x, 4, seed=11)
    assert np.array_equal(a1, a2) and np.array_equal(c1, c2) and len(np.unique(a1)) == 4
    dup = np.array([[1.0, 1.0], [5.0, 5.0], [1.0, 1.0], [9.0, 0.0], [5.0, 5.0], [9.0, 0.0]])
    assign, centres = kmeans(dup, 5, seed=0)
    assert assign.tolist() == [0, 1, 0, 2, 1, 2]
    assert np.array_equal(centres, [[1.0, 1.0], [5.0, 5.0], [9.0, 0.0]])
    assert kmeans(np.ones((3, 2)), 2, seed=0)[0].tolist() == [0, 0, 0]


def test_fill_empty_takes_farthest_point_of_a_shared_cluster():
    # point 3 is the farthest from its centre but alone in cluster 1, so point 2 moves instead
    dist = np.array([[0.0, 9.0, 9.0], [1.0, 9.0, 9.0], [4.0, 9.0, 9.0], [25.0, 16.0, 25.0]])
    assert sc._fill_empty(np.array([0, 0, 0, 1]), dist, 3).tolist() == [0, 0, 2, 1]


def test_kmeans_empty_cluster_is_reseeded(monkeypatch):
    # a grid case (found by search) where a Lloyd step leaves one of the 4 clusters empty
    x = np.array([[4, 4], [4, 1], [2, 0], [2, 2], [1, 4], [0, 4], [1, 0], [1, 3]], dtype=float)
    seen = []
    real = sc._fill_empty

    def spy(assign, dist, k):
        seen.append(bool((np.bincount(assign, minlength=k) == 0).any()))
        return real(assign, dist, k)

    monkeypatch.setattr(sc, "_fill_empty", spy)
    assign, centres = kmeans(x, 4, seed=0)
    assert any(seen)
    assert np.array_equal(np.bincount(assign, minlength=4) > 0, [True] * 4) and centres.shape == (4, 2)
    assert assign[0] == 0 and np.allclose(centres, [x[assign == j].mean(0) for j in range(4)])


# --- sub-category labels -----------------------------------------------------------------------------------------

def _layout_case():
    # rows 0-1 near (10,10) class 0; rows 2-3 (0,0) and 4-5 (10,0) both classes; 6-7 (0,10) class 1; 8 none
    base = [[10, 10], [10, 10], [0, 0], [0, 0], [10, 0], [10, 0], [0, 10], [0, 10], [5, 5]]
    feats = np.array(base, dtype=float) + np.vstack([JITTER, JITTER[:4]])
    labels = np.array([[1, 0], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1], [0, 1], [0, 1], [0, 0]])
    return feats, labels


def test_subcategory_labels_layout_by_hand():
    feats, labels = _layout_case()
    sub = subcategory_labels(feats, labels, k=3, seed=0)
    # class 0 rows 0-5 -> clusters 0,0,1,1,2,2; class 1 rows 2-7 -> 0,0,1,1,2,2 (offset by K=3)
    expected = np.zeros((9, 6), dtype=np.float32)
    for row, col in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (2, 3), (3, 3), (4, 4), (5, 4), (6, 5), (7, 5)]:
        expected[row, col] = 1.0
    assert sub.labels.dtype == np.float32 and sub.labels.shape == (9, 6) and sub.k == 3
    assert np.array_equal(sub.labels, expected)
    assert np.array_equal(sub.labels.sum(1), labels.sum(1))
    for c in range(2):
        block = sub.labels[:, c * 3:(c + 1) * 3]
        assert np.array_equal(block.sum(1), labels[:, c])
    assert sub.assignments.dtype == np.int64
    assert sub.assignments.tolist() == [[0, -1], [0, -1], [1, 0], [1, 0], [2, 1], [2, 1], [-1, 2], [-1, 2], [-1, -1]]
    assert sub.sizes.dtype == np.int64 and sub.sizes.tolist() == [[2, 2, 2], [2, 2, 2]]
    assert np.array_equal(sub.sizes.sum(1), labels.sum(0))


def test_subcategory_labels_absent_class_and_few_images():
    feats = np.array([[0.0, 1.0], [3.0, 0.0], [0.0, 1.0]])
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0]])  # class 1: one distinct row; class 2: none
    sub = subcategory_labels(feats, labels, k=3, seed=5)
    assert sub.sizes.tolist() == [[2, 1, 0], [2, 0, 0], [0, 0, 0]]
    assert sub.labels[:, 6:].sum() == 0 and sub.labels[:, 3].tolist() == [1.0, 0.0, 1.0]
    assert sub.labels[:, 0].tolist() == [1.0, 0.0, 1.0] and sub.labels[:, 1].tolist() == [0.0, 1.0, 0.0]


def test_subcategory_labels_seeds_each_class_with_seed_plus_c():
    x = np.random.default_rng(4).normal(size=(24, 2))
    first, second = kmeans(x, 3, seed=2)[0], kmeans(x, 3, seed=3)[0]
    assert not np.array_equal(first, second)  # the two seeds give different partitions here
    sub = subcategory_labels(x, np.ones((24, 2), np.int64), k=3, seed=2)
    assert np.array_equal(sub.assignments[:, 0], first) and np.array_equal(sub.assignments[:, 1], second)


def test_subcategory_labels_deterministic_and_validated():
    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(30, 8)), (rng.random((30, 4)) < 0.5).astype(np.int64)
    a = subcategory_labels(feats, labels, k=3, seed=2, feature_norm="l2")
    b = subcategory_labels(feats, labels, k=3, seed=2, feature_norm="l2")
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.assignments, b.assignments)
    assert a.labels.dtype == np.float32 and a.labels.shape == (30, 12)
    with pytest.raises(ValueError, match="sccam.k"):
        subcategory_labels(feats, labels, k=0, seed=0)
    with pytest.raises(ValueError):
        subcategory_labels(feats[:5], labels, k=2, seed=0)
    with pytest.raises(ValueError, match="sccam.feature_norm"):
        subcategory_labels(feats, labels, k=2, seed=0, feature_norm="l1")


# --- helpers ------------------------------------------------------------------------------------------------------

def test_normalise_features():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-2.0, 0.0]])
    out = normalise_features(x, "l2")
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
    assert np.allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0)
    assert np.array_equal(normalise_features(x, "none"), x)
    with pytest.raises(ValueError, match="sccam.feature_norm.*'cosine'"):
        normalise_features(x, "cosine")


def test_subcategory_targets_rows():
    labels = np.arange(12, dtype=np.float32).reshape(4, 3)
    sub = SubcategoryLabels(labels, np.zeros((4, 1), np.int64), 3, np.zeros((1, 3), np.int64))
    t = subcategory_targets(sub, np.array([2, 0, 2]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0], [6.0, 7.0, 8.0]]


def test_cluster_purity_by_hand():
    assert cluster_purity(np.array([0, 0, 1, 1, 1]), np.array(["a", "a", "b", "b", "a"])) == pytest.approx(0.8)
    assert cluster_purity(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert cluster_purity(np.array([2, 2, 5]), np.array([1, 1, 3])) == 1.0
    with pytest.raises(ValueError):
        cluster_purity(np.array([0, 1]), np.array([0]))
