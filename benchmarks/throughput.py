"""Training and pseudo-label throughput for each refiner, printed (never asserted):

    python benchmarks/throughput.py [--configs cpu voc] [--workers 0 2] [--refiners densecrf par]
        [--device cpu|cuda] [--label-images 32] [--threads 2]

1. Training images/s and peak memory of the single-stage model with every loss term on, for
   - ``cpu``: the default study's model (search_spaces/aal.yaml: EfficientNet-Lite0 stages 1-5,
     64 px crops, batch 16) on synthetic 64 px images;
   - ``voc``: a VOC-size config (ResNet-50 at output stride 8, crop 321, batch 4, SGD; bf16
     autocast on a GPU) on synthetic 352 px images (7 classes instead of VOC's 21: only the
     last 1x1 layers and the dense loss channels differ; the refiners see the classes present,
     1-4 here as on VOC).
   Each (config, refiner, CRF workers) runs in a fresh process for two epochs; the second
   epoch's images/s is reported (the first includes warm-up). Peak memory: the process's peak
   RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
2. Reliable pseudo labels per second (docs/single_stage.md §2: two refinements per image, then
   the pruning) for a batch of 16 at crop 64 and of 8 at crop 321: the dense CRF serially and
   with the worker pool, PAR on the CPU with 1 and 2 threads (and on ``--device`` when it is a
   GPU), as ratios to the serial CRF, in total and per core occupied.
"""

from __future__ import annotations

import argparse
import math  # noqa: F401
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


def _training(configs: list[str], workers: list[int], refiners: list[str], device: str, threads: int) -> None:
    from trainables.settings.tree import merge

    cpu = merge(base_config(argparse.Namespace(space="search_spaces/aal.yaml", study=None, set=[], epochs=None)), {})
    cpu["data"] = {**cpu["data"], "num_train": 128, "num_val": 8}
    cpu["pretrain"] = {"enabled": False}
    chosen = {"cpu": cpu, "voc": VOC}
    print(f"training throughput, device {_device_name(device)}, {threads} torch threads, every loss term on")
    print(f"{'config':<6} {'pseudo labels':<32} {'images/s':>9} {'epoch s':>8} {'waited s':>9} {'peak MiB':>9}")
    ctx = mp.get_context("spawn")
    for name in configs:
        for refiner in refiners:
            for w in (workers if refiner == "densecrf" else [0]):
                cfg = merge(chosen[name], {**ALL_TERMS, "train.epochs": 2, "train.device": device,
                                            "pseudo.refiner": refiner, "pseudo.workers": w, "pseudo.overlap": True})
                if device.startswith("cuda"):
                    cfg = merge(cfg, {"train.autocast": "bf16"})
                with ProcessPoolExecutor(1, mp_context=ctx) as pool:
                    r = pool.submit(_train_run, cfg, threads).result()
                mode = (f"{refiner}, in the step" if w == 0 else f"{refiner}, pool of {w}, overlapped")
                print(f"{name:<6} {mode:<32} {r['images_per_s']:9.2f} {r['epoch_s']:8.2f} {r['pseudo_wait_s']:9.2f} "
                      f"{r['peak_bytes'] / 2**20:9.0f}", flush=True)


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _label_inputs(n: int, crop: int):
    """Synthetic scenes cropped to ``crop`` px (352 px scenes for 321, the CPU config's 64 px
    ones for 64), with CAMs made from their masks (blurred, so the refiners see soft maps with
    the objects' shapes) for the classes present."""
    import torch
    import torch.nn.functional as F

    from trainables.data.synthetic import DEFAULTS, generate_synthetic

    size = {"image_size": 352, "min_radius": 40, "max_radius": 120} if crop > 64 else {"image_size": 64}
    ds = generate_synthetic({**DEFAULTS, "num_train": n, "num_val": 1, "seed": 1, **size})
    rgb = np.stack([im[:crop, :crop] for im in ds.train.images])
    masks = torch.from_numpy(np.stack([m[:crop, :crop] for m in ds.train.masks]).astype(np.int64))
    onehot = F.one_hot(masks.clamp_max(ds.num_classes - 1), ds.num_classes).permute(0, 3, 1, 2).float()[:, 1:]
    k = max(3, crop // 10) | 1
    cams = F.avg_pool2d(onehot, k, stride=1, padding=k // 2) * 0.9
    return rgb, cams, torch.from_numpy(ds.train.labels)


# (label, pseudo settings, CRF workers, torch threads, cores it occupies)
def _label_modes(max_workers: int) -> list[tuple[str, dict, int, int, int]]:
    return [("densecrf, serial", {}, 0, 1, 1),
            (f"densecrf, pool of {max_workers}", {}, max_workers, 1, max_workers),
            ("par, 1 thread", {"refiner": "par"}, 0, 1, 1),
            ("par, 2 threads", {"refiner": "par"}, 0, 2, 2)]


def _label_rate(cfg, workers: int, threads: int, rgb, cams, labels, batch: int, device: str) -> float:
    import torch

    from trainables.pseudo.labels import PseudoLabeler

    torch.set_num_threads(threads)
    cams, labels = cams.to(device), labels.to(device)
    with PseudoLabeler(cfg, workers=workers) as labeler:
        labeler.submit(rgb[:batch], cams[:batch], labels[:batch]).result()  # start the workers, warm up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pending = [labeler.submit(rgb[i:i + batch], cams[i:i + batch], labels[i:i + batch])
                   for i in range(0, len(rgb), batch)]
        for p in pending:
            p.result(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(rgb) / (time.perf_counter() - t0)


def _labels(n_images: int, max_workers: int, device: str) -> None:
    """Reliable pseudo labels per second (the whole rule: two refinements per image, then the
    pruning) for each refiner, as ratios to the serial dense CRF, in total and per core."""
    from trainables.pseudo.labels import PseudoLabelConfig

    print(f"\nreliable pseudo labels per second (two refinements per image + the rule), {os.cpu_count()} CPUs; "
          "PAR at its defaults (dilations 1-24, 10 iterations, half scale)")
    print(f"{'batch x crop':<13} {'mode':<22} {'images/s':>9} {'x serial':>9} {'per core x serial':>18} {'s/image':>8}")
    for batch, crop, n in ((16, 64, 16 * n_images // 4), (8, 321, n_images)):
        rgb, cams, labels = _label_inputs(n, crop)
        modes = _label_modes(max_workers)
        if device != "cpu":
            modes.append((f"par on {device}", {"refiner": "par"}, 0, 1, 1))
        serial = None
        for name, over, workers, threads, cores in modes:
            dev = device if name.startswith("par on") else "cpu"
            rate = _label_rate(PseudoLabelConfig(**over), workers, threads, rgb, cams, labels, batch, dev)
            serial = serial or rate
            print(f"{batch:>3} x {crop:<7} {name:<22} {rate:9.1f} {rate / serial:9.2f} {rate / cores / serial:18.2f} "
                  f"{1 / rate:8.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="*", default=["cpu", "voc"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="pool sizes for the training runs")
    p.add_argument("--refiners", nargs="+", default=["densecrf", "par"], help="pseudo.refiner values to train with")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the training runs")
    p.add_argument("--label-images", type=int, default=32, help="images per crop-321 measurement (x4 at crop 64)")
    p.add_argument("--label-workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.configs:
        _training(args.configs, args.workers, args.refiners, args.device, args.threads)
    if args.label_images:
        _labels(args.label_images, args.label_workers, args.device)


if __name__ == "__main__":
    main()
