"""BPR, SELFCFED_LGN and LayerGCN (MMRec's ID-only baselines): shapes, training, both backends
equal, loss and forward against float64 transcriptions of MMRec's equations (with the random
draws the models made), the two shared pieces they brought (per-step random-rate edge dropout,
the uniform pruning draw), bit-identical resume, no host reads in a step, bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.nn.bpr import half_squared_norm_loss
from mmfast.nn.edge_dropout import RandomRateEdgeDropout
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.trainer import TrainingInterrupted, run
from test_host_syncs import counted_reads
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree, assert_loss_decreases, assert_same_run, ctrl_c_at_epoch_call,
    one_batch, one_step, one_thread, private_cache, tiny_config,
)
from trainer_helpers import build_model as build

MODELS = ["BPR", "SELFCFED_LGN", "LayerGCN"]


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("BPR", epochs=1))


def dense_adj(ds, users=None, items=None, eps=0.0):
    """D^-1/2 A D^-1/2 of the given (default: training) edges, float64, users first."""
    users = ds.train.users() if users is None else users
    items = ds.train.items if items is None else items
    nu, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    a[users, items + nu] = 1.0
    a = a + a.T
    deg = a.sum(1)
    d = (deg + eps).rsqrt() if eps else deg.clamp(min=1).rsqrt() * (deg > 0)
    return d[:, None] * a * d[None]


# ------------------------------------------------------------------------------ all three
@pytest.mark.parametrize("name,width,point", [
    ("BPR", 64, {"reg_weight": 0.1}),
    ("SELFCFED_LGN", 128, {"n_layers": 2, "dropout": 0.1, "reg_weight": 0.0,
                           "edge_drop_ratio": 1.0, "use_neg_sampling": False}),
    ("LayerGCN", 64, {"n_layers": 4, "dropout": 0.1, "reg_weight": 1e-4,
                      "alternate_pruning": True}),
])
def test_shapes_and_registration(tiny, name, width, point):
    model, got = build(name, tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, width) and items.shape == (tiny.n_items, width)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.canonical(name.lower()) == name
    assert {k: got[k] for k in point} == point
    assert models.get(name).uses_negatives is (name != "SELFCFED_LGN")


@pytest.mark.parametrize("name", MODELS)
def test_loss_decreases(tiny, name):
    model, _ = build(name, tiny)
    model.pre_epoch_processing()
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("name,sets", [
    ("BPR", []), ("SELFCFED_LGN", []), ("SELFCFED_LGN", ["n_layers=1", "reg_weight=0.01"]),
    ("LayerGCN", ["dropout=0.0"])], ids=["BPR", "SELFCF", "SELFCF-1-layer", "LayerGCN-full"])
def test_both_backends_agree_at_one_step(tiny, name, sets):
    assert_backends_agree(name, tiny, *sets, min_grads=2, negatives=name != "SELFCFED_LGN")


@pytest.mark.parametrize("epoch", [0, 1], ids=["degree", "uniform"])
def test_layergcn_backends_agree_on_a_pruned_graph(tiny, epoch):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build("LayerGCN", tiny, "dropout=0.2", seed=3)
        model.current_epoch = epoch
        model.pre_epoch_processing()
        model.double()
        assert model.train_adj.dtype == torch.float64
        results.append(one_step(model, users, pos, neg, backend))
    (la, ga, ea), (lb, gb, eb) = results
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) == 2
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10)
    for a, b in zip(ea, eb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_reads_nothing(tiny, name):
    model, _ = build(name, tiny)
    model.pre_epoch_processing()
    users, pos, neg = one_batch(tiny)
    model.calculate_loss(users, pos, neg).backward()  # warm
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg).backward()
    assert calls == []


# ------------------------------------------------------------------------------ BPR
def test_bpr_matches_a_float64_transcription(tiny):
    model, _ = build("BPR", tiny, "reg_weight=0.5", seed=4)
    model.double()
    users, pos, neg = one_batch(tiny, size=96)
    loss = model.calculate_loss(users, pos, neg)
    U, I = model.user.weight, model.item.weight
    u, p, n = U[users], I[pos], I[neg]
    bpr = -torch.log(1e-10 + torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = (torch.linalg.norm(u) + torch.linalg.norm(p) + torch.linalg.norm(n)) / n.shape[0]
    want = bpr + 0.5 * reg
    params = [U, I]
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)
    eu, ei = model.embeddings()
    assert eu is U and ei is I
    # xavier-normal tables: std sqrt(2 / (rows + d)).
    for table, rows in ((U, tiny.n_users), (I, tiny.n_items)):
        assert abs(float(table.detach().std()) / (2 / (rows + 64)) ** 0.5 - 1) < 0.1


# ------------------------------------------------------------------------------ SELFCFED_LGN
def test_edge_dropout_draws():
    g = torch.Generator().manual_seed(0)
    n = 60
    rows = torch.randint(0, n, (900,), generator=g)
    cols = torch.randint(0, n, (900,), generator=g)
    from mmfast.ops import SparseGraph

    graph = SparseGraph.from_coo(torch.cat([rows, cols]), torch.cat([cols, rows]),
                                 torch.rand(1800, generator=g, dtype=torch.float64), (n, n))
    drop = RandomRateEdgeDropout(graph, 1.0, torch.Generator().manual_seed(1))
    seen = []
    original = drop.rate_and_keep

    def recorded(nnz):
        seen.append(original(nnz))
        return seen[-1]

    drop.rate_and_keep = recorded
    rates = []
    for _ in range(30):
        out = drop(graph)
        p, keep = seen[-1]
        rates.append(float(p))
        assert out.val.shape == graph.val.shape  # dropped entries stay, as zeros
        want = graph.to_dense().clone()
        r, c = graph.row_indices(), graph.col.long()
        want[r, c] = torch.where(keep, graph.val / (1 - p), torch.zeros_like(graph.val))
        torch.testing.assert_close(out.to_dense(), want)
        torch.testing.assert_close(out.T.to_dense(), want.T)  # the backward's operand
        assert abs(float(keep.double().mean()) - (1 - float(p))) < 0.08
    assert 0 <= min(rates) and max(rates) < 1 and 0.3 < sum(rates) / 30 < 0.7  # p ~ U[0, 1)
    # The two directions of an edge are separate trials: some edge keeps one and drops the other.
    keep = torch.stack([k for _, k in seen]).T  # [nnz, draws]
    flip = (graph.to_dense() != 0) & (graph.to_dense().T != 0)
    assert flip.any()
    assert not torch.equal(keep[:, :1].expand_as(keep), keep)
    assert RandomRateEdgeDropout(graph, 0.0, torch.Generator())(graph) is graph
    with pytest.raises(ValueError, match="edge dropout ratio must lie in"):
        RandomRateEdgeDropout(graph, 1.5, torch.Generator())


@pytest.mark.parametrize("sets", [[], ["n_layers=1", "dropout=0.5", "reg_weight=0.1"],
                                  ["edge_drop_ratio=0.0", "reg_weight=1e-3"]],
                         ids=["default", "1-layer", "no-edge-dropout"])
def test_selfcf_matches_a_float64_transcription(tiny, sets):
    model, _ = build("SELFCFED_LGN", tiny, *sets, seed=5)
    model.double()
    edge_draws, masks = [], []
    rate_and_keep, mask = model.edge_dropout.rate_and_keep, model.target_dropout.mask
    model.edge_dropout.rate_and_keep = lambda nnz: edge_draws.append(rate_and_keep(nnz)) or \
        edge_draws[-1]
    model.target_dropout.mask = lambda shape, like: masks.append(mask(shape, like)) or masks[-1]
    users, pos, _ = one_batch(tiny, size=96)
    loss = model.calculate_loss(users, pos, None)
    assert [tuple(m.shape) for m in masks] == [(96, 64), (96, 64)]
    nu, L = tiny.n_users, model.n_layers
    adj = model.adj.to_dense()  # Â's float32 values, widened (checked against float64 here)
    torch.testing.assert_close(adj, dense_adj(tiny), rtol=1e-6, atol=1e-9)
    if model.edge_dropout.max_rate:
        (p, keep), = edge_draws
        r, c = model.adj.row_indices(), model.adj.col.long()
        vals = adj[r, c] * keep.double() / (1 - p)
        train_adj = torch.zeros_like(adj).index_put_((r, c), vals)
    else:
        assert edge_draws == []
        train_adj = adj

    def encode(a):
        x = torch.cat([model.ids.user.weight, model.ids.item.weight])
        layers = [x]
        for _ in range(L):
            x = a @ x
            layers.append(x)
        out = torch.stack(layers, 1).mean(1)
        return out[:nu], out[nu:]

    pred = model.predictor
    u_all, i_all = encode(train_adj)
    u, i = u_all[users], i_all[pos]
    u_t, i_t = (u * masks[0]).detach(), (i * masks[1]).detach()
    reg = 0.5 * (u.pow(2).sum() + i.pow(2).sum())
    want = (-F.cosine_similarity(pred(u), i_t, dim=-1).mean() / 2
            - F.cosine_similarity(pred(i), u_t, dim=-1).mean() / 2 + model.reg_weight * reg)
    params = [q for q in model.parameters() if q.requires_grad]
    assert len(params) == 4
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
    # Scores: MMRec's P(u) i^T + u P(i)^T on the full graph.
    fu, fi = encode(adj)
    want_scores = pred(fu) @ fi.T + fu @ pred(fi).T
    eu, ei = model.embeddings()
    torch.testing.assert_close(eu @ ei.T, want_scores.detach(), rtol=1e-9, atol=1e-11)
    # Target masks: inverted dropout of rate `dropout`.
    q = model.target_dropout.p
    assert set(torch.unique(masks[0]).tolist()) <= {0.0, 1 / (1 - q)}


def test_half_squared_norm_loss():
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(half_squared_norm_loss(a, b),
                               0.5 * (a.norm() ** 2 + b.norm() ** 2))


# ------------------------------------------------------------------------------ LayerGCN
def layergcn_reference(model, adj, users, pos, neg):
    """MMRec's LayerGCN.forward / calculate_loss written plainly on a dense graph."""
    ego = torch.cat([model.ids.user.weight, model.ids.item.weight])
    x, layers = ego, []
    for _ in range(model.n_layers):
        x = adj @ x
        x = F.cosine_similarity(x, ego, dim=-1)[:, None] * x
        layers.append(x)
    out = torch.stack(layers).sum(0)
    u, i = out[: model.n_users], out[model.n_users:]
    diff = (u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)
    reg = 0.5 * sum(t.pow(2).sum() for t in (model.ids.user.weight[users],
                                             model.ids.item.weight[pos],
                                             model.ids.item.weight[neg]))
    return -F.logsigmoid(diff).sum() + model.reg_weight * reg, (u, i)


