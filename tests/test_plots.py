"""Tests for reports/plots.py on hand-made ``trials``/``histories`` frames (no study run), and of
:func:`metric_histories` against a real MLflow SQLite store."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from reports.plots import (PRUNED_LABEL, RUNG_LABEL, asha_rungs, curves_figure, learning_curves,  # noqa: E402
                           metric_histories, param_slices, slice_figure)

ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 2}
META = {
    "name": "toy", "metric": "val/miou", "mode": "max", "epochs": 8, "scheduler": ASHA,
    "params": [{"name": "train.lr", "type": "loguniform"}, {"name": "pseudo.fg_percentile", "type": "uniform"},
               {"name": "pseudo.crf", "type": "categorical"}, {"name": "pseudo.crf_iterations", "type": "int"}],
}
NAN = math.nan
# a and c complete (c best), b and e stopped by ASHA, d failed; crf_iterations inactive without CRF.
TRIALS = pd.DataFrame({
    "trial_id": ["a", "b", "c", "d", "e"],
    "run_id": ["ra", "rb", "rc", "rd", "re"],
    "status": ["COMPLETE", "PRUNED", "COMPLETE", "FAILED", "PRUNED"],
    "score": [0.6, 0.3, 0.7, NAN, 0.35],
    "param.train.lr": [1e-3, 1e-2, 3e-3, 2e-2, 5e-3],
    "param.pseudo.fg_percentile": [0.5, 0.4, 0.7, 0.3, 0.6],
    "param.pseudo.crf": [True, False, True, False, False],
    "param.pseudo.crf_iterations": [4, None, 8, None, None],
})
HIST = pd.DataFrame(
    [("a", e, 0.1 * e - 0.2) for e in range(1, 9)] + [("b", e, 0.15 * e) for e in (1, 2)]
    + [("c", e, 0.1 * e - 0.1) for e in range(1, 9)] + [("d", e, 0.05 * e) for e in (1, 2, 3)]
    + [("e", 1, 0.35), ("zz", 1, 0.9)],  # zz: a history without a trial row, not drawn
    columns=["trial_id", "epoch", "value"])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _panel(fig, name):
    return next(ax for ax in fig.axes if ax.get_title().split("\n")[0] == name)


def _points(ax, label):
    return [c for c in ax.collections if c.get_label() == label]


def _ray_decisions(grace, rf, max_t) -> list[int]:
    """The epochs at which Ray's own ASHA bracket records (decides on) one trial reporting every epoch."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    bracket = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                            reduction_factor=rf)._brackets[0]
    trial, out = SimpleNamespace(trial_id="t"), []
    for epoch in range(1, max_t):  # at max_t the scheduler stops the trial without the bracket
        before = sum("t" in recorded for _, recorded in bracket._rungs)
        bracket.on_result(trial, epoch, 0.5)
        if sum("t" in recorded for _, recorded in bracket._rungs) > before:
            out.append(epoch)
    return out


@pytest.mark.parametrize("grace, rf, max_t, rungs", [
    (1, 2, 8, [1, 2, 4]), (1, 2, 9, [1, 2, 4, 8]), (2, 3, 20, [2, 6, 18]), (1, 3, 9, [1, 3]),
    (1, 10, 1000, [1, 10, 100]), (4, 2, 4, []), (1, 2, 1, []), (1, 1.5, 8, [1, 2, 3, 4, 6]),
])
def test_asha_rungs_hand_cases_match_ray(grace, rf, max_t, rungs):
    assert asha_rungs({"type": "asha", "grace_period": grace, "reduction_factor": rf}, max_t) == rungs
    assert _ray_decisions(grace, rf, max_t) == rungs


@pytest.mark.parametrize("grace, rf, max_t", [(1, 1.1, 30), (2, 1.3, 25), (3, 2.5, 40), (1, 4, 64)])
def test_asha_rungs_fractional_factors_match_ray(grace, rf, max_t):
    assert asha_rungs({"type": "asha", "grace_period": grace, "reduction_factor": rf}, max_t) \
        == _ray_decisions(grace, rf, max_t)


def test_asha_rungs_fifo():
    assert asha_rungs({"type": "fifo"}, 8) == [] and asha_rungs({}, 8) == []


def test_slice_figure_panels_markers_and_titles():
    fig = slice_figure(META, TRIALS)
    assert len(fig.axes) == len(META["params"])  # one panel a searched parameter, spare grid cells removed
    lr = _panel(fig, "train.lr")
    assert lr.get_xscale() == "log" and _panel(fig, "pseudo.fg_percentile").get_xscale() == "linear"
    pruned, = _points(lr, PRUNED_LABEL)
    assert len(pruned.get_offsets()) == 2 and len(pruned.get_facecolor()) == 0  # hollow markers
    complete, = _points(lr, "completed")
    assert sorted(complete.get_offsets()[:, 0]) == [1e-3, 3e-3]
    assert sum(len(c.get_offsets()) for c in lr.collections if c.get_label() != "best trial c") == 4  # d failed
    star, = _points(lr, "best trial c")
    assert tuple(star.get_offsets()[0]) == (3e-3, 0.7)
    crf = _panel(fig, "pseudo.crf")
    assert [t.get_text() for t in crf.get_xticklabels()] == ["False", "True"]
    assert all(abs(x - round(x)) <= 0.15 for c in crf.collections for x in c.get_offsets()[:, 0])  # jittered
    iters = _panel(fig, "pseudo.crf_iterations")
    assert "2 inactive" in iters.get_title()  # b and e (d failed is not counted)
    assert sum(len(c.get_offsets()) for c in iters.collections if c.get_label() != "best trial c") == 2
    assert "inactive" not in lr.get_title()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert set(legend) == {"completed", PRUNED_LABEL, "best trial c"}


