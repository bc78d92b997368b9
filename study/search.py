"""Optuna inside Ray Tune: the define-by-run search space built from the YAML, and an
``OptunaSearch`` that tells Optuna the truth about trials ASHA stopped early.

``OptunaSearch`` reports every trial that ends without error as COMPLETE, so a trial that ASHA
stopped after two epochs enters TPE's history with its two-epoch score as if it were final,
biasing the sampler toward configurations that look good early (harness.md). Such trials are
told as PRUNED here; their intermediate values stay in the study, as with Optuna's own pruners.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from study.space import ParamSpec


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

    Touches ``_ot_trials`` and ``_ot_study`` of Ray's class: pinned to ray 2.60 and covered by
    ``tests/test_search.py``.
    """

    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = int(max_t)

    def suggest(self, trial_id: str):
        """Optuna's suggestion, with the Ray trial id kept on the Optuna trial (``ray.trial_id``)
        so that a resumed study can tell its trials from ones lost when the driver was killed."""
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray.trial_id", trial_id)
        return config

    def _told_already(self, trial_id: str) -> bool:
        """True when the Optuna trial is already finished in the storage though this searcher's
        restored state says otherwise: a driver killed after telling Optuna but before Ray saved
        its experiment state. The first outcome told stands (Optuna cannot be told twice)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return False
        state = self._ot_study._storage.get_trial(ot_trial._trial_id).state
        if state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._told_already(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._told_already(trial_id):
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        done = int((result or {}).get("training_iteration", 0))
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if error or (result and not finite):
            # Ray tells an errored trial that had reported once as COMPLETE: it is a failure.
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif result and done < self.max_t:
            # Intermediate values were reported by on_trial_result; Optuna keeps them.
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, float(value) if finite else None,
                                state=TrialState.COMPLETE if finite else TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def build_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, constant liar: defaults in Optuna 5) or random, seeded."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)
