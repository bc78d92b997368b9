"""A real two-node Ray cluster on loopback (``ray start --head`` plus a second ``ray start
--address=...`` with its own custom resource), with token authentication as Ray 2.60 enables it:
a study run with ``--address auto`` checks that both nodes see its storage and spreads its trials
over both nodes (MLflow tag ``ray.node_id``)."""

from __future__ import annotations

import os
import signal
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

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
                                 "--node-manager-port", str(port + 1), *common],
                                env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        yield env, tmp, port + 1
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_study_runs_on_both_nodes(cluster):
    env, tmp, _ = cluster
    out = tmp / "study"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", "search_spaces/smoke.yaml", "--output",
                           str(out), "--address", "auto", "--num-samples", "4"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is shared by all 2 nodes" in proc.stdout
    with sqlite3.connect(out / "mlflow.db") as db:
        nodes = dict(db.execute("select value, count(*) from tags where key = 'ray.node_id' group by value").fetchall())
    assert len(nodes) == 2 and sum(nodes.values()) == 4, nodes


def _kill_worker_node(node_manager_port: int) -> None:
    """SIGKILL the second node's raylet (found by its node manager port) and every process it
    started (the trial's worker among them), as when a machine of a cluster goes away."""
    out = subprocess.run(["pgrep", "-f", f"node_manager_port={node_manager_port}"], capture_output=True, text=True)
    raylets = out.stdout.split()
    assert raylets, "the second node's raylet was not found"
    for raylet in raylets:
        children = subprocess.run(["pgrep", "-P", raylet], capture_output=True, text=True).stdout.split()
        for pid in [*children, raylet]:
            os.kill(int(pid), signal.SIGKILL)


def test_killed_worker_node_means_a_retry_that_completes(cluster):
    """Runs last in this module: it takes the second node away."""
    env, tmp, worker_port = cluster
    doc = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    doc.update(name="node_loss", budget={"samples": 2, "concurrency": 2}, scheduler={"type": "none"}, max_failures=2)
    doc["fixed"]["train"]["epochs"] = 6
    space = tmp / "node_loss.yaml"
    space.write_text(yaml.safe_dump(doc))
    out = tmp / "node_loss"
    proc = subprocess.Popen([sys.executable, "-m", "study.run", "--space", str(space), "--output", str(out),
                             "--address", "auto"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, both_running = [], threading.Event()

    def read():
        first_epochs = set()
        for line in proc.stdout:
            lines.append(line)
            if " epoch 1/6 " in line:
                first_epochs.add(line.split()[1])
                if len(first_epochs) == 2:  # one trial per node, each checkpointed once
                    both_running.set()

    threading.Thread(target=read, daemon=True).start()
    assert both_running.wait(600), "".join(lines[-40:])
    _kill_worker_node(worker_port)
    rc = proc.wait(timeout=900)
    log = "".join(lines)
    assert rc == 0, log[-4000:]
    assert "restarted from its checkpoint after epoch" in log
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "COMPLETE").all(), log[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = [r for r in client.search_runs([client.get_experiment_by_name("node_loss").experiment_id])
            if r.data.tags.get("wsss.role") == "trial"]
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    moved = [r for r in runs if len(set(r.data.tags["wsss.nodes"].split(","))) == 2]
    assert len(moved) == 1, [r.data.tags["wsss.nodes"] for r in runs]  # the retry ran on the other node
    for r in runs:  # every epoch recorded once the retry caught up from its checkpoint
        assert sorted({m.step for m in client.get_metric_history(r.info.run_id, "val/miou")}) == [1, 2, 3, 4, 5, 6]


def test_storage_a_node_cannot_see_is_refused(tmp_path):
    """The check itself, with a probe that answers for two nodes (one machine cannot show a path
    that only some nodes see): the blind node is named, a cloud URI or one node needs no check."""
    from study.runner import StorageNotShared, check_shared_storage

    nodes = [{"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
             {"Alive": True, "NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"}]
    asked = []

    def probe(path, ns):
        asked.append(path)
        assert Path(path).exists()  # the marker is written before the nodes are asked
        return [True, False]

    with pytest.raises(StorageNotShared, match=r"not visible from 1 of the cluster's 2 nodes: 10.0.0.2 \(bbbbbbbb\)"):
        check_shared_storage(str(tmp_path / "store"), log=lambda _: None, nodes=nodes, probe=probe)
    assert asked and not Path(asked[0]).exists()  # and removed after
    check_shared_storage("s3://bucket/studies", nodes=nodes, probe=probe)
    check_shared_storage(str(tmp_path / "store"), nodes=nodes[:1], probe=probe)
    assert len(asked) == 1
    check_shared_storage(str(tmp_path / "store"), log=lambda _: None, nodes=nodes, probe=lambda p, ns: [True, True])
