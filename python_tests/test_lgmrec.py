"""LGMRec and mmfast.nn.hypergraph: shapes, the Baby default point, training, both backends
equal, forward and loss against a dense float64 transcription on a tiny graph (same noise),
plug-in views, evaluation noise, bit-identical resume (hyperedge noise streams), bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.nn.hypergraph import HypergraphConv, gumbel_softmax, keep_dropout
from mmfast.ops import use_backend
from mmfast.trainer import TrainingInterrupted, run
from test_grcn import toy_dataset
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build

BABY = {"n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 4, "keep_rate": 0.5,
        "alpha": 0.3, "cl_weight": 1e-4, "reg_weight": 1e-6}


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("LGMRec", epochs=1))


def test_shapes_registration_and_default_point(tiny):
    model, point = build("LGMRec", tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get("lgmrec") is type(model) and models.canonical("lgmrec") == "LGMRec"
    assert {k: point[k] for k in BABY} == BABY and point["cf_model"] == "lightgcn"
    assert point["hyper_parameters"][:8] == list(BABY)
    assert model.modalities == ["image", "text"] and model.hyper["image"].shape[1] == 4
    assert not any(k.startswith("raw_") for k in model.state_dict())  # frozen features


def test_loss_decreases(tiny):
    model, _ = build("LGMRec", tiny, "cl_weight=0.01")
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("sets", [[], ["cf_model=mf", "n_hyper_layer=2", "eval_noise=false"]],
                         ids=["default", "switches"])
def test_both_backends_agree_at_one_step(tiny, sets):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build("LGMRec", tiny, "cl_weight=0.01", *sets, seed=3)
        model.double()
        with use_backend(backend):
            loss = model.calculate_loss(users, pos, neg)
            loss.backward()
            model.eval()
            emb = model.embeddings()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, emb))
    (la, ga, ea), (lb, gb, eb) = results
    assert la.dtype == torch.float64
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) == 6  # two ID tables, W^m and V^m per modality
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10, msg=n)
    for a, b in zip(ea, eb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def dense_lgmrec(model, users, pos, neg, rng_state):
    """LGMRec's training forward and loss written plainly (float64 dense), drawing the noise
    and masks in MMRec's order from a generator in ``rng_state``."""
    g = torch.Generator().set_state(rng_state)
    n_u, n_i = model.n_users, model.n_items
    R = model.inter.to_dense()
    A = torch.zeros(n_u + n_i, n_u + n_i, dtype=torch.float64)
    A[:n_u, n_u:], A[n_u:, :n_u] = R, R.T
    deg = A.sum(1)
    d = torch.where(deg > 0, deg.clamp_min(1) ** -0.5, torch.zeros_like(deg))
    adj = (d[:, None] * A * d[None, :]).float().double()  # Â is stored in float32
    E0 = torch.cat([model.ids.user.weight, model.ids.item.weight])
    cge = (E0 + adj @ E0 + adj @ adj @ E0) / 3
    tau, keep = model.tau, model.keep_rate
    local, hyper = cge.clone(), []
    for m in model.modalities:
        X = getattr(model, f"raw_{m}")
        f = X @ model.item_trs[m]
        mge = adj @ adj @ torch.cat([(R @ f) / (R.sum(1, keepdim=True) + 1e-7), f])
        local = local + F.normalize(mge)
        z_i = X @ model.hyper[m]
        z_u = R @ z_i
        hyper.append([z_i, z_u])
    for pair in hyper:  # Gumbel noise: items then users, per modality
        for k, z in enumerate(pair):
            e = torch.empty(z.shape, dtype=torch.float64).exponential_(generator=g)
            pair[k] = torch.softmax((z - e.log()) / tau, 1)
    for pair in hyper:  # then the dropout masks, same order
        for k, h in enumerate(pair):
            mask = torch.empty(h.shape, dtype=torch.float64).bernoulli_(keep, generator=g)
            pair[k] = h * mask / keep
    embs = []
    for H_i, H_u in hyper:
        lat = H_i.T @ cge[n_u:]
        embs.append((H_u @ lat, H_i @ lat))
    ghe = sum(torch.cat(e) for e in embs)
    out = local + model.alpha * F.normalize(ghe)
    zu, zp, zn = out[users], out[n_u + pos], out[n_u + neg]
    bpr = -F.logsigmoid((zu * zp).sum(1) - (zu * zn).sum(1)).mean()

    def ssl(e1, e2, table):
        n1, n2, nt = F.normalize(e1), F.normalize(e2), F.normalize(table)
        pos_score = torch.exp((n1 * n2).sum(1) / tau)
        total = torch.exp(n1 @ nt.T / tau).sum(1)
        return -torch.log(pos_score / total).sum()

    (uv, iv), (ut, it) = embs
    hcl = ssl(uv[users], ut[users], ut) + ssl(iv[pos], it[pos], it)
    reg = (zu.norm() + zp.norm() + zn.norm()) / len(users)
    return bpr + model.cl_weight * hcl + model.reg_weight * reg, out


