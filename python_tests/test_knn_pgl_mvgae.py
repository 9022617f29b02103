"""ItemKNNCBF, PGL and MVGAE: registration and shapes, training, both backends equal, forward and
loss against plain float64 transcriptions, ItemKNNCBF's scores against a dense item-item
reference with shrink, PGL's principal subgraph against a dense SVD, bit-identical resume, bad
input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.data.knn import shrunk_knn_graph
from mmfast.data.principal_graph import (
    build_principal_subgraph, normalized_adjacency_scipy, truncated_svd_symmetric,
)
from mmfast.eval import Evaluator
from mmfast.eval.evaluator import sparse_inner_products
from mmfast.ops.topk import topk_of_scores
from mmfast.recommend import recommend
from mmfast.trainer import TrainingInterrupted, run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree, assert_loss_decreases, assert_same_run, ctrl_c_at_epoch_call,
    one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("PGL", epochs=1))


def dense_interactions(ds, dtype=torch.float64) -> torch.Tensor:
    r = torch.zeros(ds.n_users, ds.n_items, dtype=dtype)
    r[ds.train.users(), ds.train.items] = 1.0
    return r


def features64(ds) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(ds.features[m]).double() for m in ds.modalities}


# ====================================================================== ItemKNNCBF
def knn_reference(x: torch.Tensor, k: int, shrink: float) -> torch.Tensor:
    """Dense float64 S: row a keeps its top-k of <x_a, x_b> / (|x_a| |x_b| + shrink)."""
    n = x.norm(dim=1, keepdim=True)
    sim = (x @ x.T) / (n * n.T + shrink)
    val, idx = torch.topk(sim, k, dim=1)
    return torch.zeros_like(sim).scatter_(1, idx, val)


def test_itemknncbf_registration_and_embeddings(tiny):
    model, point = build("ItemKNNCBF", tiny)
    assert models.get("itemknncbf") is type(model) and models.canonical("itemknncbf") == "ItemKNNCBF"
    assert type(model).trains is False and model.n_trainable() == 0
    assert point["knn_k"] == 10 and point["shrink"] == 10
    users, items = model.embeddings()
    assert users.layout == torch.sparse_csr and items.layout == torch.sparse_csr
    assert users.shape == (tiny.n_users, tiny.n_items) and items.shape == (tiny.n_items,) * 2
    assert model.sim.nnz == tiny.n_items * 10  # k entries a row: never items x items


@pytest.mark.parametrize("k,shrink", [(10, 10.0), (7, 0.5), (3, 0.0)])
def test_itemknncbf_scores_match_a_dense_float64_reference(tiny, k, shrink):
    x = torch.cat([features64(tiny)[m] for m in ("image", "text")], dim=1)  # MMRec: v then t
    s_ref = knn_reference(x, k, shrink)
    # The builder itself, in float64 and in small row blocks, equals the dense reference.
    s = shrunk_knn_graph(x, k, shrink, block_rows=37, cache=False)
    torch.testing.assert_close(s.to_dense(), s_ref, rtol=1e-12, atol=1e-14)
    model, _ = build("ItemKNNCBF", tiny, f"knn_k={k}", f"shrink={shrink}")
    expected = dense_interactions(tiny) @ s_ref
    users = torch.arange(tiny.n_users)
    got = model.scores(users)
    assert got.dtype == torch.float32 and got.shape == (tiny.n_users, tiny.n_items)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    model.double()  # the sparse tables follow the model's dtype
    torch.testing.assert_close(model.scores(users), expected, rtol=1e-6, atol=1e-6)


def test_sparse_tables_evaluate_and_recommend_like_dense_ones(tiny):
    model, _ = build("ItemKNNCBF", tiny)
    users_sp, items_sp = model.embeddings()
    users_d, items_d = users_sp.to_dense(), items_sp.to_dense()
    ev = Evaluator(tiny, ks=[10, 20], decimals=None, batch_size=97)
    for split in ("valid", "test"):
        sparse = ev.evaluate(split, users_sp, items_sp)
        assert sparse == ev.evaluate(split, users_d, items_d)
        # a COO user table and a dense user table with sparse items give the same
        assert sparse == ev.evaluate(split, users_sp.to_sparse_coo(), items_sp)
        assert sparse == ev.evaluate(split, users_d, items_sp)
    some = torch.tensor([0, 5, 17, 399])
    scores, items = recommend(model, tiny, some, k=10)
    dense = users_d[some] @ items_d.T
    rowptr, col = tiny.train.rowptr, tiny.train.items
    from mmfast.ops.csr import gather_rows
    want_s, want_i = topk_of_scores(dense, 10, gather_rows(rowptr, col, some))
    assert torch.equal(items, want_i)
    torch.testing.assert_close(scores, want_s)
    fn = sparse_inner_products(users_sp, items_sp)
    torch.testing.assert_close(fn(some), dense)


def test_itemknncbf_is_evaluated_once_by_the_trainer(tmp_path):
    config = tiny_config("ItemKNNCBF", "no_grid=true", epochs=5)
    result = run(config, out=tmp_path, console=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and metrics["best"]["epoch"] == 0
    assert metrics["epochs"][0]["lr"] is None
    assert 0 < metrics["best"]["test"]["recall@20"] <= 1


# ====================================================================== PGL
def test_pgl_registration_and_shapes(tiny):
    model, point = build("PGL", tiny)
    assert models.get("pgl") is type(model)
    assert point["mode"] == "local" and point["dropout"] == 0.2 and point["reg_weight"] == 0
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 128) and items.shape == (tiny.n_items, 128)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    model.pre_epoch_processing()  # local mode keeps int(0.3 nnz) edges, both directions
    assert model.train_adj.nnz == 2 * int(0.3 * tiny.train.items.numel())


@pytest.mark.parametrize("sets", [[], ["reg_weight=0.1"], ["mode=global"]], ids=str)
def test_pgl_loss_decreases(tiny, sets):
    model, _ = build("PGL", tiny, *sets)
    model.pre_epoch_processing()
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("sets", [["reg_weight=0.1"], ["mode=global", "reg_weight=0.1"]], ids=str)
def test_pgl_backends_agree_at_one_step(tiny, sets):
    assert_backends_agree("PGL", tiny, *sets)


def pgl_reference(model, ds, users, pos, neg, k, image_weight, reg_weight, n_ui, n_mm):
    """FREEDOM-style kNN S and MMRec's L, dense float64; PGL's forward and loss."""
    feats = features64(ds)
    s = 0
    for m, w in (("image", image_weight), ("text", 1 - image_weight)):
        xn = F.normalize(feats[m], dim=1)
        idx = torch.topk(xn @ xn.T, k, dim=1).indices
        s = s + w * torch.zeros(ds.n_items, ds.n_items, dtype=torch.float64).scatter_(
            1, idx, 1.0 / k)
    r = dense_interactions(ds)
    a = torch.zeros(ds.n_users + ds.n_items, ds.n_users + ds.n_items, dtype=torch.float64)
    a[:ds.n_users, ds.n_users:], a[ds.n_users:, :ds.n_users] = r, r.T
    d = (a.sum(1) + 1e-7) ** -0.5
    lap = d[:, None] * a * d[None, :]
    proj = model.modal.projections
    items = torch.cat([F.normalize(model.modal.features[m] @ proj[m].weight.T + proj[m].bias)
                       for m in ("image", "text")], dim=1)
    h = items
    for _ in range(n_mm):
        h = s @ h
    ego = torch.cat([torch.cat([model.user_tables[0], model.user_tables[1]], 1), items])
    layers = [ego]
    for _ in range(n_ui):
        layers.append(lap @ layers[-1])
    out = torch.stack(layers).mean(0)
    u, i = out[:ds.n_users], out[ds.n_users:] + h
    ub, pb, nb = u[users], i[pos], i[neg]
    bpr = -F.logsigmoid((ub * pb).sum(1) - (ub * nb).sum(1)).mean()

    def nce(x):  # dropout 0: the two views are the rows themselves
        x = F.normalize(x, dim=1)
        pos_s = torch.exp((x * x).sum(1) / 0.2)
        return -torch.log(pos_s / torch.exp(x @ x.T / 0.2).sum(1)).mean()

    return u, i, bpr + reg_weight * (nce(ub) + nce(pb)) / 2


def test_pgl_forward_and_loss_match_a_float64_transcription(tiny):
    model, _ = build("PGL", tiny, "reg_weight=0.3", "dropout=0.0", "knn_k=5", "n_ui_layers=3")
    model.double()
    users, pos, neg = one_batch(tiny)
    u_ref, i_ref, loss_ref = pgl_reference(model, tiny, users, pos, neg, 5, 0.1, 0.3, 3, 1)
    with torch.no_grad():
        u, i = model.embeddings()
        loss = model.calculate_loss(users, pos, neg)  # train_adj is the full graph until pruned
    # The frozen graphs are built in float32 (as trained) and then widened: ~1e-7 relative.
    torch.testing.assert_close(u, u_ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(i, i_ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-8)


def test_pgl_principal_subgraph_matches_a_dense_svd(tiny):
    lap = normalized_adjacency_scipy(tiny.train)
    dense = lap.toarray()
    assert np.allclose(dense, dense.T)
    u_full, s_full, vt_full = np.linalg.svd(dense)
    rank, q = 64, 16
    u, s, v = truncated_svd_symmetric(lap, rank, dense_below=0)  # ARPACK, as on real data
    np.testing.assert_allclose(s, s_full[:rank], rtol=0, atol=1e-12)
    weights = s_full[:q] * s_full[rank - q:rank]
    m = (u_full[:, :q] * weights) @ vt_full[:q]
    m = m * (np.abs(m) >= 1e-3)
    for dense_below in (0, 10**6):  # sparse eigensolver and dense eigh
        got = build_principal_subgraph(tiny.train, rank, dense_below=dense_below,
                                       dtype=torch.float64)
        np.testing.assert_allclose(got.to_dense().numpy(), m, rtol=0, atol=1e-12)
    assert 0 < got.nnz < dense.size  # thresholded, not dense


# ====================================================================== MVGAE
def test_mvgae_registration_and_shapes(tiny):
    model, point = build("MVGAE", tiny)
    assert models.get("mvgae") is type(model)
    assert point["learning_rate"] == 1e-3 and point["beta"] == 0.1
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    trained = {n for n, p in model.named_parameters()}
    assert not any("preference" in n or "collaborative.features" in n for n in trained)
    state = model.state_dict()  # the random tables and the ranking table are saved
    assert "encoders.collaborative.features" in state and "result_embed" in state
    assert "encoders.image.features" not in state
    model, _ = build("MVGAE", tiny, "train_user_tables=true")
    names = {n for n, _ in model.named_parameters()}
    assert {"encoders.image.preference", "encoders.collaborative.features"} <= names


@pytest.mark.parametrize("sets", [[], ["item_offset=true", "n_layers=2"]], ids=str)
def test_mvgae_loss_decreases(tiny, sets):
    model, _ = build("MVGAE", tiny, *sets)
    assert_loss_decreases(model, tiny, lr=0.01)


def test_mvgae_backends_agree_at_one_step(tiny):
    assert_backends_agree("MVGAE", tiny, "n_layers=2")


def mvgae_reference(model, ds, users, pos, neg, beta, offset, n_layers):
    """MMRec's MVGAE in evaluation mode (no dropout, z = mu), dense float64."""
    n = ds.n_users + ds.n_items
    a = torch.eye(n, dtype=torch.float64)
    r = dense_interactions(ds)
    a[:ds.n_users, ds.n_users:], a[ds.n_users:, :ds.n_users] = r, r.T
    p = a / a.sum(1, keepdim=True)
    lrelu = F.leaky_relu

    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    def conv(c, x):
        return F.normalize(p @ (x @ c.weight) + c.bias, dim=-1)

    def encoder(e):
        x = F.normalize(torch.cat([e.preference, lin(e.mlp, e.features)]), dim=1)
        for layer in range(n_layers):
            x = lrelu(lin(e.gates[layer], lrelu(conv(e.convs[layer], x))))
        mu = lin(e.mu_gate, lrelu(conv(e.mu_conv, x))) + lrelu(lin(e.mu_lin, x))
        lv = lin(e.lv_gate, lrelu(conv(e.lv_conv, x))) + lrelu(lin(e.lv_lin, x))
        return mu, lv

    def poe(mus, lvs):
        t = [1 / (torch.exp(lv) + 1e-8) for lv in lvs]
        return sum(m * ti for m, ti in zip(mus, t)) / sum(t), torch.log(1 / sum(t))

    enc = {k: encoder(e) for k, e in model.encoders.items()}
    mu, lv = poe([enc["image"][0], enc["text"][0]], [enc["image"][1], enc["text"][1]])
    mu, lv = poe([mu, enc["collaborative"][0]], [lv, enc["collaborative"][1]])

    def recon(z):
        z = torch.sigmoid(z)
        shift = ds.n_users if offset else 0
        pos_s = torch.sigmoid((z[users] * z[pos + shift]).sum(1))
        # MMRec: z[users repeated B times] * z[negs] -> [B, B, d], max over the negatives
        re_users = users[:, None].repeat(1, neg.numel())
        neg_s = torch.sigmoid((z[re_users] * z[neg + shift]).sum(-1).max(-1).values)
        return -torch.sum(torch.log2(torch.sigmoid(pos_s - neg_s)))

    def kl(m, v):
        v = v.clamp(max=10)
        return -0.5 * torch.mean(torch.sum(1 + v - m ** 2 - v.exp(), dim=1))

    loss = recon(mu) + beta * kl(mu, lv)
    for k in ("image", "text", "collaborative"):
        loss = loss + recon(enc[k][0]) + beta * kl(*enc[k])
    return torch.sigmoid(mu), loss


