"""The in-memory dataset: interactions per split (:mod:`mmfast.data.interactions`) plus item
features, with its graphs and sampler one call away."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfast.data.graphs import normalized_adjacency, user_item_lift
from mmfast.data.interactions import DataFormatError, Interactions
from mmfast.data.sampler import NegativeSampler
from mmfast.ops.sparse_graph import SparseGraph

SPLITS = ("train", "valid", "test")
__all__ = ["SPLITS", "DataFormatError", "Dataset", "Interactions"]


def _stats_block(title: str, users: torch.Tensor, items: torch.Tensor) -> list[str]:
    """MMRec's RecDataset.__str__: counts are of distinct ids present, not of id ranges."""
    n = users.numel()
    n_u = int(torch.unique(users).numel())
    n_i = int(torch.unique(items).numel())
    lines = [title]
    lines.append(f"The number of users: {n_u}")
    lines.append(f"Average actions of users: {n / n_u if n_u else 0.0}")
    lines.append(f"The number of items: {n_i}")
    lines.append(f"Average actions of items: {n / n_i if n_i else 0.0}")
    lines.append(f"The number of inters: {n}")
    sparsity = 1 - n / n_u / n_i if n_u and n_i else 1.0
    lines.append(f"The sparsity of the dataset: {sparsity * 100}%")
    return lines


@dataclass
class Dataset:
    """A recommendation dataset in MMRec's sense.

    ``n_users``/``n_items`` are ``max id + 1`` over all rows of the source (MMRec's rule), so
    items that never appear in train still have rows in every item table. ``features`` maps a
    modality name to a float32 ``[n_items, d]`` array; arrays read from disk are copy-on-write
    memory maps, so they are not copied until written to.
    """

    name: str
    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    features: dict[str, np.ndarray] = field(default_factory=dict)
    source: Path | None = None
    # Valid/test rows dropped by MMRec's cold-start filter (their user is absent from train);
    # kept so that statistics of the whole file match what MMRec prints.
    cold_start: dict[str, Interactions] = field(default_factory=dict)

    def split(self, name: str) -> Interactions:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    @property
    def cold_start_dropped(self) -> dict[str, int]:
        """Rows per split removed by the cold-start filter."""
        return {k: len(v) for k, v in self.cold_start.items()}

    @property
    def n_interactions(self) -> int:
        return len(self.train) + len(self.valid) + len(self.test)

    def feature(self, modality: str, device: torch.device | str | None = None) -> torch.Tensor:
        """One modality as a float32 tensor; on CPU it shares memory with the array."""
        if modality not in self.features:
            raise KeyError(
                f"dataset {self.name!r} has no {modality!r} features; it has {self.modalities}"
            )
        t = torch.from_numpy(self.features[modality])
        return t if device is None else t.to(device)

    def train_items(self) -> torch.Tensor:
        """Items that appear in train (MMRec draws negatives from these), ascending."""
        return torch.unique(self.train.items)

    def norm_adj(self, **kwargs) -> SparseGraph:
        """Â over users + items (G1); see :func:`mmfast.data.graphs.normalized_adjacency`."""
        return normalized_adjacency(self.train, **kwargs)

    def user_item_lift(self, **kwargs) -> SparseGraph:
        """R̂, the user x item block of Â (G4); see :func:`mmfast.data.graphs.user_item_lift`."""
        return user_item_lift(self.train, **kwargs)

    def sampler(self, **kwargs) -> NegativeSampler:
        """MMRec's training batches with negatives; see :class:`mmfast.data.sampler.NegativeSampler`."""
        return NegativeSampler(self.train, **kwargs)

    def __str__(self) -> str:
        parts = [self.split(s) for s in SPLITS]
        # The first block is the whole file as MMRec loads it, before the cold-start filter.
        whole = parts + list(self.cold_start.values())
        users = torch.cat([p.users() for p in whole])
        items = torch.cat([p.items for p in whole])
        lines = _stats_block(self.name, users, items)
        for title, part in zip(("Training", "Validation", "Testing"), parts):
            lines.append(f"\n===={title}====")
            lines.extend(_stats_block(self.name, part.users(), part.items))
        if any(self.cold_start_dropped.values()):
            dropped = ", ".join(f"{k} {v}" for k, v in self.cold_start_dropped.items())
            lines.append(f"\nCold-start rows dropped (user absent from train): {dropped}")
        if self.features:
            feats = ", ".join(f"{m} {a.shape[1]}-d" for m, a in self.features.items())
            lines.append(f"Features: {feats}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, n_users={self.n_users}, n_items={self.n_items}, "
            f"train={len(self.train)}, valid={len(self.valid)}, test={len(self.test)}, "
            f"features={ {m: tuple(a.shape) for m, a in self.features.items()} })"
        )
