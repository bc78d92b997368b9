"""PASCAL VOC 2012, with SBD's augmented masks for the 10,582-image ``train_aug`` split.

Expected layout (``data.root`` may name ``VOC2012`` itself, or ``VOCdevkit`` above it)::

    VOC2012/
      JPEGImages/<id>.jpg                        17,125 photos
      SegmentationClass/<id>.png                 palette PNGs, 255 = object borders (ignored)
      ImageSets/Segmentation/{train,val}.txt     1,464 / 1,449 ids
      SegmentationClassAug/<id>.png              SBD + VOC masks as greyscale PNGs (train_aug only)
      ImageSets/SegmentationAug/train_aug.txt    optional: the 10,582 train_aug ids
      <data.saliency>/<id>.png                   optional: greyscale saliency maps (0-255), train and val

The ``train_aug`` list is read from ``data.train_list`` if set, else from the first of
:data:`TRAIN_AUG_LISTS` that exists; without any, it is derived as every mask in
SegmentationClassAug minus the val ids, which is exactly the 10,582 ids for the usual
SegmentationClassAug download (12,031 masks = train_aug + val). List lines may be bare ids or
DeepLab-style ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` pairs.

Image-level labels are the foreground classes present in each mask (what WSSS papers use on
VOC), or, with ``data.label_file``, read from a file: a CSV ``image,labels`` with ``;``-separated
class names, or IRN/SEAM's ``cls_labels.npy`` (a pickled dict id -> 20-vector; load only a file
you trust). With a label file, train masks are optional (they are only used for evaluation).
Val is evaluated on whole images at full resolution against SegmentationClass.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from trainables.data.dataset import SegmentationDataset, Split
from trainables.data.imagefiles import (DataError, FileData, Item, build_split, check_data_section, parse_class_list,
                                        saliency_folder)

CLASS_NAMES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
# Published sizes (docs/single_stage.md §5): a different count is reported in the plan, not refused.
STANDARD_SIZES = {"train": 1464, "val": 1449, "train_aug": 10582, "trainval": 2913}
TRAIN_AUG_LISTS = ("ImageSets/SegmentationAug/train_aug.txt", "ImageSets/Segmentation/train_aug.txt",
                   "ImageSets/Segmentation/trainaug.txt", "ImageSets/Segmentation/aug.txt")

class VocData(FileData):
    """``data.name: voc``: the VOC2012 folder (or VOCdevkit above it) and the splits."""

    what: ClassVar[str] = "VOC 2012"
    name: Literal["voc"] = "voc"
    train_split: str = "train_aug"
    val_split: str = "val"
    train_list: str = ""
    """A list file for the train split; "" = the standard places."""
    aug_masks: str = "SegmentationClassAug"
    """Folder (under root, or absolute) of SBD's masks."""
    label_file: str = ""
    """"" = image labels from the masks; else a CSV or IRN/SEAM's cls_labels.npy."""


def resolve_root(root: str) -> Path:
    """``root`` itself when it holds JPEGImages, else VOC2012 (or VOCdevkit/VOC2012) below it."""
    p = Path(root).expanduser()
    candidates = (p, p / "VOC2012", p / "VOCdevkit" / "VOC2012")
    for cand in candidates:
        if (cand / "JPEGImages").is_dir():
            return cand
    # none complete: the VOC2012 folder that is there, so problems name the right place
    return next((c for c in candidates[1:] if c.is_dir()), p)


def read_id_list(path: Path) -> tuple[list[str], list[str]]:
    """Ids of a list file (bare ids or DeepLab-style path pairs; blank lines and ``#`` comments
    skipped) and the problems found (duplicates)."""
    ids, seen, problems = [], set(), []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = Path(line.split()[0]).stem if "/" in line.split()[0] else line.split()[0]
        if token in seen:
            problems.append(f"{path.name} line {n}: id {token} listed twice")
            continue
        seen.add(token)
        ids.append(token)
    return ids, problems


