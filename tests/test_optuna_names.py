"""The stored Optuna study names its objective after the study's metric (``study.runner._optuna_searcher``),
so that optuna-dashboard and ``trials_dataframe()`` show ``val/miou`` rather than ``Objective 0``."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection

from study.runner import RunOptions, _optuna_searcher
from study.space import load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]


def _storage(out: Path) -> str:
    return f"sqlite:///{(out / 'optuna.db').resolve()}"


@pytest.mark.parametrize("overrides, metric, direction", [
    ([], "val/miou", StudyDirection.MAXIMIZE),
    (["metric=val/cam_miou", "mode=min"], "val/cam_miou", StudyDirection.MINIMIZE),
])
def test_optuna_study_carries_metric_name(tmp_path, overrides, metric, direction):
    spec = load_spec(ROOT / "search_spaces/smoke.yaml", overrides)
    limiter = _optuna_searcher(spec, RunOptions(output=tmp_path))
    study = optuna.load_study(study_name=spec.name, storage=_storage(tmp_path))
    assert study.metric_names == [metric]
    assert study.direction == direction
    # Ray's OptunaSearch loaded the study created beforehand (one study in the file, same name)
    assert optuna.get_all_study_names(_storage(tmp_path)) == [spec.name]
    assert limiter.searcher._ot_study.study_name == spec.name
    assert limiter.searcher._ot_study.metric_names == [metric]


def test_resumed_study_keeps_trials_and_name(tmp_path):
    spec = load_spec(ROOT / "search_spaces/smoke.yaml")
    _optuna_searcher(spec, RunOptions(output=tmp_path))
    study = optuna.load_study(study_name=spec.name, storage=_storage(tmp_path))
    study.tell(study.ask(), 0.5)
    _optuna_searcher(spec, RunOptions(output=tmp_path, resume=True))  # loads, does not fail or reset
    again = optuna.load_study(study_name=spec.name, storage=_storage(tmp_path))
    assert again.metric_names == ["val/miou"] and len(again.trials) == 1
    assert again.trials[0].values == [0.5]
