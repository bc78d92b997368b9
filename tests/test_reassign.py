"""Label reassign loss (this project's design, docs/single_stage.md §3 L_lr): prototypes, the margin and the
prediction reassignment rules, the prototype contrastive loss by hand, empty and one-class
cases, gradcheck, and the composition with reassignment switched off."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.losses.reassign import class_prototypes, label_reassign_loss, prototype_contrastive_loss, reassign_labels


def _map(*pixels, dtype=torch.float32):
    """A 1xDx1xN embedding map from N D-vectors."""
    return torch.tensor([list(pixels)], dtype=dtype).permute(0, 2, 1)[:, :, None, :]


def _labels(*values):
    return torch.tensor([[list(values)]])


# --- prototypes ---------------------------------------------------------------------------------------------------

def test_prototypes_by_hand():
    embed = _map((1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.0, 2.0), (5.0, 5.0)).requires_grad_(True)
    protos, has = class_prototypes(embed, _labels(0, 0, 1, 1, 255), 3)
    assert protos.shape == (1, 3, 2) and has.dtype == torch.bool
    assert torch.allclose(protos[0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert has.tolist() == [[True, True, False]]  # class 2 has no pixel; the ignored (5, 5) is not counted
    assert not protos.requires_grad  # targets, not trained through


def test_prototypes_average_normalised_embeddings_per_image():
    # (3, 0) and (0, 1) normalise to (1, 0) and (0, 1): mean (0.5, 0.5) -> (1, 1)/sqrt 2.
    # The raw mean (1.5, 0.5) would give (3, 1)/sqrt 10 instead.
    embed = torch.cat([_map((3.0, 0.0), (0.0, 1.0)), _map((0.0, 4.0), (0.0, 1.0))])
    protos, has = class_prototypes(embed, torch.tensor([[[0, 0]], [[1, 255]]]), 2)
    r = 1 / math.sqrt(2)
    assert torch.allclose(protos[0], torch.tensor([[r, r], [0.0, 0.0]]))
    assert torch.allclose(protos[1], torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
    assert has.tolist() == [[True, False], [False, True]]


def test_out_of_range_label_raises():
    with pytest.raises(ValueError, match="pseudo labels"):
        class_prototypes(_map((1.0, 0.0)), _labels(3), 2)


# --- reassignment ------------------------------------------------------------------------------------------------

PROTOS_2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
HAS_2 = torch.tensor([[True, True]])
BOTH = torch.tensor([[1.0, 1.0]])


def test_reassign_by_margin():
    # Pixel 1 is labelled bg but equals the fg prototype: s_fg - s_bg = 1 - 0 = 1.
    embed = _map((1.0, 0.0), (0.0, 1.0), (0.0, 1.0))
    pseudo = _labels(0, 0, 255)
    new, changed = reassign_labels(embed, pseudo, BOTH, PROTOS_2, HAS_2, tau=0.5)
    assert new.dtype == torch.int64 and changed.dtype == torch.bool
    assert new.tolist() == [[[0, 1, 255]]]  # the ignored pixel stays 255 however close it is
    assert changed.tolist() == [[[False, True, False]]]
    new, changed = reassign_labels(embed, pseudo, BOTH, PROTOS_2, HAS_2, tau=1.5)
    assert new.tolist() == [[[0, 0, 255]]] and not changed.any()
    # fg absent in the image: never a target.
    new, changed = reassign_labels(embed, pseudo, torch.tensor([[1.0, 0.0]]), PROTOS_2, HAS_2, tau=0.5)
    assert new.tolist() == [[[0, 0, 255]]] and not changed.any()


def test_reassign_picks_the_closest_present_candidate():
    protos = torch.eye(3)[None]
    has = torch.tensor([[True, True, True]])
    embed = _map((0.0, 1.0, 2.0))  # s = (0, 0.447, 0.894) for classes 0, 1, 2
    pseudo = _labels(0)
    assert reassign_labels(embed, pseudo, torch.tensor([[1, 1, 1]]), protos, has, 0.2)[0].item() == 2
    # class 2 absent (bool present too): the next present one, class 1, still beats the margin
    assert reassign_labels(embed, pseudo, torch.tensor([[True, True, False]]), protos, has, 0.2)[0].item() == 1
    assert reassign_labels(embed, pseudo, torch.tensor([[1, 0, 0]]), protos, has, 0.2)[0].item() == 0
    # class 2 present but without a prototype: not a candidate
    assert reassign_labels(embed, pseudo, torch.tensor([[1, 1, 1]]), protos, torch.tensor([[True, True, False]]),
                           0.2)[0].item() == 1
    # own class without a prototype: left alone (guard), although class 2 is far closer
    new, changed = reassign_labels(embed, pseudo, torch.tensor([[1, 1, 1]]), protos,
                                   torch.tensor([[False, True, True]]), 0.2)
    assert new.item() == 0 and not changed.any()
    # background column of present is always treated as present
    embed_bg = _map((1.0, 0.0, 0.0))
    new, _ = reassign_labels(embed_bg, _labels(1), torch.tensor([[0, 1, 0]]), protos, has, 0.2)
    assert new.item() == 0


def test_reassign_by_confident_prediction():
    embed = _map((1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0))  # the embeddings agree with bg
    pseudo = _labels(0, 0, 255, 0)
    probs = torch.tensor([[0.02, 0.98], [0.04, 0.96], [0.0, 1.0], [0.99, 0.01]]).T[None, :, None, :]  # 1x2x1x4
    new, changed = reassign_labels(embed, pseudo, BOTH, PROTOS_2, HAS_2, tau=5.0, probs=probs, pred_confidence=0.97)
    assert new.tolist() == [[[1, 0, 255, 0]]]  # 0.98 > 0.97 relabels, 0.96 does not, 255 stays
    assert changed.tolist() == [[[True, False, False, False]]]
    new, _ = reassign_labels(embed, pseudo, BOTH, PROTOS_2, HAS_2, tau=5.0, probs=probs, pred_confidence=0.95)
    assert new.tolist() == [[[1, 1, 255, 0]]]
    # predicted class absent: no relabelling
    new, changed = reassign_labels(embed, pseudo, torch.tensor([[1.0, 0.0]]), PROTOS_2, HAS_2, tau=5.0, probs=probs,
                                   pred_confidence=0.95)
    assert new.tolist() == [[[0, 0, 255, 0]]] and not changed.any()
    # the embedding rule wins when both fire: -> 2 (embedding), not 1 (prediction)
    probs2 = torch.tensor([[0.01, 0.98, 0.01]]).T[None, :, :, None]  # 1x3x1x1, predicts class 1
    new, _ = reassign_labels(_map((0.0, 0.0, 1.0)), _labels(0), torch.tensor([[1, 1, 1]]), torch.eye(3)[None],
                             torch.tensor([[True, True, True]]), tau=0.5, probs=probs2, pred_confidence=0.95)
    assert new.item() == 2


# --- contrastive loss -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_contrastive_loss_by_hand(t):
    # pixel 0 = 2 * proto 0, pixel 1 = 3 * proto 1; double precision: log(1 + 4.5e-5) is below float32's resolution
    embed = _map((2.0, 0.0), (0.0, 3.0), (7.0, 7.0), dtype=torch.float64)
    loss = prototype_contrastive_loss(embed, _labels(0, 1, 255), PROTOS_2, HAS_2, BOTH, temperature=t)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1 / t)), rel=1e-5)
    # A pixel on the wrong prototype: -log softmax = log(1 + exp(1/t)).
    loss = prototype_contrastive_loss(embed[..., :1], _labels(1), PROTOS_2, HAS_2, BOTH, temperature=t)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(1 / t)), rel=1e-5)


def test_contrastive_loss_excludes_absent_and_missing_classes():
    t = 0.5
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
    embed = _map((1.0, 0.0))
    all3 = math.log(1 + math.exp(-1 / t) + math.exp((0.6 - 1) / t))
    only2 = math.log(1 + math.exp(-1 / t))
    has = torch.tensor([[True, True, True]])

    def value(present, has=has):
        return prototype_contrastive_loss(embed, _labels(0), protos, has, present, t).item()

    assert value(torch.tensor([[1, 1, 1]])) == pytest.approx(all3, rel=1e-5)
    assert value(torch.tensor([[1, 1, 0]])) == pytest.approx(only2, rel=1e-5)  # class 2 absent
    assert value(torch.tensor([[1, 1, 1]]), torch.tensor([[True, True, False]])) == pytest.approx(only2, rel=1e-5)
    # a pixel whose label has no prototype (or is absent) is left out of the mean
    embed2 = _map((1.0, 0.0), (0.0, 1.0))
    loss = prototype_contrastive_loss(embed2, _labels(0, 2), protos, torch.tensor([[True, True, False]]),
                                      torch.tensor([[1, 1, 1]]), t)
    assert loss.item() == pytest.approx(only2, rel=1e-5)


def test_contrastive_loss_empty_and_one_class_are_finite():
    embed = _map((1.0, 0.0), (0.0, 1.0)).requires_grad_(True)
    loss = prototype_contrastive_loss(embed, _labels(255, 255), PROTOS_2, HAS_2, BOTH)
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, embed)
    assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0
    # only one class exists: softmax over one logit, loss 0, no NaN in value or gradient
    loss = prototype_contrastive_loss(embed, _labels(0, 0), PROTOS_2, torch.tensor([[True, False]]), BOTH)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    (g,) = torch.autograd.grad(loss, embed)
    assert torch.isfinite(g).all()
    # an image with no candidate at all beside one that has some: no NaN either
    embed_b = torch.cat([_map((1.0, 0.0)), _map((0.0, 1.0))]).requires_grad_(True)
    loss = prototype_contrastive_loss(embed_b, torch.tensor([[[0]], [[1]]]), PROTOS_2.expand(2, 2, 2),
                                      torch.tensor([[False, False], [True, True]]), BOTH.expand(2, 2), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    (g,) = torch.autograd.grad(loss, embed_b)
    assert torch.isfinite(g).all()


def test_contrastive_gradient_flows_to_embed_only():
    embed = _map((1.0, 0.5), (0.2, 1.0)).requires_grad_(True)
    protos = PROTOS_2.clone().requires_grad_(True)
    loss = prototype_contrastive_loss(embed, _labels(0, 1), protos, HAS_2, BOTH)
    g_embed, g_protos = torch.autograd.grad(loss, (embed, protos), allow_unused=True)
    assert g_protos is None and torch.count_nonzero(g_embed) > 0


def test_gradcheck():
    torch.manual_seed(0)
    embed = torch.randn(1, 3, 2, 3, dtype=torch.float64)
    embed = (embed + 2.0 * embed.sign()).requires_grad_(True)  # every entry at |x| >= 2: far from zero norm
    pseudo = torch.tensor([[[0, 1, 255], [1, 0, 2]]])
    protos, has = class_prototypes(embed, pseudo, 3)
    present = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    fn = lambda e: prototype_contrastive_loss(e, pseudo, protos, has, present, temperature=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (embed,), eps=1e-6, atol=1e-6)


# --- composition ------------------------------------------------------------------------------------------------

def test_label_reassign_loss_composition():
    embed = _map((1.0, 0.0), (0.0, 1.0), (0.0, 1.0), (3.0, 3.0)).requires_grad_(True)
    pseudo = _labels(0, 0, 1, 255)
    # bg prototype (1, 1)/sqrt 2, fg (0, 1): pixel 1 gains 1 - 0.707 = 0.29 > tau 0.2
    loss, new, changed = label_reassign_loss(embed, pseudo, BOTH, tau=0.2, temperature=0.5)
    assert new.tolist() == [[[0, 1, 1, 255]]] and changed.tolist() == [[[False, True, False, False]]]
    protos, has = class_prototypes(embed, pseudo, 2)  # prototypes stay those of the original labels
    assert loss.item() == pytest.approx(prototype_contrastive_loss(embed, new, protos, has, BOTH, 0.5).item())
    loss.backward()
    assert torch.isfinite(embed.grad).all()
    # switched off (warm-up): labels unchanged (a copy), nothing changed, loss towards the original labels
    loss, new, changed = label_reassign_loss(embed, pseudo, BOTH, tau=0.2, reassign=False, temperature=0.5)
    assert torch.equal(new, pseudo) and new is not pseudo and new.dtype == torch.int64
    assert changed.dtype == torch.bool and not changed.any()
    assert loss.item() == pytest.approx(prototype_contrastive_loss(embed, pseudo, protos, has, BOTH, 0.5).item())


def test_label_reassign_loss_prediction_rule_and_present_shape():
    embed = _map((1.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    probs = torch.tensor([[0.5, 0.5], [0.01, 0.99], [0.1, 0.9]]).T[None, :, None, :]
    _, new, changed = label_reassign_loss(embed, _labels(0, 0, 1), BOTH, probs, tau=0.5, pred_confidence=0.95)
    assert new.tolist() == [[[0, 1, 1]]] and changed.sum().item() == 1
    with pytest.raises(ValueError, match="present must be"):
        reassign_labels(embed, _labels(0, 0, 1), torch.tensor([[1.0, 1.0, 1.0]]), PROTOS_2, HAS_2, tau=0.5)
