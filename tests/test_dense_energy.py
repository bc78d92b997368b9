"""Dense energy loss: a 3-pixel case by hand, the exact filter against a brute-force double loop,
the bilateral grid against the exact filter, gradients (gradcheck, RRM's backward), the gate, and
RRM's conventions around the filter (resize order, image resize, scaled size, feature order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.losses.dense_energy import (bilateral_features, bilateral_filter_exact, bilateral_filter_lattice,
                                            choose_filter, dense_energy_loss, permutohedral_filter)


def _three_pixels():
    # A 1x3 image: pixels 0 and 1 black, pixel 2 red 10 (one sigma_rgb away); sigma_xy = 1 px.
    image = torch.tensor([[[[0.0, 0.0, 10.0]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]]], dtype=torch.float64)
    probs = torch.tensor([[0.8, 0.5, 0.2], [0.2, 0.5, 0.8]], dtype=torch.float64)  # (K=2, 3 pixels)
    logits = probs.log().view(1, 2, 1, 3)  # softmax(log p) = p
    pseudo = torch.tensor([[[0, 255, 1]]])  # pixel 1 has no reliable label
    return image, logits, pseudo


def test_three_pixel_energy_by_hand():
    image, logits, pseudo = _three_pixels()
    a, b, c = math.exp(-0.5), math.exp(-2.0), math.exp(-0.5)  # distance 1, distance 2, colour term
    # W = [[1, a, b c], [a, 1, a c], [b c, a c, 1]]; gates: 1 - 0.8, 1 (unlabelled), 1 - 0.8.
    e0 = 0.2 * (0.8 * (0.8 + a * 0.5 + b * c * 0.2) + 0.2 * (0.2 + a * 0.5 + b * c * 0.8))
    e1 = 1.0 * (0.5 * (a * 0.8 + 0.5 + a * c * 0.2) + 0.5 * (a * 0.2 + 0.5 + a * c * 0.8))
    e2 = 0.2 * (0.2 * (b * c * 0.8 + a * c * 0.5 + 0.2) + 0.8 * (b * c * 0.2 + a * c * 0.5 + 0.8))
    expected = -(e0 + e1 + e2)
    assert expected == pytest.approx(-1.36715294, abs=1e-7)
    got = dense_energy_loss(logits, image, pseudo, sigma_rgb=10.0, sigma_xy=1.0, scale=1.0, impl="exact")
    assert float(got) == pytest.approx(expected, abs=1e-9)


def test_exact_filter_matches_a_double_loop():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(0, 255, (2, 3, 4, 5)))
    values = torch.from_numpy(rng.uniform(0, 1, (2, 3, 4, 5)))
    got = bilateral_filter_exact(image, values, sigma_rgb=40.0, sigma_xy=2.0, chunk=7).numpy()
    expected = np.zeros_like(got)
    for n in range(2):
        for i in range(20):
            yi, xi = divmod(i, 5)
            for j in range(20):
                yj, xj = divmod(j, 5)
                d_xy = ((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * 2.0 ** 2)
                d_rgb = ((image[n, :, yi, xi] - image[n, :, yj, xj]) ** 2).sum().item() / (2 * 40.0 ** 2)
                expected[n, :, yi, xi] += math.exp(-d_xy - d_rgb) * values[n, :, yj, xj].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def _photo(size: int = 40, name: str = "astronaut") -> torch.Tensor:
    from skimage import data
    from skimage.transform import resize

    img = resize(getattr(data, name)(), (size, size), anti_aliasing=True) * 255.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].double()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_lattice_filter_agrees_with_exact_on_photos(name):
    """At the loss's real setting (half-scale map, sigma_rgb 15, sigma_xy 50 -> 25) on photos."""
    image = _photo(32, name)
    torch.manual_seed(0)
    values = torch.softmax(torch.randn(1, 4, 4, 4, dtype=torch.float64), 1)
    values = torch.nn.functional.interpolate(values, size=(32, 32), mode="bilinear", align_corners=False)
    exact = bilateral_filter_exact(image, values, 15.0, 25.0)
    fast = bilateral_filter_lattice(image, values, 15.0, 25.0)
    assert ((fast - exact).norm() / exact.norm()).item() < 0.15
    assert 0.85 < (fast.sum() / exact.sum()).item() < 1.15


