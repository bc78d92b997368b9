"""Images and masks on disk: lazy sequences, mask decoding, the VOC palette, and the scan that
validates a dataset before any trial starts.

Real datasets are read lazily: a :class:`~trainables.data.Split` of VOC trainaug holds 10,582
paths, not 8 GB of decoded pixels, and every trial decodes only the images it draws. What the
loaders need up front (image sizes, the classes present in each mask) comes from one
:func:`scan` of every file, which is also the validation: it decodes every image and mask in
full (a truncated JPEG only fails when its last rows are decoded), and reports every problem it
finds. The scan's result is cached on disk, keyed by the files' paths, sizes and modification
times, so a study, its trials and a second ``--dry-run`` read 20,000 files' worth of facts in
a fraction of a second; any edited, added or removed file changes the key.

With ``data.saliency`` (a folder of greyscale PNGs, ``<id>.png``, one per image: the saliency
maps that saliency-guided methods such as MCIS take their background cue from), the same scan
also checks each image's saliency map, and both splits carry them as ``Split.saliency``.
"""

from __future__ import annotations

from typing import ClassVar

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pydantic import ValidationError, field_validator

from trainables.settings.problems import first_problem
from trainables.settings.sections import Count, Section
from trainables.settings.tree import ConfigError
from trainables.data.dataset import IGNORE_INDEX, Split, cache_dir

# Bump when what the scan records or checks changes: it is part of the cache key.
SCAN_VERSION = 2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# How many problems a message lists before "... and N more".
SHOWN_PROBLEMS = 10


