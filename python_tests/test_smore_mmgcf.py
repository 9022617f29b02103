"""SMORE and MMGCF: registration, shapes and training; forward and loss at one step against dense
float64 transcriptions of MMRec's equations (SMORE's spectrum filters, max-pooled fusion graph,
preference dropout; MMGCF's every fusion x weighting, the pruned graph); both backends equal;
no items x items tensor and no host read in a step; bit-identical resume through the trainer;
bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.data.knn import max_graphs
from mmfast.models.registry import PluginRefusedError
from mmfast.ops import SparseGraph
from mmfast.trainer import TrainingInterrupted, run
from test_host_syncs import counted_reads
from test_lattice import LargestTensors, dense_knn, dense_laplacian, items_by_items
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree, assert_loss_decreases, assert_same_run, ctrl_c_at_epoch_call,
    one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build

SMALL = ("synthetic.n_items=300",)  # wider than any feature table (see test_lattice)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("SMORE", *SMALL, epochs=1))


def info_nce(v1, v2, t):
    """MMRec's InfoNCE, as SMORE writes it."""
    v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
    pos_score = torch.exp((v1 * v2).sum(-1) / t)
    ttl = torch.exp(v1 @ v2.T / t).sum(1)
    return (-torch.log(pos_score / ttl)).mean()


def dense_interactions(ds):
    nu, ni = ds.n_users, ds.n_items
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    tu, ti = ds.train.users(), ds.train.items
    a[tu, nu + ti] = 1
    a[nu + ti, tu] = 1
    return a


# ---------------------------------------------------------------------------------- SMORE
def test_smore_shapes_registration_and_training(tiny):
    model, point = build("SMORE", tiny)
    assert models.canonical("smore") == "SMORE"
    assert (point["n_ui_layers"], point["image_knn_k"], point["text_knn_k"], point["reg_weight"],
            point["dropout_rate"], point["cl_loss"]) == (4, 40, 15, 1e-4, 0.1, 0.01)
    assert set(model.rng_state()) == {"prefer_dropout"}
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert_loss_decreases(model, tiny)


def test_max_graphs_is_the_entrywise_max_of_the_union():
    a = SparseGraph.from_coo(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]),
                             torch.tensor([0.5, -0.25, 2.0]), (2, 3))
    b = SparseGraph.from_coo(torch.tensor([0, 1, 1]), torch.tensor([2, 1, 0]),
                             torch.tensor([-0.5, 1.0, 3.0]), (2, 3))
    want = torch.tensor([[0.5, 0.0, -0.25], [3.0, 2.0, 0.0]])
    got = max_graphs([a, b])
    assert got.nnz == 4
    torch.testing.assert_close(got.to_dense(), want)


def knn_pattern(x, k):
    ind = torch.topk(F.normalize(x, dim=1) @ F.normalize(x, dim=1).T, k, dim=-1).indices
    return torch.zeros(x.shape[0], x.shape[0], dtype=torch.bool).scatter(-1, ind, True)


