"""Optuna inside Ray Tune: the define-by-run search space built from the YAML, and an
``OptunaSearch`` that tells Optuna the truth about trials ASHA stopped early.

``OptunaSearch`` reports every trial that ends without error as COMPLETE, so a trial that ASHA
stopped after two epochs enters TPE's history with its two-epoch score as if it were final,
biasing the sampler toward configurations that look good early (docs/harness.md). Such trials are
told as PRUNED here; their intermediate values stay in the study, as with Optuna's own pruners.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from study.private_api import searcher_optuna_study, searcher_optuna_trials
from study.space import ParamSpec

logger = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class DefineByRunSpace:
    """The YAML's ``search`` section as an Optuna define-by-run function.

    A plain class (not a closure or lambda) so that Ray can pickle it into its experiment
    checkpoint. Parameters are suggested in file order; a parameter with ``when`` is suggested
    only if every referenced parameter took one of the listed values.
    """

    def __init__(self, params: list[ParamSpec]):
        self.params = list(params)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if any(ref not in chosen or chosen[ref] not in values for ref, values in p.when):
                continue
            if p.type == "uniform":
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high)
            elif p.type == "loguniform":
                chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=True)
            elif p.type == "int":
                chosen[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1)
            else:
                chosen[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        return None


class PrunedAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells a trial stopped before ``max_t`` iterations as PRUNED.

    Reaches Ray's Optuna study and trials through :mod:`study.private_api` (pinned to ray 2.60,
    covered by ``tests/test_search.py``); keeps its own record of the trials it told
    (``_told``), so Ray's ``_completed_trials`` is not used.
    """

    # Ray trial ids whose Optuna trial this searcher has finished (pickled with the searcher by
    # Ray's save; the class default covers a searcher pickled before this attribute existed).
    _told: frozenset[str] = frozenset()

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = int(max_t)
        self._told = frozenset()

    def suggest(self, trial_id: str):
        """Optuna's suggestion, with the Ray trial id kept on the Optuna trial (``ray.trial_id``)
        so that a resumed study can tell its trials from ones lost when the driver was killed."""
        config = super().suggest(trial_id)
        ot_trial = searcher_optuna_trials(self).get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr("ray.trial_id", trial_id)
        return config

    def _told_already(self, trial_id: str) -> bool:
        """True when the Optuna trial is already finished in the storage though this searcher's
        restored state says otherwise: a driver killed after telling Optuna but before Ray saved
        its experiment state. The first outcome told stands (Optuna cannot be told twice)."""
        ot_trial = searcher_optuna_trials(self).get(trial_id)
        if ot_trial is None or trial_id in self._told:
            return False
        # Finished trials are cached by Optuna's storage: this reads only the unfinished ones.
        finished = searcher_optuna_study(self).get_trials(deepcopy=False, states=FINISHED)
        if any(t.number == ot_trial.number for t in finished):
            self._told = self._told | {trial_id}
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._told:  # as Ray's OptunaSearch does for a trial it finished
            logger.warning("Received additional result for trial %s, but it already finished. Result: %s",
                           trial_id, result)
        elif not self._told_already(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._told_already(trial_id):
            return
        if trial_id in self._told:
            logger.warning("Received additional completion for trial %s, but it already finished. Result: %s",
                           trial_id, result)
            return
        ot_trial = searcher_optuna_trials(self).get(trial_id)
        if ot_trial is None:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        study = searcher_optuna_study(self)
        value = (result or {}).get(self.metric)
        done = int((result or {}).get("training_iteration", 0))
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if error or (result and not finite):
            # Ray tells an errored trial that had reported once as COMPLETE: it is a failure.
            study.tell(ot_trial, state=TrialState.FAIL)
        elif result and done < self.max_t:
            # Intermediate values were reported by on_trial_result; Optuna keeps them.
            study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            study.tell(ot_trial, float(value) if finite else None,
                       state=TrialState.COMPLETE if finite else TrialState.PRUNED)
        self._told = self._told | {trial_id}


def build_sampler(kind: str, seed: int, tpe_startup: int = 10) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, constant liar: defaults in Optuna 5) after ``tpe_startup`` random
    trials, or random, seeded."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tpe_startup)
