"""Where a SEA training batch spends its time, part by part, on both backends.

    python benchmarks/sea_breakdown.py [--dataset tiktok] [--data-root ../shared/data]
                                       [--batches 5] [--threads N] [--json out.json]

Builds SEA on the dataset (default: the real TikTok set), then times each part of a batch on
its own, forward and backward together, averaged over ``--batches`` batches, on the mmfast
kernels and on the pure-PyTorch references: the transforms and per-modality GNNs (with fusion),
BPR, SoloSim (heads + InfoNCE over all items), the CLUB bound, the 50 q-net steps, the model's
Adam step, and a whole ``train_step``. Prints a table (ms per batch) and the epoch estimate
(batches per epoch x train_step).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from mmfast import models
from mmfast.data import load_dataset
from mmfast.nn import bpr_loss, log2_scale
from mmfast.ops import use_backend
from mmfast.trainer import config as cfg

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def parts(model, users, pos, neg, opt) -> dict[str, Callable[[], object]]:
    sep = model.separate

    def backbone():
        u, i = model.represent(model.transformed())
        (u.sum() + i.sum()).backward()

    emb = [t.detach().requires_grad_() for t in model.embeddings()]

    def bpr():  # SEA/SAND's log2 form when the model uses it (FREEDOM+SEA keeps FREEDOM's ln)
        u, i = emb
        loss = bpr_loss(u[users], i[pos], i[neg])
        (log2_scale(loss) if getattr(model, "bpr_log2", False) else loss).backward()

    z = {m: t.detach() for m, t in model.transformed().items()}
    split = {m: sep.split(z[m]) for m in z}

    def solosim():
        sep.solo_sim(split[sep.other][0], split[sep.anchor][0]).backward()

    def club_bound():
        sum(sep.distance(m, g, u) for m, (g, u) in split.items()).backward()

    def club_steps():
        sum(sep.distance(m, g, u) for m, (g, u) in split.items())
        sep.after_backward()

    def adam():
        opt.step()

    def train_step():
        model.train_step(users, pos, neg, opt)

    out = {"transforms + GNNs + fusion": backbone, "BPR": bpr, "SoloSim (heads + InfoNCE)": solosim}
    if sep.distancing == "club":
        out.update({"CLUB bound (psi + bound)": club_bound,
                    "CLUB bound + 50 q-net steps": club_steps})
    out.update({"model Adam step": adam, "whole train_step": train_step})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="SEA")
    p.add_argument("--dataset", default="tiktok")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = cfg.resolve(args.model, args.dataset,
                         model_defaults=models.get(args.model).default_config(args.dataset),
                         overrides=args.overrides,
                         cli={"data_path": args.data_root, "device": "cpu", "no_grid": True})
    point = cfg.grid_points(config)[0]
    ds = load_dataset(point)
    batches = math.ceil(ds.train.items.numel() / point["train_batch_size"])
    table: dict[str, dict[str, float]] = {}
    for backend in ("mmfast", "torch"):
        torch.manual_seed(999)
        with use_backend(backend):
            model = models.get(args.model)(point, ds, "cpu")
            opt = torch.optim.Adam(model.model_parameters(), lr=point["learning_rate"])
            users, pos, neg = next(iter(ds.sampler(batch_size=point["train_batch_size"], seed=999)))
            for name, fn in parts(model, users, pos, neg, opt).items():
                model.zero_grad(set_to_none=True)
                if name == "model Adam step":  # the step needs the model's gradients
                    model.calculate_loss(users, pos, neg).backward()
                table.setdefault(name, {})[backend] = timed(fn, args.batches)
    print(f"{args.model} on {args.dataset}: {ds.n_users} users, {ds.n_items} items, "
          f"{batches} batches/epoch, {torch.get_num_threads()} threads")
    print(f"{'part (ms per batch)':32s} {'mmfast':>10s} {'torch':>10s} {'ratio':>7s}")
    for name, row in table.items():
        print(f"{name:32s} {row['mmfast']:10.1f} {row['torch']:10.1f} "
              f"{row['torch'] / row['mmfast']:6.2f}x")
    step = table["whole train_step"]
    print(f"{'epoch estimate (s)':32s} {step['mmfast'] * batches / 1e3:10.1f} "
          f"{step['torch'] * batches / 1e3:10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dataset": args.dataset,
                                               "threads": torch.get_num_threads(),
                                               "batches_per_epoch": batches, "ms": table},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
