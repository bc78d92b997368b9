"""The comparison report's layout: per-class rows, deltas, published rows placed by dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.baselines import VOC_CLASSES
from reports.compare import _deltas, _wide, render


def _data(classes: list[str], dataset: str) -> dict:
    rows = []
    for method, base in (("single-stage (aal)", 0.6), ("SEAM", 0.5), ("SC-CAM", 0.45), ("CAM", 0.4)):
        for row, shift in (("best trial", 0.02), ("seed mean", 0.0), ("seed std", None)):
            for i, c in enumerate(classes + ["mIoU"]):
                rows.append({"method": method, "row": row, "class_name": c,
                             "iou": 0.01 if shift is None else base + shift + 0.001 * i})
    quality = pd.DataFrame([{"method": m, "key": k, "train_cam_miou": v, "train_cam_miou_std": 0.01,
                             "val_cam_miou": v, "val_cam_miou_std": 0.01, "val_miou": v, "val_miou_std": 0.01,
                             "cam_threshold": 0.3, "trial_s": 60.0}
                            for m, k, v in (("single-stage (aal)", "aal", 0.55), ("SEAM", "seam", 0.52),
                                            ("SC-CAM", "sccam", 0.49), ("CAM", "cam", 0.5))])
    meta = {"name": "c", "samples": 8, "concurrency": 2, "seeds": [0, 1, 2],
            "methods": [{"search": "aal", "seeds": "aal-seeds"}]}
    return {"meta": meta, "table": pd.DataFrame(rows), "quality": quality, "rounds": {}, "classes": classes,
            "dataset": dataset, "costs": {}}


def test_deltas_are_seed_mean_differences_in_points():
    data = _data(["background", "a"], "synthetic")
    d = _deltas(_wide(data["table"], data["classes"]), "SEAM")
    assert list(d.index) == ["single-stage (aal)", "SC-CAM", "CAM"]
    np.testing.assert_allclose(d.loc["CAM"].values, [-10.0, -10.0, -10.0], atol=1e-9)


def test_synthetic_report_keeps_published_rows_apart_and_checks_orderings():
    md = render(_data(["background", "a"], "synthetic"), None, Path("."))
    table = md.split("## Per-class IoU (%)")[1].split("###")[0]
    assert "| SEAM " in table and "mean ± std (3 seeds)" in table and "published" not in table
    assert "NOT comparable" in md and "SEAM CVPR2020 Table 6" in md.split("NOT comparable")[1]
    assert "SEAM above CAM: published 55.1 vs 47.4 (VOC train); here 52.0 vs 50.0 (+2.0): **holds**" in md
    assert "SC-CAM above CAM: published 50.9 vs 48.0 (VOC train); here 49.0 vs 50.0 (-1.0): **does not hold**" in md


def test_voc_report_puts_published_rows_in_the_table():
    md = render(_data(VOC_CLASSES, "voc12"), None, Path("."))
    table = md.split("## Per-class IoU (%)")[1].split("###")[0]
    assert "published (SEAM CVPR2020 Table 6)" in table and "| 64.5 " in table
    assert "NOT comparable" not in md
