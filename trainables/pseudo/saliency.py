"""Saliency-guided pseudo ground truth: MCIS's rule for turning class localisation maps and a
saliency map into a segmentation label with ignored (255) pixels.

The rule is the one of the public MCIS code (Sun et al., "Mining Cross-Image Semantics for
Weakly Supervised Semantic Segmentation", ECCV 2020), file ``Classifier/gen_gt.py`` of
https://github.com/GuoleiSun/MCIS_wsss (whose header credits Peng-Tao Jiang).
This is an independent implementation in numpy, with the thresholds of that file as defaults:

1. scores: background ``1 - s / 255`` from the saliency map ``s``; each class present in the
   image-level label its localisation map, min-max normalised to [0, 1]; absent classes 0;
2. every score under ``fg_cutoff`` is set to 0 (background included);
3. a pixel where more than one score exceeds ``conflict`` is ignored (255);
4. otherwise the label is the argmax (0 = background, c + 1 = foreground class c; ties go to
   the lower index, so a pixel with no score left is background);
5. a background pixel whose saliency is at least ``salient_bg`` is ignored; the saliency used
   here is raised to 255 wherever a present class's normalised map exceeds ``salient_fg``;
6. an image whose foreground (neither 0 nor 255) covers less than ``min_foreground`` of its
   pixels is ignored entirely.

Pure numpy (no torch): :func:`saliency_pseudo_gt` labels one image, :func:`split_pseudo_gt`
the images of a :class:`~trainables.data.dataset.Split` that has saliency maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from trainables.data.dataset import Split

IGNORE = 255  # the project's IGNORE_INDEX, kept local so that this module needs only numpy
_EPS = 1e-8  # the normalisation's guard: a constant map normalises to 0


def saliency_pseudo_gt(cams: np.ndarray, labels: np.ndarray, saliency: np.ndarray, *, fg_cutoff: float = 0.3,
                       conflict: float = 0.99, salient_bg: float = 32, salient_fg: float = 0.95,
                       min_foreground: float = 0.01) -> np.ndarray:
    """MCIS's pseudo ground truth of one image (the rule of ``Classifier/gen_gt.py`` in
    https://github.com/GuoleiSun/MCIS_wsss; the steps are listed in this module's docstring).

    Args:
        cams: (C_fg, H, W) localisation maps, any finite scale: each present class's map is
            min-max normalised to [0, 1] here; the maps of absent classes are not used.
        labels: (C_fg,) image-level label, multi-hot (> 0 = present).
        saliency: (H, W) saliency map, 0 (background) to 255 (salient).
        fg_cutoff: scores (background's included) below it become 0.
        conflict: a pixel with more than one score above it is ignored.
        salient_bg: a pixel labelled background with saliency >= this (0-255 scale) is ignored.
        salient_fg: where a present class's normalised map exceeds it, the saliency counts as 255
            for the previous test.
        min_foreground: below this fraction of foreground pixels the whole image is ignored.

    Returns:
        (H, W) uint8: 0 background, c + 1 for foreground class c, 255 ignored.

    Example (class 0 present, class 1 absent: its map is not used):
        >>> cams = np.zeros((2, 4, 4)); cams[0, 1:3, 1:3] = 5.0; cams[1] = 9.0
        >>> sal = np.zeros((4, 4), np.uint8); sal[1:3, 1:3] = 255; sal[3, 3] = 120
        >>> saliency_pseudo_gt(cams, np.array([1, 0]), sal)
        array([[  0,   0,   0,   0],
               [  0,   1,   1,   0],
               [  0,   1,   1,   0],
               [  0,   0,   0, 255]], dtype=uint8)
    """
    cams, present, sal = _checked(cams, labels, saliency)
    n_fg, h, w = cams.shape
    # 1. scores: [background; one map per foreground class], absent classes staying 0. They are
    # held in float32 as upstream holds them: with 8-bit inputs a background score and a class
    # score can tie exactly (1 - 163/255 = 92/255), and float32 rounding decides as it does there.
    scores = np.zeros((n_fg + 1, h, w), dtype=np.float32)
    scores[0] = 1.0 - sal.astype(np.float32) / np.float32(255.0)
    salient = sal.copy()  # the saliency of step 5, raised where a class map is near its peak
    for c in np.flatnonzero(present):
        lo, hi = cams[c].min(), cams[c].max()
        norm = (cams[c] - lo) / (hi - lo + _EPS)
        scores[c + 1] = norm
        salient[norm > salient_fg] = 255.0
    # 2. weak scores count for nothing
    scores[scores < fg_cutoff] = 0.0
    # 3-4. the strongest score wins, unless two are near-certain at once
    out = scores.argmax(axis=0).astype(np.uint8)
    out[(scores > conflict).sum(axis=0) > 1] = IGNORE
    # 5. "background" that the saliency (or a class's peak) calls an object is not trusted
    out[(out == 0) & (salient >= salient_bg)] = IGNORE
    # 6. too little foreground: the image teaches nothing reliable
    foreground = int(((out > 0) & (out < IGNORE)).sum())
    if foreground / float(h * w) < min_foreground:
        out[...] = IGNORE
    return out


def _checked(cams, labels, saliency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cams float64, present classes bool, saliency float64), or ValueError naming the input."""
    cams = np.asarray(cams, dtype=np.float64)
    present = np.asarray(labels).reshape(-1) > 0
    sal = np.asarray(saliency, dtype=np.float64)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (C_fg, H, W), got shape {cams.shape}")
    n_fg, h, w = cams.shape
    if present.shape != (n_fg,):
        raise ValueError(f"labels must be ({n_fg},) for {n_fg} class maps, got shape {np.shape(labels)}")
    if sal.shape != (h, w):
        raise ValueError(f"saliency must be (H, W) = {(h, w)} like the class maps, got shape {sal.shape}")
    if n_fg + 1 >= IGNORE:
        raise ValueError(f"{n_fg} foreground classes do not fit uint8 labels below {IGNORE}")
    if not np.isfinite(cams[present]).all():
        raise ValueError("cams must be finite")
    return cams, present, sal


def split_pseudo_gt(split: Split, cams: Sequence[np.ndarray], indices: Iterable[int] | None = None,
                    **rule: float) -> Iterator[tuple[int, np.ndarray]]:
    """``(i, pseudo ground truth)`` for the images of ``split`` (all, or ``indices``), from
    ``cams[i]`` (C_fg, H, W) at the image's size, ``split.labels[i]`` and ``split.saliency[i]``;
    ``rule`` takes :func:`saliency_pseudo_gt`'s keyword thresholds.

    To score the masks against ``split.masks[i]``, note that 255 is "no label", not a class:
    the project's ``confusion_matrix`` would clamp a 255 prediction to the last class, so
    either score the labelled pixels only (target ``np.where(pgt == 255, 255, gt)``, and report
    the ignored fraction apart) or map 255 to a class first.

    Raises ValueError when the split has no saliency maps (a dataset without ``data.saliency``).

    Example:
        >>> from trainables.data.dataset import Split
        >>> sal = np.zeros((4, 4), np.uint8); sal[:2, :2] = 255
        >>> cam = np.zeros((1, 4, 4)); cam[0, :2, :2] = 1.0
        >>> s = Split(["a"], [np.zeros((4, 4, 3), np.uint8)], np.ones((1, 1), np.float32), saliency=[sal])
        >>> [(i, m.tolist()) for i, m in split_pseudo_gt(s, [cam])]
        [(0, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])]
    """
    if split.saliency is None:
        raise ValueError("the split has no saliency maps: set data.saliency to the folder of the dataset's maps")
    for i in (range(len(split)) if indices is None else indices):
        i = int(i)
        yield i, saliency_pseudo_gt(cams[i], split.labels[i], split.saliency[i], **rule)
