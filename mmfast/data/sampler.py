"""MMRec's training batches: shuffled (user, positive, negative) with uniform rejected negatives,
or (user, positive, None) without negative sampling (MMRec's ``use_neg_sampling: False``).

MMRec draws, for each training pair (u, i), one item j uniformly from the items that appear
in train and redraws while j is in u's training history. Here every draw of an epoch happens
at once; membership is tested against the sorted keys ``u * n_items + j`` of the training
pairs with ``searchsorted``, and only the rejected draws are drawn again.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

import numpy as np
import torch

from mmfast.data.interactions import Interactions

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class NegativeSampler:
    """Epochs of MMRec-style BPR batches, built on ``device`` from a seeded generator.

    Iterating yields ``(users, positives, negatives)`` int64 tensors of ``batch_size`` rows
    (the last batch is smaller). Each iteration is a new epoch: a new shuffle and new
    negatives, continuing the generator's stream (``reseed`` restarts it).

    ``negatives=False`` (MMRec's ``use_neg_sampling: False``, BM3's setting) yields
    ``(users, positives, None)``: the same shuffle, and no negative is drawn, so the
    generator advances by the shuffle alone (MMRec's loader then holds the two rows
    [users; items] and draws nothing either). With the default ``True`` the batches and the
    generator's stream are those of a sampler without the option.
    """

    def __init__(
        self,
        train: Interactions,
        batch_size: int = 2048,
        *,
        device: torch.device | str = "cpu",
        seed: int = 999,
        shuffle: bool = True,
        max_rounds: int = 1000,
        negatives: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"NegativeSampler: batch_size must be positive, got {batch_size}")
        if len(train) == 0:
            raise ValueError("NegativeSampler: the training split is empty")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.max_rounds = max_rounds
        self.negatives = bool(negatives)
        self.n_items = train.n_items
        self.users = train.users().to(self.device)
        self.positives = train.items.to(self.device)
        # Interactions keeps rows sorted by (user, item), so these keys are already sorted.
        self.keys = self.users * self.n_items + self.positives
        self.candidates = torch.unique(train.items).to(self.device)
        full = torch.nonzero(train.user_degrees() >= self.candidates.numel()).flatten()
        if self.negatives and full.numel():
            raise ValueError(
                f"NegativeSampler: user {int(full[0])} has interacted with every training item, "
                "so no negative exists for it"
            )
        self.generator = torch.Generator(device=self.device)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        return -(-self.users.numel() // self.batch_size)

    def is_positive(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each (user, item) is a training pair (vectorized membership test)."""
        q = users * self.n_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def sample(self, users: torch.Tensor) -> torch.Tensor:
        """One negative per entry of ``users``: uniform over training items, not in history."""
        n_cand = self.candidates.numel()
        neg = self.candidates[torch.randint(
            n_cand, users.shape, generator=self.generator, device=self.device)]
        todo = torch.nonzero(self.is_positive(users, neg)).flatten()
        rounds = 0
        while todo.numel():
            rounds += 1
            if rounds > self.max_rounds:
                raise RuntimeError(
                    f"NegativeSampler: {todo.numel()} draws still rejected after "
                    f"{self.max_rounds} rounds"
                )
            redraw = self.candidates[torch.randint(
                n_cand, todo.shape, generator=self.generator, device=self.device)]
            neg[todo] = redraw
            todo = todo[self.is_positive(users[todo], redraw)]
        return neg

    def epoch(self) -> Batch:
        """One whole epoch as three tensors (the third None without negatives), shuffled,
        before batching."""
        n = self.users.numel()
        if self.shuffle:
            perm = torch.randperm(n, generator=self.generator, device=self.device)
            users, pos = self.users[perm], self.positives[perm]
        else:
            users, pos = self.users, self.positives
        return users, pos, self.sample(users) if self.negatives else None

    def __iter__(self) -> Iterator[Batch]:
        users, pos, neg = self.epoch()
        b = self.batch_size
        for s in range(0, users.numel(), b):
            yield users[s:s + b], pos[s:s + b], None if neg is None else neg[s:s + b]


def sample_negatives_reference(
    users: Sequence[int],
    history: Sequence[set[int]],
    candidates: Sequence[int],
    rng: random.Random,
) -> np.ndarray:
    """MMRec's per-interaction loop (``TrainDataLoader._sample_neg_ids``), for tests and
    benchmarks: for each user draw a candidate until it is outside the user's history.
    ``rng.sample(candidates, 1)`` is MMRec's own call (``TrainDataLoader._random``)."""
    candidates = list(candidates)
    out = []
    for u in users:
        hist = history[u]
        j = rng.sample(candidates, 1)[0]
        while j in hist:
            j = rng.sample(candidates, 1)[0]
        out.append(j)
    return np.asarray(out, dtype=np.int64)


def history_sets(train: Interactions) -> list[set[int]]:
    """Per-user sets of training items (input of :func:`sample_negatives_reference`)."""
    rowptr = train.rowptr.tolist()
    items = train.items.tolist()
    return [set(items[rowptr[u]:rowptr[u + 1]]) for u in range(train.n_users)]
