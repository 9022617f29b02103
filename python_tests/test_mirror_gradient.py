"""Mirror Gradient (``--mg``, MMRec's trainer option): its config layer and grid, the two-step
update against a hand-written one, every model's step taking the loss scale, resume."""
from __future__ import annotations

import inspect
import logging

import pytest
import torch

from mmfast import models
from mmfast.configs import ConfigError
from mmfast.data import load_dataset
from mmfast.models.base import Recommender
from mmfast.trainer import Trainer, TrainingInterrupted, run
from mmfast.trainer import config as cfg
from trainer_helpers import (  # noqa: F401 (autouse fixtures)
    assert_same_run, ctrl_c_at_epoch_call, one_thread, private_cache, tiny_config,
)


def test_mg_layer_appends_its_axes_to_the_grid():
    plain = tiny_config("LightGCN")
    on = tiny_config("LightGCN", "mg=true")
    assert on["hyper_parameters"] == plain["hyper_parameters"] + ["alpha1", "alpha2", "beta"]
    assert len(cfg.grid_points(on)) == 3 * len(cfg.grid_points(plain))  # alpha2 in {.1, .2, .3}
    assert {(p["alpha1"], p["beta"]) for p in cfg.grid_points(on)} == {(1.0, 3)}
    assert tiny_config("LightGCN", mg=True)["hyper_parameters"] == on["hyper_parameters"]
    point = cfg.grid_points(tiny_config("LightGCN", "no_grid=true", mg=True))
    assert [(p["alpha1"], p["alpha2"], p["beta"]) for p in point] == [(1.0, 0.1, 3)]
    # A user's own value wins over the layer's grid; the last word on mg decides.
    one = tiny_config("LightGCN", "mg=true", "alpha2=0.25")
    assert {p["alpha2"] for p in cfg.grid_points(one)} == {0.25}
    assert "alpha2" not in tiny_config("LightGCN", "mg=true", "mg=false")


def test_mg_keys_need_mg_and_are_checked():
    with pytest.raises(ConfigError, match="unknown config key 'alpha2'"):
        tiny_config("LightGCN", "alpha2=0.2")
    with pytest.raises(ConfigError, match="beta .*positive integer"):
        tiny_config("LightGCN", "mg=true", "beta=0")
    with pytest.raises(ConfigError, match="alpha1"):
        tiny_config("LightGCN", "mg=true", "alpha1=[1.0, x]")


@models.register("MGToy")
class MGToy(Recommender):
    """One parameter table and a deterministic loss: sum over the batch of |w_u - w_i|² + w_j."""

    defaults = {"embedding_size": 5}

    def __init__(self, config, dataset, device):
        super().__init__(config, dataset, device)
        self.w = torch.nn.Parameter(torch.randn(self.n_users + self.n_items, 5, dtype=torch.float64))

    def calculate_loss(self, users, positives, negatives):
        u, i, j = self.w[users], self.w[self.n_users + positives], self.w[self.n_users + negatives]
        return ((u - i) ** 2).sum() / len(users) + j.sum() / len(users)

    def embeddings(self):
        return self.w[: self.n_users], self.w[self.n_users:]


class FixedBatches:
    """A sampler stand-in yielding the same batches every epoch."""

    negatives = True

    def __init__(self, batches):
        self.batches, self.device, self.generator = batches, torch.device("cpu"), torch.Generator()

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_mg_epoch_equals_a_hand_written_two_step_update(tmp_path):
    config = cfg.grid_points(tiny_config("MGToy", "no_grid=true", "alpha2=0.3", "beta=2",
                                         "learning_rate=0.05", mg=True))[0]
    ds = load_dataset(config)
    torch.manual_seed(0)
    model = MGToy(config, ds, "cpu")
    gen = torch.Generator().manual_seed(1)
    batches = [tuple(torch.randint(0, n, (7,), generator=gen)
                     for n in (ds.n_users, ds.n_items, ds.n_items)) for _ in range(5)]
    w = model.w.detach().clone().requires_grad_(True)
    trainer = Trainer(config, model, FixedBatches(batches), None, tmp_path, logging.getLogger("t"))
    epoch_loss = trainer.train_epoch(0)

    # By hand: batches 0, 2, 4 (beta = 2) take a step on 1.0 x loss, then one on -0.3 x the loss
    # at the moved parameters; batches 1, 3 one plain step. The epoch's loss sums each batch's
    # loss before its first step.
    def loss_at(w, users, pos, neg):
        u, i, j = w[users], w[ds.n_users + pos], w[ds.n_users + neg]
        return ((u - i) ** 2).sum() / len(users) + j.sum() / len(users)

    adam = torch.optim.Adam([w], lr=0.05)
    expected = 0.0
    for b, batch in enumerate(batches):
        scales = [1.0, -0.3] if b % 2 == 0 else [1.0]
        for k, scale in enumerate(scales):
            adam.zero_grad()
            loss = loss_at(w, *batch)
            if k == 0:
                expected += float(loss.detach())
            (scale * loss).backward()
            adam.step()
    torch.testing.assert_close(model.w.detach(), w.detach(), rtol=0, atol=1e-12)
    assert epoch_loss == pytest.approx(expected, rel=1e-6)  # the trainer sums in float32
    assert adam.state[w]["step"] == trainer.optimizer.state[model.w]["step"] == 8


def test_every_model_step_takes_the_loss_scale():
    for name in models.available():
        step = models.get(name).train_step
        assert "loss_scale" in inspect.signature(step).parameters, name


@pytest.mark.parametrize("model", ["LightGCN", "SEA"])
def test_mg_trains_and_resumes_bit_identically(tmp_path, model):
    config = tiny_config(model, "no_grid=true", epochs=3, mg=True)
    full = run(config, out=tmp_path / "a", console=False)
    assert full.points[0]["status"] == "finished" and full.params["alpha2"] == 0.1
    with ctrl_c_at_epoch_call(2), pytest.raises(TrainingInterrupted) as info:
        run(config, out=tmp_path / "b", console=False)
    assert_same_run(full, run(resume=info.value.folder, console=False))
