"""The comparison report's layout: per-class rows, deltas, published rows placed by dataset.
Methods, labels, baselines and claimed orderings come from the registry (trainables/methods/registry.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from reports.baselines import VOC_CLASSES, baseline_methods, published_per_class
from reports.compare import _deltas, _wide, render
from trainables.methods.registry import METHODS

LABELS = {name: m.label for name, m in METHODS.items()}
# Seed-mean IoU of each method (the same in every class), 5 points apart in registry order.
BASE = {name: 0.6 - 0.05 * i for i, name in enumerate(METHODS)}
# The published rows (VOC train CAM mIoU, reports/baselines/voc12_cam_quality.csv) the registry's
# claims name; a method registered with a new claim adds its two rows here.
PUBLISHED_TRAIN = {"SEAM ER+PCM": 55.1, "SEAM baseline CAM": 47.4, "SC-CAM CAM": 50.9, "AffinityNet CAM": 48.0}


def _claims() -> list[tuple[str, str, tuple[str, str]]]:
    """(method, the method it claims to beat, the two published rows), in registry order."""
    return [(name, c.over, c.published) for name, m in METHODS.items() for c in m.claims]


def _train_cam() -> dict[str, float]:
    """Train CAM mIoU per method: the beaten methods at 50.0, the claimants alternately above
    (52.0: holds) and below (49.0: does not hold), the rest at 55.0."""
    v = {name: 0.55 for name in METHODS}
    for i, (name, over, _) in enumerate(_claims()):
        v[over] = 0.5
        v[name] = 0.52 if i % 2 == 0 else 0.49
    return v


def _data(classes: list[str], dataset: str) -> dict:
    rows = []
    for name, label in LABELS.items():
        for row, shift in (("best trial", 0.02), ("seed mean", 0.0), ("seed std", None)):
            for i, c in enumerate(classes + ["mIoU"]):
                rows.append({"method": label, "row": row, "class_name": c,
                             "iou": 0.01 if shift is None else BASE[name] + shift + 0.001 * i})
    quality = pd.DataFrame([{"method": LABELS[k], "key": k, "train_cam_miou": v, "train_cam_miou_std": 0.01,
                             "val_cam_miou": v, "val_cam_miou_std": 0.01, "val_miou": v, "val_miou_std": 0.01,
                             "cam_threshold": 0.3, "trial_s": 60.0}
                            for k, v in _train_cam().items()])
    meta = {"name": "c", "samples": 8, "concurrency": 2, "seeds": [0, 1, 2],
            "methods": [{"search": name, "seeds": f"{name}-seeds"} for name in METHODS]}
    return {"meta": meta, "table": pd.DataFrame(rows), "quality": quality, "rounds": {}, "classes": classes,
            "dataset": dataset, "costs": {}, "differences": _differences()}


# The verdict each claim gets from its CAM-mask interval, in turn: holds, reversed, not resolved.
VERDICTS = ("holds", "reversed", "not resolved at this budget")


def _interval_for(i: int, delta: float) -> tuple[float, float]:
    return [(delta - 0.01, delta + 0.01), (-0.015, -0.005), (-0.01, 0.05)][i % 3]


def _differences() -> pd.DataFrame:
    """Hand-made bootstrap rows: the claims' CAM-mask differences (see VERDICTS), one resolved and
    one unresolved output difference, and a tuning gain."""
    v, rows = _train_cam(), []
    for i, (name, over, _) in enumerate(_claims()):
        delta = v[name] - v[over]
        low, high = _interval_for(i, delta)
        rows.append({"method": LABELS[name], "versus": LABELS[over], "row": "CAM difference", "class_name": "mIoU",
                     "delta": delta, "low": low, "high": high, "resolved": low > 0 or high < 0})
    names = list(METHODS)
    for b, (low, high) in ((names[1], (0.02, 0.08)), (names[2], (-0.01, 0.21))):
        for c in ("mIoU", "background", "a"):
            rows.append({"method": LABELS[names[0]], "versus": LABELS[b], "row": "difference", "class_name": c,
                         "delta": BASE[names[0]] - BASE[b], "low": low, "high": high, "resolved": low > 0})
    rows.append({"method": LABELS[names[0]], "versus": "defaults", "row": "tuning gain", "class_name": "mIoU",
                 "delta": 0.04, "low": 0.01, "high": 0.07, "resolved": True})
    return pd.DataFrame(rows)


def test_deltas_are_seed_mean_differences_in_points():
    data = _data(["background", "a"], "synthetic")
    assert baseline_methods()
    for ref in baseline_methods():
        d = _deltas(_wide(data["table"], data["classes"]), LABELS[ref])
        others = [name for name in METHODS if name != ref]
        assert list(d.index) == [LABELS[name] for name in others]
        for name in others:  # background, a, mIoU
            np.testing.assert_allclose(d.loc[LABELS[name]].values, [100 * (BASE[name] - BASE[ref])] * 3, atol=1e-9)


def test_synthetic_report_keeps_published_rows_apart_and_checks_orderings():
    md = render(_data(["background", "a"], "synthetic"), None, Path("."))
    table = md.split("## Per-class IoU (%)")[1].split("###")[0]
    assert all(f"| {label} " in table for label in LABELS.values())
    assert "mean ± std (3 seeds)" in table and "published" not in table
    assert "NOT comparable" in md
    apart = md.split("NOT comparable")[1]
    pub = published_per_class(tuple(LABELS[name] for name in baseline_methods()))
    assert len(pub) >= len(baseline_methods()) > 0
    for _, r in pub.iterrows():  # every baseline's published rows, with their sources, apart
        assert f"| {r['label']} " in apart and r["source"] in apart
    v, verdicts = _train_cam(), set()
    for i, (name, over, (pub_ours, pub_over)) in enumerate(_claims()):
        assert {pub_ours, pub_over} <= set(PUBLISHED_TRAIN), f"add the published rows {pub_ours!r}, {pub_over!r}"
        diff = v[name] - v[over]
        low, high = _interval_for(i, diff)
        verdicts.add(VERDICTS[i % 3])
        assert (f"{LABELS[name]} above {LABELS[over]}: published {PUBLISHED_TRAIN[pub_ours]:.1f} vs "
                f"{PUBLISHED_TRAIN[pub_over]:.1f} (VOC train); here val CAM masks {100 * v[name]:.1f} vs "
                f"{100 * v[over]:.1f}, difference {100 * diff:+.1f} (95 % interval {100 * low:+.1f} to "
                f"{100 * high:+.1f}): **{VERDICTS[i % 3]}**") in md
    assert len(verdicts) == min(3, len(_claims()))  # every outcome the claims reach is rendered


def test_differences_are_marked_only_when_their_interval_excludes_zero():
    md = render(_data(["background", "a"], "synthetic"), None, Path("."))
    names = list(METHODS)
    a, b, c = (LABELS[n] for n in names[:3])
    table = md.split("## Differences with 95 % intervals")[1].split("##")[0]
    d_ab, d_ac = 100 * (BASE[names[0]] - BASE[names[1]]), 100 * (BASE[names[0]] - BASE[names[2]])
    row = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert f"| **{d_ab:+.1f} [+2.0, +8.0]** " in row[f"{a} − {b}"]
    assert f"| {d_ac:+.1f} [-1.0, +21.0] " in row[f"{a} − {c}"]  # not bold: the interval includes 0
    gain = md.split("## Tuning gain")[1].split("##")[0]
    assert f"| {a} " in gain and "**+4.0 [+1.0, +7.0]**" in gain and "| yes " in gain
    # In the Δ tables a resolved difference carries a star, an unresolved one none.
    if names[1] in baseline_methods():
        delta = md.split(f"### Δ against {b} ")[1].split("###")[0]
        assert f"| {a} " in delta and f"{d_ab:+.1f}*" in delta


def test_comparison_parquet_holds_the_differences_beside_the_iou_rows():
    from reports.compare import comparison_frame

    data = _data(["background", "a"], "synthetic")
    frame = comparison_frame(data["table"], data["differences"])
    assert list(frame.columns) == ["method", "row", "class_name", "iou", "versus", "low", "high", "resolved"]
    assert set(frame["row"]) == {"best trial", "seed mean", "seed std", "difference", "CAM difference", "tuning gain"}
    assert frame[frame["row"] == "seed mean"]["low"].isna().all()
    gain = frame[frame["row"] == "tuning gain"].iloc[0]
    assert (gain["iou"], gain["low"], gain["high"], gain["versus"]) == (0.04, 0.01, 0.07, "defaults")


def test_voc_report_puts_published_rows_in_the_table():
    md = render(_data(VOC_CLASSES, "voc12"), None, Path("."))
    table = md.split("## Per-class IoU (%)")[1].split("###")[0]
    pub = published_per_class(tuple(LABELS[name] for name in baseline_methods()))
    assert len(pub) >= len(baseline_methods()) > 0
    for _, r in pub.iterrows():  # every baseline's published rows, in the table
        assert f"| {r['label']} " in table and f"published ({r['source']})" in table and f"| {r['miou']:.1f} " in table
    assert "NOT comparable" not in md
    _assert_published_summary(md.split("## Per-class IoU (%)")[1])


def test_every_baseline_has_its_published_val_and_test_miou_with_the_saliency_mark():
    _assert_published_summary(render(_data(["background", "a"], "synthetic"), None, Path(".")).split("NOT comparable")[1])


def _assert_published_summary(md: str) -> None:
    summary = md.split("Published VOC 2012 val / test mIoU")[1].split("\n\n", 2)[1]
    lines = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| ")}
    for name, m in baseline_methods().items():  # every baseline has a published summary row
        assert m.label in lines, m.label
    assert [c.strip() for c in lines["MCIS"].split("|")[3:7]] == ["yes", "66.2", "66.9", "MCIS README and ECCV 2020 paper"]
    assert "| no " in lines["SEAM"]