def smore_reference(model, ds, users, pos, neg, masks=None):
    """MMRec's SMORE forward (train=True) and calculate_loss, dense, float64, from the model's
    parameters; ``masks`` are the three preference-dropout multipliers (None: no dropout)."""
    cfg = model.config
    nu = ds.n_users
    # get_adj_mat; mmfast caches its graphs in float32: round the same way.
    a = dense_interactions(ds)
    d = a.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0
    norm_adj = (d[:, None] * a * d[None, :]).float().double()
    r = norm_adj[:nu, nu:]
    image, text = model.roles
    ks = {image: int(cfg["image_knn_k"]), text: int(cfg["text_knn_k"])}
    raw = {m: torch.from_numpy(ds.features[m]).double() for m in (image, text)}
    graphs = {m: dense_laplacian(dense_knn(raw[m], ks[m])) for m in (image, text)}
    for m in (image, text):  # equal to MMRec's build; from here on its float32 values are used
        frozen = getattr(model, f"item_graph_{m}").to_dense()
        torch.testing.assert_close(frozen, graphs[m], rtol=1e-6, atol=1e-7)
        graphs[m] = frozen
    # max_pool_fusion: the union of both kNN edge sets, the larger value where both hold one.
    pv, pt = knn_pattern(raw[image], ks[image]), knn_pattern(raw[text], ks[text])
    gv, gt = graphs[image], graphs[text]
    fusion_adj = torch.where(pv & pt, torch.maximum(gv, gt), torch.where(pv, gv, gt))
    assert torch.equal(model.item_graph_fusion.to_dense(), fusion_adj)
    feats = {m: model.modal.projections[m](model.modal.features[m]) for m in (image, text)}
    dim = feats[image].shape[1]
    w = {b: torch.view_as_complex(model.spectrum.weights[b]) for b in (image, text, "fusion")}
    fv = torch.fft.rfft(feats[image], dim=1, norm="ortho")
    ft = torch.fft.rfft(feats[text], dim=1, norm="ortho")
    conv = {image: torch.fft.irfft(fv * w[image], n=dim, dim=1, norm="ortho"),
            text: torch.fft.irfft(ft * w[text], n=dim, dim=1, norm="ortho"),
            "fusion": torch.fft.irfft(ft * fv * w["fusion"], n=dim, dim=1, norm="ortho")}
    item_id = model.ids.item.weight
    item = {b: item_id * torch.sigmoid(model.purifiers[b].gate(conv[b])) for b in conv}
    ego = torch.cat([model.ids.user.weight, item_id])
    layers = [ego]
    for _ in range(int(cfg["n_ui_layers"])):
        ego = norm_adj @ ego
        layers.append(ego)
    content = torch.stack(layers, 1).mean(1)
    adjs = {image: gv, text: gt, "fusion": fusion_adj}
    embeds = {}
    for b in conv:
        x = item[b]
        for _ in range(int(cfg["n_layers"])):
            x = adjs[b] @ x
        embeds[b] = torch.cat([r @ x, x])
    agg = {m: torch.softmax(model.queries[m](embeds["fusion"]), dim=-1) * embeds[m]
           for m in (image, text)}
    agg["fusion"] = embeds["fusion"]
    prefer = {b: torch.sigmoid(model.prefer[b](content)) for b in conv}
    if masks is not None:
        prefer = {b: prefer[b] * mask for b, mask in zip((image, text, "fusion"), masks)}
    side = torch.stack([prefer[b] * agg[b] for b in (image, text, "fusion")]).mean(0)
    all_embeds = content + side
    u_all, i_all = all_embeds[:nu], all_embeds[nu:]
    u, p, n = u_all[users], i_all[pos], i_all[neg]
    mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / int(cfg["train_batch_size"])
    cl = (info_nce(side[nu:][pos], content[nu:][pos], 0.2)
          + info_nce(side[:nu][users], content[:nu][users], 0.2))
    loss = mf + float(cfg["reg_weight"]) * reg + float(cfg["cl_loss"]) * cl
    return loss, (u_all, i_all)


@pytest.mark.parametrize("sets", [["dropout_rate=0"],
                                  ["n_layers=2", "n_ui_layers=3", "cl_loss=0.1",
                                   "image_knn_k=5", "text_knn_k=12", "dropout_rate=0.3"]],
                         ids=["default", "deeper-dropout"])
def test_smore_forward_and_loss_match_mmrec_in_float64(tiny, sets):
    model, _ = build("SMORE", tiny, "reg_weight=0.1", *sets, seed=5)
    model.double()
    users, pos, neg = one_batch(tiny)
    masks = None
    p = float(model.config["dropout_rate"])
    if p:  # the three gates' masks, drawn in branch order from a copy of the model's stream
        g = torch.Generator().manual_seed(0)
        g.set_state(model.rng_state()["prefer_dropout"])
        shape = (tiny.n_users + tiny.n_items, 64)
        masks = [(torch.rand(shape, generator=g) < 1 - p).double() / (1 - p) for _ in range(3)]
    ours = model.calculate_loss(users, pos, neg)
    theirs, (ru, ri) = smore_reference(model, tiny, users, pos, neg, masks)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    ga = torch.autograd.grad(ours, params)
    gb = torch.autograd.grad(theirs, params)
    for n, a, b in zip(names, ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    assert {n.split(".")[0] for n, g in zip(names, ga) if g.abs().sum() > 0} == {
        "ids", "modal", "queries", "purifiers", "prefer", "spectrum"}
    if masks is None:  # evaluation: no dropout
        u, i = model.embeddings()
        torch.testing.assert_close(u, ru.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(i, ri.detach(), rtol=1e-12, atol=1e-12)


def test_smore_evaluation_has_no_dropout(tiny):
    model, _ = build("SMORE", tiny, "dropout_rate=0.5")
    before = model.rng_state()["prefer_dropout"].clone()
    a, b = model.embeddings(), model.embeddings()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(model.rng_state()["prefer_dropout"], before)


def test_smore_both_backends_agree_at_one_step(tiny):
    assert_backends_agree("SMORE", tiny, "cl_loss=0.1", min_grads=10)


def test_smore_no_items_by_items_tensor_and_no_host_read_in_a_step(tiny):
    model, _ = build("SMORE", tiny)
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    with LargestTensors() as seen:
        model.train_step(users, pos, neg, opt)
    assert seen.shapes and not items_by_items(seen.shapes, tiny.n_items)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg)
    assert calls == []


def test_smore_plugin_views(tiny):
    model, _ = build("SMORE", tiny, "dropout_rate=0")
    users, pos, neg = one_batch(tiny)
    loss, views = model.loss_and_views(users, pos, neg)
    (bu, bi), (mu, mi) = views.behavior, views.modal
    u, i = model.embeddings()
    torch.testing.assert_close(u, bu + mu)
    torch.testing.assert_close(i, bi + mi)
    assert views.modal_features(pos[:5])["text"].shape == (5, 64)


@pytest.mark.parametrize("name", ["SMORE+SEA", "SMORE+BMA", "MMGCF+SEA"])
def test_plugins_attach(tiny, name):
    model, _ = build(name, tiny)
    users, pos, neg = one_batch(tiny)
    base, _ = build(name.split("+")[0], tiny)
    loss = model.calculate_loss(users, pos, neg)
    assert torch.isfinite(loss) and loss != base.calculate_loss(users, pos, neg)  # its term


def test_smore_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="SMORE needs two modalities"):
        build("SMORE", with_features(tiny, image=image))
    bad = text.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="SMORE: the text features hold NaN or infinite"):
        build("SMORE", with_features(tiny, image=image, text=bad))
    with pytest.raises(ValueError, match="dropout must be in"):
        build("SMORE", tiny, "dropout_rate=1.0")
    model, _ = build("SMORE", with_features(tiny, audio=text, image=image))  # TikTok's roles
    assert model.roles == ["image", "audio"]


