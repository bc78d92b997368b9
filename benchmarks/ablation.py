"""Ablation of the single-stage model on the synthetic benchmark (issue 3), printed as a Markdown
table of mean +- std over seeds, never asserted:

    python benchmarks/ablation.py --space search_spaces/aal.yaml --seeds 0 1 2 --jobs 2 \
        [--set KEY=VALUE ...] [--only rrm affinity] [--out ablation.json]

Rows add one part at a time: CAM only (the classifier's CAMs at the background threshold chosen on train);
reliable CE alone; RRM (reliable CE + dense energy); + adaptive affinity; + label reassign;
+ label decoupling. Each row trains from the same classification checkpoint per seed (the seed
also drives initialisation and batch order) with the space's fixed settings plus ``--set``.
Reported per row: val mIoU (for CAM only, the CAM mIoU), and the pseudo labels' precision and
coverage over the last epoch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_config_args, add_seed_args, base_config, mean_std, prepare_checkpoint, run_method  # noqa: E402

# Every switch is set in every row, whatever the space's fixed settings say (aal.yaml turns the
# AALR losses on).
NONE = {"loss.ce.enabled": True, "loss.ce.decouple": False, "loss.dense.enabled": False,
        "loss.affinity.enabled": False, "loss.reassign.enabled": False}
RRM = {**NONE, "loss.dense.enabled": True}
AFFINITY = {**RRM, "loss.affinity.enabled": True}
REASSIGN = {**AFFINITY, "loss.reassign.enabled": True}
DECOUPLE = {**REASSIGN, "loss.ce.decouple": True}
# (key, label, overrides, metric)
ROWS = [
    ("cam", "CAM only", {**NONE, "loss.ce.enabled": False}, "val/cam_miou"),
    ("ce", "reliable CE", NONE, "val/miou"),
    ("rrm", "RRM: reliable CE + dense energy", RRM, "val/miou"),
    ("affinity", "+ adaptive affinity", AFFINITY, "val/miou"),
    ("reassign", "+ label reassign", REASSIGN, "val/miou"),
    ("decouple", "+ label decoupling", DECOUPLE, "val/miou"),
]
# Diagnostics of the reassign row, run only when named in --only: the contrastive embedding loss
# without any relabelling (warm-up never ends), and relabelling by the embedding rule alone with a
# wider margin (the prediction rule off).
DIAGNOSTICS = [
    ("reassign_loss_only", "+ reassign loss, no relabelling", {**AFFINITY, "loss.reassign.enabled": True,
                                                               "loss.reassign.warmup": 1.0}, "val/miou"),
    ("reassign_embed_only", "+ reassign, embedding rule only, tau 0.4",
     {**REASSIGN, "loss.reassign.tau": 0.4, "loss.reassign.pred_confidence": 1.01}, "val/miou"),
]
EXTRA = ("train/pseudo/precision", "train/pseudo/coverage", "train/reassign/changed",
         "train/reassign/precision_before", "train/reassign/precision_after")


def main() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p)
    add_seed_args(p)
    p.add_argument("--only", nargs="+", default=None, help=f"row keys: {[r[0] for r in ROWS + DIAGNOSTICS]}")
    p.add_argument("--out", default=None, help="write every run's final metrics to this JSON file")
    args = p.parse_args()
    base = base_config(args)
    rows = [r for r in ROWS + DIAGNOSTICS if (r in ROWS and args.only is None) or (args.only and r[0] in args.only)]
    ctx = mp.get_context("spawn")
    t_start = time.perf_counter()
    results: dict[tuple[str, int], dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        # One classification checkpoint per seed, built before any run uses it.
        for f in [pool.submit(prepare_checkpoint, "aal", {**base, "train.seed": s}, args.threads) for s in args.seeds]:
            f.result()
        futures = {pool.submit(run_method, "aal", {**base, **over, "train.seed": s}, args.threads): (key, s)
                   for key, _, over, _ in rows for s in args.seeds}
        for f in as_completed(futures):
            key, s = futures[f]
            results[(key, s)] = f.result()
            metric = next(r[3] for r in rows if r[0] == key)
            print(f"[{time.perf_counter() - t_start:6.0f} s] {key:<9} seed {s}: {metric} "
                  f"{100 * results[(key, s)][metric]:.1f}", flush=True)
    print(f"\n{len(args.seeds)} seeds {args.seeds}; space {args.space}; overrides "
          + (", ".join(args.set) or "none") + "\n")
    print("| row | val mIoU | PL precision | PL coverage | relabelled | relabelled right (before -> after) |")
    print("|---|---|---|---|---|---|")
    for key, label, _, metric in rows:
        runs = [results[(key, s)] for s in args.seeds]
        col = {m: [r.get(m) for r in runs] for m in (metric, *EXTRA)}
        before, after = mean_std(col["train/reassign/precision_before"]), mean_std(col["train/reassign/precision_after"])
        moved = "-" if before == "-" else f"{before} -> {after}"
        print(f"| {label} | {mean_std(col[metric])} | {mean_std(col['train/pseudo/precision'])} | "
              f"{mean_std(col['train/pseudo/coverage'])} | {mean_std(col['train/reassign/changed'])} | {moved} |")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"seeds": args.seeds, "overrides": args.set, "space": args.space,
             "runs": [{"row": k, "seed": s, **{m: v for m, v in r.items() if isinstance(v, (int, float))}}
                      for (k, s), r in sorted(results.items())]}, indent=1))


if __name__ == "__main__":
    main()
