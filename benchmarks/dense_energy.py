"""Dense energy loss: time of the exact and lattice filters (forward + backward) and the lattice's
gain and error against the exact sum, at the CPU config's map size and a VOC-size one. Printed,
never asserted.

    python benchmarks/dense_energy.py [--threads 2] [--device cpu]

Maps are half-scale crops (the loss runs at scale 0.5): 32x32 for 64 px crops, 161x161 for 321.
Images are scikit-image photos; probabilities are smooth random maps over 21 classes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from trainables.losses.dense_energy import LATTICE_GAIN, bilateral_filter_exact, bilateral_filter_lattice


def photo(size: int, device: torch.device) -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    img = resize(data.astronaut(), (size, size), anti_aliasing=True) * 255.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].float().to(device)


def timed(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"device {dev}, {args.threads} threads; lattice gain constant {LATTICE_GAIN}")
    print(f"{'map':>9} {'classes':>7} {'exact s':>9} {'lattice s':>10} {'speed-up':>9} {'gain':>6} {'rel err':>8}")
    for size, sigma_xy, classes, reps in [(32, 25.0, 7, 5), (64, 25.0, 21, 2), (161, 50.0, 21, 1)]:
        image = photo(size, dev)
        torch.manual_seed(0)
        logits = F.interpolate(torch.randn(1, classes, 6, 6, device=dev), size=(size, size), mode="bilinear")
        logits.requires_grad_(True)

        def run(filt):
            def step():
                probs = torch.softmax(logits, 1)
                out = filt(image, probs, 15.0, sigma_xy)
                (-(probs * out).sum()).backward()
            return step

        t_lat = timed(run(bilateral_filter_lattice), reps)
        t_ex = timed(run(bilateral_filter_exact), reps)
        with torch.no_grad():
            probs = torch.softmax(logits, 1)
            ex = bilateral_filter_exact(image, probs, 15.0, sigma_xy)
            lat = bilateral_filter_lattice(image, probs, 15.0, sigma_xy)
            gain = float((lat * LATTICE_GAIN).sum() / ex.sum())
            err = float((lat - ex).norm() / ex.norm())
        print(f"{size:>4}x{size:<4} {classes:>7} {t_ex:9.3f} {t_lat:10.3f} {t_ex / t_lat:8.1f}x {gain:6.3f} {err:8.3f}")


if __name__ == "__main__":
    main()