@pytest.mark.parametrize("offset,n_layers", [(False, 1), (True, 2)])
def test_mvgae_forward_and_loss_match_a_float64_transcription(tiny, offset, n_layers):
    model, _ = build("MVGAE", tiny, f"item_offset={str(offset).lower()}", f"n_layers={n_layers}",
                     "beta=0.5", "eval_forward=true")
    model.double().eval()
    users, pos, neg = one_batch(tiny, size=64)
    table_ref, loss_ref = mvgae_reference(model, tiny, users, pos, neg, 0.5, offset, n_layers)
    with torch.no_grad():
        loss = model.calculate_loss(users, pos, neg)
        u, i = model.embeddings()
    # P is built in float32 (as trained) and then widened: ~1e-7 relative.
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([u, i]), table_ref, rtol=1e-6, atol=1e-8)


def test_mvgae_ranks_with_the_last_training_forward(tiny):
    users, pos, neg = one_batch(tiny)
    for fresh_eval in (False, True):
        model, _ = build("MVGAE", tiny, f"eval_forward={str(fresh_eval).lower()}")
        opt = torch.optim.Adam(model.model_parameters(), lr=0.01)
        model.train()
        torch.manual_seed(7)
        model.train_step(users, pos, neg, opt)
        model.eval()
        last_forward = model.result_embed.clone()
        with torch.no_grad():
            fresh = torch.sigmoid(model.encode()["fused"][0])
        u, i = model.embeddings()
        torch.testing.assert_close(torch.cat([u, i]), fresh if fresh_eval else last_forward)
        assert not torch.allclose(last_forward, fresh)