def test_forward_and_loss_match_a_dense_transcription():
    ds = toy_dataset()
    model, _ = build("LGMRec", ds, "cl_weight=0.5", "reg_weight=0.01", "hyper_num=3", seed=2)
    model.double()
    users, pos, neg = (torch.tensor(v) for v in ([0, 2, 4, 4], [1, 3, 0, 3], [2, 4, 2, 4]))
    state = model.rng.get_state()
    loss, views = model.loss_and_views(users, pos, neg)
    ref_loss, ref_out = dense_lgmrec(model, users, pos, neg, state)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    out = torch.cat([views.behavior[0] + views.modal[0], views.behavior[1] + views.modal[1]])
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    want = torch.autograd.grad(ref_loss, params)
    for g, w, (n, _) in zip(got, want, model.named_parameters()):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11, msg=n)


def test_plugin_views(tiny):
    model, _ = build("LGMRec", tiny)
    users, pos, neg = one_batch(tiny)
    loss, views = model.loss_and_views(users, pos, neg)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (bu, bi), (mu, mi) = views.behavior, views.modal
    assert bu.shape == mu.shape == (tiny.n_users, 64) and bi.shape == mi.shape == (tiny.n_items, 64)
    u, i = model.ids(model.adj, 2)  # the behaviour line is LightGCN's ID line
    torch.testing.assert_close(bu, u)
    torch.testing.assert_close(bi, i)
    feats = views.modal_features(pos[:7])
    assert set(feats) == {"image", "text"} and feats["text"].shape == (7, 64)
    assert views.modal_features(None)["image"].shape == (tiny.n_items, 64)


def test_evaluation_noise(tiny):
    noisy, _ = build("LGMRec", tiny)
    noisy.eval()
    assert not torch.equal(noisy.embeddings()[0], noisy.embeddings()[0])  # MMRec's: redrawn
    plain, _ = build("LGMRec", tiny, "eval_noise=false")
    plain.eval()
    a, b = plain.embeddings(), plain.embeddings()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Evaluation draws from its own stream: training draws do not depend on how often one ranks.
    before = noisy.rng.get_state()
    noisy.embeddings()
    assert torch.equal(before, noisy.rng.get_state())


def test_resumes_bit_identically(tmp_path):
    config = tiny_config("LGMRec", "no_grid=true", "cl_weight=0.01", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {"hyperedges", "hyperedges_eval"}
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert [e["valid"] for e in a["epochs"]] == [e["valid"] for e in b["epochs"]]
    assert a["best"] == b["best"]
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    for name in ("hyperedges", "hyperedges_eval"):
        assert torch.equal(la["model_rng"][name], lb["model_rng"][name])


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="needs two modalities"):
        build("LGMRec", with_features(tiny, text=text))
    with pytest.raises(ValueError, match="needs item features"):
        build("LGMRec", with_features(tiny))
    bad = image.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="image features hold NaN or infinite"):
        build("LGMRec", with_features(tiny, image=bad, text=text))
    for sets, match in [(["cf_model=ngcf"], "cf_model must be one of"),
                        (["keep_rate=0.0"], "keep_rate must lie in"),
                        (["tau=0.0"], "tau must be positive"),
                        (["feat_embed_dim=32"], "must equal embedding_size"),
                        (["n_hyper_layer=0"], "at least one layer")]:
        with pytest.raises(ValueError, match=match):
            build("LGMRec", tiny, *sets)
    # TikTok's pair: image plays the visual role, audio the textual one.
    model, _ = build("LGMRec", with_features(tiny, audio=text, image=image))
    assert model.modalities == ["image", "audio"]


def test_hypergraph_pieces():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    state = g.get_state()
    soft = gumbel_softmax(logits, 0.2, g)
    torch.testing.assert_close(soft.sum(1), torch.ones(6, dtype=torch.float64))
    again = gumbel_softmax(logits, 0.2, torch.Generator().set_state(state))
    torch.testing.assert_close(again, soft)
    x = torch.ones(2000, dtype=torch.float64)
    kept = keep_dropout(x, 0.25, g)
    assert set(kept.unique().tolist()) == {0.0, 4.0} and abs(kept.mean().item() - 1.0) < 0.15
    assert keep_dropout(x, 1.0, g) is x
    with pytest.raises(ValueError, match="keep_rate"):
        keep_dropout(x, 1.5, g)
    H_i, H_u = torch.rand(5, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64)
    E = torch.randn(5, 2, dtype=torch.float64)
    u, i = HypergraphConv(2)(H_i, H_u, E)
    lat = H_i.T @ (H_i @ (H_i.T @ E))
    torch.testing.assert_close(i, H_i @ lat)
    torch.testing.assert_close(u, H_u @ lat)


def test_training_step_reads_nothing(tiny):
    from test_host_syncs import counted_reads
    model, _ = build("LGMRec", tiny)
    users, pos, neg = one_batch(tiny)
    model.calculate_loss(users, pos, neg).backward()  # warm (lazy set-up may read)
    with counted_reads() as calls:
        model.calculate_loss(users, pos, neg).backward()
    assert calls == []
