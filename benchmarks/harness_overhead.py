"""What the harness costs: the wall time of a study of N short trials through the full stack
(``python -m study.run``: Ray Tune, Optuna, ASHA off, MLflow, reports) against the same trials
called directly, one after the other, in one process (printed, never asserted):

    python benchmarks/harness_overhead.py [--space search_spaces/smoke.yaml] [--trials 2 4 8]
        [--concurrency 1 2] [--epochs 2]

For each (N, concurrency): the study's wall time; then each of its trials' configurations (read
back from trials.parquet) trained by a direct call of the trainable, summed. The ratio study /
direct is the overhead at concurrency 1; at higher concurrency the direct time is divided by the
concurrency as the ideal, so the ratio shows what the harness loses against perfect parallelism
(on a machine with as many cores as trials at once). The fixed part (Ray and MLflow start-up,
the report) and the per-trial part are fitted from the N sweep at each concurrency.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_study(space: str, out: Path, n: int, concurrency: int, epochs: int) -> float:
    cmd = [sys.executable, "-m", "study.run", "--space", space, "--output", str(out), "--address", "local",
           "--num-samples", str(n), "--set", f"budget.concurrency={concurrency}", "--set", "scheduler.type=none",
           "--set", f"fixed.train.epochs={epochs}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"study failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def direct(space: str, out: Path, epochs: int) -> float:
    """The study's trials, called directly in this process (data and checkpoint already cached)."""
    import pandas as pd
    import torch

    from study.space import load_spec
    from trainables.settings.tree import merge
    from trainables.methods.registry import METHODS

    spec = load_spec(space, [f"fixed.train.epochs={epochs}"])
    trials = pd.read_parquet(out / "trials.parquet")
    torch.set_num_threads(1)  # as a trial with resources.cpu = 1 runs
    total = 0.0
    for _, row in trials.iterrows():
        params = {k[len("param."):]: (v.item() if hasattr(v, "item") else v)
                  for k, v in row.items() if k.startswith("param.") and pd.notna(v)}
        t0 = time.perf_counter()
        METHODS[spec.method].train(merge(spec.trainable_config(), params))
        total += time.perf_counter() - t0
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/smoke.yaml")
    p.add_argument("--trials", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in args.concurrency:
            for n in args.trials:
                out = Path(tmp) / f"n{n}-c{c}"
                wall = run_study(args.space, out, n, c, args.epochs)
                d = direct(args.space, out, args.epochs)
                ideal = d / min(c, n)
                rows.append((n, c, wall, d, ideal))
                print(f"N={n:<3} concurrency={c}: study {wall:6.1f} s | direct {d:6.1f} s "
                      f"(ideal at this concurrency {ideal:6.1f} s) | ratio {wall / ideal:5.2f} | "
                      f"overhead {wall - ideal:5.1f} s, {(wall - ideal) / n:4.1f} s per trial", flush=True)
    print()
    for c in args.concurrency:
        pts = [(n, wall) for n, cc, wall, _, _ in rows if cc == c]
        if len(pts) >= 2:
            slope, icpt = np.polyfit([n for n, _ in pts], [w for _, w in pts], 1)
            per_direct = np.mean([d / n for n, cc, _, d, _ in rows if cc == c])
            print(f"concurrency {c}: study wall = {icpt:5.1f} s fixed + {slope:4.2f} s per trial "
                  f"(a trial called directly: {per_direct:4.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
