"""DREPMREC (alias DREAM) and FREEDOM+BMA: shapes, training, both backends equal, every switch and
each combination of the decoupling switches, the detaches really stop gradients, S3's Gram form
equals its dense form, bad input (one modality is allowed)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmfast import models
from mmfast.data import load_dataset
from mmfast.nn import BehaviorModalAlignment, FilterGate, ModalityFusion, SimilaritySupervision
from mmfast.trainer import run
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_backends_agree,
    assert_loss_decreases, one_batch, one_thread, private_cache, tiny_config, with_features,
)
from trainer_helpers import build_model as build

MODELS = ["DREPMREC", "FREEDOM+BMA"]


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("DREPMREC", epochs=1))


@pytest.mark.parametrize("name,sets,width", [
    ("DREPMREC", [], 64), ("DREAM", ["fusion=concat"], 128), ("FREEDOM+BMA", [], 64)])
def test_shapes_and_registration(tiny, name, sets, width):
    model, point = build(name, tiny, *sets)
    users, items = model.embeddings()
    assert users.shape == (tiny.n_users, width) and items.shape == (tiny.n_items, width)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    assert models.canonical(name.lower()) == name
    assert models.get("DREAM") is models.get("DREPMREC")
    if name != "FREEDOM+BMA":
        assert point["inter_weight"] == 1e-2 and point["s3_weight"] == 0.1
        assert point["learning_rate"] == 1e-3 and point["learning_rate_scheduler"] == [0.96, 50]
        assert not any(True for _ in model.modal.features.parameters())  # frozen x^m: buffers
        assert not any(k.startswith("modal.features.") for k in model.state_dict())
        legacy = dict(model.state_dict(), **{f"modal.features.{m}": torch.zeros(1)
                                             for m in model.modalities})
        model.load_state_dict(legacy)  # checkpoints that saved the frozen tables still load
        assert model.modal.features["image"].abs().sum() > 0
    else:
        assert point["dropout"] == 0.8 and point["inter_weight"] == 1e-2  # FREEDOM's + BMA's


@pytest.mark.parametrize("name", MODELS)
def test_loss_decreases(tiny, name):
    model, _ = build(name, tiny)
    assert_loss_decreases(model, tiny)


@pytest.mark.parametrize("name,sets", [
    ("DREPMREC", []),
    ("DREPMREC", ["user_modal=uu_graph", "modal_fuse=attn", "s3_on_users=true",
                  "s3_per_modality=true", "line_bpr=true", "fusion=concat"]),
    ("FREEDOM+BMA", []),
], ids=["DREPMREC", "DREPMREC-switches", "FREEDOM+BMA"])
def test_both_backends_agree_at_one_step(tiny, name, sets):
    assert_backends_agree(name, tiny, *sets)


SWITCHES = [
    ["gate=self"], ["gate_detach=false"], ["user_modal=uu_graph", "uu_knn_k=5"],
    ["modal_fuse=mean"], ["modal_fuse=attn"], ["fusion=concat"], ["s3_norm=true"],
    ["s3_per_modality=true"], ["s3_on_users=true"], ["s3_on_users=true", "s3_per_modality=true"],
    ["intra_weight=0.0"], ["s3_weight=0.0"], ["n_mm_layers=2", "n_layers=1"],
]
DECOUPLING = [[f"detach_cross={a}", f"line_bpr={b}"]
              for a, b in itertools.product(["false", "true"], repeat=2)]


@pytest.mark.parametrize("sets", SWITCHES + DECOUPLING, ids=lambda s: ",".join(s))
def test_every_switch_trains(tiny, sets):
    model, _ = build("DREPMREC", tiny, *sets)
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.pre_epoch_processing()
    loss = model.train_step(users, pos, neg, opt)
    assert torch.isfinite(loss)
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert {n.split(".")[0] for n in moved} >= {"ids", "modal", "item_gates", "user_gates"}
    if "modal_fuse=attn" in sets:
        assert any(n.startswith("modal_fuse.query") for n in moved)
    u, i = model.embeddings()
    assert torch.isfinite(u).all() and torch.isfinite(i).all()


@pytest.mark.parametrize("detach_cross", [False, True])
def test_freedom_bma_decoupling_trains(tiny, detach_cross):
    model, _ = build("FREEDOM+BMA", tiny, f"detach_cross={str(detach_cross).lower()}")
    model.pre_epoch_processing()
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    assert torch.isfinite(model.train_step(users, pos, neg, opt))
    assert model.bma.detach_cross is detach_cross


def _grads(loss, tensors):
    got = torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)
    return [0.0 if g is None else float(g.abs().sum()) for g in got]


@pytest.mark.parametrize("detach_cross", [False, True])
def test_detach_cross_stops_the_inter_gradient_at_the_behavior_line(tiny, detach_cross):
    model, _ = build("DREPMREC", tiny, f"detach_cross={str(detach_cross).lower()}")
    users, pos, _ = one_batch(tiny)
    b_u, b_i = model.behavior_line()
    m_u, m_i = model.modal_line()
    inter = model.bma.inter(b_u[users], b_i[pos], m_u[users], m_i[pos])
    ids = [model.ids.user.weight, model.ids.item.weight]  # the behaviour line's only parameters
    gates = [g.linear.weight for g in model.item_gates.values()]
    to_ids, to_gates = _grads(inter, ids), sum(_grads(inter, gates))
    assert to_gates > 0  # the modal (source) line always learns from the alignment
    if detach_cross:  # with gate_detach (default) nothing reaches the IDs at all
        assert to_ids == [0.0, 0.0]
    else:
        assert all(g > 0 for g in to_ids)
    # The intra-alignment is not cross-line: it reaches the behaviour line either way.
    intra = model.bma.intra(b_u[users], b_i[pos], m_u[users], m_i[pos])
    assert all(g > 0 for g in _grads(intra, ids))


@pytest.mark.parametrize("detach_cross", [False, True])
def test_bma_plug_in_detaches_the_target_rows(detach_cross):
    torch.manual_seed(0)
    b_u, b_i, m_u, m_i = (torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
                          for _ in range(4))
    bma = BehaviorModalAlignment(inter_weight=1.0, intra_weight=0.0, detach_cross=detach_cross)
    g_bu, g_bi, g_mu, g_mi = _grads(bma(b_u, b_i, m_u, m_i), [b_u, b_i, m_u, m_i])
    assert g_mu > 0 and g_mi > 0
    assert (g_bu == 0 and g_bi == 0) == detach_cross
    both = BehaviorModalAlignment(inter_weight=0.3, intra_weight=None)
    assert both.intra_weight == 0.3  # gamma = alpha unless set
    with pytest.raises(ValueError, match="fusion must be one of"):
        BehaviorModalAlignment(fusion="max")


@pytest.mark.parametrize("gate,detach", [("id", True), ("id", False), ("self", False)])
def test_gate_detach_keeps_modal_losses_off_the_id_embeddings(tiny, gate, detach):
    model, _ = build("DREPMREC", tiny, f"gate={gate}", f"gate_detach={str(detach).lower()}")
    users, pos, _ = one_batch(tiny)
    branches = model.modal_branches()
    m_u, m_i = model.modal_line(branches)
    # Every modal-line loss: S3, the modal intra term, a modal BPR-like score.
    loss = (model.similarity_loss(branches, m_u, m_i, users, pos)
            + model.bma.nce(m_u[users], m_i[pos]) + (m_u[users] * m_i[pos]).sum())
    to_ids = _grads(loss, [model.ids.user.weight, model.ids.item.weight])
    if gate == "id" and not detach:
        assert all(g > 0 for g in to_ids)
    else:
        assert to_ids == [0.0, 0.0]
    assert sum(_grads(loss, [g.linear.weight for g in model.item_gates.values()])) > 0


def test_s3_gram_form_equals_dense_form():
    torch.manual_seed(0)
    rep = torch.randn(24, 6, dtype=torch.float64, requires_grad=True)
    narrow = [torch.randn(24, 5, dtype=torch.float64), torch.randn(24, 3, dtype=torch.float64)]
    wide = [torch.randn(24, 40, dtype=torch.float64)]  # wider than the batch: C-based constant
    for feats, norm in itertools.product([narrow, wide], [False, True]):
        a = SimilaritySupervision(norm)(rep, feats)
        b = SimilaritySupervision(norm, dense=True)(rep, feats)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(*(torch.autograd.grad(x, rep)[0] for x in (a, b)),
                                   rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="feature rows"):
        SimilaritySupervision()(rep, [narrow[0][:5]])


def test_small_modules():
    torch.manual_seed(0)
    c, ids = torch.randn(5, 4), torch.randn(5, 4, requires_grad=True)
    gate = FilterGate(4, "id")
    assert gate(c, ids).shape == (5, 4)
    with pytest.raises(ValueError, match="needs ID embeddings"):
        gate(c)
    with pytest.raises(ValueError, match="gate must be one of"):
        FilterGate(4, "both")
    one = [torch.randn(5, 4)]
    for mode in ("sum", "mean", "attn"):  # one branch: returned as is (attention weight 1)
        torch.testing.assert_close(ModalityFusion(4, mode)(one), one[0])
    with pytest.raises(ValueError, match="modal_fuse must be one of"):
        ModalityFusion(4, "max")


def test_trains_end_to_end_with_the_user_graph(tmp_path):
    result = run(tiny_config("DREPMREC", "no_grid=true", "user_modal=uu_graph", epochs=2),
                 out=tmp_path, console=False)
    assert len(result.points[0]["epochs"]) == 2
    assert result.best["valid"]["recall@20"] > 0


@pytest.mark.parametrize("name", MODELS)
def test_bad_input(tiny, name):
    image, text = tiny.features["image"], tiny.features["text"]
    bad = text.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="text features hold NaN"):
        build(name, with_features(tiny, image=image, text=bad))
    inf = image.copy()
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="image features hold NaN or infinite"):
        build(name, with_features(tiny, image=inf, text=text))
    with pytest.raises(ValueError, match="needs item features"):
        build(name, with_features(tiny))
    # One modality is allowed: the modal line has one branch.
    model, _ = build(name, with_features(tiny, text=text))
    opt = torch.optim.Adam(model.model_parameters(), lr=1e-3)
    users, pos, neg = one_batch(tiny)
    assert torch.isfinite(model.train_step(users, pos, neg, opt))
    if name == "DREPMREC":
        assert list(model.item_gates) == ["text"]
        for sets, match in [(["gate=both"], "gate must be one of"),
                            (["user_modal=graph"], "user_modal must be one of"),
                            (["modal_fuse=max"], "modal_fuse must be one of"),
                            (["fusion=product"], "fusion must be one of"),
                            (["temperature=0.0"], "temperature must be positive")]:
            with pytest.raises(ValueError, match=match):
                build(name, tiny, *sets)
