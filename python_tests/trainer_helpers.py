"""Small synthetic runs for the trainer and CLI tests (seconds on CPU)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pytest
import torch

from mmfast import models
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