def test_slice_figure_mode_min_best():
    fig = slice_figure({**META, "mode": "min"}, TRIALS)
    assert _points(fig.axes[0], "best trial a")  # lowest score among the completed


def test_param_slices_writes_png(tmp_path):
    out = param_slices(META, TRIALS, tmp_path / "figs" / "param_slices.png")
    assert out == tmp_path / "figs" / "param_slices.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_param_slices_nothing_to_plot(tmp_path):
    assert param_slices({**META, "params": []}, TRIALS, tmp_path / "p.png") is None
    assert param_slices(META, TRIALS[TRIALS["status"] == "FAILED"], tmp_path / "p.png") is None
    assert param_slices(META, TRIALS.iloc[:0], tmp_path / "p.png") is None
    assert not (tmp_path / "p.png").exists()


def test_curves_figure_lines_stops_best_and_rungs():
    fig = curves_figure(META, TRIALS, HIST)
    ax, = fig.axes
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() != "asha-rung"}
    assert sorted(lines) == ["a", "b", "c", "d", "e"]  # one line a trial with a history
    for tid in ("b", "e"):
        assert lines[tid].get_marker() == "x" and lines[tid].get_linestyle() == "--"
        assert list(lines[tid].get_markevery()) == [len(lines[tid].get_xdata()) - 1]  # the stop marker at the end
    assert lines["a"].get_linestyle() == "-" and lines["a"].get_marker() in ("None", "", None)
    assert lines["c"].get_label() == "best trial c" and lines["c"].get_linewidth() > lines["a"].get_linewidth()
    assert any("best c" in t.get_text() for t in ax.texts)
    rungs = [ln for ln in ax.get_lines() if ln.get_gid() == "asha-rung"]
    assert [ln.get_xdata()[0] for ln in rungs] == [1, 2, 4]
    assert rungs[0].get_label() == RUNG_LABEL and rungs[0].get_linestyle() == ":"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend.count(PRUNED_LABEL) == 1 and RUNG_LABEL in legend and "completed" in legend


def test_learning_curves_png_fifo_and_empty(tmp_path):
    out = learning_curves(META, TRIALS, HIST, tmp_path / "learning_curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    fig = curves_figure({**META, "scheduler": {"type": "fifo"}}, TRIALS, HIST)
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "asha-rung"]
    assert learning_curves(META, TRIALS, HIST.iloc[:0], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_metric_histories_from_mlflow_sqlite(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("toy", artifact_location=str(tmp_path / "artifacts"))
    runs = {t: client.create_run(exp).info.run_id for t in ("a", "b", "c")}
    for step, v in ((1, 0.2), (2, 0.4), (3, 0.5)):
        client.log_metric(runs["a"], "val/miou", v, timestamp=1000 + step, step=step)
        client.log_metric(runs["a"], "val/cam_miou", v / 2, timestamp=1000 + step, step=step)
    # c: resumed, epoch 2 logged again after the restart; the later value wins
    for ts, step, v in ((1, 1, 0.1), (2, 2, 0.2), (3, 2, 0.25), (4, 3, 0.3)):
        client.log_metric(runs["c"], "val/miou", v, timestamp=ts, step=step)
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"],
                           "run_id": [runs["a"], runs["b"], runs["c"], None]})  # b: no history, d: no run
    h = metric_histories({"tracking_uri": uri, "metric": "val/miou"}, trials)
    assert list(h.columns) == ["trial_id", "epoch", "value"]
    assert h.values.tolist() == [["a", 1, 0.2], ["a", 2, 0.4], ["a", 3, 0.5],
                                 ["c", 1, 0.1], ["c", 2, 0.25], ["c", 3, 0.3]]
    assert h["epoch"].dtype.kind == "i"
    empty = metric_histories({"tracking_uri": uri, "metric": "val/miou"}, trials[trials["trial_id"] == "b"])
    assert empty.empty and list(empty.columns) == ["trial_id", "epoch", "value"]


def test_curves_one_epoch_lines_have_a_marker():
    trials = TRIALS.iloc[:3].assign(status="COMPLETE")
    hist = pd.DataFrame({"trial_id": ["a", "b", "c"], "epoch": [1, 1, 1], "value": [0.6, 0.3, 0.7]})
    fig = curves_figure({**META, "epochs": 1}, trials, hist)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() != "asha-rung"]
    assert len(lines) == 3 and all(ln.get_marker() == "o" for ln in lines)
    assert not [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "asha-rung"]  # max_t 1: no rung


def test_slice_figure_param_never_recorded():
    meta = {**META, "params": META["params"] + [{"name": "train.momentum", "type": "uniform"}]}
    fig = slice_figure(meta, TRIALS.assign(**{"param.train.lr": [1e-3, None, float("nan"), 2e-2, pd.NA]}))
    assert len(fig.axes) == 5 and "4 inactive" in _panel(fig, "train.momentum").get_title()
    assert "3 inactive" in _panel(fig, "train.lr").get_title()  # b None, c NaN, e pd.NA (d failed: not counted)
