"""Published baseline numbers (PASCAL VOC 2012) shipped with the package, with their sources,
and what the reports read from the method registry (``trainables/methods/registry.py``): each
method's label and which methods are the baselines. The registry is imported on first use only
(it imports torch), so ``reports`` stays quick to import."""

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


def method_label(name: str) -> str:
    """The table label of a registered method (``Method.label``); an unknown name as it is."""
    from trainables.methods.registry import METHODS

    return METHODS[name].label if name in METHODS else name


def baseline_methods() -> dict:
    """The registered methods whose same-data rows the reports show beside every study
    (``Method.baseline``), by name, in registry order."""
    from trainables.methods.registry import METHODS

    return {name: m for name, m in METHODS.items() if m.baseline}


def together(words) -> str:
    """Words joined for prose.

    Example:
        >>> together(["SEAM", "SC-CAM"]), together(["A", "B", "C"]), together(["A"])
        ('SEAM and SC-CAM', 'A, B and C', 'A')
    """
    words = list(words)
    if len(words) < 2:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def published_per_class(methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Per-class IoU rows (percent) of the given methods (the published rows' ``method``
    column; default: the labels of the baseline methods), one row per method variant.

    Columns: ``label`` (method and variant), ``source``, ``dataset``, the 21 VOC classes, ``miou``.

    Example:
        >>> df = published_per_class(("SEAM",))
        >>> float(df.loc[0, "miou"])
        64.5
    """
    if methods is None:
        methods = tuple(m.label for m in baseline_methods().values())
    df = pd.read_csv(DATA_DIR / "voc12_val_per_class.csv")
    df = df[df["method"].isin(methods)].copy()
    df["variant"] = df["variant"].fillna("")
    df["label"] = [f"{m} ({v})" if v else m for m, v in zip(df["method"], df["variant"])]
    df["dataset"] = PUBLISHED_DATASET
    return df[["label", "source", "dataset", *VOC_CLASSES, "miou"]].reset_index(drop=True)


def published_summary(methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Published VOC 2012 val / test mIoU (percent) of the given methods (default: the labels of
    the baseline methods), with backbone, whether saliency maps were used, and source.

    Example:
        >>> r = published_summary(("MCIS",)).iloc[0]
        >>> float(r["val_miou"]), float(r["test_miou"]), r["saliency"]
        (66.2, 66.9, 'yes')
    """
    if methods is None:
        methods = tuple(m.label for m in baseline_methods().values())
    df = pd.read_csv(DATA_DIR / "voc12_summary.csv")
    df = df[df["method"].isin(methods)]
    return df[["method", "backbone", "saliency", "val_miou", "test_miou", "source"]].reset_index(drop=True)


def published_summary_lines() -> list[str]:
    """Markdown lines: the baselines' published val / test mIoU, saying which used saliency maps
    (MCIS's pseudo masks do; its paper has no per-class table in the shipped data)."""
    return ["Published VOC 2012 val / test mIoU of the baselines (saliency: whether the method's pseudo "
            "masks used saliency maps):", "", published_summary().to_markdown(index=False, floatfmt=".1f"), ""]


def is_voc(class_names: list[str]) -> bool:
    """True when a study's classes are the 21 VOC classes (so published rows line up)."""
    return list(class_names) == VOC_CLASSES
