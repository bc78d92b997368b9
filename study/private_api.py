"""The only place where the study driver touches private attributes of Ray Tune or Optuna.

Each function below wraps one private use for which the pinned library offers no public way.
Every one names the version it was checked against and the test that fails if an upgrade
breaks it; on a Ray or Optuna upgrade, read the installed source of each and rerun those tests.
The rest of ``study/`` (and ``reports/``) calls these functions and public APIs only.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune import Tuner
from ray.tune.search.optuna import OptunaSearch


def set_restored_callbacks(tuner: Tuner, callbacks: list) -> None:
    """Give a tuner made by ``Tuner.restore`` this run's callbacks.

    ``Tuner.restore`` has no ``run_config``/``callbacks`` argument and keeps the pickled run
    config, whose callbacks hold the interrupted run's counters. Sets
    ``Tuner._local_tuner`` (a ``TunerInternal``) ``.get_run_config().callbacks``; local
    Ray only (under Ray Client the tuner is ``_remote_tuner`` and this raises AttributeError,
    as before). Checked against ray 2.60.0; pinned by tests/test_resume.py.
    """
    tuner._local_tuner.get_run_config().callbacks = callbacks


def searcher_optuna_study(searcher: OptunaSearch) -> optuna.Study:
    """The Optuna study that Ray's ``OptunaSearch`` asks and tells (``OptunaSearch._ot_study``);
    Ray exposes no accessor. Checked against ray 2.60.0; pinned by tests/test_search.py."""
    return searcher._ot_study


def searcher_optuna_trials(searcher: OptunaSearch) -> dict[str, optuna.Trial]:
    """Ray trial id -> the Optuna trial ``OptunaSearch`` asked for it (``OptunaSearch._ot_trials``,
    Ray's own dict: not to be modified); Ray exposes no accessor. Checked against ray 2.60.0;
    pinned by tests/test_search.py (and tests/test_resume.py for ``ray.trial_id``)."""
    return searcher._ot_trials


def set_trial_user_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """Set a user attribute on a RUNNING trial of ``study`` that this process did not ask for
    (only a live ``optuna.Trial`` has a public ``set_user_attr``). Uses ``Study._storage`` and
    ``FrozenTrial._trial_id``. Checked against optuna 5.0.0; pinned by tests/test_resume.py
    (the ``wsss.lost`` attribute)."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)
