"""Reliable pseudo labels from CAMs (docs/single_stage.md §2, after RRM's ``compute_seg_label``).

Two score maps [bg; CAMs of present classes] with a low and a high background exponent alpha
are refined by dense CRFs (or used as they are with ``crf=False``). Foreground comes from the
low-alpha map (conservative foreground), background from the high-alpha map (conservative
background). A pixel stays labelled only if the CRF is confident and its CAM survives the
per-class floor + percentile pruning (foreground) or the background cutoff; the rest is 255.
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.dataset import IGNORE_INDEX
from trainables.settings.sections import CrfSettings, PseudoLabelConfig


def dense_crf(rgb: np.ndarray, probs: np.ndarray, cfg: CrfSettings) -> np.ndarray:
    """Mean-field dense CRF (pydensecrf) over (K, H, W) probabilities of an (H, W, 3) uint8 image.

    Returns the (K, H, W) marginals. The probabilities are renormalised per pixel first: that
    shifts each pixel's unary by a constant, which leaves the CRF's output unchanged, and lets
    unnormalised [bg; CAM] scores be passed as RRM does.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    p = probs / np.maximum(probs.sum(axis=0, keepdims=True), 1e-12)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p.astype(np.float32))))
    d.addPairwiseGaussian(sxy=cfg.crf_gauss_sxy, compat=cfg.crf_gauss_compat)
    d.addPairwiseBilateral(sxy=cfg.crf_bilateral_sxy, srgb=cfg.crf_bilateral_srgb,
                           rgbim=np.ascontiguousarray(rgb, dtype=np.uint8), compat=cfg.crf_bilateral_compat)
    q = np.asarray(d.inference(int(cfg.crf_iterations)), dtype=np.float32)
    return q.reshape(k, h, w)


def _scores(cams: np.ndarray, alpha: float) -> np.ndarray:
    """[bg; cams] with bg = (1 - max CAM) ** alpha (docs/single_stage.md §1)."""
    bg = np.power(np.clip(1.0 - cams.max(axis=0, initial=0.0), 0.0, 1.0), alpha)
    return np.concatenate([bg[None], cams], axis=0)


def _refine(rgb: np.ndarray, scores: np.ndarray, cfg: PseudoLabelConfig) -> np.ndarray:
    if cfg.crf and scores.shape[0] > 1:
        return dense_crf(rgb, scores, cfg)
    # Without a CRF the normalised scores stand in for its marginals (this project's choice).
    return scores / np.maximum(scores.sum(axis=0, keepdims=True), 1e-12)


def reliable_labels(rgb: np.ndarray, cams: np.ndarray, present: np.ndarray,
                    cfg: PseudoLabelConfig, return_confidence: bool = False):
    """Reliable pseudo label (H, W) uint8 of one image: class index (0 = background) or 255.

    ``cams`` is (C_fg, H, W) normalised CAMs, ``present`` the (C_fg,) image label.
    Steps follow docs/single_stage.md §2; comments give the step numbers. With ``return_confidence`` the CRF
    marginal of each pixel's label (§2.3: background from the high-alpha CRF, foreground from the
    low-alpha one) comes back too, as a (H, W) float32 map (the affinity loss's "crf" source).

    Example:
        >>> cams = np.zeros((2, 1, 4), np.float32); cams[0, 0, :2] = [1.0, 0.9]
        >>> cfg = PseudoLabelConfig(crf=False, fg_percentile=0.0)
        >>> reliable_labels(np.zeros((1, 4, 3), np.uint8), cams, np.array([1, 0]), cfg).tolist()
        [[1, 1, 0, 0]]
    """
    classes = np.flatnonzero(np.asarray(present) > 0.5)
    h, w = cams.shape[-2:]
    sub = cams[classes].astype(np.float32)  # (K-1, H, W): present classes only
    to_class = np.concatenate([[0], classes + 1])  # stack index -> class index

    # §2.1: two refinements with a low and a high alpha.
    scores_high = _scores(sub, cfg.alpha_high)
    prob_low = _refine(rgb, _scores(sub, cfg.alpha_low), cfg)
    prob_high = _refine(rgb, scores_high, cfg)
    arg_low = prob_low.argmax(axis=0)
    arg_high = prob_high.argmax(axis=0)

    # §2.2: foreground from the low-alpha CRF, background where the high-alpha CRF says so.
    label = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    fg = arg_low > 0
    label[fg] = to_class[arg_low[fg]]
    label[arg_high == 0] = 0

    # §2.3: CRF confidence, bg probability from the high-alpha CRF, fg from the low-alpha one.
    confidence = np.concatenate([prob_high[:1], prob_low[1:]], axis=0).max(axis=0)
    unsure = confidence < cfg.crf_confidence

    # §2.4-2.5: CAM pruning. RRM computes regions from argmax([bg_high; CAMs]).
    sure = _surviving_cams(sub, scores_high, arg_low, cfg)

    label[unsure | ~sure] = IGNORE_INDEX
    if return_confidence:
        return label, _label_confidence(label, prob_low, prob_high, to_class)
    return label


