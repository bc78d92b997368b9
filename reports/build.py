"""``python -m reports.build --study DIR``: Parquet tables, figures and ``report.md`` from what a
study recorded (MLflow runs, the Optuna study, ``study.json``). Safe to run at any time, also
while a study is running or after it was interrupted.

Outputs (docs/contract.md): ``trials.parquet`` (one row per trial: ``trial_id``, ``status``, ``miou``,
``param.<name>`` ...), ``per_class.parquet`` (``trial_id``, ``class_name``, ``iou``), ``report.md``
and PNG figures under ``figures/``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from reports.baselines import (PUBLISHED_DATASET, baseline_methods, is_voc, published_per_class,
                               published_summary_lines, together)
from reports.plots import learning_curves, metric_histories, param_slices
from reports.selection import best_trial

STATUS_OF_RUN = {"FINISHED": "COMPLETE", "FAILED": "FAILED", "RUNNING": "RUNNING", "KILLED": "KILLED",
                 "SCHEDULED": "RUNNING"}


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    markdown: Path
    trials: pd.DataFrame
    per_class: pd.DataFrame
    best: dict | None
    figures: list[Path] = field(default_factory=list)


def _cast(value: str, kind: str):
    if kind in ("uniform", "loguniform"):
        return float(value)
    if kind == "int":
        return int(float(value))
    return yaml.safe_load(value)  # categorical: bool, number or string as written in the YAML


def collect(study_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Read ``study.json`` and the MLflow child runs into (meta, trials, per_class) frames."""
    from mlflow.tracking import MlflowClient

    meta = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    exp = client.get_experiment_by_name(meta["name"])
    runs = []
    if exp is not None and meta.get("parent_run_id"):
        token = None
        while True:
            page = client.search_runs([exp.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{meta['parent_run_id']}'",
                                      max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    kinds = {p["name"]: p["type"] for p in meta.get("params", [])}
    classes = meta.get("class_names", [])
    rows, pc_rows = [], []
    for run in runs:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        tid = tags.get("ray.trial_id", run.info.run_id)
        status = STATUS_OF_RUN.get(run.info.status, run.info.status)
        if status == "COMPLETE" and tags.get("wsss.stopped_early") == "true":
            status = "PRUNED"
        row = {
            "trial_id": tid,
            "run_id": run.info.run_id,
            "status": status,
            "miou": metrics.get("val/miou", math.nan),
            "miou_nocrf": metrics.get("val/miou_nocrf", math.nan),
            "cam_miou": metrics.get("val/cam_miou", math.nan),
            "train_cam_miou": metrics.get("train/cam_miou", math.nan),
            # The background threshold of the CAM masks, chosen on train (trainables/evaluation/cam_eval.py).
            "cam_threshold": metrics.get("train/cam_threshold", math.nan),
            "epochs": int(metrics.get("epoch", 0)),
            "score": metrics.get(meta["metric"], math.nan),
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "duration_s": ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000.0,
            "error": tags.get("wsss.error", ""),
            "is_defaults": tags.get("wsss.defaults") == "true",  # budget.include_defaults
        }
        for name, kind in kinds.items():
            row[f"param.{name}"] = _cast(params[name], kind) if name in params else None
        rows.append(row)
        names = classes or sorted(k[len("val/iou/"):] for k in metrics if k.startswith("val/iou/"))
        for c in names:
            if f"val/iou/{c}" in metrics:
                pc_rows.append({"trial_id": tid, "class_name": c, "iou": metrics[f"val/iou/{c}"]})
    trials = pd.DataFrame(rows)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "run_id", "status", "miou", "cam_miou", "epochs", "score"]
                              + [f"param.{n}" for n in kinds])
    else:
        trials = trials.sort_values("start_time").reset_index(drop=True)
    per_class = pd.DataFrame(pc_rows, columns=["trial_id", "class_name", "iou"])
    return meta, trials, per_class


INACTIVE = "–"  # a conditional parameter its condition switched off in that trial


