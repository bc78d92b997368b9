"""Tests for trainables/pseudo/labels.py: reliable pseudo labels, the CRF wrapper, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.pseudo.labels import (PAD_MEAN_RGB, PseudoLabelConfig, batch_reliable_labels, crf_image, dense_crf,
                                      refine, reliable_labels)

IGN = 255


def _row(values_per_class: list[list[float]]) -> np.ndarray:
    """(C, 1, W) float32 CAMs from one row of values per class."""
    return np.array(values_per_class, dtype=np.float32)[:, None, :]


def _rgb(w: int, h: int = 1) -> np.ndarray:
    return np.zeros((h, w, 3), np.uint8)


# Class 1's CAM is 0.1, 0.2, ..., 1.0 on ten pixels; two pixels have no CAM at all.
# With crf=False the "CRF marginals" are the normalised scores [(1 - c)^alpha; c]:
#   * low alpha 4: foreground wins from c = 0.3 on (0.7^4 = 0.24 < 0.3; 0.8^4 = 0.41 > 0.2),
#   * high alpha 32: every c >= 0.1 is foreground for the CAM regions (0.9^32 = 0.034 < 0.1),
#   * c = 0 pixels: background score 1 > bg_cutoff 0.8 -> reliable background.
# crf_confidence = 0 so only the CAM pruning decides.
RAMP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "floor, percentile, expected",
    [
        # 10 values above the floor 0.05; sorted index int(10 * 0.6) = 6 -> 0.7; keep > 0.7
        (0.05, 0.6, [IGN] * 7 + [1, 1, 1] + [0, 0]),
        # index int(10 * 0.5) = 5 -> 0.6; keep > 0.6
        (0.05, 0.5, [IGN] * 6 + [1, 1, 1, 1] + [0, 0]),
        # the floor shrinks the population: 7 values > 0.35 (0.4..1.0), index int(7 * 0.5) = 3 -> 0.7
        (0.35, 0.5, [IGN] * 7 + [1, 1, 1] + [0, 0]),
        # percentile 0: only the floor applies (> 0.45); 0.1 and 0.2 are background for the
        # low-alpha map but foreground for the high-alpha one, so they stay unlabelled
        (0.45, 0.0, [IGN] * 4 + [1] * 6 + [0, 0]),
        (0.05, 0.0, [IGN] * 2 + [1] * 8 + [0, 0]),
        # percentile 1: the cut is the maximum itself, nothing is strictly above it
        (0.05, 1.0, [IGN] * 10 + [0, 0]),
    ],
)
def test_percentile_and_floor_pruning(floor, percentile, expected):
    cfg = PseudoLabelConfig(crf=False, crf_confidence=0.0, cam_floor=floor, fg_percentile=percentile)
    cams = _row([RAMP, [0.0] * len(RAMP)])  # class 2 absent (and zero)
    out = reliable_labels(_rgb(len(RAMP)), cams, np.array([1, 0]), cfg)
    assert out.dtype == np.uint8
    assert out.shape == (1, len(RAMP))
    assert out[0].tolist() == expected


def test_percentile_is_computed_per_class():
    # Two present classes on separate pixels; each keeps the pixels above its own cut.
    a = [0.2, 0.4, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    b = [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.0]
    cfg = PseudoLabelConfig(crf=False, crf_confidence=0.0, cam_floor=0.05, fg_percentile=0.4)
    out = reliable_labels(_rgb(len(a)), _row([a, b]), np.array([1, 1]), cfg)
    # class 1: 5 values, index int(5 * 0.4) = 2 -> 0.6, keep 0.8, 1.0 (0.2 is bg for the low alpha)
    # class 2: 5 values, index 2 -> 0.7, keep 0.8, 0.9
    assert out[0].tolist() == [IGN, IGN, IGN, 1, 1, IGN, IGN, IGN, 2, 2, 0]


@pytest.mark.parametrize(
    "alpha_high, cutoff, expected",
    [
        # (1 - c)^2 for c = 0, .1, .2, .25, .3, .35: 1, .81, .64, .5625, .49, .4225 -> > 0.5 for the first four
        (2.0, 0.5, [0, 0, 0, 0, IGN, IGN, IGN]),
        # > 0.7: 1, .81 only
        (2.0, 0.7, [0, 0, IGN, IGN, IGN, IGN, IGN]),
        # alpha 1: 1 - c > 0.5 for all c < 0.5
        (1.0, 0.5, [0, 0, 0, 0, 0, 0, IGN]),
    ],
)
def test_background_cutoff(alpha_high, cutoff, expected):
    # The last pixel (c = 1) is the class's only CAM pixel: its own percentile cut is 1.0, and
    # nothing is strictly above it, so it is unreliable whatever the background cutoff.
    cams = _row([[0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 1.0]])
    cfg = PseudoLabelConfig(crf=False, crf_confidence=0.0, alpha_high=alpha_high, bg_cutoff=cutoff)
    out = reliable_labels(_rgb(7), cams, np.array([1]), cfg)
    assert out[0].tolist() == expected


@pytest.mark.parametrize(
    "confidence, expected",
    [
        # c:      0    .1    .2    .4    .5    1.0
        # conf:   1   .890  .762  .755  .889  1.0
        (0.8, [0, 0, IGN, IGN, 1, 1]),
        (0.7, [0, 0, 0, 1, 1, 1]),
        (0.95, [0, IGN, IGN, IGN, IGN, 1]),
    ],
)
def test_crf_confidence_cutoff(confidence, expected):
    # bg confidence = (1-c)^2 / ((1-c)^2 + c) from the high-alpha (2) map,
    # fg confidence = c / ((1-c)^4 + c) from the low-alpha (4) map.
    cams = _row([[0.0, 0.1, 0.2, 0.4, 0.5, 1.0]])
    cfg = PseudoLabelConfig(crf=False, crf_confidence=confidence, alpha_low=4.0, alpha_high=2.0,
                            bg_cutoff=0.0, cam_floor=0.05, fg_percentile=0.0)
    out = reliable_labels(_rgb(6), cams, np.array([1]), cfg)
    assert out[0].tolist() == expected


def test_rrm_defaults_hand_case():
    # Defaults (alpha 4/32, confidence 0.8, floor 0.1, percentile 0.6, cutoff 0.8) without CRF.
    cams = _row([RAMP])
    out = reliable_labels(_rgb(len(RAMP)), cams, np.array([1]), PseudoLabelConfig(crf=False))
    # Population strictly above the floor 0.1: 0.2..1.0 (9 values), index int(9 * 0.6) = 5 -> 0.7: keep
    # 0.8, 0.9, 1.0, whose low-alpha confidence c / (c + (1-c)^4) is >= 0.8 / 0.8016 > 0.8.
    assert out[0].tolist() == [IGN] * 7 + [1, 1, 1] + [0, 0]


@pytest.mark.parametrize("crf", [False, True])
def test_image_without_present_class_is_all_background(crf):
    cams = np.random.default_rng(0).random((3, 5, 6)).astype(np.float32)  # CAMs of absent classes
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3)).astype(np.uint8)
    out = reliable_labels(rgb, cams, np.zeros(3), PseudoLabelConfig(crf=crf))
    assert out.shape == (5, 6)
    assert (out == 0).all()


def test_class_with_nothing_above_the_floor_gives_no_reliable_pixel():
    # CAM 0.3 everywhere: foreground for both alphas, but the floor 0.5 leaves no value to keep.
    cams = np.full((1, 3, 4), 0.3, np.float32)
    cfg = PseudoLabelConfig(crf=False, crf_confidence=0.0, cam_floor=0.5)
    out = reliable_labels(_rgb(4, 3), cams, np.array([1]), cfg)
    assert (out == IGN).all()


def test_present_class_with_zero_cam_is_background():
    cams = np.zeros((2, 3, 3), np.float32)
    out = reliable_labels(_rgb(3, 3), cams, np.array([1, 1]), PseudoLabelConfig(crf=False))
    assert (out == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("crf", [False, True])
def test_random_cams_only_present_classes_background_or_ignore(seed, crf):
    rng = np.random.default_rng(seed)
    c, h, w = 5, 8, 9
    cams = rng.random((c, h, w)).astype(np.float32) ** 2
    cams[:, :, : w // 3] *= 0.05  # a low-CAM region, so some background is reliable
    present = np.array([1, 0, 1, 0, 1]) if seed != 2 else np.array([0, 1, 0, 0, 0])
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    cfg = PseudoLabelConfig(crf=crf, crf_iterations=3, fg_percentile=0.3, crf_confidence=0.5)
    out = reliable_labels(rgb, cams, present, cfg)
    assert out.dtype == np.uint8 and out.shape == (h, w)
    allowed = {0, IGN} | {k + 1 for k in np.flatnonzero(present)}
    assert set(np.unique(out).tolist()) <= allowed
    assert (out == 0).any()  # the low-CAM region yields reliable background


def _random_probs(rng, k, h, w):
    p = rng.random((k, h, w)).astype(np.float32) + 0.05
    return p / p.sum(axis=0, keepdims=True)


def test_dense_crf_matches_direct_pydensecrf_call():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(0)
    k, h, w = 3, 7, 9
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    probs = _random_probs(rng, k, h, w)
    cfg = PseudoLabelConfig(crf_gauss_sxy=2.0, crf_gauss_compat=4.0, crf_bilateral_sxy=30.0,
                            crf_bilateral_srgb=7.0, crf_bilateral_compat=6.0, crf_iterations=4)

    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=2.0, compat=4.0)
    d.addPairwiseBilateral(sxy=30.0, srgb=7.0, rgbim=np.ascontiguousarray(rgb), compat=6.0)
    expected = np.array(d.inference(4), dtype=np.float32).reshape(k, h, w)

    got = dense_crf(rgb, probs, cfg)
    assert got.shape == (k, h, w)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=0), np.ones((h, w)), atol=1e-4)
    assert (got >= 0).all()
    # the pairwise terms actually act: the output is not the input
    assert np.abs(got - probs).max() > 1e-3


def test_dense_crf_is_invariant_to_per_pixel_scaling_while_nothing_is_clipped():
    # Rescaling a pixel's scores shifts its unary by a constant: the marginals do not change as
    # long as every score stays inside pydensecrf's clip [1e-5, 1]; normalised input never clips.
    rng = np.random.default_rng(1)
    k, h, w = 2, 5, 6
    rgb = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    probs = _random_probs(rng, k, h, w)
    scale = rng.uniform(0.2, 1.0, (1, h, w)).astype(np.float32)
    cfg = PseudoLabelConfig(crf_iterations=3)
    assert cfg.crf_input == "scores"
    np.testing.assert_allclose(dense_crf(rgb, probs * scale, cfg), dense_crf(rgb, probs, cfg), atol=1e-4)
    cfg = PseudoLabelConfig(crf_iterations=3, crf_input="normalised")
    wide = rng.uniform(1e-7, 3.0, (1, h, w)).astype(np.float32)
    np.testing.assert_allclose(dense_crf(rgb, probs * wide, cfg), dense_crf(rgb, probs, cfg), atol=1e-4)


def test_dense_crf_takes_the_scores_as_given_below_the_clip():
    # RRM passes [bg; CAM] to unary_from_softmax as they are (tool/myTool.py l.11-13, imutils.py
    # l.354). A one-pixel image whose scores (2e-6, 1e-6) both fall under the 1e-5 clip gets a flat
    # unary: the marginal is uniform. Normalised first, the same pixel is (2/3, 1/3) and keeps it.
    rgb = np.zeros((1, 1, 3), np.uint8)
    scores = np.array([2e-6, 1e-6], np.float32).reshape(2, 1, 1)
    np.testing.assert_allclose(dense_crf(rgb, scores, PseudoLabelConfig())[:, 0, 0], [0.5, 0.5], atol=1e-6)
    normalised = dense_crf(rgb, scores, PseudoLabelConfig(crf_input="normalised"))[:, 0, 0]
    assert normalised[0] > 0.6
    # refine() hands the dense CRF the maps as they are; PAR still gets them normalised.
    maps = torch.from_numpy(scores)[None]
    torch.testing.assert_close(refine(rgb[None], [maps], PseudoLabelConfig())[0][0, :, 0, 0],
                               torch.tensor([0.5, 0.5]), atol=1e-6, rtol=0)
    par = refine(rgb[None], [maps], PseudoLabelConfig(refiner="par", par_scale=1.0))[0][0, :, 0, 0]
    torch.testing.assert_close(par, torch.tensor([2 / 3, 1 / 3]), atol=1e-5, rtol=0)


def test_batch_reliable_labels_matches_per_image_and_marks_padding():
    rng = np.random.default_rng(3)
    b, c, h, w = 2, 3, 4, 5
    cams = torch.from_numpy(rng.random((b, c, h, w)).astype(np.float32))
    cams[:, :, :, :2] = 0.0  # a zero-CAM strip: reliable background there
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rgb = rng.integers(0, 256, (b, h, w, 3)).astype(np.uint8)
    cfg = PseudoLabelConfig(crf=False, crf_confidence=0.0, fg_percentile=0.2)
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[0, 0, :] = False
    valid[1, :, 0] = False

    out = batch_reliable_labels(rgb, cams, labels, cfg, valid=valid)
    assert out.dtype == torch.int64 and out.shape == (b, h, w)
    unpadded = batch_reliable_labels(rgb, cams, labels, cfg)
    for i in range(b):
        ref = reliable_labels(rgb[i], cams[i].numpy(), labels[i].numpy(), cfg)
        np.testing.assert_array_equal(unpadded[i].numpy(), ref)
    # the padding was background before the mask: the mask is what turns it into 255
    assert (unpadded[0, 0, :2] == 0).all() and (unpadded[1, :, 0] == 0).all()
    assert (out[~valid] == IGN).all()
    torch.testing.assert_close(out[valid], unpadded[valid])


def test_padding_keeps_its_labels_with_the_label_switch():
    # RRM labels the whole crop, padding included, and trains CE on it (myTool.py l.79-102);
    # pseudo.padding: label reproduces that, the default ignores padding (not image).
    rng = np.random.default_rng(3)
    cams = torch.from_numpy(rng.random((1, 2, 4, 5)).astype(np.float32))
    cams[..., :2] = 0.0
    labels, rgb = torch.tensor([[1.0, 1.0]]), rng.integers(0, 256, (1, 4, 5, 3)).astype(np.uint8)
    valid = torch.ones(1, 4, 5, dtype=torch.bool)
    valid[0, :, :2] = False
    for crf in (False, True):
        cfg = PseudoLabelConfig(crf=crf, crf_iterations=2, crf_confidence=0.0, fg_percentile=0.0)
        assert (batch_reliable_labels(rgb, cams, labels, cfg, valid)[~valid] == IGN).all()
        kept = batch_reliable_labels(rgb, cams, labels, cfg.model_copy(update={"padding": "label"}), valid)
        assert (kept[~valid] == 0).all()  # zero CAM: reliable background, as RRM would train it


def test_the_crf_sees_padding_in_the_mean_colour():
    # RRM pads the normalised crop with 0, i.e. the ImageNet mean once turned back into uint8
    # (myTool.py l.184, l.217-219); the CRF of the real pixels beside it sees that colour.
    assert PAD_MEAN_RGB.tolist() == [123, 116, 103]
    rng = np.random.default_rng(7)
    rgb = (np.array([120, 115, 100]) + rng.integers(-8, 9, (1, 8, 8, 3))).astype(np.uint8)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, :2] = False
    rgb[~valid.numpy()] = 0  # the batch's padding is black
    filled = crf_image(rgb, valid, "mean")
    assert (filled[0, :2] == PAD_MEAN_RGB).all() and np.array_equal(filled[0, 2:], rgb[0, 2:])
    assert crf_image(rgb, valid, "black") is rgb
    cams = torch.from_numpy(rng.random((1, 2, 8, 8)).astype(np.float32) ** 2)
    labels = torch.tensor([[1.0, 1.0]])
    cfg = PseudoLabelConfig(crf_iterations=3, crf_confidence=0.0, fg_percentile=0.0)
    _, conf = batch_reliable_labels(rgb, cams, labels, cfg, valid, return_confidence=True)
    _, filled_conf = batch_reliable_labels(filled, cams, labels, cfg, return_confidence=True)
    _, black = batch_reliable_labels(rgb, cams, labels, cfg.model_copy(update={"pad_colour": "black"}), valid,
                                     return_confidence=True)
    torch.testing.assert_close(conf[valid], filled_conf[valid])
    assert (conf[valid] - black[valid]).abs().max() > 1e-3


def test_confidence_is_the_crf_marginal_of_each_reliable_label():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    cams = np.zeros((3, 12, 12), np.float32)
    cams[0, 2:7, 2:7] = 0.95
    cams[2, 6:11, 6:11] = 0.9
    cfg = PseudoLabelConfig(crf=False, fg_percentile=0.0, crf_confidence=0.3, bg_cutoff=0.1)
    label, conf = reliable_labels(rgb, cams, np.array([1, 0, 1]), cfg, return_confidence=True)
    assert np.array_equal(label, reliable_labels(rgb, cams, np.array([1, 0, 1]), cfg))
    assert (conf[label == 255] == 0).all()
    kept = label != 255
    assert kept.any() and (conf[kept] >= 0.3).all() and (conf[kept] <= 1.0).all()
    # Without a CRF the marginals are the normalised [bg_high; CAMs] for bg, [bg_low; CAMs] for fg.
    y, x = 3, 3  # inside class 1's square
    assert label[y, x] == 1
    bg_low = (1 - 0.95) ** cfg.alpha_low
    assert conf[y, x] == pytest.approx(0.95 / (0.95 + bg_low), rel=1e-4)


def test_pool_gives_the_serial_labels_and_confidence():
    # Real CRFs on real texture crops, four images with different class sets (one with none).
    from skimage import data as skdata

    from trainables.pseudo.labels import PseudoLabeler

    photo = skdata.astronaut()[::8, ::8][:40, :48]
    rgb = np.stack([photo, photo[::-1], photo[:, ::-1], photo[::-1, ::-1]]).copy()
    rng = np.random.default_rng(11)
    cams = torch.from_numpy(rng.random((4, 3, 40, 48)).astype(np.float32) ** 3)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    valid = torch.ones(4, 40, 48, dtype=torch.bool)
    valid[2, :5] = False
    cfg = PseudoLabelConfig(crf_iterations=3, fg_percentile=0.3, crf_confidence=0.5)
    serial, serial_conf = batch_reliable_labels(rgb, cams, labels, cfg, valid, return_confidence=True)
    with PseudoLabeler(cfg, workers=2) as pool:
        pending = [pool.submit(rgb, cams, labels, valid, return_confidence=True) for _ in range(2)]
        results = [p.result() for p in pending]
    for pooled, pooled_conf in results:
        torch.testing.assert_close(pooled, serial)
        torch.testing.assert_close(pooled_conf, serial_conf)
    # labels are class indices of the full label set, not of the present-class stack
    assert set(torch.unique(serial[0]).tolist()) <= {0, 1, 3, 255}
    assert set(torch.unique(serial[1]).tolist()) <= {0, 2, 255}
    assert set(torch.unique(serial[3]).tolist()) <= {0, 255}
    assert (serial[2, :5] == 255).all() and (serial_conf[2, :5] == 0).all()
    assert (serial[0] == 3).any() and (serial[1] == 2).any()
