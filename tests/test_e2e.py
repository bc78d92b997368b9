"""End to end: the real CLI runs the smoke study (embedded Ray, Optuna, ASHA, MLflow, reports)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


# smoke_study (tests/conftest.py): the smoke study, run once per session.


def test_cli_prints_progress_report_path_and_mlflow_command(smoke_study):
    out, proc = smoke_study
    assert "started (1/2)" in proc.stdout and "[2/2 done]" in proc.stdout
    assert f"report: {(out / 'report.md').resolve()}" in proc.stdout
    assert "best trial" in proc.stdout and "val/miou = 0." in proc.stdout
    # a command that works as printed (this interpreter) and opens the runs table (tests/test_browser.py)
    python, = re.findall(rf"review in MLflow:  (\S+) -m study\.review --study {re.escape(str(out.resolve()))}\n",
                         proc.stdout)
    assert python == "python" or (ROOT / python).absolute() == Path(sys.executable).absolute()


def test_parquet_tables_follow_the_contract(smoke_study):
    out, _ = smoke_study
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2
    assert {"trial_id", "status", "miou", "param.train.lr", "param.pseudo.fg_percentile", "param.pseudo.crf"} <= set(trials.columns)
    assert trials["miou"].between(0, 1).all()
    assert set(trials["status"]) <= {"COMPLETE", "PRUNED"}
    assert trials["param.train.lr"].between(1e-3, 3e-2).all()
    per_class = pd.read_parquet(out / "per_class.parquet")
    assert list(per_class.columns) == ["trial_id", "class_name", "iou"]
    assert set(per_class["trial_id"]) == set(trials["trial_id"])
    assert "background" in set(per_class["class_name"])
    assert per_class["iou"].between(0, 1).all()
    # mIoU is the mean of the per-class IoUs the trial reported.
    for tid, group in per_class.groupby("trial_id"):
        miou = float(trials.loc[trials["trial_id"] == tid, "miou"].iloc[0])
        assert group["iou"].mean() == pytest.approx(miou, abs=1e-6)


def test_mlflow_holds_parent_and_one_child_per_trial(smoke_study):
    out, _ = smoke_study
    con = sqlite3.connect(out / "mlflow.db")
    exp = con.execute("select experiment_id from experiments where name='smoke'").fetchone()
    assert exp is not None
    runs = con.execute("select run_uuid, status from runs where experiment_id=?", exp).fetchall()
    tags = {}
    for run_id, key, value in con.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run_id, {})[key] = value
    parents = [r for r, _ in runs if "mlflow.parentRunId" not in tags.get(r, {})]
    children = [r for r, _ in runs if "mlflow.parentRunId" in tags.get(r, {})]
    assert len(parents) == 1 and len(children) == 2
    assert all(tags[c]["mlflow.parentRunId"] == parents[0] for c in children)
    # named after the study and its trials, as the MLflow UI lists them
    assert tags[parents[0]]["mlflow.runName"] == "study smoke"
    assert sorted(tags[c]["mlflow.runName"] for c in children) == sorted(f"trial {tags[c]['ray.trial_id']}"
                                                                        for c in children)
    assert all("ray.trial_id" in tags[c] for c in children)
    assert all(status == "FINISHED" for _, status in runs)
    parent_tags = tags[parents[0]]
    assert parent_tags["wsss.git_commit"] and len(parent_tags["wsss.space_sha256"]) == 64
    assert parent_tags["wsss.version.torch"].startswith("2.14.1")
    metric_keys = {k for (k,) in con.execute("select distinct key from metrics where run_uuid=?", (children[0],))}
    assert {"val/miou", "val/iou/background", "val/iou/disc", "train/loss/total"} <= metric_keys
    params = dict(con.execute("select key, value from params where run_uuid=?", (children[0],)).fetchall())
    assert "train.lr" in params and "pseudo.fg_percentile" in params and params["train.epochs"] == "2"


def test_each_trial_logs_its_review_grid_and_the_parent_reads_as_the_study(smoke_study):
    from mlflow.tracking import MlflowClient

    from study.space import load_spec

    out, _ = smoke_study
    meta = json.loads((out / "study.json").read_text())
    client = MlflowClient(meta["tracking_uri"])
    children = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{meta['parent_run_id']}'", order_by=["start_time ASC"])
    for run in children:  # every trial: its figure grids and the panel behind them
        assert {f.path for f in client.list_artifacts(run.info.run_id, "review")} == {
            "review/val_grid.png", "review/pseudo_labels.png", "review/panel.npz", "review/confusion.npz"}
        assert "wsss.review_error" not in run.data.tags
    # budget.include_defaults: the first trial ran the defaults, and only it is tagged so
    defaults = load_spec(ROOT / "search_spaces" / "smoke.yaml").defaults
    tagged = [r for r in children if r.data.tags.get("wsss.defaults") == "true"]
    assert len(tagged) == 1 and all(tagged[0].data.params[k] == str(v) for k, v in defaults.items())
    parent = client.get_run(meta["parent_run_id"])
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("# Study report: smoke") and "This study searched 4 parameters" in note
    assert f"get-artifact?path=figures%2Fbest_trial_val_grid.png&run_uuid={parent.info.run_id}" in note
    best = client.get_run(parent.data.tags["wsss.best_run_id"])
    for key in ("val/miou", "val/iou/background", "val/cam_miou"):  # the best trial's final metrics
        assert parent.data.metrics[key] == best.data.metrics[key]
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/best_trial_val_grid.png", "figures/param_slices.png", "figures/learning_curves.png"} <= logged


def test_report_labels_datasets_and_lists_trials(smoke_study):
    out, _ = smoke_study
    md = (out / "report.md").read_text()
    assert "synthetic val (this study)" in md
    assert "NOT comparable" in md and "SEAM" in md and "SC-CAM" in md
    assert "## Top trials" in md and "## Parameter importance" in md
    # pseudo.crf_iterations is conditional on pseudo.crf: a trial without the CRF shows "–", never nan
    assert "nan" not in md and "None" not in md
    # Artifacts (YAML, report, figures) stay inside the study folder, never in ./mlruns.
    assert (out / "mlartifacts").is_dir() and not (ROOT / "mlruns").exists()
    assert "figures/per_class_iou.png" in md and (out / "figures" / "per_class_iou.png").stat().st_size > 1000
    for name in ("best_trial_val_grid", "best_trial_pseudo_labels", "param_slices", "learning_curves"):
        assert f"(figures/{name}.png)" in md and (out / "figures" / f"{name}.png").stat().st_size > 1000
    # The first paragraph: what was searched, how the trials ended, the gain over the defaults trial.
    first = md.split("\n\n")[2]
    assert first.startswith("This study searched 4 parameters of `aal`") and "2 trials ran" in first
    assert "default configuration" in first and "was not run" not in first
    meta = json.loads((out / "study.json").read_text())
    assert meta["class_names"][0] == "background"


def test_report_rebuilds_from_records(smoke_study):
    out, _ = smoke_study
    (out / "report.md").unlink()
    (out / "trials.parquet").unlink()
    proc = _run(["-m", "reports.build", "--study", str(out)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").exists() and len(pd.read_parquet(out / "trials.parquet")) == 2


def test_existing_study_is_not_overwritten(smoke_study):
    out, _ = smoke_study
    before = (out / "mlflow.db").stat().st_mtime_ns
    proc = _run(["-m", "study.run", "--space", "search_spaces/smoke.yaml", "--output", str(out)], timeout=120)
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (out / "mlflow.db").stat().st_mtime_ns == before
