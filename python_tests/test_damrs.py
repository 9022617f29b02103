"""DAMRS (DA-MRS): shapes, training, both backends equal, the graphs against plain transcriptions
of MMRec's get_knn_adj_mat / get_session_adj and of the authors' build_iib_graph.py, forward and
loss against a float64 transcription of MMRec's calculate_loss, a user-supplied
item_graph_dict_2.npy, no host reads in a step, bad input."""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.data.consensus_knn import build_consensus_knn_graphs, consensus_knn_graphs
from mmfast.data.interactions import Interactions
from mmfast.data.item_behavior_graph import (
    dataset_item_graph,
    item_behavior_graph,
    read_item_graph_dict,
    session_adjacency,
)
from mmfast.models.damrs import first_occurrence
from mmfast.trainer import run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree,
    assert_loss_decreases, one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build
from test_host_syncs import counted_reads


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("DAMRS", epochs=1))


# ------------------------------------------------------------------ transcriptions
def script_item_graph(pairs, num_item, topk=2):
    """The authors' build_iib_graph.py, transcribed: pairwise set intersections, counts kept
    from 2 common users, a dense float32 matrix, one torch.topk per item."""
    users_of = defaultdict(set)
    for user, item in pairs:
        users_of[item].add(user)
    matrix = torch.zeros(num_item, num_item)
    keys = sorted(users_of)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            n = len(users_of[keys[a]] & users_of[keys[b]])
            if n >= 2:
                matrix[keys[a]][keys[b]] = n
                matrix[keys[b]][keys[a]] = n
    out = {}
    for i in range(num_item):
        nnz = len(torch.nonzero(matrix[i]))
        top = torch.topk(matrix[i], nnz if nnz <= topk else topk)
        out[i] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
    return out


def laplacian_dense(rows, cols, n):
    """MMRec's compute_normalized_laplacian of binary entries, dense (repeats add)."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for r, c in zip(rows, cols):
        a[r, c] += 1
    r_inv = (a.sum(1) + 1e-7) ** -0.5
    return r_inv[:, None] * a * r_inv[None, :]


def knn_dense(v, t, k):
    """MMRec's get_knn_adj_mat, row by row."""
    vn, tn = F.normalize(v.double(), dim=1), F.normalize(t.double(), dim=1)
    vs, ts = vn @ vn.T, tn @ tn.T
    mask = (vs < vs.mean()) | (ts < ts.mean())
    vs[mask], ts[mask] = 0, 0
    n = v.shape[0]
    rows, cv, ct = [], [], []
    for i in range(n):
        m = min(len(torch.nonzero(ts[i])), k)
        rows += [i] * m
        cv += torch.topk(vs[i], m).indices.tolist()
        ct += torch.topk(ts[i], m).indices.tolist()
    return laplacian_dense(rows, cv, n), laplacian_dense(rows, ct, n)


def session_dense(graph_dict, n):
    rows, cols = [], []
    for i in range(n):
        rows.append(i)
        cols.append(i)
        for j in graph_dict.get(i, [[], []])[0]:
            rows.append(i)
            cols.append(j)
    return laplacian_dense(rows, cols, n)


def norm_adj_dense(ds):
    n_users, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    u, i = ds.train.users(), ds.train.items + n_users
    a[u, i] = 1
    a[i, u] = 1
    d = a.sum(1)
    inv = torch.where(d > 0, d.clamp(min=1) ** -0.5, torch.zeros_like(d))
    return inv[:, None] * a * inv[None, :]


def mmrec_forward(model, ds, a, adj_t, adj_v, adj_s):
    e_u, e_i = model.ids.user.weight, model.ids.item.weight
    ego = torch.cat([e_u, e_i])
    layers = [ego]
    for _ in range(model.n_ui_layers):
        layers.append(a @ layers[-1])
    allv = torch.stack(layers, 1).mean(1)
    u, i = allv[: ds.n_users], allv[ds.n_users:]
    hs = []
    for g in (adj_t, adj_v, adj_s):
        h = e_i
        for _ in range(model.n_mm_layers):
            h = g @ h
        hs.append(h)
    return (u, i, *hs)


