"""The generic folder format, for a user's own data (``data.name: folder``)::

    my_data/
      classes.txt     one foreground class name per line (a first line "background" is allowed)
      labels.csv      image,labels[,split]   e.g.  img_0001,cat;dog,train
      images/         <image>.jpg / .png / .bmp / .webp / .tif
      masks/          optional: <image>.png of class indices, used only for evaluation
      <saliency>/     optional, with data.saliency (a folder here, or absolute): <image>.png
                      greyscale saliency maps (0-255, the image's size) for train and val

``labels`` lists the image's classes separated by ``;``; every image needs at least one. Mask
value k is the k-th class of classes.txt (0 = background, 255 = ignore): palette or greyscale
PNGs. ``split`` is ``train`` or ``val``; without that column, ``data.val_fraction`` of the
images that have masks go to val (a seeded draw, ``data.seed``). Val images need masks (the
study's objective is val mIoU); train masks, when every train image has one, are used for the
CAM and pseudo-label quality metrics only, never for training.

:func:`write_folder` writes any :class:`SegmentationDataset` in this format (``python -m
trainables.data.folder --synthetic OUT`` exports the synthetic benchmark as an example).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Literal

import numpy as np

from trainables.data.dataset import SegmentationDataset, Split
from pydantic import Field

from trainables.data.imagefiles import (IMAGE_SUFFIXES, DataError, FileData, Item, build_split, check_data_section,
                                        index_folder, parse_class_list, saliency_folder, write_palette_png)
from trainables.settings.sections import Count

class FolderData(FileData):
    """``data.name: folder``: a user's own data in the folder format."""

    name: Literal["folder"] = "folder"
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    """Without a split column: the fraction of the images with masks drawn for val."""
    seed: Count = 0


def read_classes(path: Path, problems: list[str]) -> list[str]:
    """["background", *the classes of classes.txt]; problems for duplicates or none."""
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if names and names[0].lower() == "background":
        names = names[1:]
    seen = set()
    for n in names:
        if n in seen or n.lower() == "background":
            problems.append(f"classes.txt: class {n!r} listed twice (background is implicit, index 0)")
        seen.add(n)
    if not names:
        problems.append("classes.txt: no classes")
    return ["background", *names]


def load_folder(spec: dict) -> SegmentationDataset:
    """A folder-format dataset as a lazy :class:`SegmentationDataset`, after checking every file.

    Raises :class:`~trainables.imagefiles.DataError` listing the problems: missing files or
    folders, unreadable or truncated images, unknown class names, images without a label, mask
    values outside the classes, image/mask size mismatches, empty splits."""
    cfg = check_data_section(spec, FolderData)
    root = _check_layout(cfg)
    problems: list[str] = []
    class_names = read_classes(root / "classes.txt", problems)
    images = index_folder(root / "images")
    masks = index_folder(root / "masks")
    rows, col = _read_header(root, cfg, problems)
    records = _read_records(rows, col, class_names, images, problems)
    train_ids, val_ids = _split_ids(cfg, records, images, masks, by_column="split" in col)
    _check_splits(train_ids, val_ids, masks, problems)
    saliency = saliency_folder(root, cfg["saliency"], problems)  # data.saliency: relative to root, as masks/
    train, val = _build_splits(root, class_names, records, images, masks, train_ids, val_ids, problems, saliency)
    if problems:
        raise DataError("data.root", cfg["root"], problems, f"the dataset folder {root}")
    meta = {"root": str(root.resolve()), "saliency": None if saliency is None else str(saliency.resolve())}
    return SegmentationDataset(root.name or "folder", class_names, train, val, meta)


def _check_layout(cfg: dict) -> Path:
    """The dataset folder; raises :class:`DataError` if it or classes.txt, labels.csv or images/ is missing."""
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise DataError("data.root", cfg["root"], [f"{root}: folder not found"], "the dataset folder")
    problems: list[str] = []
    for name, kind in (("classes.txt", "file"), ("labels.csv", "file"), ("images", "folder")):
        p = root / name
        if not (p.is_file() if kind == "file" else p.is_dir()):
            problems.append(f"{name}: {kind} missing (the folder format needs classes.txt, labels.csv and images/)")
    if problems:
        raise DataError("data.root", cfg["root"], problems, f"the dataset folder {root}")
    return root


