"""MMGCN, DualGNN and DRAGON (the Wei et al. lineage in MMRec): shapes, training, both backends
equal, forward and loss against plain dense float64 transcriptions of MMRec's code, the
user-user graph against a transcription of MMRec's preprocessing script, the epoch sampler
against MMRec's sequential padding, a user-supplied user_graph_dict.npy, bit-identical resume,
bad input."""
from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.data.aggregation import aggregation_graph
from mmfast.data.interactions import Interactions
from mmfast.data.user_graph import (
    UserGraph,
    build_user_graph,
    dataset_user_graph,
    read_user_graph_dict,
    user_graph,
)
from mmfast.nn.user_graph import UserGraphAggregation
from mmfast.trainer import TrainingInterrupted, run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree,
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build
from test_host_syncs import counted_reads

MODELS = ["MMGCN", "DualGNN", "DRAGON"]


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("DRAGON", epochs=1))


# ------------------------------------------------------------------ references
def script_user_graph(pairs, num_user, topk=200):
    """MMRec's preprocessing/dualgnn-gen-u-u-matrix.py, transcribed: O(users²) loops, a dense
    float32 matrix, one torch.topk per user."""
    edge_dict = defaultdict(set)
    for user, item in pairs:
        edge_dict[user].add(item)
    matrix = torch.zeros(num_user, num_user)
    keys = sorted(edge_dict)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            n = len(edge_dict[keys[a]].intersection(edge_dict[keys[b]]))
            if n > 0:
                matrix[keys[a]][keys[b]] = n
                matrix[keys[b]][keys[a]] = n
    out = {}
    for i in range(num_user):
        nnz = len(torch.nonzero(matrix[i]))
        top = torch.topk(matrix[i], nnz if nnz <= topk else topk)
        out[i] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
    return out


def dense_adjacency(ds, dtype=torch.float64):
    """The symmetric binary user-item adjacency over users + items, dense."""
    n_users, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n, dtype=dtype)
    u, i = ds.train.users(), ds.train.items + n_users
    a[u, i] = 1
    a[i, u] = 1
    return a


def f32(x):
    """The model stores its frozen graphs in float32: the reference rounds its values alike."""
    return x.float().double()


def propagation(ds, aggr):
    a = dense_adjacency(ds)
    deg = a.sum(1)
    if aggr == "mean":  # torch_geometric's mean aggregation: (1/deg_i) sum_j x_j
        return f32(a / deg.clamp(min=1).unsqueeze(1))
    inv = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))
    return f32(inv.unsqueeze(1) * a * inv.unsqueeze(0))  # 'add': norm deg^-1/2 deg^-1/2


def lin(layer, x):
    return x @ layer.weight.T + layer.bias


def leaky(x):
    return torch.where(x > 0, x, 0.01 * x)


def rownorm(x):
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def mmgcn_reference(model, ds, users, pos, neg, aggr="mean"):
    """MMRec's MMGCN.forward + calculate_loss, plainly, dense."""
    m_agg = propagation(ds, aggr)
    outs = []
    for m in model.modalities:
        gcn = model.gcns[m]
        feats = getattr(model, f"raw_{m}")
        x = torch.cat([gcn.preference, lin(gcn.mlp, feats) if gcn.mlp is not None else feats])
        x = rownorm(x)
        for w, lw, gw in zip(gcn.conv, gcn.linear, gcn.combine):
            h = leaky(m_agg @ (x @ w))
            x_hat = leaky(lin(lw, x)) + model.id_embedding
            x = leaky(lin(gw, torch.cat([h, x_hat], 1))) if gcn.concat else leaky(lin(gw, h) + x_hat)
        outs.append(x)
    rep = sum(outs) / len(outs)
    user_t = users.repeat_interleave(2)
    item_t = torch.stack([pos, neg]).t().reshape(-1) + ds.n_users
    score = (rep[user_t] * rep[item_t]).sum(1).view(-1, 2)
    loss = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]], dtype=rep.dtype))).mean()
    reg = (model.id_embedding[user_t] ** 2 + model.id_embedding[item_t] ** 2).mean()
    reg = reg + (model.gcns["image"].preference ** 2).mean()
    return rep[: ds.n_users], rep[ds.n_users:], loss + model.reg_weight * reg


def modal_lines(model, ds, aggr):
    adj = propagation(ds, aggr)
    out = {}
    for m in model.modalities:
        gnn = model.gnns[m]
        a = lin(gnn.item_mlp[2], leaky(lin(gnn.item_mlp[0], getattr(model, f"raw_{m}"))))
        x = rownorm(torch.cat([gnn.preference, a]))
        h = adj @ x
        out[m] = x + h + adj @ h
    return out