def test_permutohedral_filter_approximates_a_gaussian_in_one_dimension():
    f = torch.linspace(0, 30, 601, dtype=torch.float64)[:, None]  # dense samples, 20 per sigma
    v = torch.zeros(601, 1, dtype=torch.float64)
    v[300] = 1.0  # an impulse at 15: the output is the filter's kernel
    out = permutohedral_filter(f, v)[:, 0]
    exact = torch.exp(-0.5 * (f[:, 0] - 15.0) ** 2)
    shape = out / out.max()
    assert (shape - exact).abs().max() < 0.1
    # The response is centred on the impulse to within a third of a sigma (the lattice shifts it
    # with the impulse's position inside its simplex).
    assert abs(out.argmax().item() - 300) <= 6


def test_lattice_and_exact_losses_agree_on_a_photo_crop():
    image = _photo(48)
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 48, 48, dtype=torch.float64) * 2
    image = image.expand(2, -1, -1, -1)
    pseudo = torch.randint(0, 3, (2, 48, 48))
    pseudo[:, ::3] = 255
    exact = dense_energy_loss(logits, image, pseudo, impl="exact")
    fast = dense_energy_loss(logits, image, pseudo, impl="lattice")
    assert abs(float(fast) - float(exact)) < 0.15 * abs(float(exact))


@pytest.mark.parametrize("impl", ["exact", "lattice"])
def test_gradcheck_with_gate_constant(impl):
    torch.manual_seed(2)
    image = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 60
    logits = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    pseudo = torch.tensor([[[0, 1, 255, 2]] * 4])
    # The gate depends on S but is held constant (detached): check against finite differences of
    # the same function with the gate frozen at its value.
    def frozen(lg):
        return dense_energy_loss(lg, image, pseudo, sigma_rgb=20.0, sigma_xy=2.0, scale=1.0, impl=impl)

    from trainables.losses import dense_energy as de

    with torch.no_grad():
        p = torch.softmax(logits, 1)
        gate = torch.where(pseudo == 255, torch.ones_like(p[:, 0]), 1 - p.amax(1))[:, None]
    filt = de.FILTERS[impl]

    def reference(lg):
        q = torch.softmax(lg, 1)
        return -(q * gate * filt(image, q, 20.0, 2.0)).sum()

    assert torch.autograd.gradcheck(reference, (logits,), eps=1e-6, atol=1e-6)
    g1, = torch.autograd.grad(frozen(logits), logits)
    g2, = torch.autograd.grad(reference(logits), logits)
    torch.testing.assert_close(g1, g2)


def test_rrm_gradient_switch_gives_minus_two_gate_times_filtered():
    image, logits, pseudo = _three_pixels()
    probs = torch.softmax(logits, 1).detach().requires_grad_(True)
    loss = dense_energy_loss(probs.log(), image, pseudo, sigma_rgb=10.0, sigma_xy=1.0, scale=1.0,
                             impl="exact", rrm_gradient=True)
    exact_value = dense_energy_loss(logits, image, pseudo, sigma_rgb=10.0, sigma_xy=1.0, scale=1.0, impl="exact")
    assert float(loss.detach()) == pytest.approx(float(exact_value))
    (g,) = torch.autograd.grad(loss, probs)
    # through the softmax of log-probabilities: compare the gradient w.r.t. S by hand
    p = probs.detach()
    gate = torch.tensor([0.2, 1.0, 0.2], dtype=torch.float64).view(1, 1, 1, 3)
    ws = bilateral_filter_exact(image, p, 10.0, 1.0)
    d_s = -2 * gate * ws
    # chain rule of softmax(log p) at p (sums to 1): J = diag(p)/p - p 1^T/... = I - p 1^T
    expected = d_s - (d_s * p).sum(1, keepdim=True)
    torch.testing.assert_close(g * p, expected * p)


