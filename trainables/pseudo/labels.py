"""Reliable pseudo labels from CAMs (docs/single_stage.md §2, after RRM's ``compute_seg_label``).

Two score maps [bg; CAMs of present classes] with a low and a high background exponent alpha
are refined (a dense CRF per image, or PAR over the batch: ``pseudo.refiner``; or used as they
are with ``crf=False``). Foreground comes from the low-alpha map (conservative foreground),
background from the high-alpha map (conservative background). A pixel stays labelled only if
the refinement is confident and its CAM survives the per-class floor + percentile pruning
(foreground) or the background cutoff; the rest is 255.

The rule is written once, in torch over a batch (:func:`reliable_stack_labels`): the CRF
workers run it on one image on a CPU core, PAR runs it on the whole batch on the trial's device.
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.dataset import IGNORE_INDEX, IMAGENET_MEAN
from trainables.pseudo.par import par_refine
from trainables.settings.sections import CrfSettings, PseudoLabelConfig, RefinerSettings


def dense_crf(rgb: np.ndarray, probs: np.ndarray, cfg: CrfSettings) -> np.ndarray:
    """Mean-field dense CRF (pydensecrf) over (K, H, W) scores of an (H, W, 3) uint8 image.

    Returns the (K, H, W) marginals. The unary is -log of the scores clipped to [1e-5, 1]
    (``unary_from_softmax``). With ``cfg.crf_input == "scores"`` they are used as given, as RRM
    passes [bg; CAM] (tool/imutils.py l.354); with ``"normalised"`` each pixel's scores are
    divided by their sum first. Rescaling a pixel only shifts its unary by a constant, so the two
    agree except where the clip acts: a pixel whose scores are all tiny is uniform with
    ``scores`` but keeps its preference with ``normalised``.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    p = probs
    if cfg.crf_input == "normalised":
        p = probs / np.maximum(probs.sum(axis=0, keepdims=True), 1e-12)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p.astype(np.float32))))
    d.addPairwiseGaussian(sxy=cfg.crf_gauss_sxy, compat=cfg.crf_gauss_compat)
    d.addPairwiseBilateral(sxy=cfg.crf_bilateral_sxy, srgb=cfg.crf_bilateral_srgb,
                           rgbim=np.ascontiguousarray(rgb, dtype=np.uint8), compat=cfg.crf_bilateral_compat)
    q = np.asarray(d.inference(int(cfg.crf_iterations)), dtype=np.float32)
    return q.reshape(k, h, w)


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.sum(1, keepdim=True).clamp_min(1e-12)


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (B, K, H, W), the first index on ties, as ``torch.argmax``: K
    comparisons of whole planes, since torch's CPU argmax over a non-last dim is 10-20x slower.

    Example:
        >>> channel_argmax(torch.tensor([[[[0.2]], [[0.5]], [[0.5]]]])).tolist()
        [[[1]]]
    """
    best, idx = x[:, 0].clone(), torch.zeros(x.shape[:1] + x.shape[2:], dtype=torch.long, device=x.device)
    for k in range(1, x.shape[1]):
        better = x[:, k] > best
        idx.masked_fill_(better, k)
        best = torch.maximum(best, x[:, k])
    return idx


def refine(rgb, maps: list[torch.Tensor], cfg: RefinerSettings, counts: list[int] | None = None) -> list[torch.Tensor]:
    """Each (B, K, H, W) score map of ``maps`` -> per-pixel distributions refined by
    ``cfg.refiner``, on the maps' device. ``rgb``: the (B, H, W, 3) uint8 images (an array or a
    list of arrays). ``counts[b]``: the channels of image b that are real; the rest is padding,
    zero in and out (the CRF sees only the real ones; PAR leaves a zero channel at zero).

    PAR refines all maps in one pass (they share the image's affinity), from the per-pixel
    normalised maps; the dense CRF gets them as ``cfg.crf_input`` says (:func:`dense_crf`)."""
    if cfg.refiner == "par":
        return _par_refine(rgb, [_normalised(m.float()) for m in maps], cfg, counts)
    out = []
    for p in (m.float() for m in maps):
        q, p_np = torch.zeros_like(p), p.cpu().numpy()
        for b in range(len(p)):
            k = p.shape[1] if counts is None else int(counts[b])
            q[b, :k] = torch.from_numpy(dense_crf(rgb[b], p_np[b, :k], cfg)).to(q.device)
        out.append(q)
    return out


def _par_refine(rgb, probs: list[torch.Tensor], cfg: RefinerSettings, counts: list[int] | None) -> list[torch.Tensor]:
    """PAR over the batch, in groups of images with the same number of real channels (padding
    would cost as much as a real channel), all maps of a group in one pass."""
    dev, k_all = probs[0].device, probs[0].shape[1]
    image = torch.from_numpy(np.ascontiguousarray(np.stack(list(rgb)))).to(dev).permute(0, 3, 1, 2).float()
    counts = [k_all] * len(image) if counts is None else [int(c) for c in counts]
    groups = sorted(set(counts))
    out = [torch.zeros_like(p) for p in probs] if groups != [k_all] else None
    for k in groups:
        sel = slice(None) if out is None else torch.tensor([b for b, c in enumerate(counts) if c == k], device=dev)
        q = par_refine(image[sel], torch.cat([p[sel, :k] for p in probs], dim=1), cfg.par_dilations,
                       cfg.par_iterations, cfg.par_scale, cfg.par_colour_weight, cfg.par_position_weight)
        if out is None:  # one group, no padding: the refined maps are the result
            return [_normalised(part) for part in q.split(k, dim=1)]
        for o, part in zip(out, q.split(k, dim=1)):
            o[sel, :k] = _normalised(part)
    return out


def present_stacks(cams: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The CAMs of each image's present classes, packed: (B, M, H, W) with M the most present
    classes of any image (zero-padded), the (B, M + 1) class index of each stack index (0 is
    background; padding maps to 255), and each image's real stack size (present + 1).

    Example:
        >>> sub, to_class, counts = present_stacks(torch.ones(2, 3, 1, 1), torch.tensor([[0., 1, 1], [1, 0, 0]]))
        >>> to_class.tolist(), counts
        ([[0, 2, 3], [0, 1, 255]], [3, 2])
    """
    keep = labels > 0.5
    counts = keep.sum(1).tolist()
    m = max(counts, default=0)
    sub = cams.new_zeros((len(cams), m, *cams.shape[-2:]))
    to_class = torch.full((len(cams), m + 1), IGNORE_INDEX, dtype=torch.long, device=cams.device)
    to_class[:, 0] = 0
    for b, n in enumerate(counts):
        classes = keep[b].nonzero()[:, 0]
        sub[b, :n] = cams[b, classes]
        to_class[b, 1 : n + 1] = classes + 1
    return sub, to_class, [n + 1 for n in counts]


def _scores(sub: torch.Tensor, alpha: float) -> torch.Tensor:
    """[bg; cams] with bg = (1 - max CAM) ** alpha (docs/single_stage.md §1)."""
    peak = sub.amax(1) if sub.shape[1] else sub.new_zeros((len(sub), *sub.shape[-2:]))
    return torch.cat([(1.0 - peak).clamp(0.0, 1.0).pow(alpha).unsqueeze(1), sub], dim=1)


def reliable_stack_labels(rgb, sub: torch.Tensor, counts: list[int],
                          cfg: PseudoLabelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule over packed stacks (:func:`present_stacks`): (B, H, W) long stack indices (0 =
    background, 255 = unreliable) and the (B, H, W) refined marginal of each label (0 at 255).
    Steps follow docs/single_stage.md §2; comments give the step numbers."""
    # §2.1: two refinements with a low and a high alpha.
    scores_high = _scores(sub, cfg.alpha_high)
    maps = [_scores(sub, cfg.alpha_low), scores_high]
    if cfg.crf and sub.shape[1] > 0:
        prob_low, prob_high = refine(rgb, maps, cfg, counts)
    else:  # the normalised scores stand in for the refined marginals (this project's choice)
        prob_low, prob_high = (_normalised(m) for m in maps)
    arg_low, arg_high = channel_argmax(prob_low), channel_argmax(prob_high)

    # §2.2: foreground from the low-alpha map, background where the high-alpha map says so.
    label = torch.where(arg_low > 0, arg_low, IGNORE_INDEX)
    label[arg_high == 0] = 0

    # §2.3: confidence, bg probability from the high-alpha map, fg from the low-alpha one.
    marginal = torch.cat([prob_high[:, :1], prob_low[:, 1:]], dim=1)
    unsure = marginal.amax(1) < cfg.crf_confidence

    # §2.4-2.5: CAM pruning. RRM computes regions from argmax([bg_high; CAMs]).
    label[unsure | ~_surviving_cams(sub, scores_high, arg_low, cfg)] = IGNORE_INDEX
    conf = marginal.gather(1, label.clamp_max(marginal.shape[1] - 1).unsqueeze(1))[:, 0]
    return label, conf.masked_fill_(label == IGNORE_INDEX, 0.0)


def _surviving_cams(sub: torch.Tensor, scores_high: torch.Tensor, arg_low: torch.Tensor,
                    cfg: PseudoLabelConfig) -> torch.Tensor:
    """(B, H, W) bool: pixels whose CAM survives the class's floor + percentile cut, or the background cutoff."""
    cam_arg = channel_argmax(scores_high)
    sure = (cam_arg == 0) & (scores_high[:, 0] > cfg.bg_cutoff)
    b, m = sub.shape[:2]
    if m == 0:
        return sure
    stack = torch.arange(1, m + 1, device=sub.device).view(1, m, 1, 1)
    cam_k = torch.where(cam_arg.unsqueeze(1) == stack, sub, 0.0).flatten(2)  # (B, M, HW)
    above = cam_k > cfg.cam_floor
    # RRM prunes only classes the low-alpha map kept; §2.6 guard: none above the floor, none kept.
    kept = (arg_low.unsqueeze(1) == stack).flatten(2).any(2)
    sizes = above.sum(2).tolist()
    cut = torch.full((b, m), float("inf"), device=sub.device)
    for i, k in (kept & (above.sum(2) > 0)).nonzero().tolist():
        if cfg.fg_percentile <= 0:
            cut[i, k] = cfg.cam_floor  # with p = 0 the floor still applies
            continue
        n = sizes[i][k]
        rank = min(int(n * cfg.fg_percentile), n - 1)  # index into the sorted values above the floor
        values = torch.where(above[i, k], cam_k[i, k], float("inf"))
        cut[i, k] = torch.kthvalue(values, rank + 1).values.clamp_min(cfg.cam_floor)
    # Strictly above the cut, as RRM.
    return sure | (cam_k > cut.unsqueeze(2)).any(1).view_as(sure)


def batch_rule(rgb, cams: torch.Tensor, labels: torch.Tensor, cfg: PseudoLabelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule over a batch on the CAMs' device: (B, H, W, 3) uint8 images, (B, C, H, W)
    normalised CAMs, (B, C) labels -> (B, H, W) long class indices (255 unreliable) and the
    refined marginal of each label."""
    sub, to_class, counts = present_stacks(cams.detach().float(), labels)
    label, conf = reliable_stack_labels(rgb, sub, counts, cfg)
    classes = to_class.gather(1, label.clamp_max(to_class.shape[1] - 1).flatten(1)).view_as(label)
    return torch.where(label == IGNORE_INDEX, IGNORE_INDEX, classes), conf


def reliable_labels(rgb: np.ndarray, cams: np.ndarray, present: np.ndarray,
                    cfg: PseudoLabelConfig, return_confidence: bool = False):
    """Reliable pseudo label (H, W) uint8 of one image: class index (0 = background) or 255.

    ``cams`` is (C_fg, H, W) normalised CAMs, ``present`` the (C_fg,) image label. With
    ``return_confidence`` the refined marginal of each pixel's label (§2.3: background from the
    high-alpha map, foreground from the low-alpha one) comes back too, as a (H, W) float32 map
    (the affinity loss's "crf" source).

    Example:
        >>> cams = np.zeros((2, 1, 4), np.float32); cams[0, 0, :2] = [1.0, 0.9]
        >>> cfg = PseudoLabelConfig(crf=False, fg_percentile=0.0)
        >>> reliable_labels(np.zeros((1, 4, 3), np.uint8), cams, np.array([1, 0]), cfg).tolist()
        [[1, 1, 0, 0]]
    """
    label, conf = batch_rule(np.asarray(rgb)[None], torch.from_numpy(np.asarray(cams, np.float32))[None],
                             torch.as_tensor(np.asarray(present, np.float32))[None], cfg)
    label = label[0].numpy().astype(np.uint8)
    return (label, conf[0].numpy().astype(np.float32)) if return_confidence else label


def _label_image(rgb: np.ndarray, cams: np.ndarray, classes: np.ndarray, cfg: PseudoLabelConfig,
                 with_confidence: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """One image's task: ``cams`` holds the present classes only (``classes`` their indices), so a
    worker receives a few maps instead of all C. Labels come back in class indices."""
    out = reliable_labels(rgb, cams, np.ones(len(classes)), cfg, return_confidence=with_confidence)
    label, conf = out if with_confidence else (out, None)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)  # stack index -> class index
    lut[: len(classes) + 1] = np.concatenate([[0], np.asarray(classes) + 1])
    return lut[label], conf


# RRM's crop padding as its CRF sees it: zero in the normalised input, turned back into uint8
# (tool/myTool.py l.184 and l.217-219), i.e. the ImageNet mean truncated: (123, 116, 103).
PAD_MEAN_RGB = np.array([int(m * 255.0) for m in IMAGENET_MEAN], dtype=np.uint8)


def crf_image(rgb: np.ndarray, valid: torch.Tensor | None, pad_colour: str) -> np.ndarray:
    """The (B, H, W, 3) uint8 images as the dense CRF sees them: padding (``valid`` False) in the
    ImageNet mean colour (``pad_colour`` ``mean``, RRM's) or left as it is (``black``).

    Example:
        >>> valid = torch.tensor([[[True, False]]])
        >>> crf_image(np.zeros((1, 1, 2, 3), np.uint8), valid, "mean")[0, 0].tolist()
        [[0, 0, 0], [123, 116, 103]]
    """
    if pad_colour == "black" or valid is None or bool(valid.all()):
        return rgb
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[~valid.cpu().numpy()] = PAD_MEAN_RGB
    return out


def _one_thread() -> None:
    """A CRF worker's torch uses one thread: the pool's size is the trial's CPU budget."""
    torch.set_num_threads(1)


class PendingLabels:
    """Pseudo labels of one batch being computed; :meth:`result` waits for them."""

    def __init__(self, parts: list, valid: torch.Tensor | None):
        self._parts = parts  # per image: (label, conf) or a Future of it; or one batch: [(labels, conf)]
        self._valid = valid

    def result(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, H, W) int64 labels (255 ignored, padding 255 when a mask was given) and, when asked
        for at submit, the (B, H, W) float refined confidence of each reliable label (0
        elsewhere), on ``device``."""
        outs = [p.result() if hasattr(p, "result") else p for p in self._parts]
        if torch.is_tensor(outs[0][0]):  # the whole batch at once (PAR)
            labels, conf = outs[0]
        else:
            labels = torch.from_numpy(np.stack([o[0] for o in outs]).astype(np.int64))
            conf = torch.from_numpy(np.stack([o[1] for o in outs])) if outs[0][1] is not None else None
        labels = labels.to(device)
        if self._valid is not None:
            labels[~self._valid.to(labels.device)] = IGNORE_INDEX
        if conf is not None:
            conf = conf.to(device)
            conf[labels == IGNORE_INDEX] = 0.0
        return labels, conf


class PseudoLabeler:
    """Reliable pseudo labels for batches.

    With ``refiner: densecrf``, per image in a process pool (``workers`` > 0) or in the calling
    process (``workers`` = 0, serially, as RRM does). :meth:`submit` returns at once with a
    :class:`PendingLabels`; the CRFs then run while the caller does other work (the trainer's
    network step), which is how the CRF cost is hidden (docs/single_stage.md §2: RRM ran them
    serially and managed about 1 image/s, RRM issue #13). Workers are started by a fork server
    that has imported this module once, so starting one is cheap and never forks a process
    holding torch's thread pools.

    With ``refiner: par`` the whole batch is labelled at once on the CAMs' device inside
    :meth:`submit`; ``workers`` is ignored (no process is started).
    """

    def __init__(self, cfg: PseudoLabelConfig, workers: int = 0):
        self.cfg = cfg
        self.batched = cfg.refiner == "par" or not cfg.crf
        self.workers = 0 if cfg.refiner == "par" else int(workers)
        self._pool = None
        if self.workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_one_thread)

    def submit(self, rgb: np.ndarray, cams: torch.Tensor, labels: torch.Tensor,
               valid: torch.Tensor | None = None, return_confidence: bool = False) -> PendingLabels:
        """Start labelling a batch: (B, H, W, 3) uint8 images, (B, C, H, W) normalised CAMs and
        (B, C) image labels. In serial and batched modes the work is done here, before returning.
        Padding (``valid`` False) comes back 255 unless ``cfg.padding`` is ``label``."""
        valid = None if valid is None else valid.detach()
        mask = valid if self.cfg.padding == "ignore" else None  # "label": RRM trains on padding
        if self._pool is None and self.batched:
            with torch.no_grad():
                out, conf = batch_rule(rgb, cams, labels.to(cams.device), self.cfg)
            return PendingLabels([(out, conf if return_confidence else None)], mask)
        rgb = crf_image(rgb, valid, self.cfg.pad_colour)
        cams_np = cams.detach().float().cpu().numpy()
        labels_np = labels.detach().cpu().numpy()
        parts = []
        for i in range(len(cams_np)):
            classes = np.flatnonzero(labels_np[i] > 0.5)
            args = (np.ascontiguousarray(rgb[i]), np.ascontiguousarray(cams_np[i][classes]), classes, self.cfg,
                    return_confidence)
            parts.append(self._pool.submit(_label_image, *args) if self._pool else _label_image(*args))
        return PendingLabels(parts, None if mask is None else mask.cpu())

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
    ``return_confidence``). Padding (``valid`` False) is 255 unless ``cfg.padding`` is ``label``."""
    labels_out, conf = PseudoLabeler(cfg).submit(rgb, cams, labels, valid, return_confidence).result(cams.device)
    return (labels_out, conf) if return_confidence else labels_out