def _read_header(root: Path, cfg: dict, problems: list[str]) -> tuple[list[list[str]], dict[str, int]]:
    """labels.csv's rows and {column name: index}; raises :class:`DataError` (with ``problems``) on a bad header."""
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "image" not in header or "labels" not in header:
        problems.append(f"labels.csv: the first line must be a header with columns image,labels[,split] (got {rows[0] if rows else 'an empty file'})")
        raise DataError("data.root", cfg["root"], problems, f"the dataset folder {root}")
    return rows, {c: header.index(c) for c in ("image", "labels", "split") if c in header}


def _cell(row: list[str], col: dict[str, int], c: str) -> str:
    """Column ``c`` of ``row``, stripped; "" when the column or the cell is absent."""
    return row[col[c]].strip() if c in col and col[c] < len(row) else ""


def _read_records(rows: list[list[str]], col: dict[str, int], class_names: list[str], images: dict[str, Path],
                  problems: list[str]) -> dict[str, tuple[np.ndarray, str | None]]:
    """{image id: (multi-hot label, split or None)} from labels.csv's rows; adds a problem for each bad row."""
    index = {c: i for i, c in enumerate(class_names[1:])}
    records: dict[str, tuple[np.ndarray, str | None]] = {}
    for n, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        image = _cell(row, col, "image")
        if Path(image).suffix.lower() in IMAGE_SUFFIXES:
            image = Path(image).stem
        if not image:
            problems.append(f"labels.csv line {n}: no image name")
            continue
        vec = _label_vector(_cell(row, col, "labels"), n, image, class_names, index, problems)
        split = _cell(row, col, "split").lower() if "split" in col else None
        if split is not None and split not in ("train", "val"):
            problems.append(f"labels.csv line {n}: split {_cell(row, col, 'split')!r} for image {image}; use train or val")
            continue
        if image in records:
            problems.append(f"labels.csv line {n}: image {image} listed twice")
            continue
        if image not in images:
            problems.append(f"images/{image}: image file missing (listed in labels.csv line {n})")
        if not vec.any() and not any(p.startswith(f"labels.csv line {n}:") for p in problems):
            problems.append(f"labels.csv line {n}: image {image} has no class (an image-level label needs at least one)")
        records[image] = (vec, split)
    for stem, path in images.items():
        if stem not in records:
            problems.append(f"images/{path.name}: not in labels.csv (every image needs an image-level label)")
    return records


def _label_vector(text: str, n: int, image: str, class_names: list[str], index: dict[str, int],
                  problems: list[str]) -> np.ndarray:
    """The multi-hot vector over class_names[1:] of a labels cell; adds a problem for each unknown class."""
    vec = np.zeros(len(class_names) - 1, dtype=np.float32)
    for name in parse_class_list(text):
        if name.lower() == "background":
            continue
        if name not in index:
            problems.append(f"labels.csv line {n}: unknown class {name!r} for image {image} "
                            f"(classes.txt has {', '.join(class_names[1:6])}{', ...' if len(class_names) > 6 else ''})")
        else:
            vec[index[name]] = 1
    return vec


def _split_ids(cfg: dict, records: dict[str, tuple[np.ndarray, str | None]], images: dict[str, Path],
               masks: dict[str, Path], by_column: bool) -> tuple[list[str], list[str]]:
    """(train ids, val ids): by the split column, else a seeded draw from the images with masks; capped."""
    ids = [i for i in records if i in images]
    if by_column:
        train_ids = [i for i in ids if records[i][1] == "train"]
        val_ids = [i for i in ids if records[i][1] == "val"]
    else:
        with_mask = [i for i in ids if i in masks]
        rng = np.random.default_rng(int(cfg["seed"]))
        n_val = int(round(len(with_mask) * float(cfg["val_fraction"]))) if with_mask else 0
        chosen = set(rng.permutation(with_mask)[:n_val].tolist()) if n_val else set()
        val_ids = [i for i in ids if i in chosen]
        train_ids = [i for i in ids if i not in chosen]
    if cfg["max_train"]:
        train_ids = train_ids[: cfg["max_train"]]
    if cfg["max_val"]:
        val_ids = val_ids[: cfg["max_val"]]
    return train_ids, val_ids


