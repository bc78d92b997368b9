"""What an evaluation leaves for the reports: the same few images in every trial and every
method, with their CAMs and the method's output (``panel.npz``, drawn by ``reports/grids.py``),
and one confusion matrix per val image of each kind of mask (``confusion.npz``, resampled by
``reports/bootstrap.py`` for confidence intervals). A :class:`ReviewPanel` is filled during the
evaluation (``evaluate_cams`` and the single-stage ``evaluate`` hand it what they compute;
nothing runs twice); the study driver logs both files to the trial's MLflow run.

The images are chosen from the dataset alone (:func:`review_indices`), so every trial of every
method in a comparison shows the same ones. Arrays are stored small: images and masks resized
to at most ``MAX_SIDE`` pixels on their longer side, CAMs as uint8 (value x 255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables.evaluation.metrics import per_image_confusion

MAX_SIDE = 192
PANEL_FILE, CONFUSION_FILE = "panel.npz", "confusion.npz"


def review_indices(labels: np.ndarray, count: int, seed: int = 0) -> list[int]:
    """``count`` images of a split chosen to show as many classes as possible: over a seeded
    order of the images, repeatedly the one adding the most classes not yet shown (the first
    in that order on a tie). Depends on the image labels (N, C_fg) only.

    Example:
        >>> labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
        >>> sorted(review_indices(labels, 2))
        [1, 2]
        >>> review_indices(labels, 0), len(review_indices(labels, 9))
        ([], 4)
    """
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(labels))]
    shown: set[int] = set()
    chosen: list[int] = []
    for _ in range(min(count, len(order))):
        gain = [len(set(np.flatnonzero(labels[i])) - shown) for i in order]
        pick = order.pop(int(np.argmax(gain)))
        chosen.append(pick)
        shown |= set(np.flatnonzero(labels[pick]).tolist())
    return chosen


def _small(a: np.ndarray | torch.Tensor, nearest: bool) -> np.ndarray:
    """(H, W[, C]) or (K, H, W) array resized so its longer side is at most MAX_SIDE."""
    t = torch.as_tensor(np.asarray(a.cpu() if torch.is_tensor(a) else a))
    chw = t.ndim == 3 and t.shape[-1] != 3  # (K, H, W) maps, not an (H, W, 3) image
    h, w = (t.shape[-2:] if chw or t.ndim == 2 else t.shape[:2])
    scale = MAX_SIDE / max(h, w)
    if scale >= 1:
        return t.numpy()
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = t if chw else (t[None] if t.ndim == 2 else t.permute(2, 0, 1))
    x = F.interpolate(x[None].float(), size=size, mode="nearest" if nearest else "bilinear",
                      align_corners=None if nearest else False)[0]
    x = x if chw else (x[0] if t.ndim == 2 else x.permute(1, 2, 0))
    return x.round().clamp(0, 255).to(t.dtype).numpy() if t.dtype == torch.uint8 else x.to(t.dtype).numpy()


class ReviewPanel:
    """The review images of one evaluation: val images with ground truth, the CAMs of their
    classes and the method's output; optionally training images with their reliable pseudo
    labels (255 = ignored)."""

    def __init__(self, ds, count: int, train_count: int = 0):
        self.ds = ds
        self.val = review_indices(ds.val.labels, count)
        self.train = review_indices(ds.train.labels, train_count) if train_count else []
        self.arrays: dict[str, np.ndarray] = {}
        self.confusions: dict[str, np.ndarray] = {}  # kind -> (N_val, n, n) per-image counts

    def count(self, kind: str, indices, pred, gt) -> None:
        """Per-image confusion matrices of a val batch for one kind of mask: ``output`` (what the
        method is scored by), ``cam`` (the CAM masks at the train-chosen threshold), ``cam_crf``."""
        if gt is None:
            return
        n = self.ds.num_classes
        table = self.confusions.setdefault(kind, np.zeros((len(self.ds.val), n, n), dtype=np.int32))
        table[np.asarray(list(indices), dtype=np.int64)] = per_image_confusion(pred, gt, n)

    def wanted(self, indices) -> list[tuple[int, int]]:
        """(position in ``indices``, position in the panel) of the val images the panel shows."""
        where = {int(i): j for j, i in enumerate(indices)}
        return [(where[i], k) for k, i in enumerate(self.val) if i in where]

    def capture(self, indices, cams: torch.Tensor | None = None, pred: torch.Tensor | None = None) -> None:
        """Keep, of a val batch, the panel's images: normalised CAMs (B, C_fg, H, W) in [0, 1]
        (those of the image's classes) and/or the predicted class map (B, H, W)."""
        for b, k in self.wanted(indices):
            i = self.val[k]
            if cams is not None:
                classes = np.flatnonzero(self.ds.val.labels[i])
                self.arrays[f"val{k}_cams"] = _small((cams[b, classes].float() * 255).round().to(torch.uint8), False)
                self.arrays[f"val{k}_cam_classes"] = classes.astype(np.int16) + 1  # class indices (0 = background)
            if pred is not None:
                self.arrays[f"val{k}_pred"] = _small(torch.as_tensor(np.asarray(pred[b].cpu() if torch.is_tensor(pred)
                                                                               else pred[b])).to(torch.uint8), True)

    def missing_cams(self) -> list[int]:
        """Val images of the panel whose CAMs were not captured (the caller computes them)."""
        return [i for k, i in enumerate(self.val) if f"val{k}_cams" not in self.arrays]

    def capture_pseudo(self, k: int, pseudo: torch.Tensor) -> None:
        """The reliable pseudo label (H, W) of the panel's ``k``-th training image."""
        self.arrays[f"train{k}_pseudo"] = _small(pseudo.to(torch.uint8), True)

    def save(self, folder: str | Path, **info) -> list[Path]:
        """Write ``panel.npz`` (what was captured, the images, their ground truth and ``info``)
        and, when masks were counted, ``confusion.npz`` (val image ids and one (N, n, n) array per
        kind) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = dict(self.arrays)
        for prefix, split, chosen in (("val", self.ds.val, self.val), ("train", self.ds.train, self.train)):
            for k, i in enumerate(chosen):
                data[f"{prefix}{k}_image"] = _small(np.asarray(split.images[i]), False)
                if split.masks is not None:
                    data[f"{prefix}{k}_gt"] = _small(np.asarray(split.masks[i], dtype=np.uint8), True)
                data[f"{prefix}{k}_id"] = np.array(str(split.ids[i]))
        data["class_names"] = np.array(self.ds.class_names)
        data["dataset"] = np.array(str(self.ds.name))
        for key, value in info.items():
            data[f"info_{key}"] = np.array(value)
        np.savez_compressed(folder / PANEL_FILE, **data)
        paths = [folder / PANEL_FILE]
        if self.confusions:
            np.savez_compressed(folder / CONFUSION_FILE, ids=np.array([str(i) for i in self.ds.val.ids]),
                                class_names=np.array(self.ds.class_names), **self.confusions)
            paths.append(folder / CONFUSION_FILE)
        return paths


def load_confusions(path: str | Path) -> dict:
    """A saved ``confusion.npz``: ``{"ids": [...], "class_names": [...], <kind>: (N, n, n) int64}``."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k].astype(np.int64) for k in z.files if k not in ("ids", "class_names")}
        out["ids"], out["class_names"] = [str(i) for i in z["ids"]], [str(c) for c in z["class_names"]]
    return out


def load_panel(path: str | Path) -> dict:
    """A saved panel as ``{"val": [image dicts], "train": [...], "class_names": [...], "info": {...}}``;
    an image dict has ``id``, ``image`` and, where recorded, ``gt``, ``cams``, ``cam_classes``,
    ``pred``, ``pseudo``."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    out: dict = {"class_names": [str(c) for c in data.pop("class_names")],
                 "dataset": str(data.pop("dataset", "")), "info": {}, "val": [], "train": []}
    for key in sorted(data):
        if key.startswith("info_"):
            value = data[key]
            out["info"][key[5:]] = value.item() if value.ndim == 0 else value.tolist()
    for split in ("val", "train"):
        k = 0
        while f"{split}{k}_image" in data:
            item = {name[len(f"{split}{k}_"):]: v for name, v in data.items() if name.startswith(f"{split}{k}_")}
            item["id"] = str(item["id"])
            out[split].append(item)
            k += 1
    return out
