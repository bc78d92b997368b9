"""Pseudo-label quality with each refiner (``pseudo.refiner: densecrf | par``) on the synthetic
benchmark, printed as Markdown (never asserted):

    python benchmarks/refiners.py --space search_spaces/aal.yaml --seeds 0 1 2 --jobs 2 \
        [--par-confidence 0.5] [--set KEY=VALUE ...]

Variants: the dense CRF (the reference), PAR with the same settings, and PAR with each
``--par-confidence`` cutoff (``pseudo.crf_confidence``; PAR's output is less peaked than the CRF's
marginals, so the CRF's cutoff 0.8 keeps fewer pixels). Two measurements per seed, with the
space's fixed settings (and ``--set``) otherwise the same:

1. **Same CAMs, both refiners.** The CAMs of the seed's classification checkpoint (the CAMs the
   first pseudo labels come from) on every training image, labelled by the reliable-label rule
   with each refiner: precision and coverage against the ground truth, and agreement with the
   CRF's labels (of the pixels both call reliable, the fraction with the same label; and the IoU
   of the two reliable sets).
2. **The full model trained with each refiner**: final val mIoU, the pseudo labels' precision
   and coverage over the last epoch, and the run's wall time.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_config_args, add_seed_args, base_config, mean_std, prepare_checkpoint, run_method  # noqa: E402

REFERENCE = "densecrf"


def variants(par_confidences: list[float]) -> dict[str, dict]:
    """Name -> pseudo settings of each variant; the first is the reference.

    Example:
        >>> list(variants([0.5]))
        ['densecrf', 'par', 'par, crf_confidence 0.5']
    """
    out = {REFERENCE: {"refiner": "densecrf"}, "par": {"refiner": "par"}}
    out.update({f"par, crf_confidence {c:g}": {"refiner": "par", "crf_confidence": c} for c in par_confidences})
    return out


def _same_cams(config: dict, threads: int, variants: dict[str, dict]) -> dict:
    """Measurement 1 for one seed: {refiner: counts} and the agreement counts."""
    import torch

    from trainables.data.dataset import IGNORE_INDEX, eval_batches
    from trainables.data.registry import load_dataset
    from trainables.loop.pretrain import classification_pretrain
    from trainables.methods.registry import METHODS
    from trainables.nets.segmentation import SingleStageNet
    from trainables.pseudo.cam import multiscale_cams
    from trainables.pseudo.labels import PseudoLabelConfig, PseudoLabeler

    torch.set_num_threads(threads)
    cfg = METHODS["aal"].resolve(config)
    ds = load_dataset(cfg["data"])
    net = SingleStageNet(cfg["model"], ds.num_fg)
    net.load_state_dict(classification_pretrain(cfg, ds, torch.device("cpu")))
    net.eval()
    counts = {v: np.zeros(3, np.int64) for v in variants}  # reliable, reliable and right, pixels
    both = {v: np.zeros(3, np.int64) for v in variants}  # with the reference: both, same label, either
    for idx, x, labels, gt in eval_batches(ds.train, 16):
        with torch.no_grad():
            cams = multiscale_cams(lambda z: net(z)["cam_raw"], x, labels, cfg["cam"]["scales"])
        rgb = np.stack([ds.train.images[i] for i in idx])
        out = {}
        for v, over in variants.items():
            out[v] = PseudoLabeler(PseudoLabelConfig.from_mapping({**cfg["pseudo"], **over})).submit(
                rgb, cams, labels).result()[0]
            kept, ref = out[v] != IGNORE_INDEX, out[REFERENCE] != IGNORE_INDEX
            counts[v] += [int(kept.sum()), int((kept & (out[v] == gt)).sum()), gt.numel()]
            both[v] += [int((kept & ref).sum()), int((kept & ref & (out[v] == out[REFERENCE])).sum()),
                        int((kept | ref).sum())]
    return {"counts": {v: c.tolist() for v, c in counts.items()}, "both": {v: b.tolist() for v, b in both.items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p)
    add_seed_args(p)
    p.add_argument("--par-confidence", type=float, nargs="*", default=[0.5],
                   help="extra PAR variants with these pseudo.crf_confidence cutoffs")
    p.add_argument("--out", default=None, help="write every run's figures to this JSON file")
    args = p.parse_args()
    base = base_config(args)
    kinds = variants(args.par_confidence)
    ctx = mp.get_context("spawn")
    t_start = time.perf_counter()
    same, trained = {}, {}
    with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        for f in [pool.submit(prepare_checkpoint, "aal", {**base, "train.seed": s}, args.threads) for s in args.seeds]:
            f.result()
        futures = {pool.submit(_same_cams, {**base, "train.seed": s}, args.threads, kinds): ("same", None, s)
                   for s in args.seeds}
        futures.update({pool.submit(run_method, "aal", {**base, **{f"pseudo.{k}": x for k, x in over.items()},
                                                         "train.seed": s}, args.threads): ("train", v, s)
                        for v, over in kinds.items() for s in args.seeds})
        for f in as_completed(futures):
            kind, r, s = futures[f]
            if kind == "same":
                same[s] = f.result()
                print(f"[{time.perf_counter() - t_start:6.0f} s] same CAMs, seed {s}: {same[s]}", flush=True)
            else:
                trained[(r, s)] = f.result()
                print(f"[{time.perf_counter() - t_start:6.0f} s] {r} seed {s}: val/miou "
                      f"{100 * trained[(r, s)]['val/miou']:.1f}", flush=True)
    _print(args, list(kinds), same, trained)
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"seeds": args.seeds, "overrides": args.set, "space": args.space, "same_cams": same,
             "trained": [{"refiner": r, "seed": s, **{m: v for m, v in res.items() if isinstance(v, (int, float))}}
                         for (r, s), res in sorted(trained.items())]}, indent=1))


def _print(args, names: list[str], same: dict, trained: dict) -> None:
    print(f"\n{len(args.seeds)} seeds {args.seeds}; space {args.space}; overrides " + (", ".join(args.set) or "none"))
    print("\nSame CAMs (each seed's classification checkpoint, every training image):\n")
    print(f"| variant | PL precision | PL coverage | same label as {REFERENCE} where both reliable | "
          f"IoU of the reliable sets |")
    print("|---|---|---|---|---|")
    for v in names:
        c, b = [same[s]["counts"][v] for s in args.seeds], [same[s]["both"][v] for s in args.seeds]
        prec, cov = [k[1] / max(k[0], 1) for k in c], [k[0] / max(k[2], 1) for k in c]
        agree = ("(reference)",) * 2 if v == REFERENCE else (
            mean_std([k[1] / max(k[0], 1) for k in b]), mean_std([k[0] / max(k[2], 1) for k in b]))
        print(f"| {v} | {mean_std(prec)} | {mean_std(cov)} | {agree[0]} | {agree[1]} |")
    print("\nThe full model trained with each variant:\n")
    print("| variant | val mIoU | PL precision (last epoch) | PL coverage (last epoch) | run time s |")
    print("|---|---|---|---|---|")
    for v in names:
        runs = [trained[(v, s)] for s in args.seeds]
        col = {m: [x.get(m) for x in runs] for m in ("val/miou", "train/pseudo/precision", "train/pseudo/coverage")}
        secs = np.mean([x["time/run_s"] for x in runs])
        print(f"| {v} | {mean_std(col['val/miou'])} | {mean_std(col['train/pseudo/precision'])} | "
              f"{mean_std(col['train/pseudo/coverage'])} | {secs:.0f} |")


if __name__ == "__main__":
    main()
