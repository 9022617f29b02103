"""Interim dense evaluator until the top-K branch's Evaluator lands (then this file goes)."""
from __future__ import annotations

import math
from typing import Mapping

import torch

from mmfast.data.dataset import Dataset


class DenseEvaluator:
    def __init__(self, dataset: Dataset, config: Mapping, device: torch.device) -> None:
        self.dataset, self.device = dataset, device
        self.metrics = [m.lower() for m in config["metrics"]]
        self.ks = [int(k) for k in config["topk"]]
        self.batch = int(config["eval_batch_size"])

    @torch.no_grad()
    def __call__(self, users_emb: torch.Tensor, items_emb: torch.Tensor, split: str) -> dict[str, float]:
        truth = self.dataset.split(split)
        train = self.dataset.train
        users = truth.active_users()
        kmax = max(self.ks)
        sums = {f"{m}@{k}": 0.0 for m in self.metrics for k in self.ks}
        for s in range(0, users.numel(), self.batch):
            ub = users[s:s + self.batch]
            scores = users_emb[ub.to(users_emb.device)] @ items_emb.T
            deg = train.user_degrees()[ub]
            rows = torch.repeat_interleave(torch.arange(ub.numel()), deg)
            cols = torch.cat([train.history(int(u)) for u in ub]) if ub.numel() else rows
            scores[rows.to(scores.device), cols.to(scores.device)] = -1e10
            top = torch.topk(scores, kmax).indices.cpu()
            for r, u in enumerate(ub.tolist()):
                t = set(truth.history(u).tolist())
                hits = [1.0 if i in t else 0.0 for i in top[r].tolist()]
                for k in self.ks:
                    h = hits[:k]
                    n_hit = sum(h)
                    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(t), k)))
                    dcg = sum(x / math.log2(j + 2) for j, x in enumerate(h))
                    prec = [sum(h[: j + 1]) / (j + 1) for j in range(k)]
                    ap = sum(p * x for p, x in zip(prec, h)) / min(len(t), k)
                    vals = {"recall": n_hit / len(t), "ndcg": dcg / idcg, "precision": n_hit / k,
                            "map": ap, "hit": float(n_hit > 0)}
                    for m in self.metrics:
                        sums[f"{m}@{k}"] += vals[m]
        n = max(users.numel(), 1)
        return {key: round(v / n, 4) for key, v in sums.items()}
