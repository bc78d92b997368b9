"""Dense energy loss: RRM's gated DenseCRF loss (docs/single_stage.md §3; Tang et al., "On Regularized Losses for
Weakly-supervised CNN Segmentation", ECCV 2018, eq. 4 with the Potts relaxation; RRM, AAAI 2020,
eq. 6-7 for the gate).

    L = -(1/N) sum_k sum_i S_ik G_i (W S_k)_i

with S the softmax of the segmentation logits at ``scale`` of the crop, W the bilateral kernel
W_ij = exp(-|p_i - p_j|^2 / (2 sigma_xy^2) - |I_i - I_j|^2 / (2 sigma_rgb^2)) over pixel
positions p (in pixels of the scaled map) and RGB values I (0-255), N the batch size, and the
gate G_i = 1 on pixels without a reliable pseudo label, 1 - max_k S_ik elsewhere (detached, as a
constant). Pixels outside the valid crop region (padding) are dropped from S.

Two implementations of the filtering y = W v:
- :func:`bilateral_filter_exact`: the dense sum, chunked so memory stays bounded. Exact; cost
  O(N^2 K), fine up to a few thousand pixels (a 64 px crop at half scale has 1,024).
- :func:`bilateral_filter_lattice`: the permutohedral lattice (Adams et al. 2010), the filter
  RRM's loss runs on, written here in PyTorch (GPU and CPU alike): O(N K (d+1)^2). Its output
  is about 0.55x the exact sum with a 5-10 % shape error on photos; it is divided by that gain
  (:data:`LATTICE_GAIN`) so both implementations estimate the same W. Tests bound the gap.

The gradient: this module lets autograd differentiate L with the gate held constant, which gives
-(G * W S + W (G * S)) / N. RRM's hand-written backward returns -2 G * W S / N (exact only when
the gate is constant over the image); ``rrm_gradient=True`` reproduces it.

The conventions around the filter follow RRM's code by default, each a keyword argument (and a
``loss.dense`` switch) that selects this project's former one: S is the softmax at crop size
resized to ``scale`` (``resize="probs"``; ``"logits"`` resizes the logits and softmaxes after);
the image is resized by nearest neighbour (``image_resize``); the scaled size is floored
(``size_rounding``); the lattice's features are [x, y, r, g, b] (``feature_order``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.data.dataset import IGNORE_INDEX



def bilateral_features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float, order: str = "xy") -> torch.Tensor:
    """(B, 3, H, W) RGB in 0-255 -> (B, N, 5) features in units of sigma, pixels row by row:
    [x, y, r, g, b] (``order="xy"``, as RRM's bilateralfilter.cpp l.9-10) or [y, x, r, g, b]
    (``"yx"``). The exact kernel does not depend on the order; the lattice does, slightly.

    Example:
        >>> bilateral_features(torch.zeros(1, 3, 2, 3), 1.0, 1.0)[0, 5, :2].tolist()  # y = 1, x = 2
        [2.0, 1.0]
    """
    if order not in ("xy", "yx"):
        raise ValueError(f"loss.dense.feature_order={order!r}: choose xy or yx")
    b, _, h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    pos = torch.stack([xx, yy] if order == "xy" else [yy, xx]).expand(b, 2, h, w) / sigma_xy
    return torch.cat([pos, image / sigma_rgb], dim=1).flatten(2).transpose(1, 2)


def bilateral_filter_exact(image: torch.Tensor, values: torch.Tensor, sigma_rgb: float, sigma_xy: float,
                           chunk: int = 2048, order: str = "xy") -> torch.Tensor:
    """y_i = sum_j W_ij v_j (j = i included) for (B, 3, H, W) images and (B, K, H, W) values."""
    b, k, h, w = values.shape
    f = bilateral_features(image.to(values.dtype), sigma_rgb, sigma_xy, order)  # (B, N, 5)
    v = values.flatten(2).transpose(1, 2)  # (B, N, K)
    sq = (f * f).sum(-1)  # (B, N)
    out = []
    for s in range(0, f.shape[1], chunk):
        fi = f[:, s : s + chunk]
        d2 = sq[:, s : s + chunk, None] + sq[:, None, :] - 2.0 * fi @ f.transpose(1, 2)
        out.append(torch.exp(-0.5 * d2.clamp_min(0.0)) @ v)
    return torch.cat(out, dim=1).transpose(1, 2).reshape(b, k, h, w)


# Mean ratio of the lattice's output to the exact Gaussian sum for 5-D features at the densities of
# real crops (photos, 32-96 px maps, sigma_xy 8-50): 0.50-0.60 (benchmarks/dense_energy.py prints
# it). Dividing by it makes both implementations estimate the same W, so one weight fits both;
# RRM's 1e-7 was set on the raw lattice output, i.e. about 5.5e-8 on this scale.
LATTICE_GAIN = 0.55


def _pack(keys: torch.Tensor, bits: int = 12) -> torch.Tensor:
    """Pack integer lattice coordinates (..., d) into one int64 each (d * bits <= 63)."""
    off = 1 << (bits - 1)
    if keys.numel() and (keys.min() < -off or keys.max() >= off):
        raise ValueError("lattice coordinates out of range: features span too many sigmas")
    code = torch.zeros(keys.shape[:-1], dtype=torch.long, device=keys.device)
    for c in range(keys.shape[-1]):
        code = code * (1 << bits) + (keys[..., c] + off)
    return code


def permutohedral_filter(feat: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Approximate y_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j with the permutohedral lattice (Adams,
    Baek & Davis 2010, the filter RRM's dense energy loss runs on): splat each point onto the d+1
    vertices of its enclosing simplex with barycentric weights, blur along the d+1 lattice axes
    with [1/2, 1, 1/2] among occupied vertices, slice back. ``feat`` (N, d) in units of sigma,
    ``values`` (N, K). Linear in ``values``, so autograd gives its exact transpose (W is
    symmetric up to the approximation)."""
    n, d = feat.shape
    dev, dt = feat.device, feat.dtype
    i = torch.arange(d, device=dev, dtype=dt)
    cf = feat * ((d + 1) * math.sqrt(2.0 / 3.0) / torch.sqrt((i + 1) * (i + 2)))
    # Elevate onto the hyperplane sum(x) = 0 of R^(d+1).
    suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # suffix[:, j] = sum_{l >= j} cf_l
    elevated = torch.empty(n, d + 1, device=dev, dtype=dt)
    elevated[:, 0] = suffix[:, 0]
    after = torch.cat([suffix[:, 1:], torch.zeros(n, 1, device=dev, dtype=dt)], 1)
    elevated[:, 1:] = after - torch.arange(1, d + 1, device=dev, dtype=dt) * cf
    # Nearest remainder-0 point, then the rank of each coordinate's residual (ties by index).
    rounded = torch.round(elevated / (d + 1))
    rem0 = rounded * (d + 1)
    total = rounded.sum(1, keepdim=True).long()
    res = elevated - rem0
    idx = torch.arange(d + 1, device=dev)
    rank = ((res[:, None, :] > res[:, :, None])
            | ((res[:, None, :] == res[:, :, None]) & (idx[None, :] < idx[:, None])[None])).sum(2)
    rank = rank + total
    low, high = rank < 0, rank > d
    rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
    rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))
    # Barycentric weights of the d+1 enclosing vertices.
    v = (elevated - rem0) / (d + 1)
    bary = torch.zeros(n, d + 2, device=dev, dtype=dt)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    bary = bary[:, : d + 1].reshape(-1, 1)
    k = torch.arange(d + 1, device=dev)
    canonical = torch.where(idx[None, :] <= d - k[:, None], k[:, None], k[:, None] - (d + 1))
    keys = rem0.long()[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)  # (N, d+1, d)
    codes, inverse = torch.unique(_pack(keys).flatten(), return_inverse=True)
    m = codes.numel()
    lattice = torch.zeros(m, values.shape[1], device=dev, dtype=values.dtype)
    lattice = lattice.index_add(0, inverse, bary * values.repeat_interleave(d + 1, 0))
    vertex = torch.zeros(m, d, dtype=torch.long, device=dev)
    vertex[inverse] = keys.reshape(-1, d)
    for j in range(d + 1):  # blur along each lattice direction
        out = lattice
        for sign in (1, -1):
            nb = vertex + sign
            if j < d:
                nb[:, j] = vertex[:, j] - sign * d
            code = _pack(nb)
            pos = torch.searchsorted(codes, code).clamp_max(m - 1)
            found = (codes[pos] == code)[:, None]
            out = out + 0.5 * torch.where(found, lattice[pos], torch.zeros_like(lattice))
        lattice = out
    alpha = 1.0 / (1.0 + 2.0 ** (-d))
    return (lattice[inverse] * bary).reshape(n, d + 1, -1).sum(1) * alpha


