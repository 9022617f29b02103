"""GRCN and mmfast.nn.edge_weights: shapes, training, both backends equal, forward and loss
against a dense float64 transcription on a tiny graph, gradients through the learned edge
weights, MMRec's stale evaluation table, bit-identical resume (edge dropout stream), bad input."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import Dataset, load_dataset
from mmfast.data.interactions import Interactions
from mmfast.nn.edge_weights import EdgeList, segment_softmax
from mmfast.trainer import TrainingInterrupted, run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_same_run,
    assert_backends_agree,
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build

SWITCHES = [
    [], ["routing=paper"], ["weight_mode=mean"], ["weight_mode=max", "pruning=false"],
    ["fusion_mode=id"], ["fusion_mode=mean"], ["has_act=true", "has_norm=false"],
    ["dropout=0.3"],
]


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("GRCN", epochs=1))


def toy_dataset(seed: int = 0) -> Dataset:
    """5 users, 5 items (item 4 never interacted with), 11 training pairs, two modalities."""
    u = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
    i = [0, 1, 1, 2, 0, 3, 2, 3, 0, 1, 3]
    train = Interactions.from_pairs(u, i, 5, 5)
    empty = Interactions.from_pairs([], [], 5, 5)
    rng = np.random.default_rng(seed)
    feats = {"image": rng.normal(size=(5, 6)).astype(np.float32),
             "text": rng.normal(size=(5, 3)).astype(np.float32)}
    return Dataset("toy", 5, 5, train, empty, empty, features=feats)


# ---------------------------------------------------------------------- the model
def test_shapes_and_registration(tiny):
    model, point = build("GRCN", tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 192) and items.shape == (tiny.n_items, 192)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get("grcn") is type(model) and models.canonical("grcn") == "GRCN"
    assert point["reg_weight"] == 1e-3 and point["learning_rate"] == 1e-3
    assert point["hyper_parameters"][:2] == ["reg_weight", "learning_rate"]
    assert model.modalities == ["image", "text"] and model.confidence.shape == (591, 2)
    assert not any(k.startswith("raw_") for k in model.state_dict())  # frozen features


def test_loss_decreases(tiny):
    model, _ = build("GRCN", tiny)
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("sets", SWITCHES, ids=lambda s: ",".join(s) or "default")
def test_both_backends_agree_at_one_step(tiny, sets):
    assert_backends_agree("GRCN", tiny, *sets, min_grads=6)


def _masked_softmax(s: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.where(mask, torch.exp(s), torch.zeros_like(s))
    total = e.sum(dim, keepdim=True)
    return torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))


def dense_grcn(model, users, pos, neg):
    """GRCN's forward and loss written plainly with dense matrices (float64)."""
    n_u, n_i = model.n_users, model.n_items
    R = torch.zeros(n_u, n_i, dtype=torch.float64)
    R[model.pair_users, model.pair_items] = 1.0
    mask = R > 0
    reps, to_items, to_users = [], [], []
    for m in model.modalities:
        c = model.content[m]
        feat = F.leaky_relu(getattr(model, f"raw_{m}") @ c.mlp.weight.T + c.mlp.bias)
        P, Fm = F.normalize(c.preference), F.normalize(feat)
        for _ in range(c.n_routing):
            if c.routing == "paper":  # user u: softmax over its items of <p_u, f_i>
                P = P + _masked_softmax(P @ Fm.T, mask, 1) @ Fm
            P = F.normalize(P)
        S = P @ Fm.T                                  # s_ui
        a_item = _masked_softmax(S, mask, 0)          # u -> i, over the users of i
        a_user = _masked_softmax(S, mask, 1)          # i -> u, over the items of u
        reps.append(torch.cat([P + a_user @ Fm, Fm + a_item.T @ P]))
        to_items.append(a_item)
        to_users.append(a_user)
    conf = model.confidence
    # w(u -> i) = relu(max_m alpha^m(u -> i) c^m_u); w(i -> u) = relu(max_m alpha^m(i -> u) c^m_i)
    W_ui = torch.relu(torch.stack([a * conf[:n_u, k:k + 1]
                                   for k, a in enumerate(to_items)]).amax(0))
    W_iu = torch.relu(torch.stack([a * conf[n_u:, k].unsqueeze(0)
                                   for k, a in enumerate(to_users)]).amax(0))
    W_ui, W_iu = W_ui * R, W_iu * R
    X = F.normalize(model.id_embedding)

    def prop(h):  # users receive W_iu h_items, items receive W_ui^T h_users
        return torch.cat([W_iu @ h[n_u:], W_ui.T @ h[:n_u]])

    h1 = prop(X)
    id_rep = X + h1 + prop(h1)
    out = torch.cat([id_rep, *reps], 1)
    zu, zp, zn = out[users], out[n_u + pos], out[n_u + neg]
    loss = -torch.log(torch.sigmoid((zu * zp).sum(1) - (zu * zn).sum(1))).mean()
    E = model.id_embedding
    reg = torch.cat([E[users] ** 2 + E[n_u + pos] ** 2, E[users] ** 2 + E[n_u + neg] ** 2]).mean()
    reg = reg + (model.content["image"].preference ** 2).mean()
    for m in model.modalities:
        reg = reg + (model.content[m].preference[users] ** 2).mean()
    return loss + model.reg_weight * reg, out


@pytest.mark.parametrize("routing", ["mmrec", "paper"])
def test_forward_and_loss_match_a_dense_transcription(routing):
    ds = toy_dataset()
    model, _ = build("GRCN", ds, f"routing={routing}", "n_layers=2", "reg_weight=0.1", seed=1)
    model.double()
    users, pos, neg = (torch.tensor(v) for v in ([0, 2, 4, 4], [1, 3, 0, 3], [2, 4, 2, 4]))
    loss = model.calculate_loss(users, pos, neg)
    ref_loss, ref_out = dense_grcn(model, users, pos, neg)
    torch.testing.assert_close(model.forward(), ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref_loss, params)
    for g, w, (n, _) in zip(got, want, model.named_parameters()):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11, msg=n)


