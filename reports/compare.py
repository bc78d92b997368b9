"""The comparison report (``study/compare.py``): one row per method, class by class.

From each method's search study (best trial) and its seed reruns (mean +- std over seeds of the
best configuration): per-class IoU table, deltas against each baseline per class, a CAM
quality table (CAM mIoU on train at the threshold chosen there, CAM masks on val) with the
published orderings checked, each method that ran in several rounds per round, and the
published VOC rows of the baselines (in the table on VOC, clearly apart otherwise). Methods,
their labels, the baselines and the orderings come from the registry
(``trainables/methods/registry.py``: ``Method.label``, ``baseline``, ``claims``); the best trial
of a study is :func:`reports.selection.best_trial`'s. Writes ``comparison.md``, ``comparison.parquet``
(long: method, row, class_name, iou), ``cam_quality.parquet`` and
``figures/per_class_comparison.png``. ``python -m reports.compare --study DIR`` rebuilds them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from reports.baselines import (DATA_DIR, PUBLISHED_DATASET, baseline_methods, is_voc, method_label,
                               published_per_class, published_summary_lines, together)
from reports.bootstrap import paired_bootstrap
from reports.records import run_confusions, stacked
from reports.selection import best_trial


def orderings() -> list[tuple[str, str, str, str]]:
    """Published orderings of CAM quality (VOC train) this benchmark is checked against, from the
    registry's claims: (method, the method it claims to beat, their two published rows)."""
    from trainables.methods.registry import METHODS

    return [(name, c.over, *c.published) for name, m in METHODS.items() for c in m.claims]


def _pct(v: float) -> str:
    return "" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"


def _pm(mean: float, std: float) -> str:
    return "" if not np.isfinite(mean) else f"{100 * mean:.1f} ± {100 * (std if np.isfinite(std) else 0):.1f}"