# ---------------------------------------------------------------------------------- MMGCF
def test_mmgcf_shapes_registration_and_training(tiny):
    model, point = build("MMGCF", tiny)
    assert models.canonical("mmgcf") == "MMGCF"
    assert (point["n_ui_layers"], point["reg_weight"], point["fusion_mode"], point["weighting"],
            point["dropout"]) == (2, 1e-3, "mean", "normalized", 0.5)
    assert not model.modal.features.trainable  # MMRec freezes the raw tables
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    model.pre_epoch_processing()
    assert_loss_decreases(model, tiny)


def mmgcf_reference(model, ds, users, pos, neg):
    """MMRec's MMGCF forward and calculate_loss on the full graph, dense, float64."""
    cfg = model.config
    nu = ds.n_users
    a = dense_interactions(ds)
    d = (a.sum(1) + 1e-7).pow(-0.5)
    adj = (d[:, None] * a * d[None, :]).float().double()
    ego = torch.cat([model.ids.user.weight, model.ids.item.weight])
    layers = [ego]
    for _ in range(int(cfg["n_ui_layers"])):
        ego = adj @ ego
        layers.append(ego)
    out = torch.stack(layers, 1).mean(1)
    u_all, item = out[:nu], out[nu:]
    feats = [model.modal.projections[m](model.modal.features[m]) for m in model.roles]
    mode, weighting = cfg["fusion_mode"], cfg["weighting"]

    def fuse(ts, layer):
        if mode == "mean":
            return torch.stack(ts).mean(0)
        if mode == "sum":
            return torch.stack(ts).sum(0)
        return layer(torch.cat(ts, -1))

    if weighting == "alpha":
        al = torch.sigmoid(model.mm_alpha)
        i_all = fuse([item * al] + [f * (1 - al) for f in feats],
                     getattr(model, "all_concat", None))
    elif weighting == "normalized":
        i_all = fuse([F.normalize(item) * len(feats)] + [F.normalize(f) for f in feats],
                     getattr(model, "all_concat", None))
    else:
        mm = fuse(feats, getattr(model, "mm_concat", None)) if len(feats) > 1 else feats[0]
        i_all = fuse([item, mm], getattr(model, "id_mm_concat", None))
    u, p, n = u_all[users], i_all[pos], i_all[neg]
    mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    reg = (model.ids.user.weight[users].norm(2).pow(2) + model.ids.item.weight[pos].norm(2).pow(2)
           + model.ids.item.weight[neg].norm(2).pow(2)) / (2 * len(users))
    return mf + float(cfg["reg_weight"]) * reg, (u_all, i_all)


