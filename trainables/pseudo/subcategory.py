"""Sub-category labels for SC-CAM (Chang et al., CVPR 2020, "Weakly-Supervised Semantic
Segmentation via Sub-category Exploration"; the sub-category exploration step, as in the public
code's create_pseudo_label.py). Section/equation numbers are not cited: not verified here.

Per round: GAP features from the previous round's model; per parent class c, k-means (K clusters)
over the images containing c; an image's label is multi-hot over C*K slots, slot c*K + cluster per
present class. The caller adds lambda * MLSM(sub logits, y_sub) to the parent MLSM loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, D), (K, D) -> (N, K) squared Euclidean distances, clipped at 0."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _fill_empty(assign: np.ndarray, dist: np.ndarray, k: int) -> np.ndarray:
    """Give each empty cluster (ascending id) the point farthest from its own centre, taken only
    from clusters with more than one member (first index on ties, so deterministic)."""
    assign = assign.copy()
    counts = np.bincount(assign, minlength=k)
    for j in np.flatnonzero(counts == 0):
        own = np.where(counts[assign] > 1, dist[np.arange(len(assign)), assign], -np.inf)
        i = int(np.argmax(own))
        counts[assign[i]] -= 1
        assign[i], counts[j] = j, 1
    return assign


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 50, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (assignments (N,) int64 in [0, k'), centres (k', D)), k' = min(k, distinct rows).

    k-means++ seeding from ``np.random.default_rng(seed)``, then Lloyd steps until the assignments
    repeat or no centre moves by ``tol``. Ids are canonical: clusters are numbered by the first
    point they contain, so id 0 is always the cluster of point 0.

    Example:
        >>> a, c = kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, seed=0)
        >>> a.tolist(), c.ravel().round(2).tolist()
        ([0, 0, 1, 1], [0.05, 5.05])
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array, got shape {x.shape}")
    if k < 1 or iters < 1:
        raise ValueError(f"kmeans needs k >= 1 and iters >= 1, got k={k}, iters={iters}")
    k = min(int(k), len(np.unique(x, axis=0)))
    rng = np.random.default_rng(seed)
    centres = x[[int(rng.integers(len(x)))]]
    d2 = ((x - centres[0]) ** 2).sum(1)  # exact differences: copies of a centre get exactly 0
    while len(centres) < k:  # k-means++: the next centre is drawn with probability ~ D^2
        pick = x[int(rng.choice(len(x), p=d2 / d2.sum()))]
        centres, d2 = np.vstack([centres, pick]), np.minimum(d2, ((x - pick) ** 2).sum(1))
    assign = np.full(len(x), -1, dtype=np.int64)
    for _ in range(iters):
        dist = _sq_dist(x, centres)
        new = _fill_empty(dist.argmin(1).astype(np.int64), dist, k)
        if np.array_equal(new, assign):
            break
        assign = new
        moved = np.stack([x[assign == j].mean(0) for j in range(k)])
        shift = float(np.sqrt(((moved - centres) ** 2).sum(1)).max())
        centres = moved
        if shift < tol:
            break
    _, first = np.unique(assign, return_index=True)
    order = np.argsort(first)  # order[new id] = old id; its inverse maps old id -> new id
    return np.argsort(order)[assign].astype(np.int64), centres[order]


def normalise_features(x: np.ndarray, mode: str) -> np.ndarray:
    """Row-wise feature normalisation before clustering: "l2" (unit rows, eps 1e-12) or "none".

    The public SC-CAM code clusters the raw GAP features; "l2" clusters by direction instead.

    Example:
        >>> normalise_features(np.array([[3.0, 4.0]]), "l2").tolist()
        [[0.6, 0.8]]
    """
    x = np.asarray(x, dtype=np.float64)
    if mode == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if mode == "none":
        return x
    raise ValueError(f"sccam.feature_norm must be 'l2' or 'none', got {mode!r}")


@dataclass
class SubcategoryLabels:
    """One round's labels: ``labels`` (N, C*K) float32 multi-hot, ``assignments`` (N, C) int64
    (-1 where the class is absent), ``k``, ``sizes`` (C, K) int64 images per (class, cluster)."""

    labels: np.ndarray
    assignments: np.ndarray
    k: int
    sizes: np.ndarray


def subcategory_labels(
    features: np.ndarray, labels: np.ndarray, k: int, seed: int, feature_norm: str = "none", iters: int = 50
) -> SubcategoryLabels:
    """Per-class k-means over the images that carry the class (seed + c for class c); the image
    gets slot c*k + cluster for every present class c. Classes with fewer distinct images than
    k use fewer clusters; a class with no image sets no slot.

    Example:
        >>> f = np.array([[0.0], [0.1], [9.0], [9.1]])
        >>> y = np.array([[1, 0], [1, 1], [1, 0], [1, 1]])
        >>> subcategory_labels(f, y, k=2, seed=0).labels.astype(int).tolist()
        [[1, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 1]]
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if k < 1:
        raise ValueError(f"sccam.k must be >= 1, got {k}")
    if features.ndim != 2 or labels.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N, C) must agree, got {features.shape} and {labels.shape}")
    x = normalise_features(features, feature_norm)
    n, c_num = labels.shape
    out = np.zeros((n, c_num * k), dtype=np.float32)
    assignments = np.full((n, c_num), -1, dtype=np.int64)
    sizes = np.zeros((c_num, k), dtype=np.int64)
    for c in range(c_num):
        rows = np.flatnonzero(labels[:, c] > 0.5)
        if len(rows) == 0:
            continue
        cluster, _ = kmeans(x[rows], k, seed=seed + c, iters=iters)
        assignments[rows, c] = cluster
        out[rows, c * k + cluster] = 1.0
        sizes[c] = np.bincount(cluster, minlength=k)
    return SubcategoryLabels(labels=out, assignments=assignments, k=int(k), sizes=sizes)


def subcategory_targets(sub: SubcategoryLabels, index: np.ndarray) -> torch.Tensor:
    """float32 (B, C*K) sub-category targets for the dataset rows ``index`` of a batch.

    Example:
        >>> eye = np.eye(2, dtype=np.float32)
        >>> sub = SubcategoryLabels(eye, np.zeros((2, 1), np.int64), 2, np.ones((1, 2), np.int64))
        >>> subcategory_targets(sub, np.array([1])).tolist()
        [[0.0, 1.0]]
    """
    idx = np.asarray(index, dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(sub.labels[idx], dtype=np.float32))


def cluster_purity(assignments: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of images whose cluster's majority group (smallest group on ties) is their own.

    Example:
        >>> cluster_purity(np.array([0, 0, 1, 1, 1]), np.array(["a", "a", "b", "b", "a"]))
        0.8
    """
    a, g = np.asarray(assignments), np.asarray(groups)
    if a.shape != g.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"cluster_purity needs two equal non-empty 1-D arrays, got {a.shape} and {g.shape}")
    hits = 0
    for cl in np.unique(a):
        hits += int(np.unique(g[a == cl], return_counts=True)[1].max())
    return hits / len(a)
