"""The built-in synthetic benchmark: procedurally generated multi-object scenes.

Each image holds 1 to ``max_objects`` objects of six classes on a cluttered background. A class
is a pair (shape, texture): the colour of every instance is random, so colour never tells
classes apart. Textures are procedural patterns and a real photograph (brick) shipped with
scikit-image. Objects vary in scale and rotation and may occlude each
other. The background is a tinted crop of a real photograph (text, coins, the moon's craters,
the cameraman) with half-transparent photo-textured blobs as clutter. CAMs are imperfect here
for the usual reasons: they fire on the most discriminative part of an object, are coarse at the
backbone's stride, and bleed onto clutter and neighbouring objects.

Everything is a pure function of the seed; :func:`load_synthetic` caches the arrays on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BeforeValidator, Field, model_validator
from scipy import ndimage

from trainables.data.dataset import IGNORE_INDEX, SegmentationDataset, Split, cache_dir
from trainables.settings.sections import Count, Fraction, Positive, PositiveInt, Section, integral

# Bump when the generator changes: it is part of the cache key.
GENERATOR_VERSION = 2

CLASS_NAMES = ["background", "disc", "square", "triangle", "ring", "cross", "star"]
# Photo textures of small, fine grain (gravel, grass) proved unlearnable for a small CNN trained
# from scratch in a CPU budget (fully supervised mIoU 0.40, triangle/grass IoU 0.01), so the
# class textures are patterns with a clear local signature; real photos form the background.
CLASS_TEXTURE = {
    "disc": "dots",
    "square": "checker",
    "triangle": "stripes",
    "ring": "brick",
    "cross": "grid",
    "star": "waves",
}

class SyntheticData(Section):
    """``data.name: synthetic``: the built-in benchmark, a pure function of these settings."""

    name: Literal["synthetic"] = "synthetic"
    num_train: PositiveInt = 800
    num_val: PositiveInt = 120
    image_size: Annotated[int, BeforeValidator(integral), Field(ge=16)] = 64
    max_objects: PositiveInt = 3
    min_radius: Positive = 8.0
    max_radius: Positive = 20.0
    distractors: Count = 2
    min_visible_fraction: Fraction = 0.25
    """Visible remnants of an occluded object smaller than this fraction of the object are
    marked ignore (255) and left out of the image label, so labels and masks always agree."""
    seed: Count = 0

    @model_validator(mode="after")
    def _radii(self) -> "SyntheticData":
        if self.min_radius > self.max_radius:
            raise ValueError(f"min_radius: must not exceed max_radius ({self.max_radius})")
        return self


# Every generator setting at its default (the name left out).
DEFAULTS = {k: v for k, v in SyntheticData.defaults().items() if k != "name"}

_PHOTO_TEXTURES: dict[str, np.ndarray] = {}


def _photo(name: str) -> np.ndarray:
    """A real grayscale photograph from scikit-image, as float in [0, 1] (cached per process)."""
    if name not in _PHOTO_TEXTURES:
        from skimage import color, data

        img = getattr(data, name)()
        if img.ndim == 3:
            img = color.rgb2gray(img[..., :3])
        img = img.astype(np.float32)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        _PHOTO_TEXTURES[name] = img
    return _PHOTO_TEXTURES[name]


BACKGROUND_PHOTOS = ["camera", "moon", "page", "coins", "text"]


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) texture in [0, 1] of the given kind, randomly cropped, zoomed and flipped."""
    if kind == "brick" or kind in BACKGROUND_PHOTOS:
        src = _photo(kind)
        zoom = rng.uniform(0.4, 0.7)  # the photos are 512 px: shrink so patterns fit small objects
        crop = max(8, int(round(size / zoom)))
        crop = min(crop, min(src.shape) - 1)
        y = rng.integers(0, src.shape[0] - crop)
        x = rng.integers(0, src.shape[1] - crop)
        patch = src[y : y + crop, x : x + crop]
        patch = ndimage.zoom(patch, size / crop, order=1)[:size, :size]
        if patch.shape != (size, size):
            patch = np.pad(patch, ((0, size - patch.shape[0]), (0, size - patch.shape[1])), mode="edge")
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch.T
        return np.ascontiguousarray(patch)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(3.5, 6.0)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "grid":
        return (((u % period) < 1.2) | ((v % period) < 1.2)).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u + 1.5 * np.sin(2 * np.pi * v / (2.5 * period))) / period)
    if kind == "dots":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        return (np.hypot(du, dv) < period * 0.3).astype(np.float32)
    raise ValueError(f"unknown texture kind {kind!r}")


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float, theta: float) -> np.ndarray:
    """Boolean (size, size) mask of one object of the given shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    d = np.hypot(u, v)
    if shape == "disc":
        return d <= r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.8
    if shape == "triangle":
        # Equilateral triangle: inside all three half-planes at distance r/2 from the centre.
        inside = np.ones_like(d, dtype=bool)
        for k in range(3):
            a = theta + k * 2 * np.pi / 3
            inside &= (dx * np.cos(a) + dy * np.sin(a)) <= r * 0.5
        return inside
    if shape == "ring":
        return (d <= r) & (d >= r * 0.55)
    if shape == "cross":
        arm = r * 0.32
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if shape == "star":
        phi = np.arctan2(v, u)
        radius = r * (0.42 + 0.58 * (0.5 + 0.5 * np.cos(5 * phi)) ** 2)
        return d <= radius
    raise ValueError(f"unknown shape {shape!r}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour in [0, 1] with moderate saturation."""
    import colorsys

    h, s, v = rng.uniform(0, 1), rng.uniform(0.25, 0.9), rng.uniform(0.45, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, min_dist: float = 0.35) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB, Euclidean) from ``against``: objects stand out
    from the background as real objects mostly do, so the classes are learnable from scratch."""
    best, best_d = None, -1.0
    for _ in range(32):
        c = _random_colour(rng)
        d = float(np.linalg.norm(c - against))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _blob(size: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob (smoothed thresholded noise around a random centre)."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 10)
    cy, cx = rng.uniform(0, size, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    r = rng.uniform(0.12, 0.25) * size
    falloff = 1.0 - np.hypot(yy - cy, xx - cx) / r
    field = falloff + 2.0 * noise / (noise.std() + 1e-6) * 0.25
    return field > 0.2


def generate_scene(rng: np.random.Generator, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 image and (H, W) uint8 mask with class indices, 255 ignore."""
    size = int(cfg["image_size"])
    # Cluttered background: a tinted, low-contrast real photograph plus distractor blobs.
    bg_tex = _texture(str(rng.choice(BACKGROUND_PHOTOS)), size, rng)
    bg_col = _random_colour(rng)
    contrast = rng.uniform(0.2, 0.6)
    image = bg_col[None, None, :] * (1 - contrast + contrast * bg_tex[..., None])
    for _ in range(int(rng.integers(0, int(cfg["distractors"]) + 1))):
        blob = _blob(size, rng)
        tex = _texture(str(rng.choice(BACKGROUND_PHOTOS)), size, rng)
        col = _random_colour(rng)
        # Half-transparent clutter with photo texture: object-like regions that are no object.
        layer = col[None, :] * (0.35 + 0.65 * tex[..., None])
        image[blob] = (0.5 * image + 0.5 * layer)[blob]

    mask = np.zeros((size, size), dtype=np.uint8)
    n_obj = int(rng.integers(1, int(cfg["max_objects"]) + 1))
    owner = np.full((size, size), -1, dtype=np.int32)
    areas, classes = [], []
    for k in range(n_obj):
        c = int(rng.integers(1, len(CLASS_NAMES)))
        name = CLASS_NAMES[c]
        r = rng.uniform(cfg["min_radius"], cfg["max_radius"])
        cy, cx = rng.uniform(r * 0.4, size - r * 0.4, 2)
        obj = _shape_mask(name, size, cy, cx, r, rng.uniform(0, 2 * np.pi))
        if obj.sum() == 0:
            continue
        tex = _texture(CLASS_TEXTURE[name], size, rng)
        col = _contrasting_colour(rng, bg_col)
        image[obj] = (col[None, :] * (0.3 + 0.7 * tex[..., None]))[obj]
        owner[obj] = k  # later objects occlude earlier ones
        areas.append(int(obj.sum()))
        classes.append(c)
    for k, (area, c) in enumerate(zip(areas, classes)):
        visible = owner == k
        if visible.sum() == 0:
            continue
        mask[visible] = c if visible.sum() >= cfg["min_visible_fraction"] * area else IGNORE_INDEX
    noise = rng.normal(0, 0.02, image.shape)
    image = np.clip((image + noise) * 255.0, 0, 255).astype(np.uint8)
    return image, mask