def user_user_dense(model):
    return model.user_graph.graph.to_torch().to_dense()


def dualgnn_reference(model, ds, users, pos, neg, aggr="add", inplace=True):
    """MMRec's DualGNN.forward + calculate_loss, plainly, dense (the epoch's user-user weights
    taken from the model; the sampler has its own test)."""
    lines = modal_lines(model, ds, aggr)
    v, t = lines["image"], lines["text"]
    rep = v + t
    v_users = rep[: ds.n_users] if inplace else v[: ds.n_users]  # MMRec's in-place +=
    w = model.user_weights.weight
    user = v_users * w[:, :1] + t[: ds.n_users] * w[:, 1:]
    user = user + user_user_dense(model) @ user
    item = rep[ds.n_users:]
    diff = (user[users] * item[pos]).sum(1) - (user[users] * item[neg]).sum(1)
    loss = -torch.log2(torch.sigmoid(diff)).mean()
    reg = sum((model.gnns[m].preference[users] ** 2).mean() for m in ("image", "text"))
    reg = reg + (w ** 2).mean() + (model.item_weights ** 2).mean()
    return user, item, loss + model.reg_weight * reg


def knn_dense(x, k):
    x = rownorm(x.double())
    idx = torch.topk(x @ x.T, k, dim=1).indices
    s = torch.zeros(x.shape[0], x.shape[0], dtype=torch.float64)
    s.scatter_(1, idx, 1.0)
    r = s.sum(1)
    return f32(s / torch.sqrt(r.unsqueeze(1) * r.unsqueeze(0)))


def dragon_reference(model, ds, users, pos, neg, knn_k=10, alpha=0.1):
    """MMRec's DRAGON.forward + calculate_loss, plainly, dense."""
    lines = modal_lines(model, ds, "add")
    v, t = lines["image"], lines["text"]
    w = model.user_weights.weight
    user = torch.cat([v[: ds.n_users] * w[:, :1], t[: ds.n_users] * w[:, 1:]], 1)
    item = torch.cat([v, t], 1)[ds.n_users:]
    s = f32(alpha * knn_dense(model.raw_image, knn_k) + (1 - alpha) * knn_dense(model.raw_text, knn_k))
    item = item + s @ item
    user = user + user_user_dense(model) @ user
    diff = (user[users] * item[pos]).sum(1) - (user[users] * item[neg]).sum(1)
    loss = -torch.log2(torch.sigmoid(diff)).mean()
    reg = sum((model.gnns[m].preference[users] ** 2).mean() for m in ("image", "text"))
    return user, item, loss + model.reg_weight * (reg + (w ** 2).mean())


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("name,width", [("MMGCN", 64), ("DualGNN", 64), ("DRAGON", 128)])
def test_shapes_and_registration(tiny, name, width):
    model, _ = build(name, tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, width) and items.shape == (tiny.n_items, width)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get(name.lower()) is type(model) and models.canonical(name.lower()) == name
    if name == "MMGCN":  # MMRec's plain tensors: kept (checkpointed) but never optimized
        assert "id_embedding" in model.state_dict()
        trained = {id(p) for p in model.model_parameters()}
        assert id(model.id_embedding) not in trained
        assert all(id(g.preference) not in trained for g in model.gcns.values())
    else:
        assert model.run_info()["user_graph"].startswith("built from the training split")


@pytest.mark.parametrize("name", MODELS)
def test_loss_decreases(tiny, name):
    model, _ = build(name, tiny)
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("name", MODELS)
def test_both_backends_agree_at_one_step(tiny, name):
    assert_backends_agree(name, tiny)


CASES = [
    ("MMGCN", [], lambda m, d, u, p, n: mmgcn_reference(m, d, u, p, n)),
    ("MMGCN", ["concate=false", "ignore_n_layers=false", "n_layers=2", "aggr_mode=add",
               "train_id_preference=true"],
     lambda m, d, u, p, n: mmgcn_reference(m, d, u, p, n, aggr="add")),
    ("DualGNN", [], lambda m, d, u, p, n: dualgnn_reference(m, d, u, p, n)),
    ("DualGNN", ["user_inplace_sum=false", "aggr_mode=mean", "user_aggr_mode=mean"],
     lambda m, d, u, p, n: dualgnn_reference(m, d, u, p, n, aggr="mean", inplace=False)),
    ("DRAGON", [], lambda m, d, u, p, n: dragon_reference(m, d, u, p, n)),
]


