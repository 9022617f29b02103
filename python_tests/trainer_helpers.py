"""Small synthetic runs for the trainer and CLI tests (seconds on CPU)."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from mmfast import models
from mmfast.data import Dataset
from mmfast.trainer import Trainer
from mmfast.trainer import config as cfg

# About 400 users, 200 items, 6k interactions after 5-core: a few hundred ms per epoch.
TINY = [
    "synthetic.n_users=400", "synthetic.n_items=200", "synthetic.n_interactions=6000",
    "train_batch_size=512", "eval_batch_size=512",
]


def tiny_config(model: str = "LightGCN", *extra: str, **cli: Any) -> dict[str, Any]:
    """A resolved config for ``model`` on the tiny synthetic set (single grid point unless
    ``extra`` sets lists)."""
    single = {
        "LightGCN": ["n_layers=2", "reg_weight=1e-4"],
        "FREEDOM": ["dropout=0.8", "reg_weight=1e-3"],
    }.get(model, [])
    return cfg.resolve(
        model, "synthetic", model_defaults=models.get(model).default_config("synthetic"),
        overrides=[*TINY, *single, *extra], cli={"device": "cpu", **cli},
    )


def build_model(name: str, dataset: Dataset, *sets: str, seed: int = 0):
    """``name`` built on ``dataset`` at its ``--no-grid`` point (plus ``sets``), seeded:
    ``(model, point)``."""
    point = cfg.grid_points(tiny_config(name, "no_grid=true", *sets, epochs=1))[0]
    torch.manual_seed(seed)
    return models.get(name)(point, dataset, "cpu"), point


def one_batch(dataset: Dataset, size: int = 128, seed: int = 0):
    """The first ``(users, pos, neg)`` batch of a freshly seeded sampler."""
    torch.manual_seed(seed)
    return next(iter(dataset.sampler(batch_size=size)))


def with_features(dataset: Dataset, **features: np.ndarray) -> Dataset:
    """``dataset`` with exactly these feature tables (bad-input tests)."""
    return dataclasses.replace(dataset, features=features)


def assert_loss_decreases(model, dataset: Dataset, steps: int = 8, lr: float = 0.01) -> None:
    """``steps`` training steps on one batch: finite losses, the last below the first."""
    opt = torch.optim.Adam(model.model_parameters(), lr=lr)
    users, pos, neg = one_batch(dataset)
    losses = [float(model.train_step(users, pos, neg, opt)) for _ in range(steps)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Graph and kNN caches of a test in its own folder (autouse where imported)."""
    monkeypatch.setenv("MMFAST_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: thread fan-out only costs here (and on a shared CI box it costs a lot)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def ctrl_c_at_epoch_call(n: int) -> Iterator[None]:
    """Inside the block, the n-th call of ``Trainer.train_epoch`` raises KeyboardInterrupt
    (Ctrl-C in the middle of that epoch)."""
    original, calls = Trainer.train_epoch, {"n": 0}

    def train_epoch(self, epoch):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, epoch)

    Trainer.train_epoch = train_epoch
    try:
        yield
    finally:
        Trainer.train_epoch = original


def one_step(model, users, positives, negatives, backend: str):
    """(loss, {parameter: gradient}, embeddings()) of one step of ``model`` under ``backend``."""
    from mmfast.ops import use_backend

    model.zero_grad(set_to_none=True)
    with use_backend(backend):
        loss = model.calculate_loss(users, positives, negatives)
        loss.backward()
        embeddings = model.embeddings()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, embeddings


def assert_backends_agree(name: str, dataset: Dataset, *sets: str, min_grads: int = 4,
                          negatives: bool = True) -> None:
    """``name`` built twice (same seed) in float64: one step on the kernels and one on the
    pure-PyTorch references give the same loss, gradients and embeddings."""
    users, pos, neg = one_batch(dataset)
    results = []
    for backend in ("mmfast", "torch"):
        model, _ = build_model(name, dataset, *sets, seed=3)
        model.double()
        results.append(one_step(model, users, pos, neg if negatives else None, backend))
    (la, ga, ea), (lb, gb, eb) = results
    assert la.dtype == torch.float64
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-12)
    assert ga.keys() == gb.keys() and len(ga) >= min_grads, sorted(ga)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-8, atol=1e-10, msg=n)
    for a, b in zip(ea, eb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def assert_same_run(full, resumed):
    """An interrupted-and-resumed run equals the uninterrupted one: the epoch losses, the best
    result and every tensor of the final model. Returns both ``last.pt`` payloads."""
    import json

    a, b = (json.loads((r.run_dir / "metrics.json").read_text()) for r in (full, resumed))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["best"] == b["best"]
    la, lb = (torch.load(r.run_dir / "last.pt", weights_only=False) for r in (full, resumed))
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    return la, lb
