"""CAM quality of the baselines on one benchmark: do the published orderings hold here?

Published (VOC train, docs/baselines.md): SEAM's ablation CAM 47.4 < ER 49.9 < ER+PCM 55.1 < +OHEM
55.4; SC-CAM above CAM (50.9 vs 48.0) and improving over rounds (val 46.8, 48.0, 48.7, 49.6);
MCIS's ablation (single image, + co-attention, + contrastive co-attention; trained on pairs).
Here every row starts from the same classification checkpoint (SC-CAM's round 0, row "start"),
trains the same epochs with the same lr and is evaluated the same way (cam_eval.py: CAM mIoU
on train at the threshold chosen there, that threshold's masks on val). SC-CAM's rows are the
end of each of its rounds.

    python benchmarks/cam_quality.py --space search_spaces/cam.yaml --seeds 0 1 2 --jobs 2 \
        --set train.lr=5e-4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import add_config_args, add_seed_args, base_config, mean_std, prepare_checkpoint  # noqa: E402

# key, label, method, overrides (dotted)
ROWS = [
    ("start", "start weights (classification checkpoint = SC-CAM round 0)", "start", {}),
    ("cam", "CAM", "cam", {}),
    ("seam_er", "SEAM ER", "seam", {"loss.ecr.weight": 0.0, "seam.eval_cams": "cam"}),
    ("seam_er_pcm", "SEAM ER+PCM", "seam", {"seam.ohem_ratio": 1.0}),
    ("seam", "SEAM ER+PCM+OHEM", "seam", {}),
    ("sccam", "SC-CAM, 3 rounds", "sccam", {"sccam.rounds": 3}),
    ("mcis_single", "MCIS pairs, single-image loss only (its CAMs)", "mcis",
     {"loss.co.enabled": False, "loss.contrast.enabled": False, "mcis.eval_cams": "single"}),
    ("mcis_co", "MCIS + co-attention (its localisation maps)", "mcis", {"loss.contrast.enabled": False}),
    ("mcis", "MCIS + co-attention + contrastive", "mcis", {}),
]
EXTRA_ROWS = [
    ("sccam_full", "SC-CAM, 3 full-length rounds (3x the epochs)", "sccam", {"sccam.rounds": 3, "epochs_x": 3}),
    ("mcis_code", "MCIS as its code trains and tests (+ intra-image pairs and maps)", "mcis",
     {"mcis.intra_pairs": True, "mcis.test_intra": True}),
    ("mcis_backbone", "MCIS on the backbone's features (no extra layers, never self-paired: the earlier model)", "mcis",
     {"mcis.extra_convs": 0, "mcis.self_pairs": "never"}),
]
ATTENTION = ("s_std", "entropy_ratio", "feature_norm")  # MCIS's train/attention/* (methods/mcis.py)


def _run(method: str, config: dict, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if method == "start":
        return {**_start_quality(config), "time/run_s": time.perf_counter() - t0}
    from trainables.methods.registry import METHODS

    hist = METHODS[method].train(config)
    rounds = [h for i, h in enumerate(hist) if "train/round" in h
              and (i + 1 == len(hist) or hist[i + 1]["train/round"] != h["train/round"])]
    first = {f"first/{k}": v for k, v in hist[0].items() if k.startswith("train/attention/")}
    return {**hist[-1], **first, "time/run_s": time.perf_counter() - t0,
            "rounds": [{k: r[k] for k in ("train/round", "train/cam_miou", "val/cam_miou")} for r in rounds]}


def _start_quality(config: dict) -> dict:
    """The shared classification checkpoint's CAMs, evaluated like every row."""
    import torch

    from trainables.data.registry import load_dataset
    from trainables.evaluation.cam_eval import evaluate_cams
    from trainables.loop.trial import load_start_weights
    from trainables.methods.registry import METHODS
    from trainables.nets.cam import CamNet

    cfg = METHODS["cam"].resolve(config)
    ds = load_dataset(cfg["data"])
    net = CamNet(cfg["model"], ds.num_fg)
    load_start_weights(net, cfg, ds, torch.device("cpu"))
    net.eval()
    return evaluate_cams(lambda z: net(z)["cam_raw"], ds, cfg, torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p)
    p.set_defaults(space="search_spaces/cam.yaml")  # settings every CAM method takes (aal.yaml's are not)
    add_seed_args(p)
    p.add_argument("--seam-scale", type=float, default=0.5, help="seam.scale for the SEAM rows")
    p.add_argument("--only", nargs="+", default=None, help=f"row keys: {[r[0] for r in ROWS + EXTRA_ROWS]}")
    p.add_argument("--out", default=None, help="write every run's metrics to this JSON file")
    args = p.parse_args()
    base = base_config(args)
    from trainables.methods.registry import METHODS

    rows = [r for r in ROWS + EXTRA_ROWS if (args.only is None and r in ROWS) or (args.only and r[0] in args.only)]
    methods = {m for _, _, m, _ in rows} - {"start"}
    owner = methods.pop() if len(methods) == 1 else "cam"  # one method's rows take its own settings (mcis.*)
    epochs = int(METHODS[owner].resolve(base)["train"]["epochs"])  # the space's (or --epochs), validated
    t_start = time.perf_counter()
    results: dict[tuple[str, int], dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        for f in [pool.submit(prepare_checkpoint, owner, {**base, "train.seed": s}, args.threads) for s in args.seeds]:
            f.result()
        futures = {}
        for key, _, method, over in rows:
            over = dict(over)
            mult = over.pop("epochs_x", 1)
            if method == "seam":
                over.setdefault("seam.scale", args.seam_scale)
            for s in args.seeds:
                cfg = {**base, **over, "train.seed": s, "train.epochs": epochs * mult}
                futures[pool.submit(_run, method, cfg, args.threads)] = (key, s)
        for f in as_completed(futures):
            key, s = futures[f]
            results[(key, s)] = r = f.result()
            print(f"[{time.perf_counter() - t_start:6.0f} s] {key:<12} seed {s}: train CAM "
                  f"{100 * r['train/cam_miou']:.1f}, val {100 * r['val/cam_miou']:.1f}", flush=True)
    print(f"\n{len(args.seeds)} seeds {args.seeds}; space {args.space}; overrides "
          + (", ".join(args.set) or "none") + f"; SEAM scale {args.seam_scale}\n")
    print("| row | train CAM mIoU | val CAM-mask mIoU | t (train) |")
    print("|---|---|---|---|")
    for key, label, _, _ in rows:
        runs = [results[(key, s)] for s in args.seeds]
        print(f"| {label} | {mean_std([r['train/cam_miou'] for r in runs])} | {mean_std([r['val/cam_miou'] for r in runs])} "
              f"| {np.mean([r['train/cam_threshold'] for r in runs]):.2f} |")
        n_rounds = len(runs[0].get("rounds", []))
        for i in range(n_rounds if n_rounds > 1 else 0):
            rr = [r["rounds"][i] for r in runs]
            print(f"| &nbsp; after round {i + 1} | {mean_std([x['train/cam_miou'] for x in rr])} | "
                  f"{mean_std([x['val/cam_miou'] for x in rr])} | |")
    attention = [key for key, *_ in rows if f"train/attention/{ATTENTION[0]}" in results[(key, args.seeds[0])]]
    if attention:
        print("\nMCIS's co-attention (train/attention/*, the mean over an epoch's steps), first and last epoch:\n")
        print("| row | std of S | softmax entropy / uniform | norm of F per position |")
        print("|---|---|---|---|")
        for key in attention:
            runs = [results[(key, s)] for s in args.seeds]
            cells = [" -> ".join(f"{np.mean([r[f'{w}train/attention/{a}'] for r in runs]):.3g}" for w in ("first/", ""))
                     for a in ATTENTION]
            print(f"| {dict((r[0], r[1]) for r in rows)[key]} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"seeds": args.seeds, "overrides": args.set, "space": args.space, "seam_scale": args.seam_scale,
             "runs": [{"row": k, "seed": s, **{m: v for m, v in r.items() if isinstance(v, (int, float, list))}}
                      for (k, s), r in sorted(results.items())]}, indent=1))


if __name__ == "__main__":
    main()