@pytest.mark.parametrize("name,sets,reference", CASES,
                         ids=[f"{c[0]}-{','.join(c[1]) or 'defaults'}" for c in CASES])
def test_forward_and_loss_match_a_dense_transcription(tiny, name, sets, reference):
    model, _ = build(name, tiny, *sets, "reg_weight=0.01", seed=5)
    model.double()
    users, pos, neg = one_batch(tiny, size=64)
    loss = model.calculate_loss(users, pos, neg)
    ref_u, ref_i, ref_loss = reference(model, tiny, users, pos, neg)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    u, i = model.embeddings()
    torch.testing.assert_close(u, ref_u, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(i, ref_i, rtol=1e-9, atol=1e-11)
    params = [p for p in model.model_parameters()]
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want = torch.autograd.grad(ref_loss, params, allow_unused=True)
    for p, a, b in zip(params, got, want):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    if name == "MMGCN" and sets:  # three layers unless ignore_n_layers is off
        assert len(model.gcns["image"].conv) == 2
        assert id(model.id_embedding) in {id(p) for p in params}


@pytest.mark.parametrize("name", MODELS)
def test_training_step_reads_nothing_back(tiny, name):
    model, _ = build(name, tiny)
    model.pre_epoch_processing()  # the epoch's sampling may read (once per epoch)
    users, pos, neg = one_batch(tiny)
    model.calculate_loss(users, pos, neg).backward()
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg).backward()
    assert calls == []


def test_dragon_plugin_views(tiny):
    model, _ = build("DRAGON", tiny)
    users, pos, neg = one_batch(tiny)
    loss, views = model.loss_and_views(users, pos, neg)
    torch.testing.assert_close(loss, model.calculate_loss(users, pos, neg))
    (bu, bi), (mu, mi) = views.behavior, views.modal
    assert bu.shape == mu.shape == (tiny.n_users, 128) and bi.shape == mi.shape == (tiny.n_items, 128)
    u, i = model.embeddings()
    torch.testing.assert_close(bu + mu, u)
    torch.testing.assert_close(bi + mi, i)
    feats = views.modal_features(pos)
    assert set(feats) == {"image", "text"} and feats["image"].shape == (len(pos), 64)
    assert feats["text"].requires_grad


