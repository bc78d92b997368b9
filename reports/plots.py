"""Figures of a study's search for the report: the objective against each searched parameter
(:func:`param_slices`) and against the epoch, trial by trial, with ASHA's rungs
(:func:`learning_curves`), from the ``trials`` frame and ``meta`` of :func:`reports.build.collect`
and the per-epoch histories of :func:`metric_histories`.

Marks used by both figures: completed trials in blue (filled dots, full lines), trials ASHA
stopped early in grey (hollow dots; dashed lines ending in an ``x``), the best trial
(:func:`reports.selection.best_trial`) in red. Failed trials are left out of the parameter
slices (their score, if any, is of an unfinished run) and drawn brown and dotted, ending in a
triangle, in the learning curves; running or killed ones with a score are hollow orange
triangles in the slices and orange dotted lines in the curves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from reports.selection import best_trial

PRUNED_LABEL = "stopped early (ASHA)"
RUNG_LABEL = "ASHA rung"
BLUE, GREY, RED, ORANGE, BROWN = "#4C72B0", "#8C8C8C", "#C44E52", "#DD8452", "#937860"
# Scatter style of each status in the parameter slices (FAILED: not drawn).
POINT_STYLE = {
    "COMPLETE": dict(marker="o", facecolors=BLUE, edgecolors=BLUE, label="completed"),
    "PRUNED": dict(marker="o", facecolors="none", edgecolors=GREY, label=PRUNED_LABEL),
    "OTHER": dict(marker="^", facecolors="none", edgecolors=ORANGE, label="running or interrupted"),
}
# Line style of each status in the learning curves.
LINE_STYLE = {
    "COMPLETE": dict(color=BLUE, ls="-", lw=1.2, alpha=0.8, label="completed"),
    "PRUNED": dict(color=GREY, ls="--", lw=1.0, alpha=0.9, marker="x", ms=7, label=PRUNED_LABEL),
    "FAILED": dict(color=BROWN, ls=":", lw=1.0, alpha=0.6, marker="v", ms=5, label="failed"),
    "OTHER": dict(color=ORANGE, ls=":", lw=1.0, alpha=0.8, label="running or interrupted"),
}


def metric_histories(meta: dict, trials: pd.DataFrame) -> pd.DataFrame:
    """The per-epoch values of ``meta["metric"]`` of every trial (columns ``trial_id``,
    ``epoch``, ``value``), read from the trials' MLflow runs; the step of a value is its epoch.
    Runs without a history add nothing; a step logged twice (a resumed trial) keeps its last value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    rows = []
    for tid, run_id in zip(trials.get("trial_id", []), trials.get("run_id", [])):
        if not isinstance(run_id, str) or not run_id:
            continue
        for m in client.get_metric_history(run_id, meta["metric"]):
            rows.append({"trial_id": tid, "epoch": int(m.step), "value": float(m.value), "ts": m.timestamp})
    out = pd.DataFrame(rows, columns=["trial_id", "epoch", "value", "ts"])
    out = out.sort_values(["trial_id", "epoch", "ts"], kind="stable")
    out = out.drop_duplicates(["trial_id", "epoch"], keep="last").drop(columns="ts")
    return out.astype({"epoch": int, "value": float}).reset_index(drop=True)


