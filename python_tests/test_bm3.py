"""BM3 and training without negative sampling: shapes, training, both backends equal, the loss and
forward against a float64 transcription of MMRec's equations with the dropout masks fixed,
bit-identical resume (target-dropout stream), bad input; ``use_neg_sampling: false`` batches
(no negatives, the same shuffle) and the trainer's refusal of models that need negatives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfast import models
from mmfast.data import load_dataset
from mmfast.trainer import TrainingInterrupted, run
from test_host_syncs import counted_reads
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree,
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("BM3", epochs=1))


def test_shapes_and_registration(tiny):
    model, point = build("bm3", tiny)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, 64) and items.shape == (tiny.n_items, 64)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.canonical("bm3") == "BM3"
    assert (point["n_layers"], point["reg_weight"], point["dropout"]) == (1, 0.1, 0.5)
    assert point["cl_weight"] == 2.0 and point["use_neg_sampling"] is False
    assert set(model.rng_state()) == {"target_dropout"}
    # MMRec fine-tunes the raw feature tables: parameters, saved.
    assert {f"modal.features.{m}" for m in tiny.modalities} <= set(model.state_dict())


def test_loss_decreases(tiny):
    model, _ = build("BM3", tiny)
    assert_loss_decreases(model, tiny, steps=12)


@pytest.mark.parametrize("sets", [[], ["n_layers=2", "dropout=0.3", "reg_weight=0.01"]],
                         ids=["default", "n_layers=2"])
def test_both_backends_agree_at_one_step(tiny, sets):
    assert_backends_agree("BM3", tiny, *sets, min_grads=8, negatives=False)


def _reference(model, adj, users, pos, masks):
    """MMRec's BM3.calculate_loss and full_sort_predict written plainly (dense Â, full tables,
    torch's cosine_similarity), with the masks the model drew (users, items, each modality)."""
    L, n_users = model.n_layers, model.n_users
    ue, ie = model.ids.user.weight, model.ids.item.weight
    x = torch.cat([ue, ie])
    layers = [x]
    for _ in range(L):
        x = adj @ x
        layers.append(x)
    out = torch.stack(layers, 1).mean(1)
    u_ori, i_ori = out[:n_users], out[n_users:] + ie
    pred = lambda t: t @ model.predictor.weight.T + model.predictor.bias  # noqa: E731
    u_target, i_target = (u_ori * masks[0]).detach(), (i_ori * masks[1]).detach()
    u_online, i_online = pred(u_ori)[users], pred(i_ori)[pos]
    u_target, i_target = u_target[users], i_target[pos]
    cos = lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    cl = 0.0
    for k, m in enumerate(model.modal.modalities):
        proj = model.modal.projections[m]
        feat = model.modal.features[m] @ proj.weight.T + proj.bias  # every item, as MMRec
        target = (feat * masks[2 + k]).detach()[pos]
        online = pred(feat)[pos]
        cl = cl + cos(online, i_target) + cos(online, target)
    reg = (torch.linalg.norm(u_ori) + torch.linalg.norm(i_ori)) / i_ori.shape[0]
    loss = cos(u_online, i_target) + cos(i_online, u_target) + model.reg_weight * reg
    return loss + model.cl_weight * cl, (pred(u_ori), pred(i_ori))


