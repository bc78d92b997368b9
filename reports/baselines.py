"""Published baseline numbers (PASCAL VOC 2012) shipped with the package, with their sources."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

DATA_DIR = Path(__file__).parent / "baselines"

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
PUBLISHED_DATASET = "PASCAL VOC 2012 val (published)"


def published_per_class(methods: tuple[str, ...] = ("SEAM", "SC-CAM")) -> pd.DataFrame:
    """Per-class IoU rows (percent) of the given methods, one row per method variant.

    Columns: ``label`` (method and variant), ``source``, ``dataset``, the 21 VOC classes, ``miou``.

    Example:
        >>> df = published_per_class(("SEAM",))
        >>> float(df.loc[0, "miou"])
        64.5
    """
    df = pd.read_csv(DATA_DIR / "voc12_val_per_class.csv")
    df = df[df["method"].isin(methods)].copy()
    df["variant"] = df["variant"].fillna("")
    df["label"] = [f"{m} ({v})" if v else m for m, v in zip(df["method"], df["variant"])]
    df["dataset"] = PUBLISHED_DATASET
    return df[["label", "source", "dataset", *VOC_CLASSES, "miou"]].reset_index(drop=True)


def is_voc(class_names: list[str]) -> bool:
    """True when a study's classes are the 21 VOC classes (so published rows line up)."""
    return list(class_names) == VOC_CLASSES