# ====================================================================== resume, bad input
@pytest.mark.parametrize("name", ["PGL", "MVGAE"])
def test_resumes_bit_identically(tmp_path, name):
    sets = ["reg_weight=0.1"] if name == "PGL" else []
    config = tiny_config(name, "no_grid=true", *sets, epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    resumed = run(resume=info.value.folder, console=False)
    assert_same_run(full, resumed)


@pytest.mark.parametrize("name", ["ItemKNNCBF", "PGL", "MVGAE"])
def test_bad_input(tiny, name):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build(name, with_features(tiny, image=image, text=bad))
    with pytest.raises(ValueError, match="needs item features"):
        build(name, with_features(tiny))
    if name == "ItemKNNCBF":  # one modality is enough
        model, _ = build(name, with_features(tiny, image=image))
        assert model.modalities == ["image"]
        return
    with pytest.raises(ValueError, match="needs two modalities"):
        build(name, with_features(tiny, image=image))
    for sets, match in {"PGL": [(["mode=both"], "mode must be one of"),
                                (["feat_embed_dim=32"], "must be equal"),
                                (["edge_keep=0"], "edge_keep must be in")],
                        "MVGAE": [(["n_layers=0"], "n_layers must be >= 1")]}[name]:
        with pytest.raises(ValueError, match=match):
            build(name, tiny, *sets)
