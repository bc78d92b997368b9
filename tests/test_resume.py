"""A study survives its driver: SIGINT (Ctrl-C) or SIGKILL of ``python -m study.run`` mid-study,
then ``--resume``, gives the full budget with matching records in Ray, Optuna and MLflow: no
configuration repeated, no duplicate MLflow run, nothing left RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e
SAMPLES = 4


def _space(tmp: Path, name: str) -> Path:
    doc = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    doc.update(name=name, budget={"samples": SAMPLES, "concurrency": 2}, scheduler={"type": "none"})
    doc["fixed"]["train"]["epochs"] = 3
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _interrupt_after_first_trial(args: list[str], sig: int) -> tuple[int, str]:
    """Start the study, wait until one trial is done, send ``sig`` (to the whole process group
    for SIGKILL: the driver and the Ray processes it started die together)."""
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines: list[str] = []
    done = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if f"[1/{SAMPLES} done]" in line:
                done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(600), "".join(lines[-40:])
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(sig)
    rc = proc.wait(timeout=180)
    time.sleep(1)
    return rc, "".join(lines)


def _resume(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", *args, "--resume"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _check_records(out: Path, name: str) -> None:
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == SAMPLES and trials["trial_id"].is_unique
    assert (trials["status"] == "COMPLETE").all(), trials[["trial_id", "status", "error"]]
    # Optuna: one trial per Ray trial, none left RUNNING, no configuration suggested twice
    with sqlite3.connect(out / "optuna.db") as db:
        rows = db.execute("select t.trial_id, t.state from trials t").fetchall()
        lost = {r[0] for r in db.execute("select trial_id from trial_user_attributes where key = 'wsss.lost'")}
        ray_ids = dict(db.execute("select trial_id, value_json from trial_user_attributes where key = 'ray.trial_id'"))
        lrs = [r[0] for r in db.execute("select param_value from trial_params where param_name = 'train.lr'")]
    kept = [(tid, state) for tid, state in rows if tid not in lost]
    assert len(kept) == SAMPLES and {s for _, s in kept} == {"COMPLETE"}
    assert all(state == "FAIL" for tid, state in rows if tid in lost)
    assert sorted(v.strip('"') for k, v in ray_ids.items() if k not in lost) == sorted(trials["trial_id"])
    assert len(set(lrs)) == len(lrs)
    # MLflow: one parent, one child run per trial (found again by trial id, not duplicated)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("wsss.role") == "study"]
    children = [r for r in runs if r.data.tags.get("wsss.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ray.trial_id"] for r in children) == sorted(trials["trial_id"])
    assert {r.info.status for r in children} == {"FINISHED"}
    for r in children:  # every epoch's metric kept, across the interruption
        hist = client.get_metric_history(r.info.run_id, "val/miou")
        assert sorted({m.step for m in hist}) == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_study_resumes_to_the_full_budget(tmp_path, sig):
    name = f"resume_{signal.Signals(sig).name.lower()}"
    out = tmp_path / "study"
    args = ["--space", str(_space(tmp_path, name)), "--output", str(out), "--address", "local"]
    rc, log = _interrupt_after_first_trial(args, sig)
    if sig == signal.SIGINT:
        assert rc == 130, log[-3000:]
        assert "--resume continues it" in log
    else:
        assert rc == -signal.SIGKILL
    proc = _resume(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming the Ray Tune experiment" in proc.stdout
    _check_records(out, name)