def bilateral_filter_lattice(image: torch.Tensor, values: torch.Tensor, sigma_rgb: float,
                             sigma_xy: float, order: str = "xy") -> torch.Tensor:
    """:func:`bilateral_filter_exact` approximated by :func:`permutohedral_filter`, per image,
    divided by :data:`LATTICE_GAIN`. The lattice's output depends on the feature ``order``."""
    b, k, h, w = values.shape
    f = bilateral_features(image.to(values.dtype), sigma_rgb, sigma_xy, order)
    out = [permutohedral_filter(f[n], values[n].flatten(1).t()).t().reshape(k, h, w) for n in range(b)]
    return torch.stack(out) / LATTICE_GAIN


FILTERS = {"exact": bilateral_filter_exact, "lattice": bilateral_filter_lattice}


def choose_filter(impl: str, num_pixels: int, exact_max_pixels: int = 4096) -> str:
    """``auto`` picks the exact filter for maps up to ``exact_max_pixels`` pixels, else the lattice."""
    if impl == "auto":
        return "exact" if num_pixels <= exact_max_pixels else "lattice"
    if impl not in FILTERS:
        raise ValueError(f"loss.dense.impl={impl!r}: choose auto, exact or lattice")
    return impl


class _RRMGradient(torch.autograd.Function):
    """Energy value with RRM's backward: dL/dS = -2 G * (W S) / N."""

    @staticmethod
    def forward(ctx, probs, filtered, gate):
        ctx.save_for_backward(filtered, gate)
        return -(probs * gate * filtered).sum() / probs.shape[0]

    @staticmethod
    def backward(ctx, grad):
        filtered, gate = ctx.saved_tensors
        return -2.0 * grad * gate * filtered / filtered.shape[0], None, None


