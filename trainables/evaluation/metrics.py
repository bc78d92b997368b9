"""Segmentation metrics: a confusion matrix accumulated over a split, per-class IoU from it.

mIoU follows the PASCAL VOC protocol (docs/single_stage.md §5): one confusion matrix over the whole split,
background included, label 255 ignored; IoU_c = TP / (TP + FP + FN). A class that appears
neither in the ground truth nor in the prediction has no IoU (NaN) and is left out of the mean,
as in the usual VOC evaluation scripts; a class that is predicted but never present scores 0.
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.data.dataset import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                     num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    Pixels whose target is ``ignore_index`` (or outside [0, num_classes)) are skipped.

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 255]), 2).tolist()
        [[1, 0], [0, 1]]
    """
    pred, target = torch.as_tensor(pred).reshape(1, -1), torch.as_tensor(target).reshape(1, -1)
    return per_image_confusion(pred, target, num_classes, ignore_index)[0]


def per_image_confusion(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                        num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """One confusion matrix per image of a batch (B, ...) of predictions and targets: (B, n, n)
    int64, rows = ground truth. Their sum is the batch's :func:`confusion_matrix`; kept per image,
    they let reports resample the images (reports/bootstrap.py).

    Example:
        >>> per_image_confusion(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 255]]), 2).tolist()
        [[[1, 1], [0, 0]], [[0, 0], [0, 1]]]
    """
    pred = torch.as_tensor(pred).reshape(len(pred), -1).long()
    target = torch.as_tensor(target, device=pred.device).reshape(len(pred), -1).long()
    n, b = num_classes, len(pred)
    keep = (target != ignore_index) & (target >= 0) & (target < n)
    image = torch.arange(b, device=pred.device)[:, None].expand_as(target)
    idx = (image * n + target) * n + pred.clamp(0, n - 1)
    counts = torch.bincount(idx[keep], minlength=b * n * n)
    return counts.reshape(b, n, n).cpu().numpy().astype(np.int64)


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix; NaN where the class is in neither GT nor prediction.

    Example:
        >>> per_class_iou(np.array([[3, 1], [0, 2]])).round(3).tolist()
        [0.75, 0.667]
    """
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean of :func:`per_class_iou` over the classes that have an IoU (0.0 if none has)."""
    iou = per_class_iou(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0


def cam_masks(cams: torch.Tensor, thresholds: torch.Tensor | list[float]) -> torch.Tensor:
    """Masks from normalised CAMs (B, C_fg, H, W) for each background threshold t:
    argmax([t; CAMs]) as in CAM evaluation (docs/single_stage.md §5). Returns (T, B, H, W) class indices."""
    t = torch.as_tensor(thresholds, dtype=cams.dtype, device=cams.device)
    best_fg, arg_fg = cams.max(dim=1)  # (B, H, W)
    # argmax([t; cams]) is background unless some class beats t (ties go to background).
    fg = best_fg[None] > t.view(-1, 1, 1, 1)
    return torch.where(fg, arg_fg[None] + 1, torch.zeros_like(arg_fg[None]))


class CamThresholdSweep:
    """Accumulates one confusion matrix per background threshold, to report CAM mIoU at the
    best threshold (docs/single_stage.md §5: t swept over 0.00-0.60).

    One pass per batch serves every threshold: a pixel whose best CAM is m goes to its arg-max
    class at every t < m and to background otherwise (:func:`cam_masks`), so counting pixels by
    (ground truth, arg-max class, number of thresholds below m) and taking cumulative sums gives
    all T confusion matrices (T times fewer passes than masking once per threshold).
    """

    def __init__(self, num_classes: int, thresholds: list[float] | None = None):
        self.thresholds = sorted(thresholds if thresholds is not None else np.round(np.arange(0.0, 0.601, 0.05), 2))
        self.conf = np.zeros((len(self.thresholds), num_classes, num_classes), dtype=np.int64)
        self.num_classes = num_classes

    def update(self, cams: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        """Add a batch of normalised CAMs (B, C_fg, H, W) and targets (B, H, W)."""
        n, t_count = self.num_classes, len(self.thresholds)
        best_fg, arg_fg = cams.max(dim=1)
        below = torch.searchsorted(torch.as_tensor(self.thresholds, dtype=cams.dtype, device=cams.device),
                                   best_fg.contiguous(), right=False)  # thresholds t < m: fg there
        gt = torch.as_tensor(target, device=cams.device).long().reshape(-1)
        keep = (gt != ignore_index) & (gt >= 0) & (gt < n)
        pred = (arg_fg.reshape(-1) + 1).clamp_max(n - 1)
        idx = (gt[keep] * n + pred[keep]) * (t_count + 1) + below.reshape(-1)[keep]
        hist = torch.bincount(idx, minlength=n * n * (t_count + 1)).reshape(n, n, t_count + 1).cpu().numpy()
        # Threshold k predicts the arg-max class where more than k thresholds lie below m.
        fg = np.flip(np.cumsum(np.flip(hist, axis=2), axis=2), axis=2)[:, :, 1:]  # sum over b > k
        conf = np.moveaxis(fg, 2, 0).copy()  # (T, gt, pred)
        conf[:, :, 0] = 0
        conf[:, :, 0] = hist.sum(axis=(1, 2))[None, :] - conf.sum(axis=2)
        self.conf += conf

    def best(self) -> tuple[float, float, np.ndarray]:
        """(best mIoU, its threshold, its per-class IoU)."""
        scores = [mean_iou(c) for c in self.conf]
        k = int(np.argmax(scores))
        return scores[k], self.thresholds[k], per_class_iou(self.conf[k])


def pseudo_label_quality(pseudo: torch.Tensor, gt: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX) -> tuple[int, int, int]:
    """Counts for pseudo-label precision and coverage (docs/single_stage.md §5).

    Returns (reliable pixels with a known GT, correct among them, GT pixels that are known).
    Precision = correct / reliable; coverage = reliable / known.
    """
    known = gt != ignore_index
    reliable = (pseudo != ignore_index) & known
    correct = reliable & (pseudo == gt)
    return int(reliable.sum()), int(correct.sum()), int(known.sum())
