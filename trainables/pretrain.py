"""Classification pretraining: the checkpoint every single-stage trial starts from.

RRM trains its single-stage model from a classification checkpoint (``train_from_cls_weight``,
spec §4) so that CAMs are meaningful from the first step. Here that checkpoint is trained once
per (data, model, pretrain settings, seed) with the multilabel loss only, cached on disk, and
shared by every trial of a study: the study driver builds it before any trial starts, and a
trial whose searched settings change the key trains its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Callable

import numpy as np
import torch

from trainables import losses
from trainables.data import SegmentationDataset, augment_batch, cache_dir
from trainables.model import SingleStageNet

PRETRAIN_VERSION = 1


def pretrain_key(cfg: dict) -> str:
    """Cache key: everything the pretrained weights depend on."""
    relevant = {"v": PRETRAIN_VERSION, "data": cfg["data"], "model": cfg["model"], "pretrain": cfg["pretrain"],
                "seed": cfg["train"]["seed"], "crop": cfg["train"]["crop"],
                "scale": [cfg["train"]["scale_min"], cfg["train"]["scale_max"]]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def classification_pretrain(cfg: dict, ds: SegmentationDataset, device: torch.device,
                            log: Callable[[str], None] | None = None) -> dict:
    """State dict of a :class:`SingleStageNet` whose backbone and classifier were trained with
    the multilabel soft-margin loss (Adam, cosine-free poly decay); cached on disk."""
    path = cache_dir() / f"pretrain-{pretrain_key(cfg)}.pt"
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            path.unlink(missing_ok=True)
    p, t = cfg["pretrain"], cfg["train"]
    torch.manual_seed(int(t["seed"]))
    rng = np.random.default_rng(int(t["seed"]) + 7919)
    model = SingleStageNet(cfg["model"], ds.num_fg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
    n = len(ds.train)
    bs = min(int(p["batch_size"]), n)
    steps = max(1, n // bs)
    epochs = int(p["epochs"])
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = float(p["lr"]) * (1 - (epoch * steps + step) / (epochs * steps)) ** 0.9
            batch = augment_batch(ds.train, order[step * bs : (step + 1) * bs], int(t["crop"]),
                                  (float(t["scale_min"]), float(t["scale_max"])), bool(t["flip"]), rng)
            out = model(batch.image.to(device))
            loss = losses.classification_loss(out["logits"], batch.labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if log and (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"pretrain epoch {epoch + 1}/{epochs}: cls loss {total / steps:.4f} ({time.perf_counter() - t0:.0f}s)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state
