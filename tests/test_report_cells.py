"""Report tables (reports/build.py): a conditional parameter a trial did not use shows as "–"."""

from __future__ import annotations

import math

import pandas as pd
import pytest

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


def _study_trials(default_status: str = "COMPLETE") -> pd.DataFrame:
    return pd.DataFrame([
        {"trial_id": "d0", "run_id": "r0", "status": default_status, "score": 0.40, "epochs": 2, "is_defaults": True},
        {"trial_id": "b1", "run_id": "r1", "status": "COMPLETE", "score": 0.45, "epochs": 6, "is_defaults": False},
        {"trial_id": "p2", "run_id": "r2", "status": "PRUNED", "score": 0.30, "epochs": 2, "is_defaults": False},
        {"trial_id": "f3", "run_id": "r3", "status": "FAILED", "score": float("nan"), "epochs": 0, "is_defaults": False},
    ])


META = {"method": "aal", "metric": "val/miou", "sampler": "tpe", "scheduler": {"type": "asha"},
        "params": [{"name": "train.lr"}, {"name": "pseudo.crf"}]}


@pytest.mark.parametrize("gain, says", [
    ((0.05, 0.02, 0.08), "+5.0 points over the default configuration (trial `d0`: 40.0); 95 % interval of the "
                         "gain +2.0 to +8.0 (paired bootstrap over the val images): larger than the noise."),
    ((0.05, -0.01, 0.11), "; 95 % interval of the gain -1.0 to +11.0 (paired bootstrap over the val images): not "
                          "resolved, the interval includes 0."),
    (None, "+5.0 points over the default configuration (trial `d0`: 40.0)."),
])
def test_first_paragraph_counts_trials_and_states_the_gain_over_the_defaults(gain, says):
    from reports.build import _summary_lines

    trials = _study_trials()
    text = _summary_lines(META, trials, trials.iloc[1].to_dict(), gain)[0]
    assert text.startswith("This study searched 2 parameters of `aal` (`train.lr`, `pseudo.crf`) by Optuna's TPE "
                           "with ASHA early stopping: 4 trials ran, 2 completed, 1 stopped early by ASHA, 1 failed.")
    assert "The best trial `b1` reached val/miou 45.0, " in text and says in text


def test_first_paragraph_without_or_with_a_stopped_defaults_trial():
    from reports.build import _summary_lines

    trials = _study_trials()
    text = _summary_lines(META, trials.assign(is_defaults=False), trials.iloc[1].to_dict())[0]
    assert "the default configuration was not run (`budget.include_defaults: true`" in text
    stopped = _study_trials("PRUNED")
    assert "stopped early by ASHA after 2 epochs, so this is its score then" in _summary_lines(
        META, stopped, stopped.iloc[1].to_dict())[0]
