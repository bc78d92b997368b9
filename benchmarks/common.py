"""What the benchmarks share: a trainable config from a search space's fixed settings, optionally
a study's best searched settings (``--study``), and single overrides (``--set KEY=VALUE``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from study.space import load_spec, parse_value


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="search_spaces/aal.yaml")
    p.add_argument("--study", default=None, help="take the searched settings of this study's best trial")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")


def add_seed_args(p: argparse.ArgumentParser) -> None:
    """The seeds of a repeated measurement and how its runs share the machine."""
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")


def base_config(args: argparse.Namespace) -> dict:
    """The trainable config the arguments describe (dotted keys over the space's fixed part)."""
    # data.* is the study's data section (validated with the spec: a VOC root, for one)
    spec = load_spec(args.space, [s for s in args.set if s.startswith("data.")])
    base = spec.trainable_config()
    if args.study:
        import pandas as pd

        from reports.selection import best_trial

        study = Path(args.study)
        trials = pd.read_parquet(study / "trials.parquet")
        # The study's own objective (its study.json), else the space's; the rule of every report.
        mode = json.loads((study / "study.json").read_text())["mode"] if (study / "study.json").is_file() else spec.mode
        best = best_trial(trials, mode)
        if best is None:
            raise SystemExit(f"--study {args.study}: no trial with a score in its trials.parquet")
        params = {k[len("param."):]: (v.item() if hasattr(v, "item") else v)
                  for k, v in best.items() if k.startswith("param.") and pd.notna(v)}
        print(f"best trial {best['trial_id']} of {args.study}: "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()))
        base = {**base, **params}
    for item in args.set:
        if item.startswith("data."):
            continue
        key, _, value = item.partition("=")
        base = {**base, key: parse_value(value)}
    if args.epochs:
        base = {**base, "train.epochs": args.epochs}
    return base


def prepare_checkpoint(method: str, config: dict, threads: int) -> None:
    """Data and the classification checkpoint of ``config`` (run in a worker before the runs
    that share them, so that none of them trains it twice)."""
    import torch

    from trainables.methods.registry import METHODS

    torch.set_num_threads(threads)
    METHODS[method].prepare(config, log=lambda _: None)


def run_method(method: str, config: dict, threads: int) -> dict:
    """Train one run of ``method`` in this process; its last report, plus ``time/run_s``."""
    import time

    import torch

    from trainables.methods.registry import METHODS

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    last = METHODS[method].train(config)[-1]
    return {**last, "time/run_s": time.perf_counter() - t0}


def mean_std(values: list) -> str:
    """Percent "mean ± std" of the finite values (sample std), or "-".

    Example:
        >>> mean_std([0.5, 0.7, None])
        '60.0 ± 14.1'
    """
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return "-"
    return f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1 if len(v) > 1 else 0):.1f}"