def mmrec_loss(model, u, i, h_t, h_v, h_s, users, pos, neg, temperature=0.2):
    """MMRec's DAMRS.calculate_loss, plainly (torch.unique, log(sigmoid), the KL as written)."""
    u_id = torch.unique(users)
    i_id = torch.unique(torch.cat([pos, neg]))

    def label(emb, aug):
        return F.softmax(F.normalize(emb, dim=1) @ F.normalize(aug, dim=1).T, dim=1)

    def pseudo(p1, p2, p3):
        mm = torch.topk(p1 + p2 + p3 + p3, 10, dim=-1).indices
        p = p3.clone()
        p.scatter_(1, mm, 0)
        return mm, torch.topk(p, 10, dim=-1).indices

    def nd(mm, s, emb, aug):
        na, ne = F.normalize(aug, dim=1), F.normalize(emb, dim=1)
        mm_score = torch.exp((ne[:, None, :] * na[mm]).sum(2) / temperature).sum(1)
        s_score = torch.exp((ne[:, None, :] * na[s]).sum(2) / temperature).sum(1)
        ttl = torch.exp(ne @ na.T / temperature).sum(1)
        return (-torch.log(mm_score / ttl + 10e-10)
                - torch.log(s_score / (ttl - mm_score) + 10e-10)).mean()

    lt, lv, ls = label(h_t[i_id], h_t), label(h_v[i_id], h_v), label(h_s[i_id], h_s)
    nd_loss = (nd(*pseudo(lt, lv, ls), h_s[i_id], h_s) + nd(*pseudo(lt, ls, lv), h_v[i_id], h_v)
               + nd(*pseudo(lv, ls, lt), h_t[i_id], h_t)) / 3.0

    def kl(p1, p2):
        return (p1 * torch.log(p1) - p1 * torch.log(p2) + (1 - p1) * torch.log(1 - p1)
                - (1 - p1) * torch.log(1 - p2))

    it = (h_t + h_s + h_v) / 3.0
    p_g = torch.sigmoid(u[u_id] @ F.normalize(i[i_id], dim=-1).T)
    p_t = torch.sigmoid(u[u_id] @ F.normalize(it[i_id], dim=-1).T)
    kl_loss = (kl(p_g, p_t) + kl(p_t, p_g)).mean()

    ub = u[users]
    with torch.no_grad():
        ps = torch.sigmoid(torch.stack([(ub * F.normalize(h[pos], dim=-1)).sum(1)
                                        for h in (h_t, h_s, h_v)]))
        ns = torch.sigmoid(torch.stack([(ub * F.normalize(h[neg], dim=-1)).sum(1)
                                        for h in (h_t, h_s, h_v)]))
        n_mean = ns.mean()
        pw = torch.clamp(ps.mean(0) * torch.exp(-ps.var(0)) ** 2, 0, 1)
        mask = (ps.mean(0) < n_mean).double()
        nw = torch.clamp((ps.max(0).values - n_mean) * mask, 0, 1)
    ia = i + (h_t + h_v + h_s) / 3.0
    d = (ub * ia[pos]).sum(1) - (ub * ia[neg]).sum(1)
    mf = -(torch.log(torch.sigmoid(d)) * pw + torch.log(torch.sigmoid(-d)) * nw).mean()
    return mf + model.neighbor_weight * nd_loss + model.kl_weight * kl_loss


def train_pairs(ds):
    return torch.stack([ds.train.users(), ds.train.items], 1).tolist()


# ------------------------------------------------------------------ the model
def test_shapes_and_registration(tiny):
    model, point = build("DAMRS", tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get("damrs") is type(model) and models.canonical("damrs") == "DAMRS"
    assert point["kl_weight"] == 1 and point["neighbor_weight"] == 1e-3
    assert point["n_ui_layers"] == 2 and point["n_mm_layers"] == 1
    assert model.run_info()["item_graph"].startswith("built from the training split (top 2")
    assert model.n_trainable() == (tiny.n_users + tiny.n_items) * 64


def test_loss_decreases(tiny):
    model, _ = build("DAMRS", tiny)
    assert_loss_decreases(model, tiny)


def test_both_backends_agree_at_one_step(tiny):
    assert_backends_agree("DAMRS", tiny, min_grads=2)


@pytest.mark.parametrize("sets", [[], ["n_mm_layers=2", "n_ui_layers=1", "kl_weight=0.5",
                                       "neighbor_weight=0.1"]], ids=["default", "other-point"])
def test_forward_and_loss_equal_mmrec(tiny, sets):
    model, _ = build("DAMRS", tiny, *sets)
    model.double()
    t, v = tiny.feature("text"), tiny.feature("image")
    adj_v, adj_t = knn_dense(v, t, 10)
    adj_s = session_dense(script_item_graph(train_pairs(tiny), tiny.n_items), tiny.n_items)
    graphs = [g.to_dense() for g in (model.adj, model.text_adj, model.image_adj,
                                     model.session_adj)]
    for got, want in zip(graphs, (norm_adj_dense(tiny), adj_t, adj_v, adj_s)):  # the same edges; values in float32
        assert torch.equal(got != 0, want != 0)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    users, pos, neg = one_batch(tiny)
    assert torch.unique(users).numel() < users.numel()  # repeats: the weights matter

    u, i, h_t, h_v, h_s = mmrec_forward(model, tiny, *graphs)
    want_loss = mmrec_loss(model, u, i, h_t, h_v, h_s, users, pos, neg)
    want_grads = torch.autograd.grad(want_loss, [model.ids.user.weight, model.ids.item.weight])
    got_loss = model.calculate_loss(users, pos, neg)
    got_grads = torch.autograd.grad(got_loss, [model.ids.user.weight, model.ids.item.weight])
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-10)
    eu, ei = model.embeddings()
    torch.testing.assert_close(eu, u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ei, i + (h_v + h_t + h_s) / 3.0, rtol=1e-10, atol=1e-12)


