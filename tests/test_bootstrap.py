"""The paired bootstrap of reports/bootstrap.py on hand-made per-image confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from reports.bootstrap import batched_iou, paired_bootstrap
from trainables.evaluation.metrics import mean_iou, per_class_iou

CLASSES = ["background", "a", "b"]


def _images(right: np.ndarray, size: int = 100) -> np.ndarray:
    """Per-image confusions (N, 3, 3): image i has ``size`` pixels of class 1 + i % 2, of which
    ``right[i]`` are predicted right and the rest as background; plus 50 background pixels."""
    conf = np.zeros((len(right), 3, 3), dtype=np.int64)
    for i, r in enumerate(right):
        c = 1 + i % 2
        conf[i, c, c], conf[i, c, 0], conf[i, 0, 0] = r, size - r, 50
    return conf


def test_batched_iou_is_the_metrics_module_iou():
    rng = np.random.default_rng(0)
    confs = rng.integers(0, 20, size=(5, 4, 4))
    confs[1, 2, :] = confs[1, :, 2] = 0  # a class with no IoU
    iou, miou = batched_iou(confs)
    for c, i, m in zip(confs, iou, miou):
        np.testing.assert_allclose(i, per_class_iou(c))
        assert m == pytest.approx(mean_iou(c))


def test_identical_predictions_give_a_zero_width_interval_at_zero():
    conf = _images(np.random.default_rng(1).integers(20, 90, size=30))
    d = paired_bootstrap(conf, conf.copy(), CLASSES, replicates=300)
    assert (d.estimate == 0).all() and (d.low == 0).all() and (d.high == 0).all() and not d.resolved.any()


def test_a_method_better_on_every_image_has_an_interval_above_zero():
    right = np.random.default_rng(2).integers(20, 80, size=30)
    better, worse = _images(right + 10), _images(right)
    d = paired_bootstrap(better, worse, CLASSES, replicates=500)
    assert (d.low[1:] > 0).all() and d.resolved[1:].all()  # classes a, b and mIoU
    # The estimate is the plain difference on all images.
    assert d.estimate[-1] == pytest.approx(mean_iou(better.sum(0)) - mean_iou(worse.sum(0)))
    reverse = paired_bootstrap(worse, better, CLASSES, replicates=500)
    assert (reverse.high[1:] < 0).all()


def test_a_small_noisy_difference_is_not_resolved():
    rng = np.random.default_rng(3)
    right = rng.integers(20, 80, size=40)
    noisy = np.clip(right + rng.integers(-30, 31, size=40) + 1, 0, 100)
    d = paired_bootstrap(_images(noisy), _images(right), CLASSES, replicates=500)
    assert d.low[-1] < 0 < d.high[-1] and not d.resolved[-1]


def test_the_bootstrap_is_deterministic_under_a_seed():
    rng = np.random.default_rng(4)
    a, b = _images(rng.integers(20, 80, size=25)), _images(rng.integers(20, 80, size=25))
    one, two = paired_bootstrap(a, b, CLASSES, seed=7), paired_bootstrap(a, b, CLASSES, seed=7)
    np.testing.assert_array_equal(one.low, two.low)
    np.testing.assert_array_equal(one.high, two.high)
    assert not np.array_equal(one.low, paired_bootstrap(a, b, CLASSES, seed=8).low)


def test_seed_spread_widens_the_interval():
    """Two seed runs that disagree: resampling the seeds widens the mIoU interval beyond what the
    images alone give, and the estimate is the mean over seeds."""
    rng = np.random.default_rng(5)
    right = rng.integers(30, 70, size=40)
    base = _images(right)
    seeds = np.stack([_images(right + 5), _images(np.clip(right + 25, 0, 100))])
    one_seed = paired_bootstrap(seeds[0], base, CLASSES, replicates=800)
    both = paired_bootstrap(seeds, base, CLASSES, replicates=800)
    assert both.high[-1] - both.low[-1] > one_seed.high[-1] - one_seed.low[-1]
    expect = np.mean([mean_iou(s.sum(0)) for s in seeds]) - mean_iou(base.sum(0))
    assert both.estimate[-1] == pytest.approx(expect)


def test_sides_over_other_images_are_refused():
    with pytest.raises(ValueError, match="other images"):
        paired_bootstrap(_images(np.arange(5)), _images(np.arange(6)), CLASSES)
