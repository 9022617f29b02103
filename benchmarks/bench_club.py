"""CLUB, mmfast kernels vs the pure-PyTorch formulation CLUB code writes.

SEA's per-batch CLUB work on both modalities (two x/y pairs sharing one q-net), d = 32, at
TikTok (6,710 items), Amazon Baby (7,050) and Clothing (23,033) scale:
* ``club_learn`` alone: 50 Adam steps on the detached pairs (the reference is the Python loop
  with torch.optim.Adam);
* the bound (sampled, SEA's form) forward + backward, then those 50 steps.
"""
from __future__ import annotations

import pytest
import torch

from conftest import DEVICE, randn_rows
from mmfast.nn import ClubNet
from mmfast.ops import club_learn, club_upper_bound

SCALES = {"tiktok": 6_710, "baby": 7_050, "clothing": 23_033}
ROUNDS = {"tiktok": 5, "baby": 5, "clothing": 3}
D = 32


def setup(n: int):
    torch.manual_seed(0)
    q = ClubNet(D, D, 8).to(DEVICE)
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-4)
    xs = [randn_rows(n, D, s).requires_grad_() for s in (2, 3)]
    ys = [randn_rows(n, D, s).requires_grad_() for s in (4, 5)]
    return q, optimizer, xs, ys


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_club_learn(compare, scale, backend):
    q, optimizer, xs, ys = setup(SCALES[scale])
    compare(f"club_learn 50 steps x2 {scale}", backend,
            lambda: club_learn(xs, ys, q, optimizer, steps=50, backend=backend),
            rounds=ROUNDS[scale])


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_club(compare, scale, backend):
    q, optimizer, xs, ys = setup(SCALES[scale])

    def step():
        for t in xs + ys:
            t.grad = None
        bound = sum(club_upper_bound(x, y, q, backend=backend) for x, y in zip(xs, ys)) / 2
        bound.backward()
        club_learn(xs, ys, q, optimizer, steps=50, backend=backend)

    compare(f"club bound+50 learn steps {scale}", backend, step, rounds=ROUNDS[scale])
