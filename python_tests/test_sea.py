"""SEA, SAND and FREEDOM+SEA: shapes, training, both backends equal, every switch, bit-identical
resume (q-net, its Adam and the per-call permutations included), bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmfast import models
from mmfast.data import load_dataset
from mmfast.nn import SeparateLearning, split_halves
from mmfast.ops import use_backend
from mmfast.trainer import TrainingInterrupted, run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_loss_decreases, ctrl_c_at_epoch_call, one_batch, one_thread, private_cache, tiny_config,
    with_features,
)
from trainer_helpers import build_model as build

SEA_MODELS = ["SEA", "SAND", "FREEDOM+SEA"]
pytestmark = pytest.mark.filterwarnings("ignore:SeparateLearning. negative-L2")


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config("SEA", epochs=1)
    return load_dataset(config)


@pytest.mark.parametrize("name", SEA_MODELS)
def test_shapes_and_registration(tiny, name):
    model, _ = build(name, tiny)
    users, items = model.embeddings()
    width = 128 if name != "FREEDOM+SEA" else 64
    assert users.shape == (tiny.n_users, width) and items.shape == (tiny.n_items, width)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.get(name.lower()) is type(model) and models.canonical(name.lower()) == name
    q = {id(p) for p in model.separate.q.parameters()} if hasattr(model.separate, "q") else set()
    assert model.auxiliary_parameters() == q  # the q-net stays out of the model optimizer
    assert q.isdisjoint(id(p) for p in model.model_parameters())
    assert (name == "SAND") == (model.separate.distancing == "neg_l2")


@pytest.mark.parametrize("name", SEA_MODELS)
def test_loss_decreases(tiny, name):
    model, _ = build(name, tiny, "learning_rate=0.01")
    assert_loss_decreases(model, tiny)


def _one_step(model, users, pos, neg, backend):
    model.zero_grad(set_to_none=True)
    with use_backend(backend):
        loss = model.calculate_loss(users, pos, neg)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.after_backward()
    q = {n: p.detach().clone() for n, p in model.named_parameters() if ".q." in n}
    return loss.detach(), grads, q


@pytest.mark.parametrize("name", SEA_MODELS)
def test_both_backends_agree_at_one_step(tiny, name):
    users, pos, neg = one_batch(tiny)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build(name, tiny, seed=3)
        model.double()
        results.append(_one_step(model, users, pos, neg, backend))
    (la, ga, qa), (lb, gb, qb) = results
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) > 5
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10, msg=n)
    assert qa.keys() == qb.keys()
    for n in qa:  # 50 q-net Adam steps, fused kernel vs torch.optim.Adam loop
        torch.testing.assert_close(qa[n], qb[n], rtol=1e-7, atol=1e-9, msg=n)


SWITCHES = [
    ["distancing=none"], ["distancing=neg_l2", "neg_l2_weight=0.5"], ["club_shared=false"],
    ["club_halve=false", "club_clamp=false"], ["club_estimator=full"], ["club_steps=0"],
    ["club_lr=0.01"], ["solosim_symmetric=true"], ["bpr_log2=false"], ["aux_rows=batch"],
    ["anchor_modality=text"],
]


@pytest.mark.parametrize("sets", SWITCHES, ids=lambda s: ",".join(s))
@pytest.mark.parametrize("name", ["SEA", "FREEDOM+SEA"])
def test_every_switch_trains(tiny, name, sets):
    if name == "FREEDOM+SEA" and sets[0].startswith("bpr_log2"):
        pytest.skip("FREEDOM+SEA keeps FREEDOM's BPR")
    model, _ = build(name, tiny, *sets)
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    before = {n: p.detach().clone() for n, p in model.separate.named_parameters()}
    loss = model.train_step(users, pos, neg, opt)
    assert torch.isfinite(loss)
    moved = [n for n, p in model.separate.named_parameters() if not torch.equal(before[n], p)]
    assert any(n.startswith("heads.") for n in moved)
    if model.separate.distancing == "neg_l2" or not model.separate.club_clamp:
        assert any(n.startswith("psi_") for n in moved)  # (a clamped CLUB bound may be 0)
    if model.separate.distancing == "club":
        q_moved = any(n.startswith("q.") for n in moved)
        assert q_moved == ("club_steps=0" not in sets)


def test_club_bound_settings_reach_the_loss(tiny):
    """The reference's 1/2 and clamp are the default: turning both off changes the CLUB term."""
    torch.manual_seed(0)
    sep = SeparateLearning({"image": 6, "text": 4})
    z = {"image": torch.randn(50, 12), "text": torch.randn(50, 8)}
    g, u = split_halves(z["image"])
    assert g.shape == u.shape == (50, 6) and torch.equal(torch.cat([g, u], 1), z["image"])
    assert torch.isfinite(sep(z))
    with pytest.raises(ValueError, match="even width"):
        split_halves(torch.randn(3, 5))
    with pytest.raises(ValueError, match="distancing must be one of"):
        SeparateLearning({"image": 6, "text": 4}, distancing="l1")
    with pytest.raises(ValueError, match="two modalities"):
        SeparateLearning({"image": 6})
    with pytest.warns(UserWarning, match="unbounded below"):
        SeparateLearning({"image": 6, "text": 4}, distancing="neg_l2")


def test_sea_resumes_bit_identically(tmp_path):
    config = tiny_config("SEA", "no_grid=true", "club_steps=5", epochs=3)
    full = run(config, out=tmp_path / "a", console=False)
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    saved = torch.load(info.value.folder / "last.pt", weights_only=False)
    assert set(saved["auxiliary_optimizers"]) == {"club_q_shared"}
    assert set(saved["model_rng"]) == {"club_permutation"}
    resumed = run(resume=info.value.folder, console=False)
    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"]
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    assert torch.equal(la["model_rng"]["club_permutation"], lb["model_rng"]["club_permutation"])
    qa, qb = (x["auxiliary_optimizers"]["club_q_shared"]["state"] for x in (la, lb))
    assert qa and all(torch.equal(qa[i][k], qb[i][k]) for i in qa for k in qa[i])


@pytest.mark.parametrize("name", SEA_MODELS)
def test_bad_input(tiny, name):
    image, text = tiny.features["image"], tiny.features["text"]
    with pytest.raises(ValueError, match="needs 'image' plus one other"):
        build(name, with_features(tiny, image=image))
    with pytest.raises(ValueError, match="choose two"):
        build(name, with_features(tiny, image=image, text=text, audio=text[:, :4].copy()))
    with pytest.raises(ValueError, match="anchor modality 'image' is not among"):
        build(name, with_features(tiny, text=text, audio=text.copy()))
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build(name, with_features(tiny, image=image, text=bad))
    if name != "FREEDOM+SEA":  # FREEDOM+SEA splits its projections, whatever the input width
        with pytest.raises(ValueError, match="odd"):
            build(name, with_features(tiny, image=image[:, :7].copy(), text=text))
    else:
        with pytest.raises(ValueError, match="feat_embed_dim must be even"):
            build(name, tiny, "feat_embed_dim=63")
