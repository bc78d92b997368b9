"""A real-photo check: search_spaces/aal_voc.yaml, shrunk to CPU size, runs end to end through
the CLI on the tiny VOC-format fixture (a real VOC photo among synthetic ones) with the
pretrained EfficientNet-Lite0 backbone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainables.data.voc import CLASS_NAMES
from voc_fixture import REAL_ID, make_voc

ROOT = Path(__file__).resolve().parents[1]
CPU_SIZE = [
    "--num-samples", "2", "--set", "budget.concurrency=1", "--set", "resources.gpu=0", "--set", "resources.cpu=1",
    "--set", "scheduler.grace_period=1", "--set", "fixed.train.epochs=1", "--set", "fixed.train.crop=64",
    "--set", "fixed.train.batch_size=4", "--set", "fixed.train.autocast=off", "--set", "fixed.model.seg_hidden=32",
    "--set", "fixed.eval.save_predictions=true", "--set", "fixed.train.seg_warmup_epochs=0",
]


@pytest.fixture(scope="module")
def voc_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voc_study")
    info = make_voc(tmp / "data", n_train=6, n_aug=2, n_val=2, size=(64, 80))
    out = tmp / "study"
    proc = subprocess.run(
        [sys.executable, "-m", "study.run", "--space", "search_spaces/aal_voc.yaml", "--output", str(out),
         "--address", "local", "--set", f"data.root={tmp / 'data'}", *CPU_SIZE],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    return info, out, proc


def test_study_runs_and_records_voc_classes(voc_study):
    info, out, proc = voc_study
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "COMPLETE").all()
    assert trials["miou"].between(0, 1).all()
    per_class = pd.read_parquet(out / "per_class.parquet")
    assert set(per_class["class_name"]) <= set(CLASS_NAMES)
    # the real image's classes are in val, so they have an IoU
    assert {"background", "person", "chair"} <= set(per_class["class_name"])
    report = (out / "report.md").read_text()
    assert "SEAM" in report and "person" in report
    # VOC classes: the published rows are in the same table as this study's row
    assert "PASCAL VOC 2012 val (this study)" in report and "PASCAL VOC 2012 val (published)" in report


def test_predictions_are_palette_pngs_at_full_resolution(voc_study):
    info, out, proc = voc_study
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(out.rglob(f"predictions/{REAL_ID}.png"))
    assert len(found) == 2, found  # one per trial
    for p in found:
        img = Image.open(p)
        assert img.mode == "P" and img.size == (500, 375)
        assert set(np.unique(np.asarray(img))) <= set(range(21))
        assert sorted(q.stem for q in p.parent.glob("*.png")) == sorted(info["val"])
