"""Training and pseudo-label throughput, printed (never asserted):

    python benchmarks/throughput.py [--configs cpu voc] [--workers 0 2] [--device cpu|cuda]
        [--label-images 32] [--threads 2]

1. Training images/s and peak memory of the single-stage model with every loss term on, for
   - ``cpu``: the default study's model (search_spaces/aal.yaml: EfficientNet-Lite0 stages 1-5,
     64 px crops, batch 16) on synthetic 64 px images;
   - ``voc``: a VOC-size config (ResNet-50 at output stride 8, crop 321, batch 4, SGD) on
     synthetic 352 px images (7 classes instead of VOC's 21: only the last 1x1 layers and the
     dense loss channels differ; the CRFs run over the classes present, 1-4 here as on VOC).
   Each (config, pseudo-label mode) runs in a fresh process for two epochs; the second epoch's
   images/s is reported (the first includes warm-up). Peak memory: the process's peak RSS on
   CPU, ``torch.cuda.max_memory_allocated`` on GPU.
2. Pseudo-label throughput at crop 321 (two dense CRFs per image, docs/single_stage.md §2): images/s serially in
   one process against the worker pool with 1..N workers, as a ratio, and the workers a network
   step of a given speed needs so that the CRFs keep up: ceil(step images/s x CRF s/image).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import base_config  # noqa: E402

ALL_TERMS = {"loss.dense.enabled": True, "loss.affinity.enabled": True, "loss.reassign.enabled": True}
VOC = {
    "data": {"name": "synthetic", "num_train": 16, "num_val": 4, "image_size": 352, "seed": 0,
             "min_radius": 40, "max_radius": 120},
    "model": {"backbone": "resnet50", "weights": None, "output_stride": 8, "dilate": True, "seg_hidden": 256},
    "pretrain": {"enabled": False},
    "train": {"batch_size": 4, "crop": 321, "optimizer": "sgd", "lr": 7e-4},
    "loss.dense.weight": 1e-7,
    "eval": {"every": 100},
}


def _train_run(config: dict, threads: int) -> dict:
    import torch

    from trainables.methods.registry import METHODS

    torch.set_num_threads(threads)
    hist = METHODS["aal"].train(config)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() and config["train"].get("device") == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": hist[-1]["train/images_per_s"], "peak_bytes": peak,
            "pseudo_wait_s": hist[-1].get("time/pseudo_wait_s", 0.0), "epoch_s": hist[-1]["time/epoch_s"]}


def _training(configs: list[str], workers: list[int], device: str, threads: int) -> None:
    from trainables.settings.tree import merge

    cpu = merge(base_config(argparse.Namespace(space="search_spaces/aal.yaml", study=None, set=[], epochs=None)), {})
    cpu["data"] = {**cpu["data"], "num_train": 128, "num_val": 8}
    cpu["pretrain"] = {"enabled": False}
    chosen = {"cpu": cpu, "voc": VOC}
    print(f"training throughput, device {device}, {threads} torch threads, every loss term on")
    print(f"{'config':<6} {'pseudo labels':<22} {'images/s':>9} {'epoch s':>8} {'waited s':>9} {'peak MiB':>9}")
    ctx = mp.get_context("spawn")
    for name in configs:
        for w in workers:
            cfg = merge(chosen[name], {**ALL_TERMS, "train.epochs": 2, "train.device": device,
                                        "pseudo.workers": w, "pseudo.overlap": True})
            with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                r = pool.submit(_train_run, cfg, threads).result()
            mode = "serial, in the step" if w == 0 else f"pool of {w}, overlapped"
            print(f"{name:<6} {mode:<22} {r['images_per_s']:9.2f} {r['epoch_s']:8.2f} {r['pseudo_wait_s']:9.2f} "
                  f"{r['peak_bytes'] / 2**20:9.0f}", flush=True)


def _label_inputs(n: int, crop: int = 321):
    """Synthetic 352 px scenes cropped to 321 px, with CAMs made from their masks (blurred, so
    the CRFs see soft maps with the objects' shapes) for the classes present."""
    import torch
    import torch.nn.functional as F

    from trainables.data.synthetic import DEFAULTS, generate_synthetic

    ds = generate_synthetic({**DEFAULTS, "num_train": n, "num_val": 1, "image_size": 352, "seed": 1,
                             "min_radius": 40, "max_radius": 120})
    rgb = np.stack([im[:crop, :crop] for im in ds.train.images])
    masks = torch.from_numpy(np.stack([m[:crop, :crop] for m in ds.train.masks]).astype(np.int64))
    onehot = F.one_hot(masks.clamp_max(ds.num_classes - 1), ds.num_classes).permute(0, 3, 1, 2).float()[:, 1:]
    cams = F.avg_pool2d(onehot, 31, stride=1, padding=15) * 0.9
    return rgb, cams, torch.from_numpy(ds.train.labels)


def _labels(n_images: int, max_workers: int, batch: int = 4) -> None:
    from trainables.pseudo.labels import PseudoLabelConfig, PseudoLabeler

    rgb, cams, labels = _label_inputs(n_images)
    cfg = PseudoLabelConfig()
    print(f"\npseudo labels at crop 321 (two dense CRFs, 10 iterations each), {n_images} images in batches of "
          f"{batch}, {os.cpu_count()} CPUs")
    print(f"{'mode':<22} {'images/s':>9} {'x serial':>9} {'s/image':>8}")
    serial = None
    for w in [0] + list(range(1, max_workers + 1)):
        with PseudoLabeler(cfg, workers=w) as labeler:
            labeler.submit(rgb[:batch], cams[:batch], labels[:batch]).result()  # start the workers
            t0 = time.perf_counter()
            pending = [labeler.submit(rgb[i:i + batch], cams[i:i + batch], labels[i:i + batch])
                       for i in range(0, n_images, batch)]
            for p in pending:
                p.result()
            rate = n_images / (time.perf_counter() - t0)
        serial = serial or rate
        mode = "serial (one process)" if w == 0 else f"pool, {w} workers"
        print(f"{mode:<22} {rate:9.2f} {rate / serial:9.2f} {1 / rate:8.3f}", flush=True)
    per_image = 1 / serial
    print(f"\nworkers needed to keep up (one CRF image costs {per_image:.3f} s on one core here):")
    for step_rate in (5, 10, 20, 40):
        print(f"  network step at {step_rate:>3} images/s -> {math.ceil(step_rate * per_image)} workers")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="*", default=["cpu", "voc"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="pool sizes for the training runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the training runs")
    p.add_argument("--label-images", type=int, default=32)
    p.add_argument("--label-workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.configs:
        _training(args.configs, args.workers, args.device, args.threads)
    if args.label_images:
        _labels(args.label_images, args.label_workers)


if __name__ == "__main__":
    main()
