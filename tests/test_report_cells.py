"""Report tables (reports/build.py): a conditional parameter a trial did not use shows as "–"."""

from __future__ import annotations

import math

import pandas as pd

from reports.build import INACTIVE, _best_lines, _top_lines


def _trials() -> pd.DataFrame:
    # pseudo.crf_iterations is searched only when pseudo.crf is true (smoke.yaml's `when`)
    return pd.DataFrame([
        {"trial_id": "a", "status": "COMPLETE", "epochs": 2, "miou": 0.5, "cam_miou": 0.4, "train_cam_miou": 0.4,
         "score": 0.5, "param.pseudo.crf": False, "param.pseudo.crf_iterations": None, "param.train.lr": 0.0123456},
        {"trial_id": "b", "status": "COMPLETE", "epochs": 2, "miou": 0.6, "cam_miou": 0.4, "train_cam_miou": 0.4,
         "score": 0.6, "param.pseudo.crf": True, "param.pseudo.crf_iterations": 5.0, "param.train.lr": 0.002},
    ])


def test_top_trials_show_an_inactive_parameter_as_a_dash():
    text = "\n".join(_top_lines(_trials(), "max"))
    row_a = next(line for line in text.splitlines() if line.startswith("| a "))
    assert INACTIVE in row_a and "nan" not in text and "None" not in text
    assert "0.01235" in row_a


def test_best_trial_table_shows_an_inactive_parameter_as_a_dash():
    best = _trials().iloc[0].to_dict()
    best.update(miou_nocrf=math.nan, cam_threshold=math.nan)
    lines = _best_lines(best)
    assert f"| `pseudo.crf_iterations` | {INACTIVE} |" in lines
    assert "| `train.lr` | 0.01235 |" in lines