@pytest.mark.parametrize("name", ["DualGNN", "DRAGON"])
def test_resumes_bit_identically(tmp_path, name):
    config = tiny_config(name, "no_grid=true", "learning_rate=0.001", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {"user_graph"}
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"] and a["model_info"]["user_graph"] == b["model_info"]["user_graph"]
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    assert torch.equal(la["model_rng"]["user_graph"], lb["model_rng"]["user_graph"])


@pytest.mark.parametrize("name", MODELS)
def test_bad_input(tiny, name):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build(name, with_features(tiny, image=image, text=bad))
    with pytest.raises(ValueError, match="needs item features"):
        build(name, with_features(tiny))
    with pytest.raises(ValueError, match="at most two modalities"):
        build(name, with_features(tiny, image=image, text=text, audio=text.copy()))
    # One modality is allowed, as in MMRec (either feature file may be missing).
    for one in ({"text": text}, {"image": image}):
        model, _ = build(name, with_features(tiny, **one))
        opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
        users, pos, neg = one_batch(tiny)
        assert torch.isfinite(model.train_step(users, pos, neg, opt))
    with pytest.raises(ValueError, match="aggr_mode must be one of"):
        build(name, tiny, "aggr_mode=max")


# ------------------------------------------------------------------ the user-user graph
def test_user_graph_equals_the_preprocessing_script(tiny):
    pairs = torch.stack([tiny.train.users(), tiny.train.items], 1).tolist()
    want = script_user_graph(pairs, tiny.n_users)
    assert any(len(v[0]) == 200 for v in want.values())  # some users are cut at 200
    assert any(0 < len(v[0]) < 200 for v in want.values())
    # Several row blocks (the whole build in one block is the default at this size).
    for block in (1 << 23, 7 * tiny.n_users):
        got = build_user_graph(tiny.train, block_elements=block).to_dict()
        assert got == want
    counts = [c for v in want.values() for c in v[1]]
    assert len(counts) > len(set(counts))  # ties exist, and their order matched


def test_user_graph_small_cases_and_cache(tmp_path):
    # user 3 has no interactions, user 4 shares nothing; users 0..2 tie on two items each
    train = Interactions.from_pairs([0, 0, 1, 1, 2, 2, 4], [0, 1, 0, 1, 0, 1, 5], 5, 6)
    pairs = torch.stack([train.users(), train.items], 1).tolist()
    for topk in (200, 1):
        want = script_user_graph(pairs, 5, topk=topk)
        assert build_user_graph(train, topk=topk).to_dict() == want
    assert want[3] == [[], []] and want[4] == [[], []]
    first = user_graph(train, cache_dir=tmp_path)
    files = list((tmp_path / "graphs").glob("user-graph-top200-*.pt"))
    assert len(files) == 1
    again = user_graph(train, cache_dir=tmp_path)
    assert again.to_dict() == first.to_dict()
    files[0].write_bytes(b"corrupt")  # an unreadable cache is rebuilt
    assert user_graph(train, cache_dir=tmp_path).to_dict() == first.to_dict()


def test_a_user_supplied_user_graph_dict_is_read(tiny, tmp_path):
    rng = np.random.default_rng(0)
    supplied = {}
    for u in range(tiny.n_users):
        n = int(rng.integers(0, 60))
        supplied[u] = [rng.integers(0, tiny.n_users, n).tolist(),
                       rng.integers(1, 5, n).astype(float).tolist()]
    np.save(tmp_path / "user_graph_dict.npy", supplied, allow_pickle=True)
    ds = dataclasses.replace(tiny, source=tmp_path)
    graph, where = dataset_user_graph(ds)
    assert where.endswith("user_graph_dict.npy") and graph.to_dict() == supplied
    for name in ("DualGNN", "DRAGON"):
        model, _ = build(name, ds)
        assert model.run_info()["user_graph"] == str(tmp_path / "user_graph_dict.npy")
        assert torch.equal(model.user_graph.neighbours, graph.neighbours)
    model, _ = build("DRAGON", ds, "user_graph_dict_file=elsewhere.npy")  # absent: built
    assert model.run_info()["user_graph"].startswith("built")
    np.save(tmp_path / "short.npy", {0: [[1], [1.0]]}, allow_pickle=True)
    with pytest.raises(ValueError, match="keys for 1 users, the dataset has"):
        read_user_graph_dict(tmp_path / "short.npy", tiny.n_users)


def mmrec_topk_sample(graph: UserGraph, k, draws, mode="softmax"):
    """MMRec's topk_sample, sequentially, with the uniform draws given (draws[u, p] picks the
    copied entry of pad position p)."""
    full = graph.to_dict()
    out = torch.zeros(graph.n_users, graph.n_users, dtype=torch.float64)
    for u, (nbrs, counts) in full.items():
        if not nbrs:
            continue
        sample, weight = nbrs[:k], counts[:k]
        while len(sample) < k:
            r = math.floor(float(draws[u, len(sample)]) * len(sample))
            sample.append(sample[r])
            weight.append(weight[r])
        if mode == "softmax":
            a = F.softmax(torch.tensor(weight), dim=0).double()
        else:
            a = torch.full((k,), 1.0 / k, dtype=torch.float64)
        for j, n in enumerate(sample):
            out[u, n] += a[j]
    return out


@pytest.mark.parametrize("k,mode", [(40, "softmax"), (7, "softmax"), (5, "mean"), (1, "softmax")])
def test_epoch_sampler_equals_mmrec_padding(tiny, k, mode):
    full = build_user_graph(tiny.train, topk=30).to_dict()  # then lists of 0..11 entries
    graph = UserGraph.from_dict({u: [v[0][: u % 12], v[1][: u % 12]] for u, v in full.items()},
                                tiny.n_users)
    agg = UserGraphAggregation(graph, k=k, mode=mode)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    got = agg.resample(gen).to_torch().to_dense().double()
    gen.set_state(state)
    draws = torch.rand(graph.n_users, k, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(got, mmrec_topk_sample(graph, k, draws, mode), rtol=1e-6, atol=1e-7)
    x = torch.randn(graph.n_users, 3)
    torch.testing.assert_close(agg(x), agg.graph.to_torch() @ x)


def test_mean_aggregation_graph(tiny):
    dense = aggregation_graph(tiny.train, "mean", cache=False).to_torch().to_dense().double()
    torch.testing.assert_close(dense, propagation(tiny, "mean"), rtol=1e-6, atol=1e-7)
    add = aggregation_graph(tiny.train, "add", cache=False).to_torch().to_dense().double()
    torch.testing.assert_close(add, propagation(tiny, "add"), rtol=1e-6, atol=1e-7)
