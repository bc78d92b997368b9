"""Reference points on the synthetic benchmark, printed (never asserted): plain CAM mIoU at the
best background threshold, the single-stage model with default cutoffs (with and without the
test-time dense CRF), and a fully supervised upper bound with the same backbone and budget.

    python benchmarks/synthetic_bounds.py --space search_spaces/aal.yaml [--study studies/aal]
        [--set train.lr=1e-3] [--epochs N]

Uses the fixed settings and data of the given search space, so the numbers match `make run`;
``--study`` adds the searched settings of that study's best trial (from its trials.parquet), and
``--set`` overrides single settings. Searched settings left unset take the trainable defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_config_args, base_config  # noqa: E402

from trainables.methods.registry import METHODS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = base_config(args)
    rows = []
    for label, extra in [
        ("weak: reliable pseudo labels" + (" (best trial)" if args.study else " (default cutoffs)"),
         {"eval.crf": True}),
        ("full: ground-truth masks (upper bound)", {"train.supervision": "full", "eval.crf": True}),
    ]:
        t0 = time.perf_counter()
        hist = METHODS["aal"].train({**base, **extra})
        last = hist[-1]
        rows.append((label, last["val/miou_nocrf"], last["val/miou"], last["val/cam_miou"], last["train/cam_threshold"],
                     last.get("train/pseudo/precision", float("nan")), last.get("train/pseudo/coverage", float("nan")),
                     time.perf_counter() - t0))
    print(f"space {args.space}, {len(hist)} epochs, backbone {METHODS['aal'].resolve(base)['model']['backbone']}")
    print(f"{'run':<50} {'val mIoU':>9} {'+ test CRF':>10} {'CAM mIoU':>9} {'CAM t (train)':>6} {'PL prec':>8} {'PL cov':>7} "
          f"{'time s':>7}")
    for r in rows:
        print(f"{r[0]:<50} {100 * r[1]:9.1f} {100 * r[2]:10.1f} {100 * r[3]:9.1f} {r[4]:6.2f} {100 * r[5]:8.1f} "
              f"{100 * r[6]:7.1f} {r[7]:7.0f}")


if __name__ == "__main__":
    main()