def test_the_loss_differentiates_through_the_edge_weights(tiny):
    # With the ID line alone scored, the content parameters and the confidences reach the loss
    # only through the refined graph's weights.
    model, _ = build("GRCN", tiny, "fusion_mode=id", "reg_weight=0.0")
    users, pos, neg = one_batch(tiny)
    model.calculate_loss(users, pos, neg).backward()
    for name in ("confidence", "content.image.mlp.weight", "content.text.preference"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name


def test_mmrec_routing_only_renormalizes(tiny):
    a, _ = build("GRCN", tiny, "routing=mmrec", "n_layers=3")
    b, _ = build("GRCN", tiny, "routing=mmrec", "n_layers=0")
    torch.testing.assert_close(a.forward(), b.forward())
    c, _ = build("GRCN", tiny, "routing=paper", "n_layers=3")
    assert not torch.allclose(a.forward(), c.forward())


def test_evaluation_uses_the_last_training_forward(tiny):
    users, pos, neg = one_batch(tiny)
    for last in (True, False):
        model, _ = build("GRCN", tiny, f"eval_last_forward={str(last).lower()}")
        opt = torch.optim.Adam(model.model_parameters(), lr=0.01)
        before = model.forward().detach()
        model.train_step(users, pos, neg, opt)
        model.eval()
        u, i = model.embeddings()
        fresh = model.forward()
        expected = before if last else fresh
        torch.testing.assert_close(torch.cat([u, i]), expected)
        assert not torch.allclose(before, fresh)
        model.load_state_dict(model.state_dict())  # a loaded state drops the stale table
        torch.testing.assert_close(torch.cat(model.embeddings()), fresh)


def test_resumes_bit_identically(tmp_path):
    config = tiny_config("GRCN", "no_grid=true", "dropout=0.2", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {"edge_dropout"}
    resumed = run(resume=info.value.folder, console=False)
    la, lb = assert_same_run(full, resumed)
    assert torch.equal(la["model_rng"]["edge_dropout"], lb["model_rng"]["edge_dropout"])


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build("GRCN", with_features(tiny, image=image, text=bad))
    with pytest.raises(ValueError, match="needs item features"):
        build("GRCN", with_features(tiny))
    with pytest.raises(ValueError, match="at most two modalities"):
        build("GRCN", with_features(tiny, image=image, text=text, audio=text.copy()))
    for sets, match in [(["weight_mode=sum"], "weight_mode must be one of"),
                        (["fusion_mode=add"], "fusion_mode must be one of"),
                        (["routing=both"], "routing must be one of"),
                        (["dropout=1.0"], "dropout must lie in"),
                        (["fusion_mode=mean", "latent_embedding=32"], "needs embedding_size ==")]:
        with pytest.raises(ValueError, match=match):
            build("GRCN", tiny, *sets)
    # One modality, either role (MMRec crashes on a textual one alone).
    users, pos, neg = one_batch(tiny)
    for feats in ({"text": text}, {"image": image}, {"audio": text}):
        model, _ = build("GRCN", with_features(tiny, **feats))
        opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
        assert torch.isfinite(model.train_step(users, pos, neg, opt))
        assert model.embeddings()[0].shape == (tiny.n_users, 128)


# ---------------------------------------------------------------------- the edge-weight ops
def _toy_edges(seed=0):
    g = torch.Generator().manual_seed(seed)
    dst = torch.randint(0, 6, (20,), generator=g)
    src = torch.randint(0, 7, (20,), generator=g)
    return EdgeList(dst, src, (6, 7)), dst, src


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_edge_ops_match_dense_and_gradcheck(backend):
    edges, dst, src = _toy_edges()
    g = torch.Generator().manual_seed(1)
    w = torch.rand(20, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(6, 7, dtype=torch.float64).index_put((dst, src), w.detach(),
                                                             accumulate=True)
    torch.testing.assert_close(edges.aggregate(w, x, backend), dense @ x.detach())
    torch.testing.assert_close(edges.edge_dot(a, x, backend), (a[dst] * x[src]).sum(1))
    torch.autograd.gradcheck(lambda w_, x_: edges.aggregate(w_, x_, backend), (w, x))
    torch.autograd.gradcheck(lambda a_, x_: edges.edge_dot(a_, x_, backend), (a, x))
    alpha = segment_softmax(w * 3, edges, backend=backend)
    for t in range(6):  # a softmax over the edges into each target
        into = dst == t
        if into.any():
            torch.testing.assert_close(alpha[into], torch.softmax(w[into] * 3, 0))
    keep = (torch.arange(20) % 3 != 0).double()
    kept = segment_softmax(w * 3, edges, keep, backend=backend)
    assert torch.all(kept[keep == 0] == 0)
    t = int(dst[keep == 1][0])
    into = (dst == t) & (keep == 1)
    torch.testing.assert_close(kept[into], torch.softmax(w[into] * 3, 0))
    with pytest.raises(ValueError, match="one weight per edge"):
        edges.aggregate(w[:3], x, backend)


def test_training_step_reads_nothing(tiny):
    from test_host_syncs import counted_reads
    model, _ = build("GRCN", tiny, "dropout=0.2", "routing=paper")
    users, pos, neg = one_batch(tiny)
    model.calculate_loss(users, pos, neg).backward()  # warm (lazy set-up may read)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg).backward()
    assert calls == []
