"""LATTICE: the sparse learned item graph against a dense float64 transcription of MMRec's
construction (values and gradients), the model's forward and loss at one step against a dense
transcription of MMRec's LATTICE, the build/no-build schedule of the graph, both backends, no
items x items tensor and no host read in a step, resume, the plug-in views, bad input."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import randn
from mmfast import models
from mmfast.data import load_dataset
from mmfast.data.knn import knn_graph
from mmfast.data.rw_adjacency import build_random_walk_adjacency
from mmfast.models.base import PluginViews
from mmfast.nn import item_graph
from mmfast.nn.item_graph import EdgeUnion, LearnedItemGraph, edge_spmm, valued_spmm
from mmfast.ops import use_backend
from mmfast.trainer import TrainingInterrupted, run
from test_host_syncs import counted_reads
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_same_run,
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build

# 300 items: wider than any feature table (256), so an items x items tensor is recognizable.
SMALL = ("synthetic.n_items=300",)


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("LATTICE", *SMALL, epochs=1))


# ------------------------------------------------------------------ MMRec's construction, dense
def dense_knn(x, k):
    """MMRec's build_sim + build_knn_neighbourhood: cosine, top k per row, scattered densely."""
    xn = x / x.norm(dim=-1, keepdim=True)
    sim = xn @ xn.T
    val, ind = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter(-1, ind, val)


def dense_laplacian(adj):
    """MMRec's compute_normalized_laplacian."""
    d = adj.sum(-1).pow(-0.5)
    d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
    return torch.diagflat(d) @ adj @ torch.diagflat(d)


def dense_item_adj(feats, raw, modal_weight, k, lam):
    """LATTICE.forward(build_item_graph=True)'s item_adj, written as MMRec writes it."""
    if len(feats) == 1:
        learned, original = dense_knn(feats[0], k), dense_laplacian(dense_knn(raw[0], k))
    else:
        w = torch.softmax(modal_weight, dim=0)
        learned = w[0] * dense_knn(feats[0], k) + w[1] * dense_knn(feats[1], k)
        original = (w[0] * dense_laplacian(dense_knn(raw[0], k))
                    + w[1] * dense_laplacian(dense_knn(raw[1], k)))
    return (1 - lam) * dense_laplacian(learned) + lam * original