def scaled_size(height: int, width: int, scale: float, rounding: str = "floor") -> tuple[int, int]:
    """The map size at ``scale``: floored (``rounding="floor"``, what RRM's
    ``F.interpolate(..., scale_factor=0.5)`` gives, DenseEnergyLoss.py l.64-67) or rounded to
    the nearest integer (``"round"``, Python's rounding); at least 1.

    Example:
        >>> scaled_size(7, 321, 0.5), scaled_size(7, 321, 0.5, "round")
        ((3, 160), (4, 160))
    """
    if rounding not in ("floor", "round"):
        raise ValueError(f"loss.dense.size_rounding={rounding!r}: choose floor or round")
    cut = math.floor if rounding == "floor" else round
    return max(1, int(cut(height * scale))), max(1, int(cut(width * scale)))


def dense_energy_loss(seg_logits: torch.Tensor, image: torch.Tensor, pseudo: torch.Tensor,
                      valid: torch.Tensor | None = None, *, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                      scale: float = 0.5, impl: str = "auto", rrm_gradient: bool = False,
                      resize: str = "probs", image_resize: str = "nearest", size_rounding: str = "floor",
                      feature_order: str = "xy") -> torch.Tensor:
    """The gated dense energy loss of a batch (see module docstring).

    ``seg_logits`` (B, C+1, H, W) at crop size, ``image`` (B, 3, H, W) RGB 0-255 float,
    ``pseudo`` (B, H, W) reliable labels with 255 ignored, ``valid`` (B, H, W) bool crop region.
    Maps are resized by ``scale`` to :func:`scaled_size` (bilinear for S, ``image_resize`` for
    the image, nearest for labels and region), and sigma_xy scales with them. Defaults follow
    RRM's code (module docstring). The raw sum is returned: RRM weights it by about 1e-7.
    """
    if resize not in ("probs", "logits"):
        raise ValueError(f"loss.dense.resize={resize!r}: choose probs or logits")
    if image_resize not in ("nearest", "bilinear"):
        raise ValueError(f"loss.dense.image_resize={image_resize!r}: choose nearest or bilinear")
    dtype = torch.promote_types(seg_logits.dtype, torch.float32)  # fp32 at least, fp64 kept
    # RRM softmaxes at crop size and resizes the probabilities (myTool.py l.85-90, DenseEnergyLoss.py l.65).
    maps = torch.softmax(seg_logits.to(dtype), dim=1) if resize == "probs" else seg_logits
    if scale != 1.0:
        # Sizes as RRM's interpolate of its time: floored, sampled by the size ratio.
        size = scaled_size(seg_logits.shape[-2], seg_logits.shape[-1], scale, size_rounding)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        # RRM's image: F.interpolate's default mode, nearest (DenseEnergyLoss.py l.64).
        image = F.interpolate(image, size=size, mode=image_resize,
                              **({} if image_resize == "nearest" else {"align_corners": False}))
        pseudo = F.interpolate(pseudo[:, None].float(), size=size, mode="nearest")[:, 0].long()
        if valid is not None:
            valid = F.interpolate(valid[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
    probs = maps if resize == "probs" else torch.softmax(maps.to(dtype), dim=1)
    region = torch.ones_like(probs[:, 0]) if valid is None else valid.to(probs.dtype)
    probs = probs * region[:, None]
    with torch.no_grad():
        gate = (region - probs.amax(dim=1)).clamp_min(0.0)
        gate = torch.where(pseudo == IGNORE_INDEX, region, gate)[:, None]
    name = choose_filter(impl, probs.shape[-2] * probs.shape[-1])
    filt = FILTERS[name]
    if rrm_gradient:
        with torch.no_grad():
            filtered = filt(image.to(dtype), probs, sigma_rgb, sigma_xy * scale, order=feature_order)
        return _RRMGradient.apply(probs, filtered, gate)
    filtered = filt(image.to(dtype), probs, sigma_rgb, sigma_xy * scale, order=feature_order)
    return -(probs * gate * filtered).sum() / probs.shape[0]