def param_cell(v) -> str:
    """A parameter's value for a report table: floats to 4 significant digits, "–" when the
    trial did not use the parameter (None or NaN: a ``when`` condition was false).

    Example:
        >>> [param_cell(v) for v in (0.0123456, None, float("nan"), True, "par", 4)]
        ['0.01235', '–', '–', 'True', 'par', '4']
    """
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return INACTIVE
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _param_importance(meta: dict) -> pd.DataFrame | str:
    """Optuna parameter importances (PED-ANOVA: handles conditional parameters), or why not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=meta["name"], storage=meta["optuna_storage"])
    except Exception as e:  # no study stored yet
        return f"no Optuna study found ({type(e).__name__})"
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not meta.get("params"):
        return f"needs at least 2 completed trials and a searched parameter ({len(complete)} completed)"
    try:
        with warnings.catch_warnings():  # PED-ANOVA warns about small studies; the table says what it has
            warnings.simplefilter("ignore", UserWarning)
            imp = optuna.importance.get_param_importances(study)
    except Exception as e:
        return f"could not be computed: {e}"
    return pd.DataFrame({"parameter": list(imp), "importance": [round(v, 3) for v in imp.values()]})


def _figures(study_dir: Path, meta: dict, trials: pd.DataFrame, per_class: pd.DataFrame,
             best: dict | None) -> list[Path]:
    """The report's PNGs under ``figures/``: the best trial's review grids and per-class bars,
    the optimisation history, the parameter slices and the learning curves."""
    out = study_dir / "figures"
    out.mkdir(exist_ok=True)
    paths = best_trial_grids(meta, best, out)
    paths += _history_figures(study_dir, meta, trials, per_class, best)
    if len(trials):
        paths += [p for p in (param_slices(meta, trials, out / "param_slices.png"),
                              learning_curves(meta, trials, metric_histories(meta, trials), out / "learning_curves.png"))
                  if p is not None]
    return paths


def best_trial_grids(meta: dict, best: dict | None, out: Path, prefix: str = "best_trial_") -> list[Path]:
    """The best trial's review grids (``<prefix>val_grid.png``, ``<prefix>pseudo_labels.png``),
    rendered from the panel its MLflow run holds (``review/panel.npz``); none if it has none."""
    import tempfile

    from reports.grids import render_panel
    from reports.records import fetch_review_file
    from trainables.evaluation.review import PANEL_FILE

    if best is None or not isinstance(best.get("run_id"), str):
        return []
    with tempfile.TemporaryDirectory() as d:
        panel = fetch_review_file(meta["tracking_uri"], best["run_id"], PANEL_FILE, d)
        return [] if panel is None else render_panel(panel, out, label=f"best trial {best['trial_id']}", prefix=prefix)


def _history_figures(study_dir: Path, meta: dict, trials: pd.DataFrame, per_class: pd.DataFrame,
                     best: dict | None) -> list[Path]:
    """Per-class IoU bars of the best trial and the optimisation history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = study_dir / "figures"
    paths = []
    if best is not None:
        pc = per_class[per_class["trial_id"] == best["trial_id"]]
        if not pc.empty:
            fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(pc) + 2), 3.5))
            ax.bar(pc["class_name"], 100 * pc["iou"], color="#4C72B0")
            ax.axhline(100 * best["miou"], color="k", ls="--", lw=1, label=f"mIoU {100 * best['miou']:.1f}")
            ax.set_ylabel("IoU (%)")
            ax.set_ylim(0, 100)
            ax.set_title(f"{meta['name']}: best trial {best['trial_id']} per class ({meta.get('dataset', '')} val)")
            ax.tick_params(axis="x", rotation=45)
            ax.legend(loc="upper right")
            fig.tight_layout()
            p = out / "per_class_iou.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            paths.append(p)
    scored = trials[trials["score"].notna()] if len(trials) else trials
    if len(scored):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        x = range(1, len(scored) + 1)
        colours = ["#55A868" if s == "COMPLETE" else "#C44E52" if s == "FAILED" else "#8C8C8C" for s in scored["status"]]
        ax.scatter(x, scored["score"], c=colours, s=22, zorder=3)
        run_best = scored["score"].cummax() if meta["mode"] == "max" else scored["score"].cummin()
        ax.step(x, run_best, where="post", color="k", lw=1, label="best so far")
        ax.set_xlabel("trial (start order); grey = stopped early")
        ax.set_ylabel(meta["metric"])
        ax.set_title(f"{meta['name']}: optimisation history")
        ax.legend(loc="lower right")
        fig.tight_layout()
        p = out / "optimisation_history.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def same_data_rows(study_dir: Path, meta: dict, classes: list[str], split_label: str) -> list[dict]:
    """Best-trial rows of the baselines' studies (methods registered with ``baseline=True``) run
    beside this one in a comparison (``study/compare.py``: sibling folders listed in
    ``../compare.json``), same data and budget."""
    cmp_path = study_dir.parent / "compare.json"
    if not cmp_path.is_file():
        return []
    baselines = baseline_methods()
    rows = []
    for m in json.loads(cmp_path.read_text()).get("methods", []):
        other = study_dir.parent / m["search"]
        if m["method"] not in baselines or other == study_dir or not (other / "study.json").is_file():
            continue
        ometa, trials, per_class = collect(other)
        best = best_trial(trials, ometa["mode"])
        if best is None:
            continue
        iou = dict(zip(*per_class[per_class["trial_id"] == best["trial_id"]][["class_name", "iou"]].values.T))
        label = baselines[m["method"]].label
        rows.append({"method": f"{label} (best trial of `{m['search']}`)",
                     "dataset": split_label.replace("(this study)", "(same data and budget)"),
                     **{c: _pct(iou.get(c)) for c in classes}, "mIoU": _pct(best["miou"])})
    return rows


