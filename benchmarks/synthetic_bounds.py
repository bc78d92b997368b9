"""Reference points on the synthetic benchmark, printed (never asserted): plain CAM mIoU at the
best background threshold, the single-stage model with default cutoffs, and a fully supervised
upper bound with the same backbone and budget.

    python benchmarks/synthetic_bounds.py --space search_spaces/aal.yaml [--epochs N]

Uses the fixed settings and data of the given search space, so the numbers match `make run`.
"""

from __future__ import annotations

import argparse
import time

import torch

from study.space import load_spec
from trainables.single_stage import train


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--space", default="search_spaces/aal.yaml")
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.space)
    base = spec.trainable_config()
    if args.epochs:
        base = {**base, "train.epochs": args.epochs}
    rows = []
    for label, extra in [
        ("weak: reliable pseudo labels (default cutoffs)", {}),
        ("full: ground-truth masks (upper bound)", {"train.supervision": "full"}),
    ]:
        t0 = time.perf_counter()
        hist = train({**base, **extra})
        last = hist[-1]
        rows.append((label, last["val/miou"], last["val/cam_miou"], last["val/cam_threshold"],
                     last.get("train/pseudo/precision", float("nan")), last.get("train/pseudo/coverage", float("nan")),
                     time.perf_counter() - t0))
    print(f"space {args.space}, {len(hist)} epochs, backbone {base['model']['backbone']}")
    print(f"{'run':<50} {'val mIoU':>9} {'CAM mIoU':>9} {'CAM t':>6} {'PL prec':>8} {'PL cov':>7} {'time s':>7}")
    for r in rows:
        print(f"{r[0]:<50} {100 * r[1]:9.1f} {100 * r[2]:9.1f} {r[3]:6.2f} {100 * r[4]:8.1f} {100 * r[5]:7.1f} {r[6]:7.0f}")


if __name__ == "__main__":
    main()
