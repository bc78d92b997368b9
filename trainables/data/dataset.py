"""The in-memory form every dataset takes, and the batch augmentation used in training.

A dataset is a :class:`SegmentationDataset`: class names (background first), and train/val
:class:`Split` objects holding uint8 RGB images, uint8 masks (255 = ignore) and multi-hot
image-level labels over the foreground classes. The synthetic benchmark produces exactly this
form; real datasets (VOC, folders) load into it too, so nothing downstream knows the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255

# ImageNet statistics: torchvision backbones expect them, and the small CNN does not mind.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cache_dir() -> Path:
    """Where generated data and shared checkpoints are cached: ``$WSSS_CACHE_DIR`` or
    ``~/.cache/wsss-study``."""
    return Path(os.environ.get("WSSS_CACHE_DIR", Path.home() / ".cache" / "wsss-study"))


@dataclass
class Split:
    """One split: ``images[i]`` (H, W, 3) uint8, ``masks[i]`` (H, W) uint8 or None,
    ``labels[i]`` (C_fg,) float32 multi-hot of the foreground classes present. ``images`` and
    ``masks`` are lists in memory (synthetic data) or lazy sequences that decode files on access
    (:class:`~trainables.imagefiles.ImageFiles`, real datasets). ``saliency[i]`` is image i's
    (H, W) uint8 saliency map (0-255, 255 = salient), a lazy sequence, when the dataset has
    ``data.saliency``; None otherwise (synthetic data never has one)."""

    ids: list[str]
    images: Sequence[np.ndarray]
    labels: np.ndarray
    masks: Sequence[np.ndarray] | None = None
    saliency: Sequence[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def size(self, i: int) -> tuple[int, int]:
        """(H, W) of image ``i`` without decoding it (lazy splits know it from the scan)."""
        if hasattr(self.images, "size"):
            return self.images.size(i)
        return tuple(self.images[i].shape[:2])


@dataclass
class SegmentationDataset:
    """A dataset with ``class_names[0] == 'background'`` and ``len(class_names) - 1``
    foreground classes; ``labels`` columns follow ``class_names[1:]``."""

    name: str
    class_names: list[str]
    train: Split
    val: Split
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of segmentation classes, background included."""
        return len(self.class_names)

    @property
    def num_fg(self) -> int:
        """Number of foreground classes (the classifier's outputs)."""
        return len(self.class_names) - 1


def to_tensor_batch(images: list[np.ndarray]) -> torch.Tensor:
    """Stack equally sized uint8 (H, W, 3) images into a normalised float (B, 3, H, W) tensor."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class TrainBatch:
    """A training batch after augmentation. ``rgb`` keeps the uint8 pixels (B, H, W, 3) for the
    CRF and the image-dependent losses; ``valid`` marks pixels inside the image (not padding)."""

    image: torch.Tensor
    rgb: np.ndarray
    labels: torch.Tensor
    valid: torch.Tensor
    gt: torch.Tensor | None
    index: np.ndarray | None = None  # the images' positions in the split


def augment_batch(
    split: Split,
    index: np.ndarray,
    crop: int,
    scale_range: tuple[float, float],
    flip: bool,
    rng: np.random.Generator,
) -> TrainBatch:
    """RRM-style augmentation (§4 of the spec): one random scale per batch, random flip, random
    crop of ``crop`` pixels padded where the image is smaller. Masks are resized by nearest
    neighbour; padding is marked invalid and its ground truth ignored."""
    scale = float(rng.uniform(*scale_range)) if scale_range[0] != scale_range[1] else scale_range[0]
    rgbs, gts, valids = [], [], []
    for i in index:
        img = torch.from_numpy(split.images[i]).permute(2, 0, 1).float().unsqueeze(0)
        h, w = img.shape[-2:]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = F.interpolate(img, size=(nh, nw), mode="bilinear", align_corners=False)[0]
        mask = None
        if split.masks is not None:
            m = torch.from_numpy(split.masks[i]).float()[None, None]
            mask = F.interpolate(m, size=(nh, nw), mode="nearest")[0, 0].to(torch.uint8)
        if flip and rng.random() < 0.5:
            img = img.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        canvas = torch.zeros(3, crop, crop)
        gt = torch.full((crop, crop), IGNORE_INDEX, dtype=torch.uint8)
        valid = torch.zeros(crop, crop, dtype=torch.bool)
        top = int(rng.integers(0, nh - crop + 1)) if nh > crop else 0
        left = int(rng.integers(0, nw - crop + 1)) if nw > crop else 0
        ch, cw = min(crop, nh), min(crop, nw)
        oy = int(rng.integers(0, crop - ch + 1)) if ch < crop else 0
        ox = int(rng.integers(0, crop - cw + 1)) if cw < crop else 0
        canvas[:, oy : oy + ch, ox : ox + cw] = img[:, top : top + ch, left : left + cw]
        valid[oy : oy + ch, ox : ox + cw] = True
        if mask is not None:
            gt[oy : oy + ch, ox : ox + cw] = mask[top : top + ch, left : left + cw]
        rgbs.append(canvas.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
        gts.append(gt)
        valids.append(valid)
    rgb = np.stack(rgbs)
    image = to_tensor_batch(list(rgb))
    # Padding is zero in the normalised input, as in RRM's crop container.
    valid_t = torch.stack(valids)
    image = image * valid_t[:, None]
    return TrainBatch(
        image=image,
        rgb=rgb,
        labels=torch.from_numpy(split.labels[index]).float(),
        valid=valid_t,
        gt=torch.stack(gts).long() if split.masks is not None else None,
        index=np.asarray(index),
    )


def eval_batches(split: Split, batch_size: int, indices: list[int] | np.ndarray | None = None):
    """Whole images (no crop, no resize) in batches of equal size, for evaluation: yields
    ``(indices, images (B, 3, H, W) normalised, labels (B, C_fg), masks (B, H, W) long or None)``.
    Images of different sizes (real datasets) are grouped by size first."""
    by_size: dict[tuple, list[int]] = {}
    for i in (range(len(split)) if indices is None else indices):
        by_size.setdefault(split.size(int(i)), []).append(int(i))
    for idx in by_size.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            x = to_tensor_batch([split.images[i] for i in chunk])
            labels = torch.from_numpy(split.labels[chunk]).float()
            gt = None
            if split.masks is not None:
                gt = torch.from_numpy(np.stack([split.masks[i] for i in chunk])).long()
            yield chunk, x, labels, gt