def render_markdown(meta: dict, trials: pd.DataFrame, per_class: pd.DataFrame, best: dict | None,
                    importance: pd.DataFrame | str, figures: list[Path], study_dir: Path, gain=None) -> str:
    """The text of ``report.md``, section by section; ``gain``: the best-minus-defaults
    (estimate, low, high) of :func:`objective_difference`, or None."""
    dataset = meta.get("dataset", meta.get("data", {}).get("name", "?"))
    lines = _header_lines(meta, trials, dataset, study_dir) + _summary_lines(meta, trials, best, gain)
    if best is None:
        return "\n".join(lines + ["No trial has reported a score yet.", ""])
    grids = [p for p in figures if p.name.startswith("best_trial_")]
    figures = [p for p in figures if p not in grids]
    lines += _best_lines(best)
    lines += _grid_lines(grids, study_dir)
    lines += _per_class_lines(meta, per_class, best, study_dir, dataset)
    lines += _top_lines(trials, meta["mode"])
    lines += _failed_lines(trials)
    lines += _importance_lines(importance)
    lines += _figure_lines(figures, study_dir)
    lines += ["Tables: `trials.parquet` (one row per trial), `per_class.parquet` (trial, class, IoU).", ""]
    return "\n".join(lines)


def _header_lines(meta: dict, trials: pd.DataFrame, dataset: str, study_dir: Path) -> list[str]:
    """Title, method, dataset and objective, trial counts by status, and how to open MLflow."""
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    study_folder = study_dir.resolve()
    return [
        f"# Study report: {meta['name']}",
        "",
        f"- method: `{meta['method']}`; dataset: **{dataset}**; objective: {meta['mode']} `{meta['metric']}`",
        f"- trials recorded: {len(trials)} of {meta.get('samples', '?')} budgeted ("
        + (", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "none") + ")",
        f"- MLflow: `python -m study.review --study {study_folder}` opens the runs table, every trial with its "
        f"`{meta['metric']}` (experiment `{meta['name']}` in `{meta['tracking_uri']}`)",
        "",
    ]


def _summary_lines(meta: dict, trials: pd.DataFrame, best: dict | None, gain=None) -> list[str]:
    """The first paragraph: what was searched, how the trials ended, and the gain of the best
    trial over the default configuration (``budget.include_defaults``)."""
    names = [p["name"] for p in meta.get("params", [])]
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    ended = [f"{counts[k]} {word}" for k, word in (("COMPLETE", "completed"), ("PRUNED", "stopped early by ASHA"),
                                                   ("FAILED", "failed"), ("RUNNING", "still running"),
                                                   ("KILLED", "interrupted")) if counts.get(k)]
    searcher = {"tpe": "Optuna's TPE", "random": "random search", "grid": "a grid"}.get(meta.get("sampler"), "Optuna")
    stops = " with ASHA early stopping" if meta.get("scheduler", {}).get("type") == "asha" else ""
    text = (f"This study searched {len(names)} parameter{'s' if len(names) != 1 else ''} of `{meta['method']}` "
            f"({', '.join(f'`{n}`' for n in names) or 'none'}) by {searcher}{stops}: {len(trials)} trials ran, "
            f"{', '.join(ended) or 'none ended yet'}.")
    if best is not None:
        text += (f" The best trial `{best['trial_id']}` reached {meta['metric']} {_pct(best['score'])}"
                 + _gain(meta, trials, best, gain))
    return [text, ""]


def defaults_trial(trials: pd.DataFrame) -> dict | None:
    """The study's defaults trial (``budget.include_defaults``) as a dict, or None."""
    rows = trials[trials["is_defaults"].astype(bool)] if "is_defaults" in trials else trials.iloc[:0]
    return rows.iloc[0].to_dict() if len(rows) else None


