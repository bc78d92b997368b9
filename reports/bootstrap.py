"""Is a difference between two methods larger than the noise? A paired bootstrap over the val
images (and over seeds where there are several) of the per-class IoU and mIoU differences, from
the per-image confusion matrices every evaluation records (``review/confusion.npz``).

One replicate draws N images with replacement, the same images for both sides (the pairing:
both methods are scored on one resampled val set), and, for a side with several seed runs,
draws its seeds with replacement too. A side's IoU in the replicate is the mean over its drawn
seeds of the IoU of the confusion matrix summed over the drawn images (the VOC protocol of
trainables/evaluation/metrics.py: one matrix per split, a class absent from ground truth and
prediction has no IoU and is left out of the mean). The 95 % interval is the 2.5th to 97.5th
percentile of the replicates' differences (the percentile bootstrap); a difference counts as
resolved only when that interval excludes 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95


def batched_iou(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU (..., n) and mIoU (...) of a stack of confusion matrices (..., n, n); NaN for
    a class with no IoU, mIoU 0 when no class has one.

    Example:
        >>> iou, miou = batched_iou(np.array([[[3, 1], [0, 2]], [[1, 0], [0, 0]]]))
        >>> iou.round(3).tolist(), miou.round(3).tolist()
        ([[0.75, 0.667], [1.0, nan]], [0.708, 1.0])
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(axis=-1) + conf.sum(axis=-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    some = np.isfinite(iou).any(axis=-1)
    with np.errstate(invalid="ignore"):
        miou = np.where(some, np.nanmean(np.where(some[..., None], iou, 0.0), axis=-1), 0.0)
    return iou, miou


@dataclass
class Difference:
    """A − B per class (``classes``) and for mIoU: the estimate on all images (mean over seeds),
    the interval's ends, and whether the interval excludes 0."""

    classes: list[str]
    estimate: np.ndarray  # (n + 1,): the classes, then mIoU
    low: np.ndarray
    high: np.ndarray

    @property
    def resolved(self) -> np.ndarray:
        """True where the interval lies wholly above or below 0."""
        return (self.low > 0) | (self.high < 0)

    def rows(self) -> list[dict]:
        """One dict per class and for mIoU: class_name, delta, low, high, resolved."""
        names = [*self.classes, "mIoU"]
        return [{"class_name": c, "delta": float(e), "low": float(lo), "high": float(hi), "resolved": bool(r)}
                for c, e, lo, hi, r in zip(names, self.estimate, self.low, self.high, self.resolved)]


def _side(conf: np.ndarray, weights: np.ndarray, seed_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A side's per-class IoU and mIoU in every replicate: (R, n) and (R,). ``conf`` (S, N, n, n),
    ``weights`` (R, N) image draws, ``seed_weights`` (R, S) seed draws (each row sums to 1)."""
    summed = np.einsum("rn,sncd->rscd", weights, conf, optimize=True)  # (R, S, n, n)
    iou, miou = batched_iou(summed)
    with np.errstate(invalid="ignore"):
        # A class without IoU in one seed's matrix is left out of that class's mean over seeds.
        w = np.where(np.isfinite(iou), seed_weights[..., None], 0.0)
        per_class = np.where(w.sum(1) > 0, np.nansum(np.nan_to_num(iou) * w, axis=1) / w.sum(1), np.nan)
    return per_class, (miou * seed_weights).sum(axis=1)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, classes: list[str], replicates: int = REPLICATES,
                     seed: int = 0, level: float = LEVEL) -> Difference:
    """The difference A − B with its interval. ``a`` and ``b`` are per-image confusion matrices,
    (N, n, n) for one run or (S, N, n, n) for S seed runs, rows in the same image order.

    Example:
        >>> conf = np.zeros((4, 2, 2), dtype=int); conf[:, 0, 0] = conf[:, 1, 1] = 5
        >>> d = paired_bootstrap(conf, conf, ["bg", "x"], replicates=100)
        >>> d.estimate.tolist(), d.low.tolist(), d.high.tolist(), d.resolved.tolist()
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [False, False, False])
    """
    a, b = (np.asarray(x, dtype=np.int64) for x in (a, b))
    a, b = (x[None] if x.ndim == 3 else x for x in (a, b))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sides cover other images or classes: {a.shape[1:]} vs {b.shape[1:]}")
    rng = np.random.default_rng(seed)
    n_img = a.shape[1]
    weights = np.stack([np.bincount(rng.integers(n_img, size=n_img), minlength=n_img) for _ in range(replicates)])
    sides = []
    for x in (a, b):
        s = len(x)
        draws = np.stack([np.bincount(rng.integers(s, size=s), minlength=s) for _ in range(replicates)]) / s
        sides.append(_side(x, weights.astype(np.float64), draws))
    (pa, ma), (pb, mb) = sides
    diff = np.concatenate([pa - pb, (ma - mb)[:, None]], axis=1)
    everything = np.ones((1, n_img))
    (ea, eam), (eb, ebm) = (_side(x, everything, np.full((1, len(x)), 1 / len(x))) for x in (a, b))
    estimate = np.concatenate([ea - eb, (eam - ebm)[:, None]], axis=1)[0]
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # a class with no IoU on either side has no interval (NaN)
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(diff, [tail, 100 - tail], axis=0)
    return Difference(list(classes), estimate, low, high)
