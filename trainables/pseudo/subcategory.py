"""Sub-category labels for SC-CAM (Chang et al., CVPR 2020, "Weakly-Supervised Semantic
Segmentation via Sub-category Exploration"; the sub-category exploration step, as in the public
code's create_pseudo_label.py). Section/equation numbers are not cited: not verified here.

Per round: GAP features from the previous round's model; per parent class c, scikit-learn's
KMeans (K clusters) over the images containing c, with the code's arguments; an image's label is
multi-hot over C*K slots, slot c*K + cluster per present class. The caller adds
lambda * MLSM(sub logits, y_sub) to the parent MLSM loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits


def kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 10, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (assignments (N,) int64 in [0, k'), centres (k', D)), k' = min(k, distinct rows).

    scikit-learn's ``KMeans`` as SC-CAM's create_pseudo_label.py:185 calls it:
    ``KMeans(n_clusters=k, random_state=seed, max_iter=300)`` with the library's other defaults
    of the time: k-means++ seeding, the lowest-inertia of ``n_init`` = 10 runs, Lloyd steps until
    the labels repeat or the centres move less than tol = 1e-4 x the mean feature variance.
    ``n_init`` is passed explicitly because scikit-learn >= 1.4 defaults to a single run. Cluster
    ids are scikit-learn's, as the code keeps them. Float32 input is clustered in float32, as the
    code's features are.

    Example:
        >>> a, c = kmeans(np.array([[0.0], [0.1], [5.0], [5.1]]), 2, seed=0)
        >>> bool(a[0] == a[1] != a[2] == a[3]), sorted(c.ravel().round(2).tolist())
        (True, [0.05, 5.05])
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) array, got shape {x.shape}")
    if k < 1 or n_init < 1 or max_iter < 1:
        raise ValueError(f"kmeans needs k, n_init and max_iter >= 1, got k={k}, n_init={n_init}, max_iter={max_iter}")
    # KMeans refuses more clusters than points and warns for more than distinct points; the code
    # never meets either on VOC, small data sets here do.
    k = min(int(k), len(np.unique(x, axis=0)))
    fit = KMeans(n_clusters=k, init="k-means++", n_init=int(n_init), max_iter=int(max_iter), tol=1e-4,
                 random_state=int(seed))
    # One OpenMP thread: KMeans adds its threads' partial centre sums in the order the threads
    # finish, so with several threads the last bits (and a tied assignment) can vary between runs.
    with threadpool_limits(limits=1, user_api="openmp"):
        fit.fit(x)
    return fit.labels_.astype(np.int64), fit.cluster_centers_


def normalise_features(x: np.ndarray, mode: str) -> np.ndarray:
    """Row-wise feature normalisation before clustering: "l2" (unit rows, eps 1e-12) or "none";
    float input keeps its dtype, other input becomes float64.

    The public SC-CAM code clusters the raw GAP features; "l2" clusters by direction instead.

    Example:
        >>> normalise_features(np.array([[3.0, 4.0]]), "l2").tolist()
        [[0.6, 0.8]]
    """
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    if mode == "l2":
        x64 = x.astype(np.float64)
        return (x64 / np.maximum(np.linalg.norm(x64, axis=1, keepdims=True), 1e-12)).astype(dtype)
    if mode == "none":
        return x.astype(dtype, copy=False)
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
    features: np.ndarray, labels: np.ndarray, k: int, seed: int, feature_norm: str = "none",
    n_init: int = 10, max_iter: int = 300,
) -> SubcategoryLabels:
    """Per-class :func:`kmeans` over the images that carry the class, every class with the same
    ``seed`` (the code's random_state=0 for every class, create_pseudo_label.py:185); the image
    gets slot c*k + cluster for every present class c. Classes with fewer distinct images than
    k use fewer clusters; a class with no image sets no slot.

    Example:
        >>> f = np.array([[0.0], [0.1], [9.0], [9.1]])
        >>> y = np.array([[1, 0], [1, 1], [1, 0], [1, 1]])
        >>> subcategory_labels(f, y, k=2, seed=0).labels.astype(int).tolist()  # ids: KMeans's
        [[0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0], [1, 0, 1, 0]]
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
        cluster, _ = kmeans(x[rows], k, seed=seed, n_init=n_init, max_iter=max_iter)
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
