"""A real two-node Ray cluster on loopback (``ray start --head`` plus a second ``ray start
--address=...`` with its own custom resource), with token authentication as Ray 2.60 enables it:
a study run with ``--address auto`` checks that both nodes see its storage and spreads its trials
over both nodes (MLflow tag ``ray.node_id``)."""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    port = 26379 + secrets.randbelow(1000)
    # Ray's socket paths must stay under 107 bytes: a short temp dir of its own
    ray_tmp = Path(tempfile.mkdtemp(prefix="wr", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": f"127.0.0.1:{port}", "PYTHONWARNINGS": "ignore"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                          env=env, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", "--resources", '{"second_node": 1}',
                                 *common], env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield env, tmp
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_study_runs_on_both_nodes(cluster):
    env, tmp = cluster
    out = tmp / "study"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", "search_spaces/smoke.yaml", "--output",
                           str(out), "--address", "auto", "--num-samples", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is shared by all 2 nodes" in proc.stdout
    with sqlite3.connect(out / "mlflow.db") as db:
        nodes = dict(db.execute("select value, count(*) from tags where key = 'ray.node_id' group by value").fetchall())
    assert len(nodes) == 2 and sum(nodes.values()) == 4, nodes