def read_label_file(path: Path, class_names: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """{id: multi-hot over class_names[1:]} from a CSV (``image,labels``) or a ``cls_labels.npy``
    dict (string ids, or IRN's integers 2007000032 for 2007_000032); and the problems found."""
    fg = class_names[1:]
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    if path.suffix == ".npy":
        try:
            table = np.load(path, allow_pickle=True).item()
        except Exception as e:
            return {}, [f"{path.name}: not a cls_labels.npy dictionary ({e})"]
        for k, v in table.items():
            key = f"{int(k) // 1000000}_{int(k) % 1000000:06d}" if isinstance(k, (int, np.integer)) else str(k)
            v = np.asarray(v, dtype=np.float32).reshape(-1)
            if len(v) == len(class_names):
                v = v[1:]
            if len(v) != len(fg):
                problems.append(f"{path.name}: {key} has {len(v)} labels, expected {len(fg)}")
                continue
            out[key] = (v > 0).astype(np.float32)
        return out, problems
    import csv

    index = {c: i for i, c in enumerate(fg)}
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "labels"]:
        return {}, [f"{path.name}: the first line must be the header 'image,labels'"]
    for n, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        image = row[0].strip()
        vec = np.zeros(len(fg), dtype=np.float32)
        for name in parse_class_list(row[1] if len(row) > 1 else ""):
            if name == class_names[0]:
                continue
            if name not in index:
                problems.append(f"{path.name} line {n}: unknown class {name!r} for image {image}")
            else:
                vec[index[name]] = 1
        if image in out:
            problems.append(f"{path.name} line {n}: image {image} listed twice")
        out[image] = vec
    return out, problems