def objective_difference(meta: dict, run_a: str, run_b: str):
    """The paired bootstrap (reports/bootstrap.py) of the objective between two trial runs of
    the study, from their per-image confusion matrices: (estimate, low, high) as fractions, or
    None when a run recorded none. ``val/miou`` and ``val/iou/<class>`` are the output's,
    ``val/cam_miou`` the CAM masks'."""
    from reports.bootstrap import paired_bootstrap
    from reports.records import run_confusions

    metric = meta["metric"]
    kind = "cam" if metric == "val/cam_miou" else "output"
    a, b = (run_confusions(meta["tracking_uri"], r) for r in (run_a, run_b))
    if a is None or b is None or kind not in a or kind not in b or a["ids"] != b["ids"]:
        return None
    d = paired_bootstrap(a[kind], b[kind], a["class_names"])
    names = [*a["class_names"], "mIoU"]
    k = names.index(metric.split("/", 2)[2]) if metric.startswith("val/iou/") else len(names) - 1
    return float(d.estimate[k]), float(d.low[k]), float(d.high[k])


def _gain(meta: dict, trials: pd.DataFrame, best: dict, interval) -> str:
    """How the best trial compares with the defaults trial (with the difference's 95 % interval
    when both recorded per-image confusions), or how to get that comparison."""
    d = defaults_trial(trials)
    if d is None:
        return ("; the default configuration was not run (`budget.include_defaults: true` runs it as the first "
                "trial and states the gain of the search here).")
    if d["trial_id"] == best["trial_id"]:
        return ", and that is the default configuration: the search found nothing better."
    if not math.isfinite(d["score"]):
        return f"; the default configuration (trial `{d['trial_id']}`) {d['status'].lower()} without a score."
    partial = (f"; it was stopped early by ASHA after {d['epochs']} epochs, so this is its score then"
               if d["status"] == "PRUNED" else "")
    text = (f", {100 * (best['score'] - d['score']):+.1f} points over the default configuration "
            f"(trial `{d['trial_id']}`: {_pct(d['score'])}{partial})")
    if interval is None:
        return text + "."
    _, low, high = interval
    verdict = "larger than the noise" if low > 0 or high < 0 else "not resolved, the interval includes 0"
    return (text + f"; 95 % interval of the gain {100 * low:+.1f} to {100 * high:+.1f} (paired bootstrap over the "
            f"val images): {verdict}.")


def _grid_lines(grids: list[Path], study_dir: Path) -> list[str]:
    """The best trial's review grids: fixed val images with CAMs and predictions, and the
    reliable pseudo labels of a few training images."""
    if not grids:
        return []
    return ["### What the best trial's model sees", "",
            "The same val images in every trial and every method: the image, its ground truth, the CAM of each "
            "of its classes and the output; for the single-stage model also the reliable pseudo labels of a few "
            "training images (hatched: ignored). Every trial's grid is in its MLflow run under `review/`.", ""] + [
        f"![{p.stem}]({p.relative_to(study_dir).as_posix()})" for p in grids] + [""]


def _best_lines(best: dict) -> list[str]:
    """The best trial's scores (with and without CRF, its CAM masks) and its parameter values."""
    lines = [
        "## Best trial",
        "",
        f"Trial `{best['trial_id']}` ({best['status'].lower()}, {best['epochs']} epochs): "
        f"val mIoU **{_pct(best['miou'])}**"
        + (f" with the test-time dense CRF ({_pct(best['miou_nocrf'])} without)"
           if math.isfinite(best.get("miou_nocrf", math.nan)) else "")
        + (f"; its CAM masks at the background threshold chosen on train ({best['cam_threshold']:.2f}): "
           f"{_pct(best['cam_miou'])} on val, CAM quality on train {_pct(best['train_cam_miou'])}."
           if math.isfinite(best.get("cam_threshold", math.nan)) else "."),
        "",
    ]
    params = {k[len("param."):]: v for k, v in best.items() if k.startswith("param.")}
    if params:
        lines += ["| parameter | value |", "|---|---|"] + [f"| `{k}` | {param_cell(v)} |" for k, v in params.items()] + [""]
    return lines


def _per_class_lines(meta: dict, per_class: pd.DataFrame, best: dict, study_dir: Path, dataset: str) -> list[str]:
    """Per-class IoU of the best trial beside the baselines' same-data rows and the published rows."""
    split_label = f"{dataset} val (this study)"
    pc = per_class[per_class["trial_id"] == best["trial_id"]]
    classes = list(pc["class_name"])
    own = [{"method": f"{meta['method']} (best trial)", "dataset": split_label,
            **{c: _pct(v) for c, v in zip(pc["class_name"], pc["iou"])}, "mIoU": _pct(best["miou"])}]
    own += same_data_rows(study_dir, meta, classes, split_label)
    pub = published_per_class()
    lines = ["## Per-class IoU (%)", ""]
    if not is_voc(classes):
        return lines + [pd.DataFrame(own).to_markdown(index=False), ""] + _published_apart_lines(pub, dataset)
    table = own + [{"method": r["label"], "dataset": PUBLISHED_DATASET,
                    **{c: f"{r[c]:.1f}" for c in classes}, "mIoU": f"{r['miou']:.1f}"} for _, r in pub.iterrows()]
    return lines + [pd.DataFrame(table).to_markdown(index=False), "",
                    "Published rows were measured with each author's own backbone, budget and pipeline; "
                    "same-data rows come from the baselines' studies of the same comparison.", "",
                    *published_summary_lines()]