def test_trains_through_the_trainer(tmp_path):
    result = run(tiny_config("DAMRS", "no_grid=true", epochs=2), out=tmp_path, console=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2
    assert all(np.isfinite(e["train_loss"]) for e in metrics["epochs"])
    assert metrics["model_info"]["item_graph"].startswith("built from the training split")
    assert result.best["test"]["recall@20"] > 0


def test_a_step_reads_nothing_back(tiny):
    model, _ = build("DAMRS", tiny)
    users, pos, neg = one_batch(tiny)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg).backward()
    assert calls == []


def test_weighted_and_unique_distinct_ids_give_the_same_loss(tiny, monkeypatch):
    """The GPU path (first-occurrence weights, no sync) against the CPU path (torch.unique)."""
    model, _ = build("DAMRS", tiny, "neighbor_weight=0.1")
    model.double()
    users, pos, neg = one_batch(tiny)
    params = [model.ids.user.weight, model.ids.item.weight]
    results = []
    for unique_on in (("cpu",), ()):
        monkeypatch.setattr(type(model), "unique_on", unique_on)
        loss = model.calculate_loss(users, pos, neg)
        results.append((loss, torch.autograd.grad(loss, params)))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_first_occurrence_weights_are_the_distinct_ids():
    ids = torch.tensor([5, 3, 5, 0, 3, 3, 9])
    w = first_occurrence(ids)
    assert w.sum() == 4 and torch.equal(torch.unique(ids[w > 0]), torch.unique(ids))
    # the mean over distinct ids of f(id) is the weighted mean over positions
    f = torch.randn(10, dtype=torch.float64)
    assert torch.isclose((f[ids] * w).sum() / w.sum(), f[torch.unique(ids)].mean())


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="needs two modalities"):
        build("DAMRS", with_features(tiny, image=image))
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build("DAMRS", with_features(tiny, image=image, text=bad))


# ------------------------------------------------------------------ the graphs
def test_item_graph_equals_the_authors_script(tiny):
    want = script_item_graph(train_pairs(tiny), tiny.n_items)
    got = item_behavior_graph(tiny.train, cache=False).to_dict()
    assert got == want
    assert any(len(v[0]) == 2 for v in want.values())
    counts = [c for v in want.values() for c in v[1]]
    assert min(counts) >= 2 and len(counts) > len(set(counts))  # the floor, and ties matched
    wide = script_item_graph(train_pairs(tiny), tiny.n_items, topk=50)
    assert item_behavior_graph(tiny.train, topk=50, cache=False).to_dict() == wide
    assert any(0 < len(v[0]) < 50 for v in wide.values())


def test_item_graph_small_cases_and_cache(tmp_path):
    # items 0 and 1 share users 0, 1 (count 2); items 1 and 2 share one user (dropped)
    train = Interactions.from_pairs([0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 1, 2], 3, 4)
    assert item_behavior_graph(train, cache=False).to_dict() == {
        0: [[1], [2.0]], 1: [[0], [2.0]], 2: [[], []], 3: [[], []]}
    assert item_behavior_graph(train, min_count=1, cache=False).to_dict()[2] == [[1], [1.0]]
    first = item_behavior_graph(train, cache_dir=tmp_path)
    files = list((tmp_path / "graphs").glob("item-graph-top2-*.pt"))
    assert len(files) == 1
    assert item_behavior_graph(train, cache_dir=tmp_path).to_dict() == first.to_dict()