def test_padding_contributes_nothing_and_unlabelled_pixels_are_fully_gated():
    torch.manual_seed(3)
    image = torch.rand(1, 3, 6, 6, dtype=torch.float64) * 255
    logits = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    pseudo = torch.full((1, 6, 6), 255)
    valid = torch.zeros(1, 6, 6, dtype=torch.bool)
    valid[:, :4, :4] = True
    padded = dense_energy_loss(logits, image, pseudo, valid, scale=1.0, impl="exact")
    cropped = dense_energy_loss(logits[..., :4, :4], image[..., :4, :4], pseudo[..., :4, :4], scale=1.0,
                                impl="exact")
    assert float(padded) == pytest.approx(float(cropped))
    # All pixels unlabelled (gate 1): L = -sum_k S_k . W S_k, with W positive definite -> L < 0.
    assert float(cropped) < 0
    # Confident labelled pixels (one-hot S) have gate 0 and contribute nothing.
    onehot = torch.full((1, 3, 4, 4), -30.0, dtype=torch.float64)
    onehot[:, 1] = 30.0
    zero = dense_energy_loss(onehot, image[..., :4, :4], torch.ones(1, 4, 4, dtype=torch.long), scale=1.0,
                             impl="exact")
    assert abs(float(zero)) < 1e-9


def test_choose_filter():
    assert choose_filter("auto", 1024) == "exact"
    assert choose_filter("auto", 161 * 161) == "lattice"
    assert choose_filter("lattice", 4) == "lattice"
    with pytest.raises(ValueError, match="loss.dense.impl='fast'"):
        choose_filter("fast", 4)


# RRM's conventions around the filter (DenseEnergyLoss.py l.62-67, myTool.py l.85-90,
# bilateralfilter.cpp l.9-10), each pinned by a case where only that convention matters. All
# pixels unlabelled (gate 1); sigma_xy 2 at scale 0.5 is 1 px of the half-scale map.
A, D = math.exp(-0.5), math.exp(-1.0)  # Gaussian of an axial / diagonal neighbour at 1 px


def test_half_scale_size_is_floored_at_odd_crops():
    # A uniform 7x7 crop: S = (0.5, 0.5) everywhere, one colour, so L = -sum_k p_k^2 * sum_ij W_ij
    # and the 2-D Gaussian sum is the square of the 1-D one over the rows of the map.
    logits, image = torch.zeros(1, 2, 7, 7, dtype=torch.float64), torch.zeros(1, 3, 7, 7, dtype=torch.float64)
    pseudo = torch.full((1, 7, 7), 255)
    row = {n: sum(math.exp(-0.5 * (a - b) ** 2) for a in range(n) for b in range(n)) for n in (3, 4)}
    got = dense_energy_loss(logits, image, pseudo, sigma_xy=2.0, scale=0.5, impl="exact")
    assert float(got) == pytest.approx(-0.5 * row[3] ** 2)  # floor(3.5) = 3, as RRM
    rounded = dense_energy_loss(logits, image, pseudo, sigma_xy=2.0, scale=0.5, impl="exact", size_rounding="round")
    assert float(rounded) == pytest.approx(-0.5 * row[4] ** 2)


