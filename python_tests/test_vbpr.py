"""VBPR (and VBPR+SEA / VBPR+BMA): shapes, MMRec's init order, forward and loss against a plain
float64 transcription, its plug-in views, training, both backends equal, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfast import models
from mmfast.data import load_dataset
from mmfast.ops import use_backend
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_loss_decreases, one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build

NAMES = ["VBPR", "VBPR+SEA", "VBPR+BMA"]
pytestmark = pytest.mark.filterwarnings("ignore:SeparateLearning. negative-L2")


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("VBPR", epochs=1))


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_registration(tiny, name):
    model, point = build(name, tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 128) and items.shape == (tiny.n_items, 128)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get(name.lower()) is type(model) and models.canonical(name.lower()) == name
    assert isinstance(model, models.get("VBPR"))
    assert point["reg_weight"] == 2.0
    # The frozen features are buffers rebuilt from the dataset, not checkpoint entries.
    assert "features" not in model.state_dict() and not model.features.requires_grad


def test_init_follows_mmrec_order(tiny):
    """Seeded, VBPR's draws are MMRec's: user table, item table, Linear, Xavier-normal on it."""
    model, _ = build("VBPR", tiny, seed=5)
    torch.manual_seed(5)
    users = torch.nn.init.xavier_uniform_(torch.empty(tiny.n_users, 128))
    items = torch.nn.init.xavier_uniform_(torch.empty(tiny.n_items, 64))
    width = sum(tiny.features[m].shape[1] for m in tiny.features)
    linear = torch.nn.Linear(width, 64)
    torch.nn.init.xavier_normal_(linear.weight)
    assert torch.equal(model.u_embedding, users) and torch.equal(model.i_embedding, items)
    assert torch.equal(model.item_linear.weight, linear.weight)
    assert not model.item_linear.bias.any()


def _transcription(model, tiny, users, pos, neg, reg):
    """VBPR in float64, written from MMRec's code: cat(text, image) -> Linear; [γ ‖ Ef]."""
    feats = torch.cat([torch.as_tensor(tiny.features["text"]),
                       torch.as_tensor(tiny.features["image"])], 1).double()
    w, b = model.item_linear.weight, model.item_linear.bias
    items = torch.cat([model.i_embedding, feats @ w.T + b], 1)
    u, p, n = model.u_embedding[users], items[pos], items[neg]
    mf = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    emb = (u.norm() + p.norm() + n.norm()) / n.shape[0]
    return model.u_embedding, items, mf + reg * emb


@pytest.mark.parametrize("reg", [2.0, 1e-3])
def test_forward_and_loss_match_a_float64_transcription(tiny, reg):
    model, _ = build("VBPR", tiny, f"reg_weight={reg}", seed=1)
    model.double()
    users, pos, neg = one_batch(tiny)
    want_u, want_i, want = _transcription(model, tiny, users, pos, neg, reg)
    got_u, got_i = model.embeddings()
    torch.testing.assert_close(got_u, want_u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_i, want_i, rtol=1e-12, atol=1e-12)
    params = [p for p in model.parameters()]
    want_g = torch.autograd.grad(want, params)
    for loss in (model.calculate_loss(users, pos, neg),
                 model.loss_and_views(users, pos, neg)[0]):  # both paths, same loss and grads
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
        for g, h in zip(torch.autograd.grad(loss, params), want_g):
            torch.testing.assert_close(g, h, rtol=1e-10, atol=1e-12)


def test_plugin_views_are_the_halves_of_the_score(tiny):
    model, _ = build("VBPR", tiny, seed=2)
    model.double()
    users, pos, neg = one_batch(tiny)
    _, views = model.loss_and_views(users, pos, neg)
    (b_u, b_i), (m_u, m_i) = views.behavior, views.modal
    u, i = model.embeddings()
    torch.testing.assert_close(u @ i.T, b_u @ b_i.T + m_u @ m_i.T)
    blocks = views.modal_features(None)
    assert list(blocks) == ["text", "image"] and model.modal_feature_dims() == {"text": 64,
                                                                                "image": 64}
    torch.testing.assert_close(sum(blocks.values()) + model.item_linear.bias, m_i)
    rows = pos[:7]
    for m, block in views.modal_features(rows).items():
        torch.testing.assert_close(block, blocks[m][rows])


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases(tiny, name):
    model, _ = build(name, tiny)
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("name", NAMES)
def test_both_backends_agree_at_one_step(tiny, name):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build(name, tiny, "club_steps=3" if "SEA" in name else "reg_weight=2.0", seed=3)
        model.double()
        model.zero_grad(set_to_none=True)
        with use_backend(backend):
            loss = model.calculate_loss(users, pos, neg)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            model.after_backward()  # SEA: the q-net steps, fused kernel vs torch loop
        results.append((loss.detach(), grads, model.embeddings()))
    (la, ga, ea), (lb, gb, eb) = results
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) >= 4
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10, msg=n)
    for a, b in zip(ea, eb):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_sea_acts_on_vbprs_own_projection(tiny):
    """+SEA's gradient reaches E (the vectors that score) and the heads; +BMA reaches all four
    halves of the score."""
    model, _ = build("VBPR+SEA", tiny, "club_steps=0")
    users, pos, neg = one_batch(tiny)
    z = model.loss_and_views(users, pos, neg)[1].modal_features(None)
    sea = model.separate({m: z[m] for m in model.sea_modalities})
    g_w, g_u = torch.autograd.grad(sea, [model.item_linear.weight, model.u_embedding],
                                   allow_unused=True)
    assert g_w.abs().sum() > 0 and g_u is None
    model, _ = build("VBPR+BMA", tiny)
    loss = model.calculate_loss(users, pos, neg)
    grads = torch.autograd.grad(loss, [model.u_embedding, model.i_embedding,
                                       model.item_linear.weight])
    assert all(x.abs().sum() > 0 for x in grads)


def test_mask_modality(tiny):
    model, _ = build("VBPR", tiny)
    items = torch.tensor([0, 3])
    before = model.embeddings()[1]
    model.mask_modality("image", items)
    a, b = model.blocks["image"]
    assert not model.features[items, a:b].any() and model.features[items, :a].any()
    after = model.embeddings()[1]
    assert not torch.equal(before[items], after[items]) and torch.equal(before[5:], after[5:])
    with pytest.raises(ValueError, match="no 'audio' features"):
        model.mask_modality("audio", items)


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="needs item features"):
        build("VBPR", with_features(tiny))
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build("VBPR", with_features(tiny, image=image, text=bad))
    # One modality is VBPR's as MMRec's (it maps whichever table there is) ...
    model, _ = build("VBPR", with_features(tiny, image=image))
    assert model.item_linear.in_features == image.shape[1]
    # ... but SEA aligns two, and splits each block in half.
    with pytest.raises(ValueError, match="needs 'image' plus one other"):
        build("VBPR+SEA", with_features(tiny, image=image))
    with pytest.raises(ValueError, match="embedding_size must be even"):
        build("VBPR+SEA", tiny, "embedding_size=63")


def test_vbpr_sea_takes_the_logged_setting():
    config = models.get("VBPR+SEA").default_config()
    assert (config["reg_weight"], config["alpha_contrast"], config["temp"]) == (2.0, 0.1, 0.1)
    assert config["hyper_parameters"] == [] and config["hidden_dim"] == 64
    assert models.get("VBPR").default_config()["reg_weight"] == [2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4,
                                                                 1e-5]