def labels_from_mask(mask: np.ndarray, num_fg: int) -> np.ndarray:
    """Multi-hot (num_fg,) image label of the foreground classes present in a mask."""
    present = np.unique(mask)
    label = np.zeros(num_fg, dtype=np.float32)
    for c in present:
        if 0 < c <= num_fg:
            label[c - 1] = 1.0
    return label


def generate_split(n: int, seed_seq: np.random.SeedSequence, cfg: dict, prefix: str) -> Split:
    """``n`` scenes, each from its own child seed (so image i does not depend on n)."""
    images, masks = [], []
    for child in seed_seq.spawn(n):
        img, m = generate_scene(np.random.default_rng(child), cfg)
        images.append(img)
        masks.append(m)
    num_fg = len(CLASS_NAMES) - 1
    labels = np.stack([labels_from_mask(m, num_fg) for m in masks]) if n else np.zeros((0, num_fg), np.float32)
    return Split(ids=[f"{prefix}_{i:05d}" for i in range(n)], images=images, labels=labels, masks=masks)


def generate_synthetic(cfg: dict) -> SegmentationDataset:
    """Generate the benchmark described by ``cfg`` (keys of :data:`DEFAULTS`)."""
    root = np.random.SeedSequence([GENERATOR_VERSION, int(cfg["seed"])])
    train_seq, val_seq = root.spawn(2)
    return SegmentationDataset(
        name="synthetic",
        class_names=list(CLASS_NAMES),
        train=generate_split(int(cfg["num_train"]), train_seq, cfg, "train"),
        val=generate_split(int(cfg["num_val"]), val_seq, cfg, "val"),
        meta={"generator_version": GENERATOR_VERSION, **cfg},
    )


