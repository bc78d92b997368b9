"""Failures are recorded, not lost: a trial whose loss goes NaN is FAILED with its reason in the
study's tables, in MLflow (a real ``mlflow server`` on loopback, started here) and in Optuna,
while the other trials complete; an unreachable tracking server stops the study before it starts."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` bound to 127.0.0.1 with a SQLite store, as a cluster would run it."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", str(tmp / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.read().decode().strip() == "OK":
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("mlflow server did not start")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_unreachable_tracking_server_stops_before_anything(tmp_path):
    out = tmp_path / "study"
    proc = _run(["--space", "search_spaces/smoke.yaml", "--output", str(out), "--tracking-uri",
                 f"http://127.0.0.1:{_free_port()}"], timeout=120)
    assert proc.returncode == 2
    assert "--tracking-uri: cannot reach the MLflow server at http://127.0.0.1:" in proc.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def nan_study(tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("nan_study")
    doc = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "nan_study"
    doc["search"] = {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2},
                     "train.inject_nan_epoch": {"type": "categorical", "choices": [0, 1]}}
    doc["sampler"] = "random"
    doc["budget"] = {"samples": 4, "concurrency": 2}
    space = tmp / "nan.yaml"
    space.write_text(yaml.safe_dump(doc))
    out = tmp / "study"
    proc = _run(["--space", str(space), "--output", str(out), "--address", "local", "--tracking-uri", mlflow_server])
    return out, proc


def test_nan_trial_is_failed_with_its_reason_and_the_others_complete(nan_study):
    out, proc = nan_study
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4
    injected = trials["param.train.inject_nan_epoch"] == 1
    assert injected.any() and (~injected).any(), "the seed must draw both choices"
    assert (trials.loc[injected, "status"] == "FAILED").all()
    assert trials.loc[injected, "error"].str.contains("non-finite loss at epoch 1, step 1").all()
    assert trials.loc[~injected, "status"].isin(["COMPLETE", "PRUNED"]).all()
    assert "1 failed" in proc.stdout or f"{int(injected.sum())} failed" in proc.stdout


def test_mlflow_server_holds_every_trial_with_its_status(nan_study, mlflow_server):
    from mlflow.tracking import MlflowClient

    out, proc = nan_study
    assert proc.returncode == 0
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("nan_study")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("wsss.role") == "study"]
    children = [r for r in runs if r.data.tags.get("wsss.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    trials = pd.read_parquet(out / "trials.parquet").set_index("trial_id")
    for r in children:
        tid = r.data.tags["ray.trial_id"]
        if trials.loc[tid, "status"] == "FAILED":
            assert r.info.status == "FAILED"
            assert "non-finite loss at epoch 1, step 1" in r.data.tags["wsss.error"]
        else:
            assert r.info.status == "FINISHED" and "val/miou" in r.data.metrics


def test_optuna_is_told_fail_for_the_nan_trials(nan_study):
    out, proc = nan_study
    assert proc.returncode == 0
    with sqlite3.connect(out / "optuna.db") as db:
        rows = db.execute(
            "select t.state, p.param_value from trials t join trial_params p on p.trial_id = t.trial_id "
            "where p.param_name = 'train.inject_nan_epoch'").fetchall()
    assert len(rows) == 4
    # categorical params are stored as the choice's index: 1 -> inject_nan_epoch = 1
    states = {int(v): set() for _, v in rows}
    for state, v in rows:
        states[int(v)].add(state)
    assert states[1] == {"FAIL"}
    assert states[0] <= {"COMPLETE", "PRUNED"}


def test_out_of_memory_becomes_an_error_that_says_what_to_change(monkeypatch):
    import torch

    from study import runner
    from trainables.methods.registry import METHODS

    def oom(self, config, reporter=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(METHODS["aal"]), "train", oom)
    with pytest.raises(MemoryError, match=r"out of GPU memory \(CUDA out of memory. Tried to allocate 2.00 GiB\); "
                                          r"lower train.batch_size or train.crop"):
        runner.trial_entry({}, fixed={}, method="aal")

    def host_oom(self, config, reporter=None):
        raise MemoryError("Unable to allocate 12.0 GiB")

    monkeypatch.setattr(type(METHODS["aal"]), "train", host_oom)
    with pytest.raises(MemoryError, match=r"out of host memory \(Unable to allocate 12.0 GiB\)"):
        runner.trial_entry({}, fixed={}, method="aal")