def _check_splits(train_ids: list[str], val_ids: list[str], masks: dict[str, Path], problems: list[str]) -> None:
    """Nothing; adds a problem for each empty split and each val image without a mask."""
    for split, chosen_ids in (("train", train_ids), ("val", val_ids)):
        if not chosen_ids:
            why = "" if split == "train" or masks else " (val needs images with masks: no masks/ folder)"
            problems.append(f"labels.csv: split {split!r} is empty{why}")
    for i in val_ids:
        if i not in masks:
            problems.append(f"masks/{i}.png: mask file missing for val image {i} (val is evaluated against masks)")


def _build_splits(root: Path, class_names: list[str], records: dict[str, tuple[np.ndarray, str | None]],
                  images: dict[str, Path], masks: dict[str, Path], train_ids: list[str], val_ids: list[str],
                  problems: list[str], saliency: Path | None = None) -> tuple[Split | None, Split | None]:
    """The scanned (train, val) splits (train masks only when every train image has one; saliency maps from the
    ``saliency`` folder when set); adds their problems."""
    labels = {i: vec for i, (vec, _) in records.items() if i in images}
    train_masks = all(i in masks for i in train_ids)
    train_items = [Item(i, images[i], masks[i] if train_masks else None) for i in train_ids]
    val_items = [Item(i, images[i], masks.get(i)) for i in val_ids]  # a missing one is reported above
    train = build_split("train", train_items, class_names, root, labels, problems, saliency)
    val = build_split("val", val_items, class_names, root, labels, problems, saliency)
    return train, val


def describe_folder(ds: SegmentationDataset) -> str:
    """The plan's data line."""
    masks = "with masks" if ds.train.masks is not None else "no masks"
    sal = f", saliency maps in {ds.meta['saliency']}" if ds.meta.get("saliency") else ""
    return (f"folder dataset at {ds.meta['root']}: train {len(ds.train):,} images ({masks}), "
            f"val {len(ds.val):,} images with masks, {ds.num_classes} classes "
            f"({', '.join(ds.class_names[1:6])}{', ...' if ds.num_classes > 6 else ''}){sal}; every file checked")


def write_folder(ds: SegmentationDataset, root: str | Path) -> Path:
    """Write ``ds`` in the folder format (lossless PNG images, palette PNG masks, a split column,
    greyscale saliency maps in ``saliency/`` when its splits have them); :func:`load_folder`
    reads back the same ids, pixels, masks and labels (and, with ``data.saliency: saliency``,
    saliency maps)."""
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(ds.class_names[1:]) + "\n")
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "labels", "split"])
        for split_name, split in (("train", ds.train), ("val", ds.val)):
            for i, image_id in enumerate(split.ids):
                names = [ds.class_names[1 + c] for c in np.flatnonzero(split.labels[i])]
                w.writerow([image_id, ";".join(names), split_name])
                Image.fromarray(np.asarray(split.images[i])).save(root / "images" / f"{image_id}.png")
                if split.masks is not None:
                    write_palette_png(root / "masks" / f"{image_id}.png", split.masks[i])
                if split.saliency is not None:
                    (root / "saliency").mkdir(exist_ok=True)
                    Image.fromarray(np.asarray(split.saliency[i], dtype=np.uint8), mode="L").save(
                        root / "saliency" / f"{image_id}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m trainables.data.folder --synthetic OUT [--num-train N --num-val N]``: write the
    synthetic benchmark in the folder format, as an example of the layout."""
    import argparse

    from trainables.data.synthetic import DEFAULTS as SYN, load_synthetic

    p = argparse.ArgumentParser(prog="python -m trainables.data.folder", description=main.__doc__)
    p.add_argument("--synthetic", required=True, metavar="OUT", help="output folder")
    p.add_argument("--num-train", type=int, default=40)
    p.add_argument("--num-val", type=int, default=10)
    a = p.parse_args(argv)
    ds = load_synthetic({**SYN, "num_train": a.num_train, "num_val": a.num_val})
    print(write_folder(ds, a.synthetic))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
