"""MLflow tracking of a study: one parent run per study, one child run per trial.

Ray's own integrations are not used (docs/harness.md): ``MLflowLoggerCallback`` sends one request
per metric per step, opens duplicate runs after a resume and leaves old ones RUNNING, and
neither integration nests runs. :class:`MlflowTrialCallback` looks a trial's child run up by its
``ray.trial_id`` tag before creating one, logs each result with one ``log_batch`` call and ends
every run with the status the trial ended with.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from trainables.settings.tree import flatten

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "ray.trial_id"
# MLflow limits one log_batch call to 1000 metrics, 100 params and 100 tags.
_MAX_PARAMS = 100
_MAX_METRICS = 1000
_PACKAGES = ("wsss-study", "torch", "torchvision", "ray", "optuna", "mlflow", "pandas", "pyarrow", "pydensecrf2")


def git_commit(cwd: str | Path = ".") -> str:
    """The current git commit of ``cwd`` (``+dirty`` when the tree has changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages a study's numbers depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def metric_items(result: dict) -> dict[str, float]:
    """The finite numeric ``val/``, ``train/`` and ``time/`` entries of a Tune result."""
    out = {}
    for k, v in result.items():
        if not k.startswith(("val/", "train/", "time/")) and k != "epoch":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[k] = float(v)
    return out


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


class StudyTracker:
    """The study's experiment and parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str | None = None):
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment_name)
        # With a SQLite store MLflow would put artifacts in ./mlruns of whatever the working
        # directory is; the embedded default keeps them inside the study folder instead.
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment_name, artifact_location=artifact_location)

    def start_parent(self, run_name: str, tags: dict[str, str], params: dict[str, Any],
                     artifacts: list[Path]) -> str:
        """Create the parent run with its tags, params and artifacts; returns its id."""
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**tags, "wsss.role": "study"})
        self.log_params(run.info.run_id, params)
        for a in artifacts:
            self.client.log_artifact(run.info.run_id, str(a))
        return run.info.run_id

    def resume_parent(self, run_id: str | None) -> str | None:
        """The study's parent run again (``--resume``), set RUNNING; None if it is gone."""
        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:
            return None
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def child_runs(self, parent_run_id: str) -> list:
        """Every child run of ``parent_run_id`` (all pages)."""
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                           max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params in batches of at most 100."""
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for s in range(0, len(items), _MAX_PARAMS):
            self.client.log_batch(run_id, params=items[s : s + _MAX_PARAMS])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Log metrics in batches (one request per 1000 values)."""
        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in metrics.items()]
        for s in range(0, len(items), _MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[s : s + _MAX_METRICS])

    def end(self, run_id: str, status: str) -> None:
        """End a run with FINISHED, FAILED or KILLED."""
        self.client.set_terminated(run_id, status=status)


class MlflowTrialCallback(Callback):
    """Tune callback that mirrors each trial into a child run of the study's parent run."""

    def __init__(self, tracker: StudyTracker, parent_run_id: str, fixed_config: dict, max_epochs: int,
                 defaults: dict | None = None):
        self.tracker = tracker
        self.defaults = defaults  # budget.include_defaults: the defaults trial's searched values
        self.parent_run_id = parent_run_id
        self.fixed_params = flatten(fixed_config)
        self.max_epochs = max_epochs
        self._runs: dict[str, str] = {}
        self._nodes: dict[str, list[str]] = {}

    def child_run_id(self, trial) -> str:
        """The trial's child run: cached, else found by its ``ray.trial_id`` tag, else created."""
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        client = self.tracker.client
        found = client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{tid}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                self.tracker.experiment_id,
                run_name=f"trial {tid}",
                tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: tid, "wsss.role": "trial"},
            )
            run_id = run.info.run_id
            searched = flatten(trial.config)
            params = {**self.fixed_params, **searched}
            self.tracker.log_params(run_id, params)
            client.set_tag(run_id, "wsss.searched", ",".join(sorted(searched)))
            if self.defaults is not None and searched == self.defaults:
                client.set_tag(run_id, "wsss.defaults", "true")
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.child_run_id(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        node = result.get("node_id")
        seen = self._nodes.setdefault(trial.trial_id, [])
        if node and (not seen or seen[-1] != node):  # first result, or moved by a retry
            seen.append(str(node))
            run_id = self.child_run_id(trial)
            self.tracker.client.set_tag(run_id, "ray.node_id", str(node))
            self.tracker.client.set_tag(run_id, "wsss.nodes", ",".join(seen))  # every node it ran on
            if result.get("resources"):
                self.tracker.client.set_tag(run_id, "ray.resources", str(result["resources"]))
        metrics = metric_items(result)
        if metrics:
            step = int(result.get("training_iteration", result.get("epoch", 0)))
            self.tracker.log_metrics(self.child_run_id(trial), metrics, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.child_run_id(trial)
        last = trial.last_result or {}
        done = int(last.get("training_iteration", 0))
        stopped_early = done < self.max_epochs
        self.tracker.client.set_tag(run_id, "wsss.stopped_early", str(stopped_early).lower())
        self.tracker.client.set_tag(run_id, "wsss.epochs_done", str(done))
        log_review(self.tracker.client, run_id, trial)
        self.tracker.end(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.child_run_id(trial)
        log_review(self.tracker.client, run_id, trial)
        message = trial_error_message(trial)
        self.tracker.client.set_tag(run_id, "wsss.error", message[:5000])
        self.tracker.end(run_id, "FAILED")


REVIEW_DIR = "review"  # the trial folder's and the child run's folder of the figure grid


def log_review(client: MlflowClient, run_id: str, trial) -> list[str]:
    """The review panel of the trial's last evaluation (``<trial folder>/review/`` in the
    experiment storage: local, NFS or cloud alike), rendered as figure grids (reports/grids.py)
    and logged with ``panel.npz`` and ``confusion.npz`` under ``review/`` of the child run. Returns
    the logged file names; nothing when the trial never evaluated. Never raises: a missing
    picture must not fail the study."""
    import tempfile

    import pyarrow.fs

    from reports.grids import render_panel
    from trainables.evaluation.review import PANEL_FILE

    try:
        fs, src = trial.storage.storage_filesystem, f"{trial.storage.trial_fs_path}/{REVIEW_DIR}"
        if fs.get_file_info(f"{src}/{PANEL_FILE}").type != pyarrow.fs.FileType.File:
            return []
        with tempfile.TemporaryDirectory() as d:
            pyarrow.fs.copy_files(src, d, source_filesystem=fs)  # panel.npz, confusion.npz
            files = sorted(Path(d).glob("*.npz"))
            files += render_panel(Path(d) / PANEL_FILE, d, label=f"trial {trial.trial_id}")
            for f in files:
                client.log_artifact(run_id, str(f), artifact_path=REVIEW_DIR)
            return [f.name for f in files]
    except Exception as e:  # noqa: BLE001 - reported, never fatal
        client.set_tag(run_id, "wsss.review_error", f"{type(e).__name__}: {e}"[:500])
        return []


def trial_error_message(trial) -> str:
    """The last line of a failed trial's error (the exception), or a generic note."""
    text = ""
    for attr in ("error_msg",):
        text = getattr(trial, attr, None) or ""
        if text:
            break
    if not text:
        path = getattr(trial, "error_file", None)
        if path and Path(path).exists():
            text = Path(path).read_text(errors="replace")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "trial failed (no error message recorded)"