def test_image_is_halved_by_nearest_neighbour():
    # 4x4 -> 2x2: nearest keeps pixels (0, 0), (0, 2), (2, 0), (2, 2); bilinear averages 2x2
    # blocks. Only pixel (0, 0) is red 30, so the top-left map pixel is red 30 (nearest) or 7.5.
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    image = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    image[0, 0, 0, 0] = 30.0
    pseudo = torch.full((1, 4, 4), 255)

    def expected(red: float) -> float:
        colour = math.exp(-red ** 2 / (2 * 10.0 ** 2))
        # W over the 2x2 map: 4 self terms, pairs among the three black pixels (2 axial, 1
        # diagonal), and the same pairs to the red pixel times its colour term; both directions.
        return -0.5 * (4 + 2 * (1 + colour) * (2 * A + D))

    got = dense_energy_loss(logits, image, pseudo, sigma_rgb=10.0, sigma_xy=2.0, scale=0.5, impl="exact")
    assert float(got) == pytest.approx(expected(30.0))
    bilinear = dense_energy_loss(logits, image, pseudo, sigma_rgb=10.0, sigma_xy=2.0, scale=0.5, impl="exact",
                                 image_resize="bilinear")
    assert float(bilinear) == pytest.approx(expected(7.5))


def test_softmax_is_taken_at_crop_size_before_the_resize():
    # 2x4 -> 1x2: bilinear at exactly half size averages each 2x2 block. Block 0 has class-0
    # logits (4, 0, 0, 0), block 1 zeros; class 1 is all zeros. One colour.
    logits = torch.zeros(1, 2, 2, 4, dtype=torch.float64)
    logits[0, 0, 0, 0] = 4.0
    image = torch.zeros(1, 3, 2, 4, dtype=torch.float64)
    pseudo = torch.full((1, 2, 4), 255)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  (two-class softmax)

    def expected(q0: float) -> float:  # map pixels (q0, 1 - q0) and (0.5, 0.5), W = [[1, A], [A, 1]]
        left, right = (q0, 1 - q0), (0.5, 0.5)
        return -sum(l * (l + A * r) + r * (A * l + r) for l, r in zip(left, right))

    got = dense_energy_loss(logits, image, pseudo, sigma_xy=2.0, scale=0.5, impl="exact")
    assert float(got) == pytest.approx(expected((sig(4.0) + 1.5) / 4))  # the mean of the probabilities
    logits_first = dense_energy_loss(logits, image, pseudo, sigma_xy=2.0, scale=0.5, impl="exact", resize="logits")
    assert float(logits_first) == pytest.approx(expected(sig(1.0)))  # the softmax of the mean logit


def test_lattice_features_are_x_then_y():
    # bilateralfilter.cpp l.9-10: features [x, y, r, g, b], pixels row by row.
    image = torch.zeros(1, 3, 2, 3)
    image[0, :, 1, 2] = torch.tensor([30.0, 60.0, 90.0])
    f = bilateral_features(image, sigma_rgb=30.0, sigma_xy=2.0)
    assert f.shape == (1, 6, 5)
    assert f[0, 5].tolist() == [1.0, 0.5, 1.0, 2.0, 3.0]  # y = 1, x = 2
    assert bilateral_features(image, 30.0, 2.0, order="yx")[0, 5].tolist() == [0.5, 1.0, 1.0, 2.0, 3.0]
    # The exact kernel does not care; the lattice does, and the switch reaches it.
    photo, pseudo = _photo(24), torch.full((1, 24, 24), 255)
    logits = torch.randn(1, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    loss = {(impl, o): float(dense_energy_loss(logits, photo, pseudo, sigma_xy=10.0, scale=1.0, impl=impl,
                                               feature_order=o))
            for impl in ("exact", "lattice") for o in ("xy", "yx")}
    assert loss["exact", "xy"] == pytest.approx(loss["exact", "yx"], rel=1e-12)
    probs = torch.softmax(logits, 1)
    direct = -(probs * bilateral_filter_lattice(photo, probs, 15.0, 10.0, order="xy")).sum()
    assert loss["lattice", "xy"] == pytest.approx(float(direct), rel=1e-9)
    assert loss["lattice", "xy"] != pytest.approx(loss["lattice", "yx"], rel=1e-6)
    with pytest.raises(ValueError, match="loss.dense.feature_order='zx'"):
        bilateral_features(image, 30.0, 2.0, order="zx")