class DataError(ConfigError):
    """The dataset on disk cannot be used: ``problems`` lists every problem found (file: what);
    the message shows the first :data:`SHOWN_PROBLEMS` and the total."""

    def __init__(self, key: str, value: object, problems: list[str], what: str = "the dataset"):
        self.problems = list(problems)
        n = len(self.problems)
        shown = min(n, SHOWN_PROBLEMS)
        head = f"{n} problem{'s' if n != 1 else ''} in {what}"
        head += f" (the first {shown} listed)" if n > shown else ""
        super().__init__(key, value, head)
        self.details = self.problems[:SHOWN_PROBLEMS] + ([f"... and {n - shown} more"] if n > shown else [])

    def __str__(self) -> str:
        return "\n".join([super().__str__(), *(f"  - {d}" for d in self.details)])


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, (n, 3) uint8: class k's colour from the bits of k spread over
    the high bits of R, G and B (VOCdevkit's ``VOClabelcolormap``); 255 (ignore) is (224, 224, 192).

    Example:
        >>> voc_palette()[[0, 1, 15, 255]].tolist()
        [[0, 0, 0], [128, 0, 0], [192, 128, 128], [224, 224, 192]]
    """
    pal = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[k] = (r, g, b)
    return pal


def write_palette_png(path: str | Path, mask: np.ndarray) -> None:
    """Save a (H, W) uint8 class-index mask as an indexed PNG with the VOC palette (the format of
    VOC's SegmentationClass: viewers show colours, readers get the indices back)."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB (grey, palette and RGBA images converted; EXIF rotation is not
    applied, as VOC's tools do not apply it and masks follow the stored pixel grid)."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))  # a writable copy (torch.from_numpy warns otherwise)


def _mask_array(img: Image.Image) -> np.ndarray:
    """Class indices of an opened mask: a palette PNG's indices (VOC SegmentationClass) or a
    greyscale PNG's values (SegmentationClassAug). Colour (RGB) masks are refused: their colours
    would have to be mapped back through a palette, which is ambiguous."""
    if img.mode in ("P", "L"):
        return np.array(img)
    if img.mode in ("I;16", "I", "I;16B"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"16-bit mask values {int(arr.min())}..{int(arr.max())} do not fit class indices")
        return arr.astype(np.uint8)
    raise ValueError(f"a mask must be single-channel class indices (palette or greyscale PNG), not mode {img.mode}")


def read_mask(path: str | Path) -> np.ndarray:
    """(H, W) uint8 class indices of a mask file (255 = ignore)."""
    with Image.open(path) as img:
        return _mask_array(img)


def _saliency_array(img: Image.Image) -> np.ndarray:
    """Grey levels 0-255 of an opened saliency map: a greyscale PNG's values, or a palette PNG's
    colours when its palette is grey (each used entry R = G = B). Anything else (RGB, RGBA, a
    colour palette, 16-bit) is refused: which channel or scale holds the saliency would be a guess."""
    if img.mode == "L":
        return np.array(img)
    if img.mode == "P":
        idx = np.asarray(img)
        pal = np.zeros((256, 3), dtype=np.uint8)
        raw = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[:256]
        pal[: len(raw)] = raw
        used = np.unique(idx)
        colour = used[(pal[used, 0] != pal[used, 1]) | (pal[used, 1] != pal[used, 2])]
        if colour.size:
            raise ValueError(f"a saliency map must be greyscale; its palette has colours (index {int(colour[0])} "
                             f"is RGB {tuple(int(v) for v in pal[colour[0]])})")
        return pal[idx, 0]
    raise ValueError(f"a saliency map must be single-channel greyscale (mode L, or P with a grey palette), "
                     f"not mode {img.mode}")


def read_saliency(path: str | Path) -> np.ndarray:
    """(H, W) uint8 saliency of a saliency-map file, 0 (background) to 255 (salient)."""
    with Image.open(path) as img:
        return _saliency_array(img)


class ImageFiles:
    """A lazy, read-only sequence of images (or masks, ``masks=True``, or saliency maps,
    ``saliency=True``) on disk: indexing decodes one file. ``size(i)`` is its (H, W) from the
    scan, without decoding."""

    def __init__(self, paths: list[Path], sizes: np.ndarray, masks: bool = False, saliency: bool = False):
        self.paths, self.sizes, self.masks, self.saliency = list(paths), np.asarray(sizes), masks, saliency

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.saliency:
            return read_saliency(self.paths[i])
        return read_mask(self.paths[i]) if self.masks else read_image(self.paths[i])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def size(self, i: int) -> tuple[int, int]:
        return int(self.sizes[i][0]), int(self.sizes[i][1])


@dataclass
class Item:
    """One image of a split: its id, image file, mask file and saliency map (None when it has
    none)."""

    id: str
    image: Path
    mask: Path | None = None
    saliency: Path | None = None


@dataclass
class ScanResult:
    """Per item: ``sizes`` (N, 2) as (H, W), ``present`` (N, num_classes) bool, the classes
    found in its mask (all False without a mask), and ``broken`` (N,) bool, items with a
    problem; ``problems``: "file: what" strings."""

    sizes: np.ndarray
    present: np.ndarray
    broken: np.ndarray
    problems: list[str] = field(default_factory=list)


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


def _check_item(item: Item, num_classes: int, root: Path | None) -> tuple[tuple[int, int], np.ndarray, list[str]]:
    """(image size (H, W), (0, 0) if unreadable; classes present in the mask; problems) of one
    item: its image, then its mask and its saliency map when it has them."""
    size, problems = _check_image(item, root)
    present = np.zeros(num_classes, dtype=bool)
    if item.mask is not None:
        problems += _check_mask(item, size, present, root)
    if item.saliency is not None:
        problems += _check_saliency(item, size, root)
    return size, present, problems


def _check_image(item: Item, root: Path | None) -> tuple[tuple[int, int], list[str]]:
    """The image's (H, W), (0, 0) when it is missing or unreadable, and its problems."""
    problems: list[str] = []
    size = (0, 0)
    name = _rel(item.image, root)
    if not item.image.is_file():
        problems.append(f"{name}: image file missing")
    else:
        try:
            with Image.open(item.image) as img:
                img.load()  # a full decode: truncated files fail here, not at open
                size = (img.height, img.width)
        except UnidentifiedImageError:
            problems.append(f"{name}: not a readable image")
        except (OSError, SyntaxError, ValueError) as e:
            problems.append(f"{name}: unreadable or truncated image ({e})")
    return size, problems


def _check_mask(item: Item, size: tuple[int, int], present: np.ndarray, root: Path | None) -> list[str]:
    """The mask's problems; marks the classes it holds in ``present``."""
    num_classes = len(present)
    mname = _rel(item.mask, root)
    mask, problems = _read_map(item.mask, mname, "mask file", "mask", _mask_array, item.id)
    if mask is None:
        return problems
    problems += _size_problem(mname, "mask", mask, size)
    values = np.unique(mask)
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE_INDEX]
    if bad:
        problems.append(f"{mname}: mask values {bad[:5]} outside the classes 0..{num_classes - 1} (255 = ignore)")
    ok = values[values < num_classes]
    present[ok] = True
    return problems


def _check_saliency(item: Item, size: tuple[int, int], root: Path | None) -> list[str]:
    """The saliency map's problems: missing, undecodable, not greyscale, or not the image's size."""
    sname = _rel(item.saliency, root)
    sal, problems = _read_map(item.saliency, sname, "saliency map", "saliency map", _saliency_array, item.id)
    return problems if sal is None else _size_problem(sname, "saliency map", sal, size)


def _read_map(path: Path, name: str, missing: str, what: str, reader, image_id: str) -> tuple[np.ndarray | None, list[str]]:
    """A per-image map (mask or saliency) decoded in full by ``reader`` (a truncated PNG fails
    here), or None and its one problem: ``<name>: <missing> missing``, or unreadable."""
    if not path.is_file():
        return None, [f"{name}: {missing} missing (for image {image_id})"]
    try:
        with Image.open(path) as img:
            img.load()
            return reader(img), []
    except UnidentifiedImageError:
        return None, [f"{name}: not a readable image"]
    except (OSError, SyntaxError, ValueError) as e:
        return None, [f"{name}: unreadable {what} ({e})"]


def _size_problem(name: str, what: str, arr: np.ndarray, size: tuple[int, int]) -> list[str]:
    """A problem when a map's (H, W) differs from its image's (unknown image size: none)."""
    if size != (0, 0) and arr.shape != size:
        return [f"{name}: {what} is {arr.shape[1]}x{arr.shape[0]} but its image is {size[1]}x{size[0]} (WxH)"]
    return []


def _scan_key(items: list[Item], num_classes: int) -> str:
    h = hashlib.sha1(f"{SCAN_VERSION}|{num_classes}".encode())
    for it in items:
        h.update(it.id.encode())
        # a saliency map adds its own marked entry: keys of items without one are unchanged
        for p in (it.image, it.mask) + ((b"|saliency", it.saliency) if it.saliency is not None else ()):
            if isinstance(p, bytes):
                h.update(p)
                continue
            if p is None:
                h.update(b"|-")
                continue
            try:
                st = os.stat(p)
                h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{p}|missing".encode())
    return h.hexdigest()[:20]


def scan(items: list[Item], num_classes: int, root: Path | None = None, what: str = "images",
         workers: int | None = None, log=None) -> ScanResult:
    """Decode and check every image and mask of ``items`` (threads; PIL decodes without the GIL).

    Checks: files present and fully decodable, masks single-channel with values in
    ``0..num_classes-1`` or 255, saliency maps greyscale (mode L, or P with a grey palette), and
    the size of each mask and saliency map equal to its image's. The result is
    cached under :func:`~trainables.data.cache_dir` (problems included, so a broken dataset
    re-reports instantly until a file changes). Progress goes to ``log`` (default stderr) every
    few seconds when the scan is long.
    """
    key = _scan_key(items, num_classes)
    path = cache_dir() / "scans" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return ScanResult(z["sizes"], z["present"], z["broken"], json.loads(str(z["problems"])))
        except Exception:  # a damaged cache entry is rescanned, never trusted
            path.unlink(missing_ok=True)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    n = len(items)
    sizes = np.zeros((n, 2), dtype=np.int32)
    present = np.zeros((n, num_classes), dtype=bool)
    broken = np.zeros(n, dtype=bool)
    problems: list[str] = []
    workers = workers or min(8, os.cpu_count() or 1)
    t0 = last = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for i, (size, pres, probs) in enumerate(pool.map(lambda it: _check_item(it, num_classes, root), items,
                                                         chunksize=16)):
            sizes[i], present[i], broken[i] = size, pres, bool(probs)
            problems.extend(probs)
            now = time.monotonic()
            if now - last > 5 and i + 1 < n:
                last = now
                log(f"[wsss-study] checking {what}: {i + 1:,}/{n:,} ({(i + 1) / (now - t0):.0f}/s)")
    if n and time.monotonic() - t0 > 5:
        log(f"[wsss-study] checked {n:,} {what} in {time.monotonic() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, sizes=sizes, present=present, broken=broken, problems=np.array(json.dumps(problems)))
    os.replace(tmp, path)
    return ScanResult(sizes, present, broken, problems)


def parse_class_list(text: str) -> list[str]:
    """Class names from ``a;b;c`` (also ``|``- or ``,``-separated), stripped, empties dropped."""
    for sep in (";", "|", ","):
        text = text.replace(sep, ";")
    return [t.strip() for t in text.split(";") if t.strip()]


def index_folder(folder: Path) -> dict[str, Path]:
    """{file stem: path} of the image files in ``folder`` (one directory listing, not a stat per
    id); a stem that occurs with two suffixes maps to the first in sorted order."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in out:
                out[p.stem] = p
    return out


class FileData(Section):
    """What every file-based dataset's ``data`` section has: the folder (required; made absolute
    when a study is read) and quick-run caps. ``what`` names the dataset in messages."""

    what: ClassVar[str] = "your dataset"
    root: str = ""
    max_train: Count = 0
    """> 0: only the first N training images (quick studies)."""
    max_val: Count = 0
    saliency: str | None = None
    """A folder of saliency maps: one greyscale PNG per image, ``<id>.png``, values 0-255
    (255 = salient), the size of its image; absolute, or relative to the dataset's folder as its
    other folders are (VOC: the VOC2012 folder, like aug_masks; folder format: root, like
    masks/). Set: both splits carry them (``Split.saliency``), checked with the images before
    any trial. Unset (or ""): none."""

    @field_validator("root")
    @classmethod
    def _required(cls, v: str) -> str:
        if not v:
            raise ValueError(f"is required: the folder of {cls.what}; set it in the YAML or with --set data.root=PATH")
        return v


def check_data_section(spec: dict, model: type[Section]) -> dict:
    """A dataset's ``data`` section validated by its model (no file is read): the full section
    as a dict, or :class:`ConfigError` naming ``data.<key>``."""
    try:
        return model.model_validate({"name": model.model_fields["name"].default, **spec}).model_dump()
    except ValidationError as e:
        err = first_problem(e, model)
        raise ConfigError(f"data.{err.key}", err.value, err.message) from None


def saliency_folder(root: Path, value: str | None, problems: list[str]) -> Path | None:
    """The folder ``data.saliency`` names (absolute, or relative to ``root``), or None when it is
    unset; when it is not a folder, None and a problem naming it.

    Example:
        >>> problems = []
        >>> saliency_folder(Path("/data/voc"), None, problems), saliency_folder(Path("/data/voc"), "", problems)
        (None, None)
        >>> saliency_folder(Path("/no/such/voc"), "sal", problems), problems
        (None, ['sal/: saliency folder not found (data.saliency)'])
    """
    if not value:
        return None
    p = Path(value).expanduser()
    folder = p if p.is_absolute() else root / p
    if not folder.is_dir():
        problems.append(f"{_rel(folder, root)}/: saliency folder not found (data.saliency)")
        return None
    return folder


def build_split(name: str, items: list[Item], class_names: list[str], root: Path,
                labels_from: dict[str, np.ndarray] | None, problems: list[str],
                saliency: Path | None = None) -> Split | None:
    """Scan ``items`` (with ``saliency``, a folder, each item's ``<id>.png`` there too) and
    assemble the split; adds every problem found to ``problems``."""
    if not items:
        return None
    if saliency is not None:
        items = [Item(it.id, it.image, it.mask, saliency / f"{it.id}.png") for it in items]
    result = scan(items, len(class_names), root=root, what=f"{name} images")
    problems.extend(result.problems)
    if labels_from is None:
        labels = result.present[:, 1:].astype(np.float32)
    else:
        labels = np.zeros((len(items), len(class_names) - 1), dtype=np.float32)
        for i, it in enumerate(items):
            if it.id in labels_from:
                labels[i] = labels_from[it.id]
            else:
                problems.append(f"{it.id}: no image-level labels in the label file")
    source = "its mask" if labels_from is None else "the label file"
    for i, it in enumerate(items):
        # an item whose files already have a problem is not also reported as unlabelled
        if not labels[i].any() and not result.broken[i] and (labels_from is None or it.id in labels_from):
            problems.append(f"{it.id}: no foreground class in {source} (an image-level label needs at least one)")
    has_masks = all(it.mask is not None for it in items)
    return Split(
        ids=[it.id for it in items],
        images=ImageFiles([it.image for it in items], result.sizes),
        labels=labels,
        masks=ImageFiles([it.mask for it in items], result.sizes, masks=True) if has_masks else None,
        saliency=None if saliency is None else ImageFiles([it.saliency for it in items], result.sizes, saliency=True),
    )