def _load(study_dir: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    from reports.build import collect

    meta, trials, per_class = collect(study_dir)
    return meta, trials, per_class


def _round_history(meta: dict, run_ids: list[str]) -> pd.DataFrame:
    """Train CAM mIoU and val mIoU at the end of each round, per seed run (empty for a method
    that trained in one round: the loop logs ``train/round`` only with several)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=meta["tracking_uri"])
    rows = []
    for run_id in run_ids:
        rounds = {m.step: m.value for m in client.get_metric_history(run_id, "train/round")}
        if not rounds:
            continue
        for key in ("train/cam_miou", "val/miou"):
            for m in client.get_metric_history(run_id, key):
                r = rounds.get(m.step)
                if r is not None and rounds.get(m.step + 1, math.inf) != r:  # the round's last epoch
                    rows.append({"run_id": run_id, "round": int(r), "metric": key, "value": m.value})
    return pd.DataFrame(rows, columns=["run_id", "round", "metric", "value"])


def collect_comparison(compare_dir: Path) -> dict:
    """Everything the report shows, as frames."""
    meta = json.loads((compare_dir / "compare.json").read_text())
    rows, quality, rounds, classes, dataset, costs, bests, records = [], [], {}, None, "?", {}, {}, {}
    for m in meta["methods"]:
        label = method_label(m["method"])
        smeta, trials, per_class = _load(compare_dir / m["search"])
        dataset = smeta.get("dataset", dataset)
        classes = classes or smeta.get("class_names")
        best = best_trial(trials, smeta["mode"])
        if best is None:
            continue
        pc = per_class[per_class["trial_id"] == best["trial_id"]]
        rows += [{"method": label, "row": "best trial", "class_name": c, "iou": v} for c, v in zip(pc["class_name"], pc["iou"])]
        rows.append({"method": label, "row": "best trial", "class_name": "mIoU", "iou": best["miou"]})
        costs[label] = float(trials["duration_s"].sum())
        bests[label] = (smeta, best)
        records[label] = _records(smeta, trials, best)
        q = {"method": label, "key": m["method"], "best_train_cam_miou": best.get("train_cam_miou", math.nan),
             "best_val_cam_miou": best.get("cam_miou", math.nan), "best_val_miou": best["miou"]}
        seeds_dir = compare_dir / m["seeds"]
        if (seeds_dir / "study.json").is_file():
            kmeta, ktrials, kpc = _load(seeds_dir)
            ok = ktrials[ktrials["status"] == "COMPLETE"]
            if len(ok):
                kpc = kpc[kpc["trial_id"].isin(ok["trial_id"])]
                stats = kpc.groupby("class_name", sort=False)["iou"].agg(["mean", "std"])
                for c, r in stats.iterrows():
                    rows += [{"method": label, "row": "seed mean", "class_name": c, "iou": r["mean"]},
                             {"method": label, "row": "seed std", "class_name": c, "iou": r["std"]}]
                rows += [{"method": label, "row": "seed mean", "class_name": "mIoU", "iou": ok["miou"].mean()},
                         {"method": label, "row": "seed std", "class_name": "mIoU", "iou": ok["miou"].std()}]
                q.update({"seeds": len(ok), "train_cam_miou": ok["train_cam_miou"].mean(),
                          "train_cam_miou_std": ok["train_cam_miou"].std(), "val_cam_miou": ok["cam_miou"].mean(),
                          "val_cam_miou_std": ok["cam_miou"].std(), "val_miou": ok["miou"].mean(),
                          "val_miou_std": ok["miou"].std(), "cam_threshold": ok["cam_threshold"].mean(),
                          "trial_s": ok["duration_s"].mean()})
                records[label]["seeds"] = [run_confusions(kmeta["tracking_uri"], r) for r in ok["run_id"]]
                hist = _round_history(kmeta, list(ok["run_id"]))
                if not hist.empty:
                    rounds[label] = hist
        quality.append(q)
    return {"meta": meta, "table": pd.DataFrame(rows), "quality": pd.DataFrame(quality), "rounds": rounds,
            "classes": classes or [], "dataset": dataset, "costs": costs, "bests": bests,
            "defaults": {k: r["defaults_trial"] for k, r in records.items()},
            "differences": differences(records, classes or [])}


def _records(meta: dict, trials: pd.DataFrame, best: dict) -> dict:
    """A method's per-image confusion matrices: its best trial's, its defaults trial's (when the
    study ran it; the best's when it is the best) and, filled in later, its seed runs'; and the
    defaults trial's row of trials.parquet."""
    from reports.build import defaults_trial

    d = defaults_trial(trials)
    best_conf = run_confusions(meta["tracking_uri"], best["run_id"])
    if d is None:
        base = None
    else:  # the defaults trial may be the best one: then the gain is exactly 0
        base = best_conf if d["trial_id"] == best["trial_id"] else run_confusions(meta["tracking_uri"], d["run_id"])
    return {"best": best_conf, "seeds": [], "defaults": base, "defaults_trial": d}


def _side(record: dict, kind: str) -> np.ndarray | None:
    """(S, N, n, n) of one kind of mask: the seed runs, else the best trial alone."""
    seeds = stacked(record["seeds"], kind)
    return seeds if seeds is not None else stacked([record["best"]], kind)


def differences(records: dict[str, dict], classes: list[str]) -> pd.DataFrame:
    """Paired-bootstrap differences (reports/bootstrap.py), one row per class and mIoU: every pair
    of methods on their output (``difference``) and on their CAM masks (``CAM difference``), A the
    earlier in the table's order, over val images and seeds; and each method's best trial against
    its defaults trial (``tuning gain``, versus ``defaults``)."""
    rows, labels = [], list(records)
    for row, kind in (("difference", "output"), ("CAM difference", "cam")):
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                sa, sb = _side(records[a], kind), _side(records[b], kind)
                if sa is not None and sb is not None and sa.shape[1:] == sb.shape[1:]:
                    d = paired_bootstrap(sa, sb, classes)
                    rows += [{"method": a, "versus": b, "row": row, **r} for r in d.rows()]
    for label, rec in records.items():
        best, base = stacked([rec["best"]], "output"), stacked([rec["defaults"]], "output")
        if best is not None and base is not None and best.shape == base.shape:
            rows += [{"method": label, "versus": "defaults", "row": "tuning gain", **r}
                     for r in paired_bootstrap(best, base, classes).rows()]
    return pd.DataFrame(rows, columns=["method", "versus", "row", "class_name", "delta", "low", "high", "resolved"])


def lookup(diffs: pd.DataFrame, a: str, b: str, row: str = "difference") -> pd.DataFrame:
    """A − B per class (indexed by class_name), from either orientation of the pair."""
    if diffs.empty:
        return diffs
    d = diffs[(diffs["row"] == row) & (diffs["method"] == a) & (diffs["versus"] == b)]
    if len(d):
        return d.set_index("class_name")
    d = diffs[(diffs["row"] == row) & (diffs["method"] == b) & (diffs["versus"] == a)].set_index("class_name")
    return d.assign(delta=-d["delta"], low=-d["high"], high=-d["low"])


def _wide(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    cols = [c for c in classes if c in set(table["class_name"])] + ["mIoU"]
    wide = table.pivot_table(index=["method", "row"], columns="class_name", values="iou", sort=False)
    return wide.reindex(columns=cols)


def _deltas(wide: pd.DataFrame, against: str) -> pd.DataFrame:
    """Seed-mean IoU of each method minus ``against``'s, per class (percentage points)."""
    if (against, "seed mean") not in wide.index:
        return pd.DataFrame()
    ref = wide.loc[(against, "seed mean")]
    out = {m: 100 * (wide.loc[(m, "seed mean")] - ref) for m, r in wide.index if r == "seed mean" and m != against}
    return pd.DataFrame(out).T


def _figure(wide: pd.DataFrame, out: Path, title: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [(m, wide.loc[(m, r)]) for m, r in wide.index if r == "seed mean"]
    kind = "seed mean"
    if not means:
        means, kind = [(m, wide.loc[(m, r)]) for m, r in wide.index if r == "best trial"], "best trial"
    if not means:
        return None
    cols = list(wide.columns)
    x = np.arange(len(cols))
    width = 0.8 / len(means)
    fig, ax = plt.subplots(figsize=(max(7, 0.7 * len(cols) * len(means) / 2 + 3), 4))
    for i, (m, row) in enumerate(means):
        std = wide.loc[(m, "seed std")] if kind == "seed mean" and (m, "seed std") in wide.index else None
        ax.bar(x + (i - (len(means) - 1) / 2) * width, 100 * row.values, width, label=m,
               yerr=None if std is None else 100 * std.fillna(0).values, capsize=2)
    ax.set_xticks(x, cols, rotation=45, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title} ({kind}{' ± std over seeds' if kind == 'seed mean' else ''})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def render(data: dict, figure: Path | None, compare_dir: Path, grid: Path | None = None) -> str:
    """The text of ``comparison.md``, section by section."""
    meta, table, classes, dataset = data["meta"], data["table"], data["classes"], data["dataset"]
    lines = _header_lines(meta, dataset)
    if table.empty:
        return "\n".join(lines + ["No method has a scored trial yet.", ""])
    wide, voc = _wide(table, classes), is_voc(classes)
    baselines = [b.label for b in baseline_methods().values()]
    diffs = data.get("differences", pd.DataFrame())
    lines += _per_class_lines(wide, classes, len(meta["seeds"]), voc)
    lines += _delta_lines(wide, baselines, diffs)
    lines += _interval_lines(diffs, classes)
    lines += _tuning_lines(diffs, data.get("defaults", {}), data.get("bests", {}))
    lines += _quality_lines(data["quality"], data["costs"])
    lines += _ordering_lines(data["quality"], diffs)
    lines += _round_lines(data["rounds"])
    if not voc:
        lines += _published_apart_lines(baselines, dataset)
    if figure is not None:
        lines += _figure_lines(figure, compare_dir)
    if grid is not None:
        lines += ["## The same val images, method by method", "",
                  "Each method's best trial at its last evaluation: the output of every method on the same images "
                  "(each trial's own grid, with its CAMs, is in its MLflow run under `review/`).", "",
                  f"![review grid]({grid.relative_to(compare_dir).as_posix()})", ""]
    lines += _studies_lines(meta)
    return "\n".join(lines)


def _header_lines(meta: dict, dataset: str) -> list[str]:
    """Title and the protocol every method ran under (data, budget, seeds, CAM masks)."""
    return [f"# Comparison: {meta['name']}", "",
            f"- dataset: **{dataset}** (val for mIoU; train for choosing the CAM threshold and for CAM quality)",
            f"- budget per method: {meta['samples']} trials ({meta['concurrency']} at once, ASHA), same data, "
            f"backbone, start weights, epochs and evaluation; then the best configuration rerun with seeds "
            f"{meta['seeds']} (no early stopping)",
            "- CAM methods' masks: argmax([t; CAMs]) with t chosen on train, never on val; the single-stage "
            "model's row is its segmentation output", ""]


def _per_class_lines(wide: pd.DataFrame, classes: list[str], n_seeds: int, voc: bool) -> list[str]:
    """Per-class IoU table: best trial and mean ± std over seeds per method (plus published rows on VOC)."""
    shown = wide.map(_pct).reset_index()
    for m in shown["method"].unique():  # mean ± std cells for the seed rows
        if (m, "seed mean") in wide.index:
            mean, std = wide.loc[(m, "seed mean")], wide.loc[(m, "seed std")]
            idx = shown.index[(shown["method"] == m) & (shown["row"] == "seed mean")][0]
            shown.loc[idx, wide.columns] = [_pm(a, b) for a, b in zip(mean, std)]
            shown.loc[idx, "row"] = f"mean ± std ({n_seeds} seeds)"
    shown = shown[shown["row"] != "seed std"]
    if voc:
        pub = published_per_class()
        extra = pd.DataFrame([{"method": r["label"], "row": f"published ({r['source']})",
                               **{c: f"{r[c]:.1f}" for c in classes}, "mIoU": f"{r['miou']:.1f}"} for _, r in pub.iterrows()])
        shown = pd.concat([shown, extra], ignore_index=True)
    lines = ["## Per-class IoU (%)", "", shown.to_markdown(index=False), ""]
    return lines + (published_summary_lines() if voc else [])



def _delta_lines(wide: pd.DataFrame, baselines: list[str], diffs: pd.DataFrame) -> list[str]:
    """One table per baseline: each method's seed-mean IoU minus the baseline's, per class; a
    star marks a difference whose 95 % interval excludes 0."""
    lines = []
    for ref in baselines:
        d = _deltas(wide, ref)
        if d.empty:
            continue
        cells = d.copy().astype(object)
        for m in d.index:
            resolved = lookup(diffs, m, ref)["resolved"] if len(diffs) else pd.Series(dtype=bool)
            for c in d.columns:
                star = "*" if bool(resolved.get(c, False)) else ""
                cells.loc[m, c] = "" if not np.isfinite(d.loc[m, c]) else f"{d.loc[m, c]:+.1f}{star}"
        lines += [f"### Δ against {ref} (seed means, percentage points)", "",
                  cells.reset_index(names="method").to_markdown(index=False), "",
                  "\\* the 95 % interval of the difference excludes 0 (paired bootstrap over val images and seeds, "
                  "next section); an unmarked difference is within the noise at this budget.", ""]
    return lines


def _interval(r) -> str:
    """``+3.2 [+1.0, +5.1]`` in percentage points, bold when the interval excludes 0."""
    if not np.isfinite(r["delta"]):
        return ""
    text = f"{100 * r['delta']:+.1f} [{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]"
    return f"**{text}**" if r["resolved"] else text


def _interval_lines(diffs: pd.DataFrame, classes: list[str]) -> list[str]:
    """Every pair of methods: the difference of their outputs per class and in mIoU with its 95 %
    interval (bold: resolved, the interval excludes 0)."""
    d = diffs[diffs["row"] == "difference"] if len(diffs) else diffs
    if d.empty:
        return []
    cols = ["mIoU"] + [c for c in classes if c in set(d["class_name"])]
    table = [{"A − B": f"{a} − {b}", **{c: _interval(g.set_index("class_name").loc[c]) for c in cols}}
             for (a, b), g in d.groupby(["method", "versus"], sort=False)]
    return ["## Differences with 95 % intervals", "",
            "A − B in percentage points with the 95 % interval of a paired bootstrap (2000 replicates) over the "
            "val images and, where a method has several seed runs, over its seeds (reports/bootstrap.py). "
            "**Bold**: the interval excludes 0, so the difference is larger than the noise at this budget.", "",
            pd.DataFrame(table).to_markdown(index=False), ""]


def _tuning_lines(diffs: pd.DataFrame, defaults: dict, bests: dict) -> list[str]:
    """Each method's best trial against its defaults trial (``budget.include_defaults``)."""
    d = diffs[(diffs["row"] == "tuning gain") & (diffs["class_name"] == "mIoU")] if len(diffs) else diffs
    if d.empty:
        return []
    rows = [{"method": r["method"], "best − defaults, mIoU (95 % interval)": _interval(r),
             "the search paid": _search_paid(r, defaults.get(r["method"]), bests.get(r["method"])),
             "defaults trial": _defaults_note(defaults.get(r["method"]))} for _, r in d.iterrows()]
    return ["## Tuning gain: the best trial against the default configuration", "",
            "Each search study ran the method's defaults as its first trial, and ASHA lets it run all epochs; "
            "the gain of the best trial, paired bootstrap over the val images (one run each).", "",
            pd.DataFrame(rows).to_markdown(index=False), ""]


def _search_paid(r, dtrial: dict | None, best: tuple | None) -> str:
    """The verdict of one tuning-gain row."""
    if dtrial is not None and best is not None and dtrial["trial_id"] == best[1]["trial_id"]:
        return "no: the defaults trial is the best trial"
    if not r["resolved"]:
        return "not resolved at this budget"
    return "yes" if r["delta"] > 0 else "no: the defaults were better"


def _defaults_note(dtrial: dict | None) -> str:
    """Which trial the defaults ran as and how far: one stopped early (a study run before ASHA
    exempted it) makes the gain include its missing epochs."""
    if dtrial is None:
        return ""
    note = f"`{dtrial['trial_id']}`, {int(dtrial['epochs'])} epochs"
    return note + " (stopped by ASHA: the gain includes the epochs it missed)" if dtrial["status"] == "PRUNED" else note


def _quality_lines(quality: pd.DataFrame, costs: dict) -> list[str]:
    """CAM quality table: train CAM mIoU, val CAM-mask mIoU, threshold, output mIoU and cost per method."""
    lines = ["## CAM quality", "",
             "CAM mIoU on train at the threshold chosen there, and the same threshold's CAM masks on val "
             "(mean ± std over seeds of each method's best configuration); the last column is each method's "
             "output (the single-stage model's segmentation, the other methods' CAM masks).", ""]
    qrows = []
    for _, q in quality.iterrows():
        qrows.append({"method": q["method"], "train CAM mIoU": _pm(q.get("train_cam_miou", np.nan), q.get("train_cam_miou_std", np.nan)),
                      "val CAM-mask mIoU": _pm(q.get("val_cam_miou", np.nan), q.get("val_cam_miou_std", np.nan)),
                      "t (train)": f"{q.get('cam_threshold', np.nan):.2f}", "val mIoU (output)": _pm(q.get("val_miou", np.nan), q.get("val_miou_std", np.nan)),
                      "s per seed run": f"{q.get('trial_s', np.nan):.0f}",
                      "search wall (s, sum of trials)": f"{costs.get(q['method'], np.nan):.0f}"})
    return lines + [pd.DataFrame(qrows).to_markdown(index=False), ""]


def _ordering_lines(quality: pd.DataFrame, diffs: pd.DataFrame) -> list[str]:
    """The registry's published orderings of CAM quality, each checked here with the 95 %
    interval of the difference of the two methods' val CAM masks (over val images and seeds)."""
    pub_q = pd.read_csv(DATA_DIR / "voc12_cam_quality.csv")
    pub_val = {r["method"]: r["value"] for _, r in pub_q[pub_q["split"] == "train"].iterrows()}
    q_by = {r["method"]: r for _, r in quality.iterrows()}
    lines = ["### Published orderings of CAM quality, checked here", "",
             "Verdicts use the val CAM masks at the threshold chosen on train, for which every image's confusion "
             "matrix is recorded: **holds** when the 95 % interval of the difference lies above 0, **reversed** "
             "when it lies below, otherwise **not resolved at this budget**.", ""]
    for ours, base, pub_ours, pub_base in orderings():
        la, lb = method_label(ours), method_label(base)
        a, b = q_by.get(la), q_by.get(lb)
        d = lookup(diffs, la, lb, "CAM difference")
        if a is None or b is None or d.empty or "mIoU" not in d.index:
            continue
        r = d.loc["mIoU"]
        verdict = "holds" if r["low"] > 0 else "reversed" if r["high"] < 0 else "not resolved at this budget"
        lines.append(f"- {la} above {lb}: published {pub_val[pub_ours]:.1f} vs {pub_val[pub_base]:.1f} (VOC train); "
                     f"here val CAM masks {100 * a['val_cam_miou']:.1f} vs {100 * b['val_cam_miou']:.1f}, "
                     f"difference {100 * r['delta']:+.1f} (95 % interval {100 * r['low']:+.1f} to "
                     f"{100 * r['high']:+.1f}): **{verdict}**.")
    return lines + [""]


def _round_lines(rounds: dict[str, pd.DataFrame]) -> list[str]:
    """Per-round tables (mean ± std over seeds) of the methods that trained in several rounds."""
    lines = []
    for label, hist in rounds.items():
        if hist.empty or hist["round"].nunique() < 2:
            continue
        stats = hist.groupby(["metric", "round"])["value"].agg(["mean", "std"]).reset_index()
        lines += ["", f"### {label} by round (best configuration, mean over seeds)", "",
                  "| metric | " + " | ".join(f"round {r}" for r in sorted(hist["round"].unique())) + " |",
                  "|---|" + "---|" * hist["round"].nunique()]
        for metric, g in stats.groupby("metric"):
            lines.append(f"| {metric} | " + " | ".join(_pm(a, b) for a, b in zip(g["mean"], g["std"])) + " |")
    return lines + [""]


def _published_apart_lines(baselines: list[str], dataset: str) -> list[str]:
    """The baselines' published VOC rows, kept apart from a comparison on other data."""
    pub = published_per_class()
    return [f"## Published {together(baselines)} rows ({PUBLISHED_DATASET}): NOT comparable", "",
            f"Measured on PASCAL VOC 2012 val with each author's backbone and budget; this comparison ran on "
            f"**{dataset}**. For reference only; do not read them against the tables above.", "",
            pub.drop(columns=["dataset"]).rename(columns={"label": "method"}).to_markdown(index=False, floatfmt=".1f"), "",
            *published_summary_lines()]


def _figure_lines(figure: Path, compare_dir: Path) -> list[str]:
    """The per-class comparison figure, linked relative to the comparison folder."""
    return ["## Figure", "", f"![per-class comparison]({figure.relative_to(compare_dir).as_posix()})", ""]


def _studies_lines(meta: dict) -> list[str]:
    """Closing line: the search and seed studies each method's rows come from."""
    return ["Studies: " + ", ".join(f"`{m['search']}/` and `{m['seeds']}/`" for m in meta["methods"])
            + " (each with its own report.md and MLflow records).", ""]


def comparison_frame(table: pd.DataFrame, diffs: pd.DataFrame) -> pd.DataFrame:
    """comparison.parquet: the IoU rows (method, row, class_name, iou) and the difference rows
    (``iou`` = the difference, ``versus`` the other side, ``low``/``high`` its 95 % interval,
    ``resolved`` whether that excludes 0); columns a row does not use are empty."""
    own = table.assign(versus=None, low=np.nan, high=np.nan, resolved=None)
    other = diffs.rename(columns={"delta": "iou"})
    cols = ["method", "row", "class_name", "iou", "versus", "low", "high", "resolved"]
    return pd.concat([own[cols], other[cols]], ignore_index=True) if len(other) else own[cols]


def build_comparison(compare_dir: str | Path) -> Path:
    """Write the comparison files into ``compare_dir``; returns the Markdown path."""
    compare_dir = Path(compare_dir)
    data = collect_comparison(compare_dir)
    comparison_frame(data["table"], data["differences"]).to_parquet(compare_dir / "comparison.parquet", index=False)
    data["quality"].to_parquet(compare_dir / "cam_quality.parquet", index=False)
    figure = None
    if not data["table"].empty:
        figure = _figure(_wide(data["table"], data["classes"]), compare_dir / "figures" / "per_class_comparison.png",
                         f"{data['meta']['name']} on {data['dataset']}")
    grid = review_grid(data["bests"], compare_dir / "figures" / "review_grid.png",
                       f"{data['meta']['name']}: best trial of each method on {data['dataset']} val")
    path = compare_dir / "comparison.md"
    path.write_text(render(data, figure, compare_dir, grid))
    return path


def review_grid(bests: dict[str, tuple[dict, dict]], path: Path, title: str) -> Path | None:
    """One grid of the fixed val images with a column per method (its best trial's output),
    from the review panels the trials logged to MLflow; None when no method has one."""
    import tempfile

    from reports.grids import comparison_grid
    from reports.records import fetch_review_file
    from trainables.evaluation.review import PANEL_FILE, load_panel

    panels = {}
    with tempfile.TemporaryDirectory() as d:
        for k, (label, (meta, best)) in enumerate(bests.items()):
            local = fetch_review_file(meta["tracking_uri"], best["run_id"], PANEL_FILE, f"{d}/{k}")
            if local is not None:
                panels[label] = load_panel(local)
    if not panels:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(panels, title).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.compare", description="Rebuild a comparison's report.")
    p.add_argument("--study", required=True, help="the comparison's output folder")
    args = p.parse_args(argv)
    d = Path(args.study)
    if not (d / "compare.json").is_file():
        sys.stderr.write(f"error: --study: {d} holds no compare.json (not a comparison output folder)\n")
        return 2
    print(f"wrote {build_comparison(d)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
