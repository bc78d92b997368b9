"""What the reports read back from a trial's MLflow run beside its metrics: the files its last
evaluation left under ``review/`` (trainables/evaluation/review.py): ``panel.npz`` (the review
grid's arrays) and ``confusion.npz`` (one confusion matrix per val image and kind of mask)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def fetch_review_file(tracking_uri: str, run_id: str, name: str, folder: str | Path) -> Path | None:
    """Download ``review/<name>`` of a run into ``folder``; None if the run has no such file (the
    trial never evaluated, or predates the file)."""
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar for one small file
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        return Path(MlflowClient(tracking_uri).download_artifacts(run_id, f"review/{name}", str(folder)))
    except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
        return None


def run_confusions(tracking_uri: str, run_id: str) -> dict | None:
    """A run's per-image confusion matrices (``load_confusions``: ids, class_names and one
    (N, n, n) array per kind), or None when it recorded none."""
    from trainables.evaluation.review import CONFUSION_FILE, load_confusions

    with tempfile.TemporaryDirectory() as d:
        path = fetch_review_file(tracking_uri, run_id, CONFUSION_FILE, d)
        return None if path is None else load_confusions(path)


def stacked(records: list[dict | None], kind: str) -> np.ndarray | None:
    """(S, N, n, n): one kind of mask from several runs (seed reruns) on the same images, or
    None when any run lacks it or the runs cover other images."""
    if not records or any(r is None or kind not in r for r in records):
        return None
    if any(r["ids"] != records[0]["ids"] for r in records):
        return None
    return np.stack([r[kind] for r in records])