def _relative(root: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else root / p


def load_voc(spec: dict) -> SegmentationDataset:
    """VOC 2012 as a lazy :class:`SegmentationDataset`, after checking every file it uses.

    Raises :class:`~trainables.imagefiles.DataError` listing the problems found (missing
    folders, lists or files, unreadable or truncated images, bad mask values, size mismatches,
    empty splits, images without a label)."""
    cfg = check_data_section(spec, VocData)
    root = _check_layout(cfg)
    problems: list[str] = []
    aug = _relative(root, cfg["aug_masks"])
    labels_from = _read_labels(root, cfg, problems)
    train_ids, val_ids = _split_ids(root, aug, cfg, problems)
    saliency = saliency_folder(root, cfg["saliency"], problems)  # data.saliency: relative to root, as aug_masks
    train, val = _build_splits(root, aug, cfg, labels_from, train_ids, val_ids, problems, saliency)
    if problems:
        raise DataError("data.root", cfg["root"], problems, f"the VOC folder {root}")
    meta = {"root": str(root), "train_split": cfg["train_split"], "val_split": cfg["val_split"],
            "saliency": None if saliency is None else str(saliency)}
    return SegmentationDataset("PASCAL VOC 2012", list(CLASS_NAMES), train, val, meta)


def _check_layout(cfg: dict) -> Path:
    """The VOC2012 folder; raises :class:`DataError` if it, JPEGImages/ or ImageSets/Segmentation/ is missing."""
    root = resolve_root(cfg["root"])
    problems: list[str] = []
    if not root.is_dir():
        raise DataError("data.root", cfg["root"], [f"{root}: folder not found"], "the VOC folder")
    for folder in ("JPEGImages", "ImageSets/Segmentation"):
        if not (root / folder).is_dir():
            problems.append(f"{folder}/: folder missing (a VOC2012 folder holds JPEGImages/, SegmentationClass/, ImageSets/)")
    if problems:
        raise DataError("data.root", cfg["root"], problems, "the VOC folder")
    return root


def _read_labels(root: Path, cfg: dict, problems: list[str]) -> dict[str, np.ndarray] | None:
    """The image labels of ``data.label_file`` (None without one, labels then come from the masks); adds its problems."""
    if not cfg["label_file"]:
        return None
    lf = _relative(root, cfg["label_file"])
    if not lf.is_file():
        raise DataError("data.label_file", cfg["label_file"], [f"{lf}: file not found"], "the label file")
    labels_from, lp = read_label_file(lf, CLASS_NAMES)
    problems += lp
    return labels_from


def _split_ids(root: Path, aug: Path, cfg: dict, problems: list[str]) -> tuple[list[str], list[str]]:
    """(train ids, val ids) of the configured splits, capped; adds a problem for ids in both."""
    train_ids = _list_ids(root, aug, cfg, cfg["train_split"], cfg["train_list"], cfg["max_train"], problems)
    val_ids = _list_ids(root, aug, cfg, cfg["val_split"], "", cfg["max_val"], problems)
    both = sorted(set(train_ids) & set(val_ids))
    if both:
        problems.append(f"{len(both)} images are in both the train and the val split, e.g. {both[0]}")
    return train_ids, val_ids


def _list_ids(root: Path, aug: Path, cfg: dict, split: str, explicit: str, limit: int,
              problems: list[str]) -> list[str]:
    """The ids of ``split`` (the first ``limit`` if set; [] without a list); adds a problem for a missing or empty list."""
    path = _relative(root, explicit) if explicit else _standard_list(root, split)
    if explicit and not path.is_file():
        problems.append(f"{_show(path, root)}: list file missing (data.train_list)")
        return []
    if path.is_file():
        ids, lp = read_id_list(path)
        problems.extend(lp)
    elif split == "train_aug" and aug.is_dir():
        ids, path = _derived_train_aug(root, aug, cfg["val_split"]), aug
    else:
        hint = (f"; train_aug needs SBD's {cfg['aug_masks']}/ folder or a list file (data.train_list)"
                if split == "train_aug" else "")
        problems.append(f"{_show(path, root)}: list file missing for split {split!r}{hint}")
        return []
    if not ids:
        problems.append(f"{_show(path, root)}: split {split!r} is empty")
    return ids[:limit] if limit else ids


def _standard_list(root: Path, split: str) -> Path:
    """ImageSets/Segmentation/<split>.txt, or for train_aug the first of TRAIN_AUG_LISTS there, if that is missing."""
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if split == "train_aug" and not path.is_file():
        path = next((root / p for p in TRAIN_AUG_LISTS if (root / p).is_file()), path)
    return path


def _derived_train_aug(root: Path, aug: Path, val_split: str) -> list[str]:
    """The sorted ids of every mask in ``aug`` that is not in the val split's list."""
    val_path = root / "ImageSets" / "Segmentation" / f"{val_split}.txt"
    val_ids = set(read_id_list(val_path)[0]) if val_path.is_file() else set()
    return sorted(p.stem for p in aug.glob("*.png") if p.stem not in val_ids)


def _items(root: Path, aug: Path, ids: list[str], val: bool, cfg: dict, masks_optional: bool) -> list[Item]:
    """The split's items: each image with its mask (SegmentationClass first, then ``aug``); train masks all or none."""
    seg = root / "SegmentationClass"
    out = []
    for i in ids:
        mask = next((p for p in (seg / f"{i}.png", aug / f"{i}.png") if p.is_file()), None)
        if mask is None and (val or not masks_optional):
            mask = (aug if (not val and cfg["train_split"] == "train_aug") else seg) / f"{i}.png"
        out.append(Item(i, root / "JPEGImages" / f"{i}.jpg", mask))
    if not val and any(it.mask is None for it in out):  # masks are all or none per split
        out = [Item(it.id, it.image, None) for it in out]
    return out


def _build_splits(root: Path, aug: Path, cfg: dict, labels_from: dict[str, np.ndarray] | None,
                  train_ids: list[str], val_ids: list[str], problems: list[str],
                  saliency: Path | None = None) -> tuple[Split | None, Split | None]:
    """The scanned (train, val) splits, with saliency maps when ``saliency`` is a folder; adds their problems."""
    optional = labels_from is not None  # with a label file, train masks are only used for evaluation
    train = build_split("train", _items(root, aug, train_ids, False, cfg, optional), CLASS_NAMES, root, labels_from,
                        problems, saliency)
    val = build_split("val", _items(root, aug, val_ids, True, cfg, optional), CLASS_NAMES, root, None, problems,
                      saliency)
    return train, val


def _show(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def describe_voc(ds: SegmentationDataset) -> str:
    """The plan's data line: split sizes against the published ones."""
    parts = []
    for split, s in ((ds.meta["train_split"], ds.train), (ds.meta["val_split"], ds.val)):
        std = STANDARD_SIZES.get(split)
        note = "" if std is None or std == len(s) else f" (the standard {split} has {std:,})"
        parts.append(f"{split} {len(s):,} image{'s' if len(s) != 1 else ''}{note}"
                     f"{'' if s.masks is not None else ' (no masks)'}")
    sal = f", saliency maps in {ds.meta['saliency']}" if ds.meta.get("saliency") else ""
    return f"PASCAL VOC 2012 at {ds.meta['root']}: " + ", ".join(parts) + f", 21 classes{sal}; every file checked"
