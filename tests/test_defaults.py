"""``budget.include_defaults``: the first trial of a study is the default configuration (the
fixed settings, every searched parameter at its ``default:`` or the method's default), so the
report can state what the search gained over it."""

from __future__ import annotations

import optuna
import pytest

from study.runner import RunOptions, _optuna_searcher
from study.space import SpaceError, load_spec
from trainables.methods.registry import METHODS

SMOKE = "search_spaces/smoke.yaml"


def test_defaults_are_the_method_defaults_unless_the_yaml_gives_one():
    spec = load_spec(SMOKE, ["budget.include_defaults=true", "search.pseudo.fg_percentile.default=0.45"])
    d = METHODS["aal"].defaults
    assert spec.defaults == {"train.lr": d["train"]["lr"], "pseudo.fg_percentile": 0.45,
                             "pseudo.crf": d["pseudo"]["crf"], "pseudo.crf_iterations": d["pseudo"]["crf_iterations"]}
    assert load_spec(SMOKE, ["budget.include_defaults=false"]).defaults is None


def test_a_conditional_parameter_is_left_out_when_its_condition_is_false():
    spec = load_spec(SMOKE, ["budget.include_defaults=true", "search.pseudo.crf.default=false"])
    assert spec.defaults["pseudo.crf"] is False and "pseudo.crf_iterations" not in spec.defaults


@pytest.mark.parametrize("override, key, value", [
    ("search.train.lr.low=0.05", "search.train.lr", 0.02),  # the method's default outside the range
    ("search.pseudo.fg_percentile.default=0.9", "search.pseudo.fg_percentile.default", 0.9),
    ("search.pseudo.crf_iterations.default=11", "search.pseudo.crf_iterations.default", 11),
])
def test_a_default_outside_the_searched_domain_is_refused(override, key, value):
    overrides = ["budget.include_defaults=true", override] + (["search.train.lr.high=0.1"] if "lr" in override else [])
    with pytest.raises(SpaceError) as e:
        load_spec(SMOKE, overrides)
    assert e.value.key == key and e.value.value == value and "default" in str(e.value)


def test_a_default_the_setting_refuses_names_the_key():
    with pytest.raises(SpaceError) as e:
        load_spec(SMOKE, ["search.pseudo.crf.default=maybe"])
    assert e.value.key == "search.pseudo.crf.default"


def test_the_first_trial_the_searcher_proposes_is_the_defaults(tmp_path):
    spec = load_spec(SMOKE, ["budget.include_defaults=true"])
    searcher = _optuna_searcher(spec, RunOptions(output=tmp_path))
    first = searcher.suggest("t0")
    second = searcher.suggest("t1")
    assert first == spec.defaults and second != spec.defaults
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.trials[0].user_attrs["wsss.defaults"] is True
    # A resumed study does not enqueue the defaults again.
    _optuna_searcher(spec, RunOptions(output=tmp_path, resume=True))
    assert sum(t.user_attrs.get("wsss.defaults", False) for t in study.get_trials()) == 1


class _Trial:
    """What ASHA reads of a Ray trial: its id and its configuration."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config = trial_id, config


def _rung_one(scheduler, trials_scores):
    """Report epoch 1 of each (trial, score) in order; the scheduler's decisions."""
    for trial, _ in trials_scores:
        scheduler.on_trial_add(None, trial)
    return [scheduler.on_trial_result(None, t, {"training_iteration": 1, "val/miou": s}) for t, s in trials_scores]


@pytest.mark.parametrize("defaults, expected", [(None, "STOP"), ({"train.lr": 0.02}, "CONTINUE")])
def test_asha_runs_the_defaults_trial_to_the_horizon(defaults, expected):
    """A poor defaults trial is stopped at the first rung by plain ASHA (defaults None) but runs on
    when it is the study's defaults trial; at the horizon it stops like any other."""
    from study.runner import DefaultsToHorizonASHA

    asha = DefaultsToHorizonASHA(defaults, time_attr="training_iteration", metric="val/miou", mode="max",
                                 max_t=4, grace_period=1, reduction_factor=2)
    good, poor = _Trial("a", {"train": {"lr": 0.001}}), _Trial("b", {"train": {"lr": 0.02}})
    other = _Trial("c", {"train": {"lr": 0.005}})
    assert _rung_one(asha, [(other, 0.8), (good, 0.9), (poor, 0.1)]) == ["CONTINUE", "CONTINUE", expected]
    assert asha.on_trial_result(None, poor, {"training_iteration": 4, "val/miou": 0.2}) == "STOP"
    # Another poor trial is still stopped: only the defaults trial is exempt.
    worse = _Trial("d", {"train": {"lr": 0.03}})
    asha.on_trial_add(None, worse)
    assert asha.on_trial_result(None, worse, {"training_iteration": 1, "val/miou": 0.05}) == "STOP"
