"""Which trial of a study is its best: the one rule every report, comparison and benchmark uses.

The best trial is the one with the highest ``score`` (``mode="max"``) or the lowest
(``mode="min"``) among the trials that trained to the end (status ``COMPLETE``); only when no
such trial has a score does a trial stopped early (``PRUNED``), a failed or a running one with a
score take part. Trials without a score (NaN) never do. Ties go to the earliest row.
"""

from __future__ import annotations

import pandas as pd

MODES = ("max", "min")


def best_trial(trials: pd.DataFrame, mode: str) -> dict | None:
    """The best trial of ``trials`` (one row per trial, with ``score`` and ``status`` columns,
    as ``trials.parquet``) as a dict of its columns, or None when no trial has a score.

    Example:
        >>> t = pd.DataFrame({"trial_id": ["a", "b"], "status": ["PRUNED", "COMPLETE"], "score": [0.9, 0.5]})
        >>> best_trial(t, "max")["trial_id"]
        'b'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if trials.empty:
        return None
    scored = trials[trials["score"].notna()]
    if scored.empty:
        return None
    complete = scored[scored["status"] == "COMPLETE"]
    pool = complete if not complete.empty else scored
    idx = pool["score"].idxmax() if mode == "max" else pool["score"].idxmin()
    return pool.loc[idx].to_dict()