def load_synthetic(cfg: dict) -> SegmentationDataset:
    """The benchmark for ``cfg``, generated once and then read from the on-disk cache.

    Example:
        >>> ds = load_synthetic({**DEFAULTS, "num_train": 8, "num_val": 4})
        >>> ds.class_names[0], len(ds.train), ds.train.images[0].shape
        ('background', 8, (64, 64, 3))
    """
    cfg = {**DEFAULTS, **cfg}
    cfg.pop("name", None)
    key = hashlib.sha256(json.dumps({"v": GENERATOR_VERSION, **cfg}, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"synthetic-{key}.npz"
    if path.exists():
        try:
            return _read_cache(path, cfg)
        except Exception:  # a corrupt cache entry is regenerated, never trusted
            path.unlink(missing_ok=True)
    ds = generate_synthetic(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        train_images=np.stack(ds.train.images) if len(ds.train) else np.zeros((0,)),
        train_masks=np.stack(ds.train.masks) if len(ds.train) else np.zeros((0,)),
        val_images=np.stack(ds.val.images) if len(ds.val) else np.zeros((0,)),
        val_masks=np.stack(ds.val.masks) if len(ds.val) else np.zeros((0,)),
    )
    os.replace(tmp, path)  # atomic: concurrent trials never read a half-written file
    return ds


def _read_cache(path: Path, cfg: dict) -> SegmentationDataset:
    num_fg = len(CLASS_NAMES) - 1
    with np.load(path) as z:
        splits = {}
        for name in ("train", "val"):
            images, masks = list(z[f"{name}_images"]), list(z[f"{name}_masks"])
            labels = np.stack([labels_from_mask(m, num_fg) for m in masks]) if masks else np.zeros((0, num_fg), np.float32)
            splits[name] = Split([f"{name}_{i:05d}" for i in range(len(images))], images, labels, masks)
    return SegmentationDataset("synthetic", list(CLASS_NAMES), splits["train"], splits["val"],
                               meta={"generator_version": GENERATOR_VERSION, **cfg})