@pytest.mark.parametrize("weighting", ["equal", "alpha", "normalized"])
@pytest.mark.parametrize("fusion", ["mean", "sum", "concat"])
def test_mmgcf_forward_and_loss_match_mmrec_in_float64(tiny, fusion, weighting):
    sets = [f"fusion_mode={fusion}", f"weighting={weighting}", "reg_weight=0.1", "n_ui_layers=3"]
    if fusion == "concat":
        sets.append("feat_embed_dim=24")
    model, _ = build("MMGCF", tiny, *sets, seed=7)
    model.double()
    users, pos, neg = one_batch(tiny)
    ours = model.calculate_loss(users, pos, neg)  # before the first epoch: the full graph
    theirs, (ru, ri) = mmgcf_reference(model, tiny, users, pos, neg)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    ga = torch.autograd.grad(ours, params, allow_unused=True)
    gb = torch.autograd.grad(theirs, params, allow_unused=True)
    for n, a, b in zip(names, ga, gb):
        assert (a is None) == (b is None), n
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    trained = {n.split(".")[0] for n, g in zip(names, ga) if g is not None and g.abs().sum() > 0}
    assert {"ids", "modal"} <= trained
    assert ("mm_alpha" in trained) == (weighting == "alpha")
    u, i = model.embeddings()
    torch.testing.assert_close(u, ru.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(i, ri.detach(), rtol=1e-12, atol=1e-12)


def test_mmgcf_one_modality_and_none(tiny):
    image = tiny.features["image"]
    users, pos, neg = one_batch(tiny)
    model, _ = build("MMGCF", with_features(tiny, image=image), seed=2)
    model.double()
    ours = model.calculate_loss(users, pos, neg)
    theirs, _ = mmgcf_reference(model, with_features(tiny, image=image), users, pos, neg)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    bare, _ = build("MMGCF", with_features(tiny), seed=2)  # no features: the ID line alone
    u, i = bare.embeddings()
    torch.testing.assert_close(i, bare.ids(bare.full_adj, 2)[1])


def test_mmgcf_pruned_graph(tiny):
    model, _ = build("MMGCF", tiny, "dropout=0.5")
    model.pre_epoch_processing()
    nu, nnz = tiny.n_users, tiny.train.users().numel()
    g = model.train_adj.to_dense().double()
    kept = g[:nu, nu:] != 0
    assert int(kept.sum()) == int(nnz * 0.5)
    full = dense_interactions(tiny)[:nu, nu:].bool()
    assert not (kept & ~full).any()  # a subset of the training edges
    a = torch.zeros_like(g)
    a[:nu, nu:], a[nu:, :nu] = kept.double(), kept.T.double()
    d = (a.sum(1) + 1e-7).pow(-0.5)  # re-normalized on the kept edges
    torch.testing.assert_close(g, d[:, None] * a * d[None, :], rtol=1e-6, atol=1e-7)
    model.pre_epoch_processing()
    assert not torch.equal(model.train_adj.to_dense(), g.float())  # redrawn every epoch


def test_mmgcf_both_backends_agree_at_one_step(tiny):
    assert_backends_agree("MMGCF", tiny, "weighting=alpha", min_grads=5)


def test_mmgcf_no_host_read_in_a_step(tiny):
    model, _ = build("MMGCF", tiny)
    model.pre_epoch_processing()
    users, pos, neg = one_batch(tiny)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg)
    assert calls == []


def test_mmgcf_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = text.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="MMGCF: the text features hold NaN or infinite"):
        build("MMGCF", with_features(tiny, image=image, text=bad))
    with pytest.raises(ValueError, match="at most two modalities"):
        build("MMGCF", with_features(tiny, image=image, text=text, audio=text.copy()))
    with pytest.raises(PluginRefusedError, match="cannot take \\+BMA: its PluginViews has no modal"):
        build("MMGCF+BMA", tiny)
    for sets, match in [(["fusion_mode=prod"], "fusion_mode must be one of"),
                        (["weighting=x"], "weighting must be one of"),
                        (["feat_embed_dim=32"], "feat_embed_dim \\(32\\) must equal"),
                        (["dropout=1.0"], "MMGCF dropout must be in")]:
        with pytest.raises(ValueError, match=match):
            build("MMGCF", tiny, *sets)


# --------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("name,sets,stream", [
    ("SMORE", ["dropout_rate=0.3", "image_knn_k=10", "text_knn_k=10", "n_ui_layers=2"],
     "prefer_dropout"),
    ("MMGCF", ["dropout=0.5"], "edge_pruning"),
])
def test_resumes_bit_identically(tmp_path, name, sets, stream):
    config = tiny_config(name, "no_grid=true", *sets, epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {stream}
    resumed = run(resume=info.value.folder, console=False)
    la, lb = assert_same_run(full, resumed)
    assert torch.equal(la["model_rng"][stream], lb["model_rng"][stream])
