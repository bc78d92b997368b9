"""Where a trial's results go: reporters (a plain call keeps the history; inside Ray Tune,
``tune.report`` with a checkpoint, and a restarted trial resumes from ``tune.get_checkpoint()``)
and the folder for files a trial leaves behind."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch


class Reporter:
    """Receives one metrics dict per epoch and, optionally, a checkpoint (the training state)."""

    checkpoints = True  # False: the loop builds no checkpoint (and never reseeds its data order)

    def __init__(self) -> None:
        self.history: list[dict] = []

    def restore(self) -> dict | None:
        """The state to resume from, or None."""
        return None

    def report(self, metrics: dict, state: dict | None) -> None:
        self.history.append(dict(metrics))


class LogReporter(Reporter):
    """Logs the mean loss about five times over the run (the classification pretraining)."""

    checkpoints = False

    def __init__(self, what: str, epochs: int, log: Callable[[str], None] | None):
        super().__init__()
        self.what, self.epochs, self.log, self.t0 = what, epochs, log, time.perf_counter()

    def report(self, metrics: dict, state: dict | None) -> None:
        super().report(metrics, state)
        e = metrics["epoch"]
        if self.log and e % max(1, self.epochs // 5) == 0:
            self.log(f"{self.what} epoch {e}/{self.epochs}: loss {metrics['train/loss/total']:.4f} "
                     f"({time.perf_counter() - self.t0:.0f}s)")


class TuneReporter(Reporter):
    """Reports through ``ray.tune`` with a checkpoint holding the training state."""

    def restore(self) -> dict | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray
        from ray import tune

        # The node the trial ran on and what Ray gave it (MLflow tags ray.node_id, ray.resources).
        ctx = ray.get_runtime_context()
        assigned = ",".join(f"{k}={v:g}" for k, v in sorted(ctx.get_assigned_resources().items()))
        metrics = {**metrics, "node_id": ctx.get_node_id(), "resources": assigned}
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def in_tune_session() -> bool:
    """True inside a Ray Tune trial."""
    try:
        import warnings

        from ray.tune import get_context

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray warns when asked outside a trial
            return get_context().get_trial_id() is not None
    except Exception:
        return False


def default_reporter() -> Reporter:
    """Ray Tune's reporter inside a trial, else a plain one."""
    return TuneReporter() if in_tune_session() else Reporter()


@contextmanager
def trial_output(name: str, enabled: bool = True):
    """A folder for files a trial leaves behind (e.g. predictions): inside a Ray Tune trial, a
    local temporary folder copied to ``<trial folder>/<name>`` in the experiment storage when the
    block ends (local, NFS or a cloud URI alike, and right with reused worker processes, whose
    working folder and ``get_trial_dir()`` belong to an earlier trial); outside Tune,
    ``./<name>``. With ``enabled`` false it yields None and writes nothing."""
    if not enabled:
        yield None
        return
    if not in_tune_session():
        path = Path.cwd() / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    import pyarrow.fs
    from ray import tune

    storage = tune.get_context().get_storage()  # a DeveloperAPI of ray 2.60 (pinned; tests/test_voc_study.py)
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        dest = f"{storage.trial_fs_path}/{name}"
        storage.storage_filesystem.create_dir(dest, recursive=True)
        pyarrow.fs.copy_files(tmp, dest, destination_filesystem=storage.storage_filesystem)