def asha_rungs(scheduler: dict, max_t: int) -> list[int]:
    """The epochs at which ASHA decides whether a trial goes on (empty for ``fifo``). As Ray's
    ASHA bracket does: each epoch below ``max_t`` (where a trial simply ends) that reaches a rung
    ``grace_period * reduction_factor**k`` not yet decided takes one decision; with a
    fractional reduction factor several rungs can fall in one epoch and are decided one an epoch.

    Example:
        >>> asha_rungs({"type": "asha", "grace_period": 1, "reduction_factor": 2}, 8)
        [1, 2, 4]
        >>> asha_rungs({"type": "asha", "grace_period": 2, "reduction_factor": 3}, 20)
        [2, 6, 18]
        >>> asha_rungs({"type": "asha", "grace_period": 1, "reduction_factor": 1.5}, 8)
        [1, 2, 3, 4, 6]
        >>> asha_rungs({"type": "asha", "grace_period": 4, "reduction_factor": 2}, 4), asha_rungs({"type": "fifo"}, 8)
        ([], [])
    """
    if (scheduler or {}).get("type") != "asha":
        return []
    grace, rf = scheduler["grace_period"], float(scheduler["reduction_factor"])
    if rf <= 1:
        raise ValueError(f"reduction_factor must be > 1, not {rf}")
    rungs = []
    while grace * rf ** len(rungs) < max_t:
        rungs.append(grace * rf ** len(rungs))
    out = []
    for epoch in range(1, max_t):
        if sum(r <= epoch for r in rungs) > len(out):
            out.append(epoch)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path | str) -> Path:
    """Lay out, write as PNG (dpi 110, as the report's other figures) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _inactive(v) -> bool:
    return v is None or (pd.api.types.is_scalar(v) and bool(pd.isna(v)))


def _is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def _kind(status: str) -> str:
    return status if status in ("COMPLETE", "PRUNED", "FAILED") else "OTHER"


def _best_id(meta: dict, trials: pd.DataFrame):
    best = best_trial(trials.assign(score=pd.to_numeric(trials["score"])), meta["mode"])
    return None if best is None else best["trial_id"]


def _positions(values: pd.Series, categorical: bool, rng) -> tuple[np.ndarray, list | None]:
    """x of each value: the value itself, or for categories their index jittered by up to ±0.15."""
    if not categorical:
        return values.astype(float).to_numpy(), None
    cats = sorted(set(values), key=str)
    index = values.map({c: i for i, c in enumerate(cats)}).astype(float).to_numpy()
    return index + rng.uniform(-0.15, 0.15, len(index)), cats


def slice_figure(meta: dict, trials: pd.DataFrame):
    """The figure of :func:`param_slices` (one axes per searched parameter), or None."""
    params = meta.get("params", [])
    if trials.empty:
        return None
    missing = {f"param.{p['name']}": None for p in params if f"param.{p['name']}" not in trials}
    trials = trials.assign(score=pd.to_numeric(trials["score"]), **missing)  # missing: never active
    shown = trials[trials["score"].notna() & (trials["status"] != "FAILED")]
    if not params or shown.empty:
        return None
    plt, rng, best = _pyplot(), np.random.default_rng(0), _best_id(meta, trials)
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, params):
        active = shown[~shown[f"param.{p['name']}"].map(_inactive)]
        categorical = p["type"] == "categorical" or active[f"param.{p['name']}"].map(_is_bool).any()
        xs, cats = _positions(active[f"param.{p['name']}"], categorical, rng)
        for kind, style in POINT_STYLE.items():
            sel = (active["status"].map(_kind) == kind).to_numpy()
            if sel.any():
                ax.scatter(xs[sel], active["score"].to_numpy()[sel], s=28, zorder=3, **style)
        if best in set(active["trial_id"]):
            i = int(np.flatnonzero((active["trial_id"] == best).to_numpy())[0])
            ax.scatter([xs[i]], [active["score"].iloc[i]], marker="*", s=160, c=RED, zorder=4,
                       label=f"best trial {best}")
        if cats:
            ax.set_xticks(range(len(cats)), [str(c) for c in cats])
            ax.set_xlim(-0.5, len(cats) - 0.5)
        elif p["type"] == "loguniform" and len(active):
            ax.set_xscale("log")
        n_off = len(shown) - len(active)
        ax.set_title(p["name"] + (f"\n({n_off} inactive, not shown)" if n_off else ""), fontsize=10)
        ax.set_ylabel(meta["metric"])
    for ax in list(axes.flat)[len(params):]:
        fig.delaxes(ax)
    handles = {lab: h for ax in fig.axes for h, lab in zip(*ax.get_legend_handles_labels())}
    axes.flat[0].legend(handles.values(), handles.keys(), loc="best", fontsize=8)
    fig.suptitle(f"{meta['name']}: objective against each searched parameter")
    return fig


def param_slices(meta: dict, trials: pd.DataFrame, path: Path | str) -> Path | None:
    """Write the objective against each searched parameter (one panel a parameter; log x for
    ``loguniform``; categories jittered) to ``path``; None when there is nothing to plot."""
    fig = slice_figure(meta, trials)
    return None if fig is None else _save(fig, path)


def curves_figure(meta: dict, trials: pd.DataFrame, histories: pd.DataFrame):
    """The figure of :func:`learning_curves`, or None. Each trial's line has the trial id as gid."""
    if histories.empty or trials.empty:
        return None
    plt, best = _pyplot(), _best_id(meta, trials)
    fig, ax = plt.subplots(figsize=(7, 4))
    labelled = set()
    for tid, status in zip(trials["trial_id"], trials["status"]):
        h = histories[histories["trial_id"] == tid].sort_values("epoch")
        if h.empty:
            continue
        style = dict(LINE_STYLE[_kind(status)])
        if tid == best:
            style.update(color=RED, lw=2.4, alpha=1.0, label=f"best trial {tid}", zorder=4)
            ax.annotate(f"best {tid}: {h['value'].iloc[-1]:.3f}", (h["epoch"].iloc[-1], h["value"].iloc[-1]),
                        xytext=(-4, 6), textcoords="offset points", ha="right", color=RED, fontsize=8)
        if len(h) == 1:
            style.setdefault("marker", "o")  # a one-epoch line would not show
        if tid != best and style["label"] in labelled:
            style["label"] = f"_{tid}"  # one legend entry a kind of line
        labelled.add(style["label"])
        line, = ax.plot(h["epoch"], h["value"], markevery=[len(h) - 1], **style)
        line.set_gid(tid)
    for i, r in enumerate(asha_rungs(meta.get("scheduler", {}), int(meta.get("epochs", 0)))):
        ax.axvline(r, color="k", ls=":", lw=0.9, label=RUNG_LABEL if i == 0 else "_rung", gid="asha-rung")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.margins(y=0.12)  # room for the best trial's label
    ax.set_xlabel("epoch")
    ax.set_ylabel(meta["metric"])
    ax.set_title(f"{meta['name']}: learning curves")
    ax.legend(loc="best", fontsize=8)
    return fig


def learning_curves(meta: dict, trials: pd.DataFrame, histories: pd.DataFrame,
                    path: Path | str) -> Path | None:
    """Write the objective against the epoch, one line a trial, ASHA's rungs dotted, to ``path``;
    None when no trial has a history."""
    fig = curves_figure(meta, trials, histories)
    return None if fig is None else _save(fig, path)
