"""The one rule that picks a study's best trial (reports/selection.py), on hand-made tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reports.selection import best_trial


def _trials(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "status": s, "score": v, "param.train.lr": 0.001 * (i + 1)}
                         for i, (t, s, v) in enumerate(rows)])


def test_mode_max_takes_the_highest_and_min_the_lowest_score():
    t = _trials([("a", "COMPLETE", 0.4), ("b", "COMPLETE", 0.7), ("c", "COMPLETE", 0.1), ("d", "COMPLETE", math.nan)])
    best = best_trial(t, "max")
    assert best["trial_id"] == "b" and best["score"] == 0.7 and best["param.train.lr"] == pytest.approx(0.002)
    assert best_trial(t, "min")["trial_id"] == "c"  # NaN is no score, never the lowest


def test_a_complete_trial_beats_a_pruned_one_with_a_better_score():
    t = _trials([("pruned_high", "PRUNED", 0.9), ("done", "COMPLETE", 0.5), ("pruned_low", "PRUNED", 0.05),
                 ("failed", "FAILED", 0.95), ("done_worse", "COMPLETE", 0.3)])
    assert best_trial(t, "max")["trial_id"] == "done"
    assert best_trial(t, "min")["trial_id"] == "done_worse"


def test_without_a_complete_score_every_scored_trial_counts():
    t = _trials([("p1", "PRUNED", 0.6), ("p2", "PRUNED", 0.8), ("c", "COMPLETE", math.nan), ("r", "RUNNING", 0.2)])
    assert best_trial(t, "max")["trial_id"] == "p2"
    assert best_trial(t, "min")["trial_id"] == "r"


def test_ties_go_to_the_earliest_trial():
    t = _trials([("first", "COMPLETE", 0.5), ("second", "COMPLETE", 0.5)])
    assert best_trial(t, "max")["trial_id"] == best_trial(t, "min")["trial_id"] == "first"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_no_scored_trial_is_none(mode):
    assert best_trial(_trials([("a", "PRUNED", math.nan), ("b", "FAILED", math.nan)]), mode) is None
    assert best_trial(pd.DataFrame(columns=["trial_id", "status", "score"]), mode) is None


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        best_trial(_trials([("a", "COMPLETE", 0.5)]), "maximise")


def test_the_reports_use_this_rule():
    import reports.build

    assert reports.build.best_trial is best_trial
