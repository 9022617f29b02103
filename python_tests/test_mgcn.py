"""MGCN: forward and loss at one step against a dense float64 transcription of MMRec's MGCN,
shapes and training, both backends, no items x items tensor and no host read in a step, the
plug-in views, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.models.base import PluginViews
from mmfast.ops import use_backend
from test_host_syncs import counted_reads
from test_lattice import LargestTensors, dense_knn, dense_laplacian, items_by_items
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_loss_decreases, one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build

SMALL = ("synthetic.n_items=300",)  # wider than any feature table (see test_lattice)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("MGCN", *SMALL, epochs=1))


def test_shapes_registration_and_training(tiny):
    model, point = build("MGCN", tiny)
    assert models.canonical("mgcn") == "MGCN"
    assert point["cl_loss"] == 0.01 and point["reg_weight"] == 1e-4 and point["knn_k"] == 10
    assert point["learning_rate_scheduler"] == [0.96, 50]
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert_loss_decreases(model, tiny)


def mgcn_reference(model, ds, users, pos, neg):
    """MMRec's MGCN forward (train=True) and calculate_loss, dense, float64, from the model's
    parameters."""
    cfg = model.config
    nu, ni = ds.n_users, ds.n_items
    # get_adj_mat: D^-1/2 A D^-1/2 (no self-loops); R its user x item block. mmfast caches
    # the graphs in float32: round the same way.
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    tu, ti = ds.train.users(), ds.train.items
    a[tu, nu + ti] = 1
    a[nu + ti, tu] = 1
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0
    norm_adj = (d[:, None] * a * d[None, :]).float().double()
    r = norm_adj[:nu, nu:]
    k = int(cfg["knn_k"])
    image, text = model.roles
    graphs = {m: dense_laplacian(dense_knn(torch.from_numpy(ds.features[m]).double(), k))
              for m in (image, text)}
    for m in (image, text):  # the frozen G3 equals MMRec's sparse build; from here on its
        # exact (float32-computed) values are used
        frozen = getattr(model, f"item_graph_{m}").to_dense()
        torch.testing.assert_close(frozen, graphs[m], rtol=1e-6, atol=1e-7)
        graphs[m] = frozen
    feats = {m: model.modal.projections[m](model.modal.features[m]) for m in (image, text)}
    item_id = model.ids.item.weight
    gate = {m: torch.sigmoid(model.purifiers[m].gate(feats[m])) for m in (image, text)}
    ego = torch.cat([model.ids.user.weight, item_id])
    layers = [ego]
    for _ in range(int(cfg["n_ui_layers"])):
        ego = norm_adj @ ego
        layers.append(ego)
    content = torch.stack(layers, 1).mean(1)
    embeds = {}
    for m in (image, text):
        item = item_id * gate[m]
        for _ in range(int(cfg["n_layers"])):
            item = graphs[m] @ item
        embeds[m] = torch.cat([r @ item, item])
    q = model.fuse.query
    att = torch.cat([q(embeds[image]), q(embeds[text])], dim=-1)
    w = torch.softmax(att, dim=-1)
    common = w[:, 0:1] * embeds[image] + w[:, 1:2] * embeds[text]
    sep = {m: torch.sigmoid(model.prefer[m](content)) * (embeds[m] - common) for m in (image, text)}
    side = (sep[image] + sep[text] + common) / 3
    all_embeds = content + side
    u_all, i_all = all_embeds[:nu], all_embeds[nu:]
    u, p, n = u_all[users], i_all[pos], i_all[neg]
    mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / int(cfg["train_batch_size"])

    def info_nce(v1, v2, t):
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        pos_score = torch.exp((v1 * v2).sum(-1) / t)
        ttl = torch.exp(v1 @ v2.T / t).sum(1)
        return (-torch.log(pos_score / ttl)).mean()

    cl = (info_nce(side[nu:][pos], content[nu:][pos], 0.2)
          + info_nce(side[:nu][users], content[:nu][users], 0.2))
    loss = mf + float(cfg["reg_weight"]) * reg + float(cfg["cl_loss"]) * cl
    return loss, (u_all, i_all)


@pytest.mark.parametrize("sets", [[], ["n_layers=2", "n_ui_layers=3", "cl_loss=0.1"]],
                         ids=["default", "deeper"])
def test_forward_and_loss_match_mmrec_in_float64(tiny, sets):
    model, _ = build("MGCN", tiny, "reg_weight=0.1", *sets, seed=5)
    model.double()
    users, pos, neg = one_batch(tiny)
    ours = model.calculate_loss(users, pos, neg)
    theirs, (ru, ri) = mgcn_reference(model, tiny, users, pos, neg)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    ga = torch.autograd.grad(ours, params)
    gb = torch.autograd.grad(theirs, params)
    for n, a, b in zip(names, ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    assert {n.split(".")[0] for n, g in zip(names, ga) if g.abs().sum() > 0} == {
        "ids", "modal", "fuse", "purifiers", "prefer"}
    u, i = model.embeddings()
    torch.testing.assert_close(u, ru.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(i, ri.detach(), rtol=1e-12, atol=1e-12)


def test_both_backends_agree_at_one_step(tiny):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build("MGCN", tiny, "cl_loss=0.1", seed=3)
        model.double()
        with use_backend(backend):
            loss = model.calculate_loss(users, pos, neg)
            grads = torch.autograd.grad(loss, list(model.parameters()))
            emb = model.embeddings()
        results.append((loss.detach(), grads, emb))
    (la, ga, ea), (lb, gb, eb) = results
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)
    for x, y in zip(ea, eb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_no_items_by_items_tensor_and_no_host_read_in_a_step(tiny):
    model, _ = build("MGCN", tiny)
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    with LargestTensors() as seen:
        model.train_step(users, pos, neg, opt)
    assert seen.shapes and not items_by_items(seen.shapes, tiny.n_items)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg)
    assert calls == []


def test_plugin_views(tiny):
    model, _ = build("MGCN", tiny)
    users, pos, neg = one_batch(tiny)
    loss, views = model.loss_and_views(users, pos, neg)
    assert isinstance(views, PluginViews)
    assert torch.equal(loss, model.calculate_loss(users, pos, neg))
    (bu, bi), (mu, mi) = views.behavior, views.modal
    assert bu.shape == mu.shape == (tiny.n_users, 64) and bi.shape == mi.shape == (tiny.n_items, 64)
    u, i = model.embeddings()
    torch.testing.assert_close(u, bu + mu)
    torch.testing.assert_close(i, bi + mi)
    feats = views.modal_features(pos[:5])
    assert set(feats) == {"image", "text"} and feats["text"].shape == (5, 64)


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="MGCN needs two modalities"):
        build("MGCN", with_features(tiny, image=image))
    with pytest.raises(ValueError, match="at most two modalities"):
        build("MGCN", with_features(tiny, image=image, text=text, audio=text[:, :4].copy()))
    bad = text.copy()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="MGCN: the text features hold NaN or infinite"):
        build("MGCN", with_features(tiny, image=image, text=bad))
    # TikTok's roles: audio plays text.
    model, _ = build("MGCN", with_features(tiny, audio=text, image=image))
    assert model.roles == ["image", "audio"]