@pytest.mark.parametrize("n_modalities", [1, 2])
@pytest.mark.parametrize("layers", [1, 2])
def test_learned_graph_equals_mmrecs_dense_construction(n_modalities, layers):
    n, k, lam = 60, 6, 0.9
    raw = [randn(n, 12, seed=1 + m) for m in range(n_modalities)]
    frozen = {f"m{m}": knn_graph(raw[m], k, style="mgcn").to(dtype=torch.float64)
              for m in range(n_modalities)}
    for m in range(n_modalities):  # G3 is MMRec's frozen construction (float32 values)
        torch.testing.assert_close(frozen[f"m{m}"].to_dense(), dense_laplacian(dense_knn(raw[m], k)),
                                   rtol=1e-6, atol=1e-7)
    graph = LearnedItemGraph(frozen, k, lam).double()
    with torch.no_grad():
        graph.modal_weight.copy_(torch.tensor([0.3, 0.8][:n_modalities]))
    feats = [randn(n, 8, seed=10 + m).requires_grad_() for m in range(n_modalities)]
    ids = randn(n, 5, seed=20).requires_grad_()
    target = randn(n, 5, seed=21)
    named = {f"m{m}": feats[m] for m in range(n_modalities)}

    built = graph.build(named)
    h = ids
    for _ in range(layers):
        h = built.multiply(h)
    ours = (h * target).sum()

    # The frozen graphs in float64 from the exact same (float32-rounded) values.
    adj = dense_item_adj(feats, raw, graph.modal_weight, k, lam)
    adj = adj - lam * sum(((torch.softmax(graph.modal_weight, 0)[m] if n_modalities > 1 else 1.0)
                           * (dense_laplacian(dense_knn(raw[m], k)) - frozen[f"m{m}"].to_dense()))
                          for m in range(n_modalities))
    torch.testing.assert_close(built.constant().to_dense(), adj.detach(), rtol=1e-12, atol=1e-14)
    ref = ids
    for _ in range(layers):
        ref = adj @ ref
    theirs = (ref * target).sum()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    leaves = feats + [ids] + ([graph.modal_weight] if n_modalities > 1 else [])
    for a, b in zip(torch.autograd.grad(ours, leaves), torch.autograd.grad(theirs, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("kind", ["coo", "rows"])
def test_valued_spmm_equals_the_segment_sum(backend, kind, monkeypatch):
    n, nnz = 50, 400
    gen = torch.Generator().manual_seed(0)
    if kind == "coo":
        parts_r = [torch.randint(0, n, (nnz,), generator=gen), torch.arange(n).repeat_interleave(3)]
        parts_c = [torch.randint(0, n, (nnz,), generator=gen),
                   torch.randint(0, n, (3 * n,), generator=gen)]
        union = EdgeUnion(parts_r, parts_c, n)
    else:  # r per row, repeated columns included; value gradient in blocks of 16 rows
        monkeypatch.setattr(item_graph, "_DOT_ROWS", 16)
        union = EdgeUnion.from_rows(torch.randint(0, n, (n, 7), generator=gen))
    values = randn(union.nnz, seed=3).requires_grad_()
    x = randn(n, 7, seed=4).requires_grad_()
    g = randn(n, 7, seed=5)
    with use_backend(backend):
        a = valued_spmm(union, values, x)
        da = torch.autograd.grad((a * g).sum(), [values, x])
    b = edge_spmm(union, values, x)
    db = torch.autograd.grad((b * g).sum(), [values, x])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for u, v in zip(da, db):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    dense = torch.zeros(n, n, dtype=torch.float64).index_put_(
        (union.rows, union.cols), values.detach(), accumulate=True)
    torch.testing.assert_close(union.graph(values.detach()).T.to_dense(), dense.T)


# ------------------------------------------------------------------ the model
@pytest.mark.parametrize("cf", ["lightgcn", "ngcf", "mf"])
def test_shapes_registration_and_training(tiny, cf):
    model, point = build("LATTICE", tiny, f"cf_model={cf}")
    assert models.canonical("lattice") == "LATTICE"
    assert point["learning_rate"] == 5e-4 and point["reg_weight"] == 1e-5
    assert point["learning_rate_scheduler"] == [0.96, 50] and point["knn_k"] == 10
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    model.train()
    assert_loss_decreases(model, tiny)


def lattice_reference(model, ds, users, pos, neg, graph_adj=None):
    """MMRec's LATTICE forward and loss, dense, float64, from the model's
    parameters. ``graph_adj``: a constant item_adj (a batch that does not build the graph)."""
    roles = model.item_graph.modalities
    feats = [model.modal.projections[m](model.modal.features[m]) for m in roles]
    raw = [torch.from_numpy(ds.features[m]).double() for m in roles]
    cfg = model.config
    if graph_adj is None:
        lam = float(cfg["lambda_coeff"])
        w = torch.softmax(model.item_graph.modal_weight, 0) if len(roles) > 1 else [1.0]
        adj = dense_item_adj(feats, raw, model.item_graph.modal_weight, int(cfg["knn_k"]), lam)
        # mmfast's frozen G3 carries float32-rounded values: use exactly those.
        adj = adj - lam * sum(w[j] * (dense_laplacian(dense_knn(raw[j], int(cfg["knn_k"])))
                                      - model.item_graph.frozen(m).to_dense())
                              for j, m in enumerate(roles))
    else:
        adj = graph_adj
    h = model.ids.item.weight
    for _ in range(int(cfg["n_layers"])):
        h = adj @ h
    # get_adj_mat: D^-1 (A + I) over users then items.
    nu, ni = ds.n_users, ds.n_items
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    tu, ti = ds.train.users(), ds.train.items
    a[tu, nu + ti] = 1
    a[nu + ti, tu] = 1
    a = a + torch.eye(nu + ni, dtype=torch.float64)
    p = (a / a.sum(1, keepdim=True)).float().double()  # cached in float32, as mmfast keeps it
    ego = torch.cat([model.ids.user.weight, model.ids.item.weight])
    layers = [ego]
    for i in range(len(cfg["weight_size"])):
        if cfg["cf_model"] == "lightgcn":
            ego = p @ ego
            layers.append(ego)
        elif cfg["cf_model"] == "ngcf":  # in eval mode: no message dropout
            side = p @ ego
            ego = (F.leaky_relu(model.gc[i](side)) + F.leaky_relu(model.bi[i](ego * side)))
            layers.append(F.normalize(ego, p=2, dim=1))
    out = torch.stack(layers, 1).mean(1) if cfg["cf_model"] != "mf" else ego
    u_g, i_g = out[:nu], out[nu:] + F.normalize(h, p=2, dim=1)
    u, pi, ni_ = u_g[users], i_g[pos], i_g[neg]
    mf = -F.logsigmoid((u * pi).sum(1) - (u * ni_).sum(1)).mean()
    reg = 0.5 * (u.pow(2).sum() + pi.pow(2).sum() + ni_.pow(2).sum()) / int(cfg["train_batch_size"])
    return mf + float(cfg["reg_weight"]) * reg, adj, (u_g, i_g)


@pytest.mark.parametrize("drop,cf", [(None, "lightgcn"), ("text", "lightgcn"), (None, "ngcf"),
                                     (None, "mf")],
                         ids=["two-modalities", "image-only", "ngcf", "mf"])
def test_forward_and_loss_match_mmrec_in_float64(tiny, drop, cf):
    ds = tiny if drop is None else with_features(tiny, image=tiny.features["image"])
    model, _ = build("LATTICE", ds, "reg_weight=0.1", "n_layers=2", f"cf_model={cf}", seed=5)
    model.double()
    model.eval()  # ngcf: no message dropout
    with torch.no_grad():
        model.item_graph.modal_weight.copy_(torch.tensor([0.2, 0.7][:len(model.item_graph.modalities)]))
    users, pos, neg = one_batch(ds)
    params = [p for p in model.parameters() if p.requires_grad]

    # The epoch's first batch: the graph is built, with gradients through it.
    model.pre_epoch_processing()
    ours = model.calculate_loss(users, pos, neg)
    theirs, adj, _ = lattice_reference(model, ds, users, pos, neg)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad(ours, params, allow_unused=True)
    gb = torch.autograd.grad(theirs, params, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for n, a, b in zip(names, ga, gb):
        if b is None:  # ω with one modality: unused by both
            assert a is None and drop is not None and n == "item_graph.modal_weight", n
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=n)
    assert any(n.startswith("modal.") and g is not None for n, g in zip(names, ga))

    # A later batch: the same graph, now a constant; the feature side gets no gradient.
    later = model.calculate_loss(users, pos, neg)
    theirs_later, _, _ = lattice_reference(model, ds, users, pos, neg, graph_adj=adj.detach())
    torch.testing.assert_close(later, theirs_later, rtol=1e-12, atol=1e-12)
    got = dict(zip(names, torch.autograd.grad(later, params, allow_unused=True)))
    assert all(got[n] is None for n in names if n.startswith(("modal.", "item_graph.")))
    torch.testing.assert_close(got["ids.item.weight"],
                               torch.autograd.grad(theirs_later, model.ids.item.weight)[0],
                               rtol=1e-9, atol=1e-12)

    # Evaluation (full_sort_predict) rebuilds the graph from the current features.
    u, i = model.embeddings()
    _, _, (ru, ri) = lattice_reference(model, ds, users, pos, neg)
    torch.testing.assert_close(u, ru.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(i, ri.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cf", ["lightgcn", "ngcf"])
def test_both_backends_agree_at_one_step(tiny, cf):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build("LATTICE", tiny, f"cf_model={cf}", "reg_weight=1e-3", seed=3)
        model.double()
        model.eval()  # ngcf: no message dropout, so both runs draw nothing
        out = []
        with use_backend(backend):
            for _ in range(2):  # the building batch, then a reusing one
                loss = model.calculate_loss(users, pos, neg)
                params = [p for p in model.parameters() if p.requires_grad]
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                out.append((loss.detach(), grads))
            out.append(model.embeddings())
        results.append(out)
    (a1, a2, ea), (b1, b2, eb) = results
    for (la, ga), (lb, gb) in ((a1, b1), (a2, b2)):
        torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
        assert [g is None for g in ga] == [g is None for g in gb]
        for x, y in zip(ga, gb):
            if x is not None:
                torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)
    for x, y in zip(ea, eb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


class LargestTensors(TorchDispatchMode):
    """Records the shape of every tensor an op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def items_by_items(shapes, n_items):
    return [s for s in shapes if len(s) >= 2 and min(s[-2:]) >= n_items]


def test_no_items_by_items_tensor_and_no_host_read_in_a_step(tiny):
    model, point = build("LATTICE", tiny)
    model.pre_epoch_processing()
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    for _ in range(2):  # the building batch, then a reusing one
        with LargestTensors() as seen:
            model.train_step(users, pos, neg, opt)
        assert seen.shapes and not items_by_items(seen.shapes, tiny.n_items)
        with counted_reads() as calls:
            model.calculate_loss(users, pos, neg)
        assert calls == []
    # The check sees a dense items x items product where one is made (MMRec's form).
    with LargestTensors() as seen:
        x = model.modal("image").detach()
        dense_item_adj([x], [x], None, 10, 0.9) @ model.ids.item.weight
    assert items_by_items(seen.shapes, tiny.n_items)


def test_plugin_views(tiny):
    model, _ = build("LATTICE", tiny)
    users, pos, neg = one_batch(tiny)
    loss, views = model.loss_and_views(users, pos, neg)
    assert isinstance(views, PluginViews)
    assert torch.equal(loss, model.calculate_loss(users, pos, neg))
    (bu, bi), (mu, mi) = views.behavior, views.modal
    assert bu.shape == mu.shape == (tiny.n_users, 64) and bi.shape == mi.shape == (tiny.n_items, 64)
    torch.testing.assert_close(mi.norm(dim=1), torch.ones(tiny.n_items))  # ĥ = h / |h|
    u, i = model.embeddings()
    torch.testing.assert_close(i, bi + mi, rtol=1e-5, atol=1e-6)  # same features: same graph
    rows = pos[:5]
    feats = views.modal_features(rows)
    assert set(feats) == {"image", "text"} and feats["image"].shape == (5, 64)
    assert views.modal_features()["text"].shape == (tiny.n_items, 64)


@pytest.mark.parametrize("cf", ["lightgcn", "ngcf"])
def test_resume_is_bit_identical(tmp_path, cf):
    config = tiny_config("LATTICE", *SMALL, "no_grid=true", f"cf_model={cf}", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    resumed = run(resume=info.value.folder, console=False)
    la, lb = assert_same_run(full, resumed)
    assert set(la["model_rng"]) == ({"mess_dropout"} if cf == "ngcf" else set())


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="LATTICE needs item features"):
        build("LATTICE", with_features(tiny))
    with pytest.raises(ValueError, match="at most two modalities"):
        build("LATTICE", with_features(tiny, image=image, text=text, audio=text[:, :4].copy()))
    bad = image.copy()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="LATTICE: the image features hold NaN"):
        build("LATTICE", with_features(tiny, image=bad, text=text))
    with pytest.raises(ValueError, match="cf_model must be one of"):
        build("LATTICE", tiny, "cf_model=gcn")
    # The text role alone (no image) is fine.
    model, _ = build("LATTICE", with_features(tiny, text=text))
    assert model.item_graph.modalities == ["text"]
