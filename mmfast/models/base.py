"""What a model is to the trainer: parameters, a BPR-style loss per batch, final embeddings."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mmfast.data.dataset import Dataset


class Recommender(nn.Module):
    """Base class of every model the trainer runs.

    A subclass implements ``calculate_loss`` (a scalar tensor for one batch of
    ``(users, positives, negatives)``; it must not read values back to the host, so that a
    training step never waits on the device) and ``embeddings`` (final user and item vectors;
    the score of (u, i) is their inner product, as in MMRec's ``full_sort_predict``).
    ``pre_epoch_processing``/``post_epoch_processing`` are MMRec's per-epoch hooks.

    Default hyper-parameters come from ``config_file`` (a YAML path), else the package's
    ``configs/model/<Name>.yaml``, else ``defaults``.
    """

    config_file: ClassVar[str | Path | None] = None
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: Mapping[str, Any], dataset: Dataset, device: torch.device) -> None:
        super().__init__()
        self.config = dict(config)
        self.n_users, self.n_items = dataset.n_users, dataset.n_items
        self.device = torch.device(device)

    # --------------------------------------------------------------- the contract
    def calculate_loss(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors [n_users, d], item vectors [n_items, d]) for full ranking."""
        raise NotImplementedError

    def pre_epoch_processing(self) -> None:
        """Runs before each training epoch (FREEDOM prunes edges here)."""

    def post_epoch_processing(self) -> None:
        """Runs after each training epoch."""

    # --------------------------------------------------------------- helpers
    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The nearest class in the MRO with a ``config_file``, a package YAML of its name,
        or ``defaults`` decides (so a subclass inherits its parent's defaults)."""
        from mmfast.trainer.config import load_yaml, model_config_path

        for klass in cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, Recommender)):
                break
            if klass.__dict__.get("config_file") is not None:
                return load_yaml(klass.__dict__["config_file"])
            path = model_config_path(klass.__name__)
            if path.is_file():
                return load_yaml(path)
            if klass.__dict__.get("defaults"):
                return dict(klass.__dict__["defaults"])
        return {}

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __str__(self) -> str:
        # MMRec prints the module tree followed by the trainable parameter count.
        return super().__repr__() + f"\nTrainable parameters: {self.n_trainable()}"
