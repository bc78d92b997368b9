"""Console progress for a running study: trials started and finished, epochs, best so far.

Ray's own table is switched off (``verbose=0``); these lines are short enough to follow in a
terminal or a CI log.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from ray.tune import Callback

from study.tracking import trial_error_message


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class ProgressCallback(Callback):
    """Prints one line per trial event and keeps the best score seen."""

    def __init__(self, total: int, metric: str, mode: str, max_epochs: int, log: Callable[[str], None] = print):
        self.total, self.metric, self.mode, self.max_epochs = total, metric, mode, max_epochs
        self.log = log
        self.t0 = time.time()
        self.started = self.finished = self.failed = self.stopped = 0
        self.seen: set[str] = set()
        self.best: tuple[float, str] | None = None

    def _stamp(self) -> str:
        s = int(time.time() - self.t0)
        return f"[{s // 60:02d}:{s % 60:02d}]"

    def _better(self, v: float) -> bool:
        if self.best is None:
            return True
        return v > self.best[0] if self.mode == "max" else v < self.best[0]

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.seen:  # a retry after a failure (max_failures), or a resume
            done = int((trial.last_result or {}).get("training_iteration", 0))
            self.log(f"{self._stamp()} trial {trial.trial_id} restarted from its checkpoint after epoch {done}")
            return
        self.seen.add(trial.trial_id)
        self.started += 1
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
        self.log(f"{self._stamp()} trial {trial.trial_id} started ({self.started}/{self.total}) {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        v = result.get(self.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and self._better(v):
            self.best = (float(v), trial.trial_id)
        epoch = result.get("training_iteration", "?")
        best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.log(f"{self._stamp()}   {trial.trial_id} epoch {epoch}/{self.max_epochs} "
                 f"{self.metric}={_fmt(v)} loss={_fmt(result.get('train/loss/total'))}  {best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        last = trial.last_result or {}
        done = last.get("training_iteration", 0)
        how = "finished" if done >= self.max_epochs else f"stopped early by ASHA after {done} epochs"
        if done < self.max_epochs:
            self.stopped += 1
        self.log(f"{self._stamp()} trial {trial.trial_id} {how}: {self.metric}={_fmt(last.get(self.metric))} "
                 f"[{self.finished + self.failed}/{self.total} done]")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.failed += 1
        self.log(f"{self._stamp()} trial {trial.trial_id} FAILED: {trial_error_message(trial)} "
                 f"[{self.finished + self.failed}/{self.total} done]")
