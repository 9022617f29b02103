"""FREEDOM: the loss and its gradients at one step against a float64 transcription of MMRec's
``calculate_loss`` (dense graphs, every item projected with its bias), and the modality BPR term
of :class:`mmfast.nn.ModalityProjection` against projecting the rows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmfast.data import load_dataset
from mmfast.nn import ModalityProjection, bpr_loss
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    one_batch, one_thread, private_cache, tiny_config,
)
from trainer_helpers import build_model as build


@pytest.fixture(scope="module")
def tiny():
    return load_dataset(tiny_config("FREEDOM", epochs=1))


def _reference(model, users, pos, neg):
    """MMRec's FREEDOM.forward + calculate_loss written plainly: h = S^L e_item over the dense
    kNN graph, the mean of the pruned Â's layers, every item's features projected (bias
    included) before the rows are taken."""
    ue, ie = model.ids.user.weight, model.ids.item.weight
    s, a = model.mm_adj.to_dense(), model.train_adj.to_dense()
    h = ie
    for _ in range(model.n_mm_layers):
        h = s @ h
    x = torch.cat([ue, ie])
    layers = [x]
    for _ in range(model.n_ui_layers):
        x = a @ x
        layers.append(x)
    out = torch.stack(layers, 1).mean(1)
    u, i = out[: model.n_users], out[model.n_users:] + h

    def bpr(ub, p, n):
        return -F.logsigmoid((ub * p).sum(-1) - (ub * n).sum(-1)).mean()

    ub = u[users]
    loss = bpr(ub, i[pos], i[neg])
    for m in model.modal.modalities:
        proj = model.modal.projections[m]
        feats = model.modal.features[m] @ proj.weight.T + proj.bias
        loss = loss + model.reg_weight * bpr(ub, feats[pos], feats[neg])
    return loss


@pytest.mark.parametrize("sets", [[], ["n_ui_layers=1", "n_mm_layers=2", "reg_weight=0.1"]],
                         ids=["default", "layers"])
def test_loss_and_gradients_match_a_float64_transcription(tiny, sets):
    model, _ = build("FREEDOM", tiny, *sets, seed=3)
    model.pre_epoch_processing()  # a pruned Â, as in training
    model.double()
    users, pos, neg = one_batch(tiny, size=96)
    params = [q for q in model.parameters() if q.requires_grad]
    loss = model.calculate_loss(users, pos, neg)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    want_loss = _reference(model, users, pos, neg)
    want = torch.autograd.grad(want_loss, params, allow_unused=True)
    torch.testing.assert_close(loss, want_loss, rtol=1e-10, atol=1e-12)
    names = [n for n, q in model.named_parameters() if q.requires_grad]
    for name, g, w in zip(names, got, want):
        if name.endswith(".bias") and name.startswith("modal."):
            # b_m cancels in the BPR difference: zero in MMRec's form, absent in mmfast's.
            assert g is None and float(w.abs().max()) < 1e-12, name
            continue
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11, msg=name)


@pytest.mark.parametrize("trainable", [True, False])
def test_modality_bpr_matches_projected_rows(trainable):
    g = torch.Generator().manual_seed(0)
    raw = {"image": torch.randn(37, 19, generator=g, dtype=torch.float64),
           "text": torch.randn(37, 33, generator=g, dtype=torch.float64)}
    proj = ModalityProjection(raw, 12, trainable=trainable).double()
    users = torch.randn(50, 12, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randint(0, 37, (50,), generator=g)
    neg = torch.randint(0, 37, (50,), generator=g)
    pos[:5] = neg[:5] = 4  # repeated rows, and a positive equal to its negative
    params = [users, *(q for q in proj.parameters() if q.requires_grad)]
    for m in raw:
        got = proj.bpr_loss(m, users, pos, neg)
        want = bpr_loss(users, proj(m, pos), proj(m, neg))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        ga = torch.autograd.grad(got, params, allow_unused=True)
        gb = torch.autograd.grad(want, params, allow_unused=True)
        for a, b in zip(ga, gb):
            if a is None:  # the bias, and the other modality's tables
                assert b is None or float(b.abs().max()) < 1e-12
            else:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
