"""Tests for study/search.py: the define-by-run space and the PRUNED-aware Optuna searcher."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from study.search import DefineByRunSpace, PrunedAwareOptunaSearch, build_sampler
from study.space import ParamSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = [
    ParamSpec("train.lr", "loguniform", low=1e-4, high=1e-1),
    ParamSpec("pseudo.fg_percentile", "uniform", low=0.3, high=0.8),
    ParamSpec("train.epochs", "int", low=2, high=10, step=2),
    ParamSpec("pseudo.crf", "categorical", choices=(True, False)),
    ParamSpec("pseudo.crf_iterations", "int", low=2, high=10, when=(("pseudo.crf", (True,)),)),
    ParamSpec("train.optimizer", "categorical", choices=("sgd", "adam")),
]


def _run_space(n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed),
                                storage=optuna.storages.InMemoryStorage())
    space = DefineByRunSpace(PARAMS)
    out = []
    for _ in range(n):
        trial = study.ask()
        assert space(trial) is None  # define-by-run: values are captured by the trial
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def test_define_by_run_values_in_range_and_typed():
    for params in _run_space(20):
        lr = params["train.lr"]
        assert isinstance(lr, float) and 1e-4 <= lr <= 1e-1
        p = params["pseudo.fg_percentile"]
        assert isinstance(p, float) and 0.3 <= p <= 0.8
        e = params["train.epochs"]
        assert isinstance(e, int) and not isinstance(e, bool) and e in (2, 4, 6, 8, 10)
        assert params["pseudo.crf"] in (True, False) and isinstance(params["pseudo.crf"], bool)
        assert params["train.optimizer"] in ("sgd", "adam")


def test_define_by_run_loguniform_is_log_scaled():
    # With a log scale, about half the draws fall below the geometric mean (~3.2e-3);
    # a linear scale would put ~3% there.
    lrs = [p["train.lr"] for p in _run_space(40, seed=1)]
    below = sum(lr < math.sqrt(1e-4 * 1e-1) for lr in lrs)
    assert 8 <= below <= 32


def test_define_by_run_conditional_param():
    runs = _run_space(20)
    with_crf = [p for p in runs if p["pseudo.crf"]]
    without = [p for p in runs if not p["pseudo.crf"]]
    assert with_crf and without, "both branches of the condition should appear in 20 random trials"
    for p in with_crf:
        assert isinstance(p["pseudo.crf_iterations"], int) and 2 <= p["pseudo.crf_iterations"] <= 10
    for p in without:
        assert "pseudo.crf_iterations" not in p
    # parameters after the conditional one are still suggested in both branches
    assert all("train.optimizer" in p for p in runs)


def test_define_by_run_condition_on_unsuggested_param_skips():
    # b depends on a, which is itself conditional on a value that never holds: b is never suggested.
    params = [
        ParamSpec("x", "categorical", choices=("only",)),
        ParamSpec("a", "int", low=1, high=3, when=(("x", ("never",)),)),
        ParamSpec("b", "int", low=1, high=3, when=(("a", (1, 2, 3)),)),
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    DefineByRunSpace(params)(trial)
    assert trial.params == {"x": "only"}


def test_build_sampler():
    assert isinstance(build_sampler("random", 3), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler("tpe", 3), optuna.samplers.TPESampler)
    # seeded: the same seed gives the same first suggestion
    def first(seed):
        study = optuna.create_study(sampler=build_sampler("tpe", seed))
        return study.ask().suggest_float("x", 0, 1)
    assert first(5) == first(5)
    assert first(5) != first(6)


# PrunedAwareOptunaSearch

SEARCH_PARAMS = PARAMS[:5]


@pytest.fixture
def storage():
    return optuna.storages.InMemoryStorage()


def _searcher(storage, max_t=4, mode="max", name="study"):
    return PrunedAwareOptunaSearch(
        space=DefineByRunSpace(SEARCH_PARAMS), metric="val/miou", mode=mode,
        sampler=optuna.samplers.RandomSampler(seed=0), study_name=name, storage=storage, max_t=max_t)


def _trials(storage, name="study"):
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_suggest_returns_config_from_space(storage):
    s = _searcher(storage)
    config = s.suggest("t1")
    # Ray only unflattens '/' names: the dotted names come through as they are (the trainable
    # merges them into its nested config by dotted key)
    assert 1e-4 <= config["train.lr"] <= 1e-1
    assert config["pseudo.crf"] in (True, False)
    assert ("pseudo.crf_iterations" in config) == config["pseudo.crf"]
    (trial,) = _trials(storage)
    assert trial.state == TrialState.RUNNING
    assert trial.params == config


def test_trial_stopped_early_is_pruned(storage):
    s = _searcher(storage)
    s.suggest("t1")
    s.on_trial_result("t1", {"val/miou": 0.3, "training_iteration": 1})
    s.on_trial_complete("t1", {"val/miou": 0.3, "training_iteration": 2})
    (trial,) = _trials(storage)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.3}  # the reported history is kept


def test_trial_run_to_max_t_is_complete(storage):
    s = _searcher(storage)
    s.suggest("t1")
    for it, v in enumerate([0.1, 0.2, 0.3, 0.45], start=1):
        s.on_trial_result("t1", {"val/miou": v, "training_iteration": it})
    s.on_trial_complete("t1", {"val/miou": 0.45, "training_iteration": 4})
    (trial,) = _trials(storage)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.45)
    assert trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.45}


def test_trial_past_max_t_is_complete(storage):
    s = _searcher(storage, max_t=2)
    s.suggest("t1")
    s.on_trial_complete("t1", {"val/miou": 0.7, "training_iteration": 3})
    (trial,) = _trials(storage)
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.7)


def test_errored_trial_after_one_report_is_fail(storage):
    s = _searcher(storage)
    s.suggest("t1")
    s.on_trial_result("t1", {"val/miou": 0.2, "training_iteration": 1})
    s.on_trial_complete("t1", {"val/miou": 0.2, "training_iteration": 1}, error=True)
    (trial,) = _trials(storage)
    assert trial.state == TrialState.FAIL


def test_errored_trial_without_result_is_fail(storage):
    s = _searcher(storage)
    s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)
    (trial,) = _trials(storage)
    assert trial.state == TrialState.FAIL


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, "0.5"])
def test_non_finite_or_missing_value_is_fail(storage, bad):
    s = _searcher(storage)
    s.suggest("t1")
    s.on_trial_complete("t1", {"val/miou": bad, "training_iteration": 4})
    (trial,) = _trials(storage)
    assert trial.state == TrialState.FAIL


def test_mode_min_and_several_trials(storage):
    s = _searcher(storage, mode="min")
    for tid in ("a", "b", "c"):
        s.suggest(tid)
    s.on_trial_complete("a", {"val/miou": 0.5, "training_iteration": 4})
    s.on_trial_complete("b", {"val/miou": 0.2, "training_iteration": 4})
    s.on_trial_complete("c", {"val/miou": 0.1, "training_iteration": 1})  # pruned: not the best
    study = optuna.load_study(study_name="study", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert study.best_value == pytest.approx(0.2)


def test_second_completion_is_ignored(storage):
    s = _searcher(storage)
    s.suggest("t1")
    s.on_trial_complete("t1", {"val/miou": 0.3, "training_iteration": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.on_trial_complete("t1", {"val/miou": 0.9, "training_iteration": 1}, error=True)
    (trial,) = _trials(storage)
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.3)


def test_sqlite_storage(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    s = _searcher(storage, name="sql")
    s.suggest("t1")
    s.on_trial_result("t1", {"val/miou": 0.3, "training_iteration": 1})
    s.on_trial_complete("t1", {"val/miou": 0.3, "training_iteration": 1})
    s.suggest("t2")
    s.on_trial_complete("t2", {"val/miou": 0.4, "training_iteration": 4})
    states = [t.state for t in _trials(storage, "sql")]
    assert states == [TrialState.PRUNED, TrialState.COMPLETE]


def test_tpe_is_random_search_for_its_startup_trials_then_models():
    """tpe_startup: with the same seed, TPE's first trials are the random sampler's, and only
    then does it propose from its model (so a study of no more trials is random search)."""
    import optuna

    from study.search import build_sampler

    def run(sampler, n=6):
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=n)
        return [t.params["x"] for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rand, tpe = run(build_sampler("random", 0)), run(build_sampler("tpe", 0, tpe_startup=3))
    assert tpe[:3] == rand[:3] and tpe[3:] != rand[3:]
