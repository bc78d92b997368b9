"""What one trial of a VOC study costs, measured on a few batches and projected to the full
study settings (printed, never asserted):

    python benchmarks/voc_cost.py --root /data/VOCdevkit/VOC2012 [--device cuda] [--steps 20]
        [--space search_spaces/aal_voc.yaml] [--set KEY=VALUE ...]

Without ``--root`` it writes a VOC-layout folder of synthetic 500x375 photos (tests/voc_fixture.py)
in a temporary directory, so the figures mean something on any machine.

Measured with the real trainable (trials run exactly this code):
1. training: the study's fixed settings (crop, batch, every loss term, pseudo-label CRFs in
   ``pseudo.workers`` processes) for ``--steps`` steps after one warm-up epoch of the same length;
   images/s of the second epoch, and the part of it spent waiting for pseudo labels;
2. evaluation: seconds per val image (the seg head on the whole image at full resolution, the
   configured scales and flip) and per train image of the CAM threshold choice
   (``eval.cam_train_images``), plus val CAMs.
Projection: ``train.epochs`` x 10,582 train_aug images at that rate, plus one evaluation of 1,449
val images and the CAM subset at each ``eval.every`` epoch (ASHA may stop a trial earlier).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import add_config_args, base_config  # noqa: E402

TRAIN_AUG, VAL = 10582, 1449


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.set_defaults(space="search_spaces/aal_voc.yaml")
    p.add_argument("--root", help="a VOC2012 folder (default: a synthetic one in a temporary folder)")
    p.add_argument("--steps", type=int, default=6, help="training steps measured (after as many warm-up steps)")
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch

    from trainables.data.registry import load_dataset
    from trainables.evaluation.cam_eval import evaluate_cams
    from trainables.loop.train import Float32Net, resolve_device
    from trainables.methods.registry import METHODS
    from trainables.methods.single_stage import evaluate
    from trainables.nets.segmentation import SingleStageNet
    from trainables.settings.tree import merge

    tmp = None
    root = args.root
    if root is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from voc_fixture import make_voc

        tmp = tempfile.TemporaryDirectory()
        make_voc(Path(tmp.name), n_train=40, n_aug=0, n_val=args.val_images, size=(375, 500), with_real=False)
        root = tmp.name
    if args.threads:
        torch.set_num_threads(args.threads)
    args.set = [f"data.root={root}", *args.set]
    base = base_config(args)
    aal = METHODS["aal"]
    cfg = aal.resolve(base)
    bs = int(cfg["train"]["batch_size"])
    n_train = args.steps * bs
    device = resolve_device(args.device)
    run_cfg = aal.resolve(merge(cfg, {"data": {"max_train": n_train, "max_val": args.val_images},
                                      "train": {"epochs": 2, "seg_warmup_epochs": 0, "device": str(device),
                                                "checkpoint_every": 100},
                                      "eval": {"every": 100, "cam_quality": False}}))
    print(f"device {device}; {cfg['model']['backbone']}, crop {cfg['train']['crop']}, batch {bs}, "
          f"pseudo.workers {cfg['pseudo']['workers']}, autocast {cfg['train']['autocast']}; "
          f"{args.steps} steps measured after {args.steps} warm-up steps")
    hist = aal.train(run_cfg)
    m = hist[-1]
    ips = m["train/images_per_s"]
    wait = m.get("time/pseudo_wait_s", 0.0)
    print(f"training      {ips:.2f} images/s ({1 / ips:.3f} s/image); waiting for pseudo labels "
          f"{wait:.2f} s per step of {m['time/epoch_s'] / args.steps:.2f} s")

    ds = load_dataset(run_cfg["data"])
    model = SingleStageNet(cfg["model"], ds.num_fg).to(device)
    evaluate(model, ds, merge(run_cfg, {"eval": {"cam_quality": False}}), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    evaluate(model, ds, merge(run_cfg, {"eval": {"cam_quality": False}}), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    val_s = (time.perf_counter() - t0) / len(ds.val)
    net = Float32Net(model.eval(), str(cfg["train"]["autocast"]), device)
    t0 = time.perf_counter()
    evaluate_cams(lambda z: net(z)["cam_raw"], ds, merge(run_cfg, {"eval": {"cam_train_images": 0, "crf": False}}),
                  device)
    cam_s = (time.perf_counter() - t0) / (len(ds.train) + len(ds.val))
    print(f"evaluation    {val_s:.3f} s per val image (seg head, full resolution); "
          f"{cam_s:.3f} s per image of CAM evaluation")

    epochs, every = int(cfg["train"]["epochs"]), int(cfg["eval"]["every"])
    evals = len({e for e in range(1, epochs + 1) if e % every == 0 or e == epochs or e == 1})
    cam_images = min(int(cfg["eval"]["cam_train_images"]) or TRAIN_AUG, TRAIN_AUG) + VAL
    train_h = epochs * TRAIN_AUG / ips / 3600
    eval_h = evals * (VAL * val_s + (cam_images * cam_s if cfg["eval"]["cam_quality"] else 0)) / 3600
    print(f"projection    {epochs} epochs x {TRAIN_AUG:,} images: {train_h:.2f} h training + {evals} evaluations: "
          f"{eval_h:.2f} h = {train_h + eval_h:.2f} h per full-length trial on this device")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