@pytest.mark.parametrize("epoch,sets", [(0, []), (1, []), (0, ["dropout=0.0", "n_layers=2"])],
                         ids=["degree-epoch", "uniform-epoch", "no-pruning"])
def test_layergcn_matches_a_float64_transcription(tiny, epoch, sets):
    model, _ = build("LayerGCN", tiny, "reg_weight=0.01", *sets, seed=6)
    model.current_epoch = epoch
    model.pre_epoch_processing()
    model.double()
    users, pos, neg = one_batch(tiny, size=96)
    loss = model.calculate_loss(users, pos, neg)
    # The training graph: the kept edges' own D^-1/2 A D^-1/2 (degrees + 1e-7), or Â.
    g = model.adj if model.train_adj is None else model.train_adj
    nu = tiny.n_users
    if model.dropout:
        rows, cols = g.row_indices(), g.col.long()
        upper = (rows < nu) & (cols >= nu)
        ku, ki = rows[upper], cols[upper] - nu
        assert ku.numel() == int(len(tiny.train) * (1 - model.dropout))
        train_keys = set((tiny.train.users() * tiny.n_items + tiny.train.items).tolist())
        kept_keys = (ku * tiny.n_items + ki).tolist()
        assert len(set(kept_keys)) == len(kept_keys) and set(kept_keys) <= train_keys
        adj = g.to_dense()
        torch.testing.assert_close(adj, dense_adj(tiny, ku, ki, eps=1e-7), rtol=1e-6, atol=1e-9)
    else:
        assert model.train_adj is None
        adj = g.to_dense()
    want, _ = layergcn_reference(model, adj, users, pos, neg)
    params = [model.ids.user.weight, model.ids.item.weight]
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-10)
    for gr, w in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params)):
        torch.testing.assert_close(gr, w, rtol=1e-8, atol=1e-10)
    _, (wu, wi) = layergcn_reference(model, model.adj.to_dense(), users, pos, neg)
    eu, ei = model.embeddings()
    torch.testing.assert_close(eu, wu.detach(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ei, wi.detach(), rtol=1e-9, atol=1e-11)


def test_pruning_draws_alternate_between_degree_and_uniform(tiny):
    """Degree-sensitive draws keep low-degree edges more often than uniform ones; LayerGCN
    makes the degree draw on even epochs, the uniform one on odd epochs (or always degree)."""
    pruning = DegreeSensitivePruning(tiny.train, 0.5, "cpu", owner="LayerGCN")
    w = pruning.weights

    def kept_weight(uniform, seed):
        g = pruning.sample(torch.Generator().manual_seed(seed), uniform=uniform)
        r, c = g.row_indices(), g.col.long()
        upper = (r < tiny.n_users) & (c >= tiny.n_users)
        du = torch.bincount(tiny.train.users(), minlength=tiny.n_users).double()
        di = torch.bincount(tiny.train.items, minlength=tiny.n_items).double()
        return float((du[r[upper]] * di[c[upper] - tiny.n_users]).rsqrt().mean())

    degree = sum(kept_weight(False, s) for s in range(5)) / 5
    uniform = sum(kept_weight(True, s) for s in range(5)) / 5
    assert degree > uniform * 1.02
    assert abs(uniform / float(w.mean()) - 1) < 0.02  # a uniform half has the mean weight
    calls = []
    for alternate in (True, False):
        model, _ = build("LayerGCN", tiny, f"alternate_pruning={str(alternate).lower()}")
        model.pruning.sample = lambda gen, uniform: calls.append(uniform) or model.adj
        for epoch in range(4):
            model.current_epoch = epoch
            model.pre_epoch_processing()
    assert calls == [False, True, False, True] + [False] * 4
    with pytest.raises(ValueError, match="LayerGCN dropout must be in"):
        build("LayerGCN", tiny, "dropout=1.0")


# ------------------------------------------------------------------------------ resume, input
@pytest.mark.parametrize("name,streams", [("SELFCFED_LGN", {"edge_dropout", "target_dropout"}),
                                          ("LayerGCN", {"edge_pruning"})])
def test_resumes_bit_identically(tmp_path, name, streams):
    config = tiny_config(name, "no_grid=true", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(3), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == streams and saved["epoch"] == 1
    resumed = run(resume=info.value.folder, console=False)
    la, lb = assert_same_run(full, resumed)
    assert all(torch.equal(la["model_rng"][s], lb["model_rng"][s]) for s in streams)


def test_bad_input(tiny, tmp_path):
    with pytest.raises(ValueError, match="dropout must be in"):
        build("SELFCFED_LGN", tiny, "dropout=1.0")
    with pytest.raises(ValueError, match="edge dropout ratio must lie in"):
        build("SELFCFED_LGN", tiny, "edge_drop_ratio=2.0")
    with pytest.raises(ValueError, match="LayerGCN: n_layers must be >= 1"):
        build("LayerGCN", tiny, "n_layers=0")
    for name in ("BPR", "LayerGCN"):
        with pytest.raises(ValueError, match=f"{name} scores sampled negatives: it needs "
                                             "use_neg_sampling: true"):
            run(tiny_config(name, "no_grid=true", "use_neg_sampling=false", epochs=1),
                out=tmp_path / name, console=False)