def _published_apart_lines(pub: pd.DataFrame, dataset: str) -> list[str]:
    """The baselines' published VOC rows, kept apart from a study on other data."""
    pub_tbl = pub.rename(columns={"label": "method"}).drop(columns=["source"])
    pub_tbl = pub_tbl.assign(source=pub["source"])
    return [
        f"### Published {together(m.label for m in baseline_methods().values())} rows "
        f"({PUBLISHED_DATASET}): NOT comparable",
        "",
        f"These numbers were measured on PASCAL VOC 2012 with 21 different classes; this study ran on "
        f"**{dataset}**. They are shown for reference only and must not be read against the table above.",
        "",
        pub_tbl.to_markdown(index=False, floatfmt=".1f"),
        "",
        *published_summary_lines(),
    ]


def _top_lines(trials: pd.DataFrame, mode: str) -> list[str]:
    """The five best-scored trials with their scores and parameters."""
    top = trials[trials["score"].notna()].copy()
    top = top.sort_values("score", ascending=mode == "min").head(5)
    cols = ["trial_id", "status", "epochs", "miou", "cam_miou", "train_cam_miou"] + [c for c in top.columns if c.startswith("param.")]
    shown = top[cols].copy()
    for c in ("miou", "cam_miou", "train_cam_miou"):
        shown[c] = shown[c].map(_pct)
    for c in shown.columns:
        if c.startswith("param."):
            shown[c] = shown[c].astype(object).map(param_cell)
    return ["## Top trials", "", shown.to_markdown(index=False, floatfmt=".4g"), ""]


def _failed_lines(trials: pd.DataFrame) -> list[str]:
    """Failed trials with their error messages (nothing when none failed)."""
    failed = trials[trials["status"] == "FAILED"]
    if not len(failed):
        return []
    return ["## Failed trials", ""] + [f"- `{r.trial_id}`: {r.error or 'no message'}" for r in failed.itertuples()] + [""]


def _importance_lines(importance: pd.DataFrame | str) -> list[str]:
    """Optuna parameter importances, or why they are not available."""
    lines = ["## Parameter importance (Optuna, PED-ANOVA)", ""]
    if isinstance(importance, str):
        return lines + [f"Not available: {importance}.", ""]
    return lines + [importance.to_markdown(index=False), ""]


def _figure_lines(figures: list[Path], study_dir: Path) -> list[str]:
    """Links to the study's figures, relative to the study folder (nothing when there are none)."""
    if not figures:
        return []
    return ["## Figures", ""] + [f"![{p.stem}]({p.relative_to(study_dir).as_posix()})" for p in figures] + [""]


def build_report(study_dir: str | Path) -> Report:
    """Write ``trials.parquet``, ``per_class.parquet``, figures and ``report.md`` into ``study_dir``."""
    study_dir = Path(study_dir)
    meta, trials, per_class = collect(study_dir)
    trials.to_parquet(study_dir / "trials.parquet", index=False)
    per_class.to_parquet(study_dir / "per_class.parquet", index=False)
    best = best_trial(trials, meta["mode"])
    figures = _figures(study_dir, meta, trials, per_class, best)
    d = defaults_trial(trials)
    gain = (objective_difference(meta, best["run_id"], d["run_id"])
            if best is not None and d is not None and d["trial_id"] != best["trial_id"] else None)
    md = render_markdown(meta, trials, per_class, best, _param_importance(meta), figures, study_dir, gain)
    path = study_dir / "report.md"
    path.write_text(md)
    return Report(markdown=path, trials=trials, per_class=per_class, best=best, figures=figures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.build", description="Rebuild a study's report.")
    p.add_argument("--study", required=True, help="the study's output folder")
    args = p.parse_args(argv)
    d = Path(args.study)
    if not (d / "study.json").is_file():
        sys.stderr.write(f"error: --study: {d} holds no study.json (not a study output folder)\n")
        return 2
    report = build_report(d)
    print(f"wrote {report.markdown}, {d / 'trials.parquet'}, {d / 'per_class.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