def _surviving_cams(sub: np.ndarray, scores_high: np.ndarray, arg_low: np.ndarray,
                    cfg: PseudoLabelConfig) -> np.ndarray:
    """(H, W) bool: pixels whose CAM survives the class's floor + percentile cut, or the background cutoff."""
    h, w = scores_high.shape[-2:]
    cam_arg = scores_high.argmax(axis=0)
    sure = np.zeros((h, w), dtype=bool)
    for k in range(1, len(sub) + 1):
        if not (arg_low == k).any():
            continue  # RRM prunes only classes the low-alpha CRF kept
        cam_k = np.where(cam_arg == k, sub[k - 1], 0.0)
        values = np.sort(cam_k[cam_k > cfg.cam_floor])
        if values.size == 0:
            continue  # §2.6 guard: nothing above the floor, so no reliable pixel of this class
        cut = values[min(int(values.size * cfg.fg_percentile), values.size - 1)]
        # Strictly above the cut, as RRM; with p = 0 the floor still applies.
        sure |= cam_k > max(cut if cfg.fg_percentile > 0 else -np.inf, cfg.cam_floor)
    sure |= (cam_arg == 0) & (scores_high[0] > cfg.bg_cutoff)
    return sure


def _label_confidence(label: np.ndarray, prob_low: np.ndarray, prob_high: np.ndarray,
                      to_class: np.ndarray) -> np.ndarray:
    """(H, W) float32: the CRF marginal of each pixel's label (§2.3 sources), 0 where it is 255."""
    marg = np.concatenate([prob_high[:1], prob_low[1:]], axis=0)
    stack_of = np.zeros(256, dtype=np.int64)  # class index -> stack index (255 -> 0)
    stack_of[to_class] = np.arange(len(to_class))
    conf = np.take_along_axis(marg, stack_of[label][None], axis=0)[0].astype(np.float32)
    conf[label == IGNORE_INDEX] = 0.0
    return conf


def _label_image(rgb: np.ndarray, cams: np.ndarray, classes: np.ndarray, cfg: PseudoLabelConfig,
                 with_confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's task: ``cams`` holds the present classes only (``classes`` their indices), so a
    worker receives a few maps instead of all C. Labels come back in class indices."""
    out = reliable_labels(rgb, cams, np.ones(len(classes)), cfg, return_confidence=with_confidence)
    label, conf = out if with_confidence else (out, None)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # stack index -> class index
    lut[: len(classes) + 1] = np.concatenate([[0], np.asarray(classes) + 1])
    return lut[label], conf


class PendingLabels:
    """Pseudo labels of one batch being computed; :meth:`result` waits for them."""

    def __init__(self, parts: list, valid: torch.Tensor | None):
        self._parts = parts  # per image: (label, conf) or a Future of it
        self._valid = valid

    def result(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W) int64 labels (255 ignored, padding always 255) and, when asked for at submit,
        the (B, H, W) float CRF confidence of each reliable label (0 elsewhere), on ``device``."""
        outs = [p.result() if hasattr(p, "result") else p for p in self._parts]
        labels = torch.from_numpy(np.stack([o[0] for o in outs]).astype(np.int64))
        if self._valid is not None:
            labels[~self._valid.cpu()] = IGNORE_INDEX
        conf = None
        if outs[0][1] is not None:
            conf = torch.from_numpy(np.stack([o[1] for o in outs]))
            conf[labels == IGNORE_INDEX] = 0.0
            conf = conf.to(device)
        return labels.to(device), conf


class PseudoLabeler:
    """Reliable pseudo labels for batches, per image in a process pool (``workers`` > 0) or in
    the calling process (``workers`` = 0, serially, as RRM does).

    :meth:`submit` returns at once with a :class:`PendingLabels`; the CRFs then run while the
    caller does other work (the trainer's network step), which is how the CRF cost is hidden
    (docs/single_stage.md §2: RRM ran them serially and managed about 1 image/s, RRM issue #13). Workers are
    started by a fork server that has imported this module once, so starting one is cheap and
    never forks a process holding torch's thread pools.
    """

    def __init__(self, cfg: PseudoLabelConfig, workers: int = 0):
        self.cfg = cfg
        self.workers = int(workers)
        self._pool = None
        if self.workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)

    def submit(self, rgb: np.ndarray, cams: torch.Tensor, labels: torch.Tensor,
               valid: torch.Tensor | None = None, return_confidence: bool = False) -> PendingLabels:
        """Start labelling a batch: (B, H, W, 3) uint8 images, (B, C, H, W) normalised CAMs and
        (B, C) image labels. In serial mode the work is done here, before returning."""
        cams_np = cams.detach().float().cpu().numpy()
        labels_np = labels.detach().cpu().numpy()
        parts = []
        for i in range(len(cams_np)):
            classes = np.flatnonzero(labels_np[i] > 0.5)
            args = (np.ascontiguousarray(rgb[i]), np.ascontiguousarray(cams_np[i][classes]), classes, self.cfg,
                    return_confidence)
            parts.append(self._pool.submit(_label_image, *args) if self._pool else _label_image(*args))
        return PendingLabels(parts, None if valid is None else valid.detach().cpu())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "PseudoLabeler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_reliable_labels(rgb: np.ndarray, cams: torch.Tensor, labels: torch.Tensor,
                          cfg: PseudoLabelConfig, valid: torch.Tensor | None = None,
                          return_confidence: bool = False):
    """:func:`reliable_labels` over a batch, in this process: (B, H, W, 3) uint8, (B, C, H, W)
    CAMs, (B, C) labels -> (B, H, W) int64 on the CAMs' device (and the confidence map with
    ``return_confidence``). Padding (``valid`` False) is always 255."""
    labels_out, conf = PseudoLabeler(cfg).submit(rgb, cams, labels, valid, return_confidence).result(cams.device)
    return (labels_out, conf) if return_confidence else labels_out