def test_session_adjacency_weighted_switch():
    train = Interactions.from_pairs([0, 0, 1, 1, 1, 2, 2], [0, 1, 0, 1, 2, 1, 2], 3, 3)
    graph = item_behavior_graph(train, min_count=1, cache=False)
    d = graph.to_dict()
    binary = session_adjacency(graph).to_dense().double()
    torch.testing.assert_close(binary, session_dense(d, 3), rtol=1e-6, atol=1e-7)
    a = torch.eye(3, dtype=torch.float64)
    for i, (nbrs, counts) in d.items():
        for j, c in zip(nbrs, counts):
            a[i, j] += c
    r = (a.sum(1) + 1e-7) ** -0.5
    weighted = session_adjacency(graph, weighted=True).to_dense().double()
    torch.testing.assert_close(weighted, r[:, None] * a * r[None, :], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(weighted, binary)


def test_a_user_supplied_item_graph_dict_is_read(tiny, tmp_path):
    rng = np.random.default_rng(0)
    supplied = {}
    for i in range(0, tiny.n_items, 2):  # odd items missing: no neighbours, as in MMRec
        n = int(rng.integers(0, 4))
        supplied[i] = [rng.integers(0, tiny.n_items, n).tolist(),
                       rng.integers(2, 6, n).astype(float).tolist()]
    np.save(tmp_path / "item_graph_dict_2.npy", supplied, allow_pickle=True)
    ds = dataclasses.replace(tiny, source=tmp_path)
    graph, where = dataset_item_graph(ds)
    assert where == str(tmp_path / "item_graph_dict_2.npy")
    full = graph.to_dict()
    assert all(full[i] == supplied.get(i, [[], []]) for i in range(tiny.n_items))
    model, _ = build("DAMRS", ds)
    assert model.run_info()["item_graph"] == where
    torch.testing.assert_close(model.session_adj.to_dense().double(),
                               session_dense(supplied, tiny.n_items), rtol=1e-6, atol=1e-7)
    model, _ = build("DAMRS", ds, "item_graph_dict_file=null")  # null: always built
    assert model.run_info()["item_graph"].startswith("built")
    np.save(tmp_path / "bad.npy", {tiny.n_items: [[0], [2.0]]}, allow_pickle=True)
    with pytest.raises(ValueError, match="is not an item of the dataset"):
        read_item_graph_dict(tmp_path / "bad.npy", tiny.n_items)


def test_consensus_knn_blocks_cache_and_zero_rows(tiny, tmp_path):
    v, t = tiny.feature("image"), tiny.feature("text")
    # k = 60: many items have fewer candidates than k and keep exactly those (MMRec's item_num)
    got = build_consensus_knn_graphs(v, t, 60)
    counts = got[1].rowptr[1:] - got[1].rowptr[:-1]
    assert (counts < 60).sum() > 10 and torch.equal(counts, got[0].rowptr[1:] - got[0].rowptr[:-1])
    for a, want in zip(got, knn_dense(v, t, 60)):
        assert torch.equal(a.to_dense() != 0, want != 0)
        torch.testing.assert_close(a.to_dense().double(), want, rtol=1e-6, atol=1e-8)
    whole = build_consensus_knn_graphs(v, t, 10)
    for block in (7 * tiny.n_items, tiny.n_items):  # several row blocks, one row per block
        for a, b in zip(build_consensus_knn_graphs(v, t, 10, block_elements=block), whole):
            assert torch.equal(a.to_dense(), b.to_dense())
    cached = consensus_knn_graphs(v, t, 10, cache_dir=tmp_path)
    assert len(list((tmp_path / "graphs").glob("knn-damrs-*-k10-*.pt"))) == 2
    again = consensus_knn_graphs(v, t, 10, cache_dir=tmp_path)
    for a, b in zip(cached, again):
        assert torch.equal(a.to_dense(), b.to_dense())
    v0 = v.clone()
    v0[4] = 0  # no direction: similarity 0 everywhere, no NaN
    graphs = build_consensus_knn_graphs(v0, t, 10)
    assert all(torch.isfinite(g.val).all() for g in graphs)
    bad = t.clone()
    bad[2, 0] = float("inf")
    with pytest.raises(ValueError, match="textual features hold NaN or infinite"):
        build_consensus_knn_graphs(v, bad, 10)
