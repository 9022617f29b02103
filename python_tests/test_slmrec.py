"""SLMRec: shapes, training, both backends equal, the loss and forward of every SSL task against
a float64 transcription of MMRec's equations with the random views fixed, the adjacency forms,
bit-identical resume (dropout and masking streams), bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.models.slmrec import slmrec_adjacency
from mmfast.nn.ssl_views import BranchMasking, DropoutView
from mmfast.trainer import TrainingInterrupted, run
from test_host_syncs import counted_reads
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree,
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build

TASKS = ["FAC", "FD", "FM", "FD+FM"]


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("SLMRec", epochs=1))


@pytest.mark.parametrize("task", TASKS)
def test_shapes_and_registration(tiny, task):
    model, point = build("slmrec", tiny, f"ssl_task={task}")
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.canonical("slmrec") == "SLMRec"
    assert (point["learning_rate"], point["ssl_temp"], point["ssl_alpha"], point["reg"]) == (
        0.01, 0.2, 0.1, 1e-4)
    assert point["weight_decay"] == 1e-4 and point["use_neg_sampling"] is True
    assert set(model.rng_state()) == {"FAC": set(), "FD": {"feature_dropout"},
                                      "FM": {"feature_masking"},
                                      "FD+FM": {"feature_dropout", "feature_masking"}}[task]
    assert not any(k.startswith("dense.features.") for k in model.state_dict())  # frozen x^m


@pytest.mark.parametrize("task", TASKS)
def test_loss_decreases(tiny, task):
    model, _ = build("SLMRec", tiny, f"ssl_task={task}")
    assert_loss_decreases(model, tiny)



@pytest.mark.parametrize("sets", [["ssl_task=FAC"], ["ssl_task=FD+FM"],
                                  ["ssl_task=FD", "mm_fusion_mode=mean", "adj_type=norm"]],
                         ids=lambda s: ",".join(s))
def test_both_backends_agree_at_one_step(tiny, sets):
    assert_backends_agree("SLMRec", tiny, *sets, min_grads=8, negatives=False)


@pytest.mark.parametrize("task", ["FAC", "FD+FM"])
def test_training_step_reads_nothing(tiny, task):
    """No device->host read in the loss and its backward (views drawn on the device)."""
    model, _ = build("SLMRec", tiny, f"ssl_task={task}")
    users, pos, _ = one_batch(tiny)
    model.calculate_loss(users, pos, None).backward()  # warm
    with counted_reads() as calls:
        model.calculate_loss(users, pos, None).backward()
    assert calls == []

# ---------------------------------------------------------------- float64 transcription
def _recorder(obj, name):
    """Wrap ``obj.name`` so that its results are kept, in call order."""
    calls, original = [], getattr(obj, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out)
        return out

    setattr(obj, name, wrapped)
    return calls


def _dense_adj(ds):
    nu, n = ds.n_users, ds.n_users + ds.n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    u, i = ds.train.users(), ds.train.items + nu
    a[u, i] = 1.0
    a[i, u] = 1.0
    deg = a.sum(1)
    d = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return d[:, None] * a * d[None, :]


def _ce_diagonal(a, b, temp, normalize):
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.T / temp
    return F.cross_entropy(logits, torch.arange(a.shape[0]))


def _reference(model, ds, adj, users, pos, masks, keeps, swap=True):
    """MMRec's SLMRec.calculate_loss and compute(), written plainly (dense Â, one branch at a
    time, lists of layers), with the dropout masks / masked branches the model drew."""
    nu, ni, d, L = ds.n_users, ds.n_items, model.dim, model.n_layers
    task = model.ssl_task
    ue, ie = model.ids.user.weight, model.ids.item.weight
    # The model keeps MMRec's row-normalized features (normalized in float32, then .double()).
    feats = {m: model.dense.features[m] for m in model.modalities}
    for m, x in feats.items():
        raw = torch.as_tensor(ds.features[m], dtype=torch.float64)
        torch.testing.assert_close(x, F.normalize(raw, dim=1), rtol=1e-6, atol=1e-7)
    dense = {m: feats[m] @ model.dense.projections[m].weight.T + model.dense.projections[m].bias
             for m in model.modalities}
    item_inputs = [ie, dense[model.modalities[0]], dense[model.modalities[1]]]  # id, v, t

    def graph(i_emb):
        x = torch.cat([ue, i_emb])
        layers = [x]
        for _ in range(L):
            x = adj @ x
            layers.append(x)
        return torch.stack(layers, dim=1).mean(dim=1)

    outs = [graph(e) for e in item_inputs]
    user = torch.cat([o[:nu] for o in outs], 1) @ model.user_fuse.weight.T + model.user_fuse.bias
    item = torch.cat([o[nu:] for o in outs], 1) @ model.item_fuse.weight.T + model.item_fuse.bias
    main = _ce_diagonal(user[users], item[pos], model.temp, True)

    if task == "FAC":
        h = model.heads
        lin = lambda name, x: x @ h[name].weight.T + h[name].bias  # noqa: E731
        a = lin("i_iv", outs[0][nu:][pos])
        v_loss = _ce_diagonal(a, lin("v_iv", outs[1][nu:][pos]), model.ssl_temp, False)
        c = lin("iva_ivat", lin("iv_iva", a))
        t_loss = _ce_diagonal(c, lin("t_ivat", outs[2][nu:][pos]), model.ssl_temp, False)
        ssl = v_loss + t_loss
    else:
        width = 3 * d  # one chain's columns in the model's stacked masks
        keep1, keep2 = keeps if keeps else (torch.ones(3), torch.ones(3))
        views_1, views_2 = [], []
        for b, i_emb in enumerate(item_inputs):
            e1 = torch.cat([ue, i_emb if keep1[b] else torch.zeros(ni, d, dtype=torch.float64)])
            e2 = torch.cat([ue, i_emb if keep2[b] else torch.zeros(ni, d, dtype=torch.float64)])
            x1, x2, chain1, chain2 = e1, e2, [], []
            for layer in range(L):
                x1, x2 = adj @ x1, adj @ x2
                if masks:
                    m = masks[layer]
                    x1 = x1 * m[:, b * d:(b + 1) * d]
                    x2 = x2 * m[:, width + b * d:width + (b + 1) * d]
                chain1.append(x1)
                chain2.append(x2)
            sub1 = [e1] + (chain2 if swap else chain1)
            sub2 = [e2] + (chain1 if swap else chain2)
            views_1.append(torch.stack(sub1, 1).mean(1))
            views_2.append(torch.stack(sub2, 1).mean(1))

        def fused(views, rows, side):
            cat = torch.cat([v[:nu] if side == "u" else v[nu:] for v in views], 1)[rows]
            layer = model.user_fuse if side == "u" else model.item_fuse
            return cat @ layer.weight.T + layer.bias

        ssl = (_ce_diagonal(fused(views_1, users, "u"), fused(views_2, users, "u"),
                            model.ssl_temp, True)
               + _ce_diagonal(fused(views_1, pos, "i"), fused(views_2, pos, "i"),
                              model.ssl_temp, True))
    return main + model.ssl_alpha * ssl, (user, item)


@pytest.mark.parametrize("sets", [["ssl_task=FAC"], ["ssl_task=FD"], ["ssl_task=FM"],
                                  ["ssl_task=FD+FM"], ["ssl_task=FM", "ssl_view_swap=false"],
                                  ["ssl_task=FD+FM", "layer_num=2", "dropout_rate=0.5"]],
                         ids=lambda s: ",".join(s))
def test_loss_and_forward_match_a_float64_transcription(tiny, sets):
    model, _ = build("SLMRec", tiny, *sets, seed=5)
    model.double()
    masks = _recorder(model.dropout, "mask") if model.dropout is not None else []
    keeps = _recorder(model.masking, "keep") if model.masking is not None else []
    users, pos, _ = one_batch(tiny, size=96)
    loss = model.calculate_loss(users, pos, None)
    if model.dropout is not None:
        assert len(masks) == model.n_layers and masks[0].shape == (tiny.n_users + tiny.n_items,
                                                                   6 * model.dim)
        kept = (masks[0] != 0).double().mean()
        assert abs(float(kept) - (1 - model.dropout.p)) < 0.02
    if model.masking is not None:
        (k1, k2), = keeps
        assert k1.sum() == 2 and k2.sum() == 2 and not torch.equal(k1, k2)
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    adj = model.adj.to_dense()  # Â as the model holds it (float32 values, then .double())
    torch.testing.assert_close(adj, _dense_adj(tiny), rtol=1e-6, atol=1e-8)
    want_loss, (want_u, want_i) = _reference(model, tiny, adj, users, pos, masks,
                                             keeps[0] if keeps else None,
                                             swap="ssl_view_swap=false" not in sets)
    want = torch.autograd.grad(want_loss, params)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
    u, i = model.embeddings()
    torch.testing.assert_close(u, want_u.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(i, want_i.detach(), rtol=1e-10, atol=1e-12)


def test_branch_masking_draws_distinct_pairs_uniformly():
    gen = torch.Generator().manual_seed(0)
    masking = BranchMasking(3, gen)
    counts = {}
    for _ in range(1200):
        k1, k2 = masking.keep()
        pair = (int(k1.argmin()), int(k2.argmin()))
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) == {(a, b) for a in range(3) for b in range(3) if a != b}
    assert min(counts.values()) > 150  # 200 expected each
    drop = DropoutView(0.3, torch.Generator().manual_seed(0))
    m = drop.mask((2000, 50), torch.ones(1))
    values = torch.unique(m).tolist()
    assert values[0] == 0.0 and values[1:] == [pytest.approx(1 / 0.7)]
    assert abs(float((m > 0).float().mean()) - 0.7) < 0.01
    with pytest.raises(ValueError, match="dropout must be in"):
        DropoutView(1.0, gen)


@pytest.mark.parametrize("adj_type", ["plain", "norm", "gcmc", "mean"])
def test_adjacency_forms(tiny, adj_type):
    nu, n = tiny.n_users, tiny.n_users + tiny.n_items
    a = torch.zeros(n, n, dtype=torch.float64)
    u, i = tiny.train.users(), tiny.train.items + nu
    a[u, i] = a[i, u] = 1.0
    eye = torch.eye(n, dtype=torch.float64)

    def row_normalized(m):
        s = m.sum(1, keepdim=True)
        return torch.where(s > 0, m / s.clamp(min=1e-300), torch.zeros_like(m))

    want = {"plain": a, "norm": row_normalized(a + eye), "gcmc": row_normalized(a),
            "mean": row_normalized(a) + eye}[adj_type]
    got = slmrec_adjacency(tiny.train, adj_type).to_dense().double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    model, _ = build("SLMRec", tiny, f"adj_type={adj_type}")
    assert torch.isfinite(model.embeddings()[0]).all()


def test_slmrec_resumes_bit_identically(tmp_path):
    config = tiny_config("SLMRec", "no_grid=true", "ssl_task=FD+FM", "layer_num=2", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {"feature_dropout", "feature_masking"}
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"] and len(a["epochs"]) == 3
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    for name in la["model_rng"]:
        assert torch.equal(la["model_rng"][name], lb["model_rng"][name])


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="needs 'image' plus one other"):
        build("SLMRec", with_features(tiny, image=image))
    with pytest.raises(ValueError, match="needs 'image' plus one other"):
        build("SLMRec", with_features(tiny))
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build("SLMRec", with_features(tiny, image=image, text=bad))
    for sets, match in [(["ssl_task=XX"], "ssl_task must be one of"),
                        (["mm_fusion_mode=sum"], "mm_fusion_mode must be one of"),
                        (["init=uniform"], "init must be one of"),
                        (["adj_type=sym"], "adj_type must be one of"),
                        (["ssl_temp=0.0"], "ssl_temp must be positive"),
                        (["ssl_task=FD", "dropout_rate=1.0"], "dropout must be in")]:
        with pytest.raises(ValueError, match=match):
            build("SLMRec", tiny, *sets)
