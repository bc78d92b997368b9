"""Per-trial GPUs from the YAML, scheduled by Ray on a logical GPU (``ray.init(num_gpus=1)`` when
the machine has none): a whole GPU per trial runs the trials one after the other; 0.5 lets two
trials share it at once. What Ray assigned is recorded on each MLflow child run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("gpu, overlap", [(1, False), (0.5, True)], ids=["whole", "half"])
def test_trials_get_the_gpu_share_the_yaml_asks_for(tmp_path, gpu, overlap):
    doc = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    doc.update(name="gpu_share", resources={"cpu": 1, "gpu": gpu}, budget={"samples": 2, "concurrency": 2},
               scheduler={"type": "none"})
    doc["fixed"]["train"]["epochs"] = 5  # long enough that trials sharing the GPU overlap for sure
    space = tmp_path / "gpu.yaml"
    space.write_text(yaml.safe_dump(doc))
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--output", str(out),
                           "--address", "local"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = [r for r in client.search_runs([client.get_experiment_by_name("gpu_share").experiment_id])
            if r.data.tags.get("wsss.role") == "trial"]
    assert len(runs) == 2
    assert all(f"GPU={gpu:g}" in r.data.tags["ray.resources"] for r in runs)
    # A trial spans from the moment Ray started it (its child run is created then) to its last
    # result. Sharing the GPU, both start at once and each runs for seconds; with a whole GPU the
    # second cannot start before the first has reported its last epoch. (Spans from first to last
    # metric were too short to overlap reliably on a loaded 2-core machine.)
    spans = []
    for r in runs:
        times = [m.timestamp for m in client.get_metric_history(r.info.run_id, "val/miou")]
        spans.append((r.info.start_time, max(times)))
    (a0, a1), (b0, b1) = sorted(spans)
    assert (b0 < a1) == overlap, spans