@pytest.mark.parametrize("sets", [[], ["n_layers=2", "dropout=0.3"]], ids=["default", "n_layers=2"])
def test_loss_and_forward_match_a_float64_transcription(tiny, sets):
    model, _ = build("BM3", tiny, *sets, seed=5)
    model.double()
    masks, original = [], model.target_dropout.mask

    def recorded(shape, like):
        masks.append(original(shape, like))
        return masks[-1]

    model.target_dropout.mask = recorded
    users, pos, _ = one_batch(tiny, size=96)
    loss = model.calculate_loss(users, pos, None)
    nu, ni = tiny.n_users, tiny.n_items
    assert [tuple(m.shape) for m in masks] == [(nu, 64), (ni, 64)] + [(ni, 64)] * 2
    p = model.target_dropout.p
    assert abs(float((masks[0] > 0).double().mean()) - (1 - p)) < 0.02
    assert float(masks[0].max()) == pytest.approx(1 / (1 - p))
    params = [q for q in model.parameters() if q.requires_grad]
    got = torch.autograd.grad(loss, params)
    want_loss, (want_u, want_i) = _reference(model, model.adj.to_dense(), users, pos, masks)
    want = torch.autograd.grad(want_loss, params)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)
    u, i = model.embeddings()
    torch.testing.assert_close(u, want_u.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(i, want_i.detach(), rtol=1e-10, atol=1e-12)
    # Â as the model holds it is D^-1/2 A D^-1/2 of the training pairs.
    a = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    a[tiny.train.users(), tiny.train.items + nu] = 1.0
    a = a + a.T
    d = a.sum(1).clamp(min=1).rsqrt() * (a.sum(1) > 0)
    torch.testing.assert_close(model.adj.to_dense(), d[:, None] * a * d[None], rtol=1e-6, atol=1e-8)


def test_bm3_resumes_bit_identically(tmp_path):
    config = tiny_config("BM3", "no_grid=true", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["model_rng"]) == {"target_dropout"}
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"] and len(a["epochs"]) == 3
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    assert torch.equal(la["model_rng"]["target_dropout"], lb["model_rng"]["target_dropout"])
    assert torch.equal(la["sampler"], lb["sampler"])


def test_bad_input(tiny):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = image.copy()
    bad[0, 2] = np.inf
    with pytest.raises(ValueError, match="image features hold NaN or infinite"):
        build("BM3", with_features(tiny, image=bad, text=text))
    with pytest.raises(ValueError, match="dropout must be in"):
        build("BM3", tiny, "dropout=1.0")
    # As MMRec's code: each modality is optional (its two alignment terms drop out).
    users, pos, _ = one_batch(tiny)
    for feats in ({"text": text}, {}):
        model, _ = build("BM3", with_features(tiny, **feats))
        opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
        assert torch.isfinite(model.train_step(users, pos, None, opt))
        assert len(model.rng_state()) == 1


def test_training_step_reads_nothing(tiny):
    """No device->host read in the loss and its backward (masks drawn on the device)."""
    model, _ = build("BM3", tiny)
    users, pos, _ = one_batch(tiny)
    model.calculate_loss(users, pos, None).backward()  # warm
    with counted_reads() as calls:
        model.calculate_loss(users, pos, None).backward()
    assert calls == []

# ---------------------------------------------------------------- use_neg_sampling: false
def test_sampler_without_negatives(tiny):
    def batches(**kw):
        sampler = tiny.sampler(batch_size=500, seed=7, **kw)
        return sampler, [list(sampler) for _ in range(2)]

    plain, (p1, p2) = batches()
    with_neg, (w1, w2) = batches(negatives=True)
    without, (n1, n2) = batches(negatives=False)
    assert plain.negatives and not without.negatives
    for a, b in zip(p1 + p2, w1 + w2):  # the default is the negative-sampling stream, unchanged
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(neg is None for _, _, neg in n1 + n2)
    assert len(n1) == len(p1) == len(without)
    # Epoch 1: the same shuffle; afterwards the stream has not advanced by any negative draw.
    for (u, i, _), (u2, i2, _) in zip(p1, n1):
        assert torch.equal(u, u2) and torch.equal(i, i2)
    shuffle_only = torch.Generator().manual_seed(7)
    n = len(tiny.train)
    for _ in range(2):
        torch.randperm(n, generator=shuffle_only)
    assert torch.equal(without.generator.get_state(), shuffle_only.get_state())
    assert not torch.equal(plain.generator.get_state(), shuffle_only.get_state())


def test_trainer_without_negatives(tmp_path, monkeypatch):
    seen = []
    original = models.get("BM3").calculate_loss

    def spy(self, users, positives, negatives=None):
        seen.append(negatives)
        return original(self, users, positives, negatives)

    monkeypatch.setattr(models.get("BM3"), "calculate_loss", spy)
    result = run(tiny_config("BM3", "no_grid=true", epochs=1), out=tmp_path / "bm3", console=False)
    assert seen and all(neg is None for neg in seen)
    assert result.points[0]["status"] == "finished"
    # SLMRec ignores negatives: it trains either way.
    run(tiny_config("SLMRec", "no_grid=true", "use_neg_sampling=false", epochs=1),
        out=tmp_path / "slm", console=False)
    with pytest.raises(ValueError, match="LightGCN scores sampled negatives: it needs "
                                         "use_neg_sampling: true"):
        run(tiny_config("LightGCN", "use_neg_sampling=false", epochs=1), out=tmp_path / "lgn",
            console=False)
