"""AlignRec's intermediate metrics of item features (MODELS.md §3.6), judged without training
a recommender. Both rank every item for every user of a split with
:func:`mmfast.ops.topk_scores` (training items excluded, through :class:`Evaluator`), so no
users x items matrix is formed:

- **zero-shot**: a user is the mean feature of their training items; items are ranked by
  cosine similarity to it (query = that mean, keys = the L2-normalized features);
- **item-CF**: item-based collaborative filtering whose item-item similarity is the cosine of
  the features alone; a candidate scores the sum of its similarities to the user's training
  items, sum_i cos(f_i, f_j) = <sum_i f_i / |f_i|, f_j / |f_j|> (query = the sum of the
  normalized history features).

The two differ in how the history is pooled: the zero-shot mean weighs each item by its
feature norm, item-CF weighs every item the same.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from mmfast.data.dataset import Dataset
from mmfast.eval.evaluator import Evaluator
from mmfast.ops import SparseGraph, spmm

METHODS = ("zero_shot", "item_cf")


def history_matrix(dataset: Dataset, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> SparseGraph:
    """The binary users x items matrix of the training interactions."""
    train = dataset.train
    col = train.items.to(torch.int32 if train.n_items < 2**31 else torch.int64)
    graph = SparseGraph(train.rowptr, col, torch.ones(col.numel(), dtype=dtype),
                        (train.n_users, train.n_items))
    return graph.to(device)


def feature_queries(dataset: Dataset, features: torch.Tensor, method: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(user queries [n_users, d], item keys [n_items, d]) of ``method`` for ``features``."""
    if method not in METHODS:
        raise ValueError(f"feature metrics: method must be one of {METHODS}, got {method!r}")
    if features.dim() != 2 or features.shape[0] != dataset.n_items:
        raise ValueError(f"feature metrics: features must be [n_items={dataset.n_items}, d], "
                         f"got {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("feature metrics: the features hold NaN or infinite values")
    history = history_matrix(dataset, features.device, features.dtype)
    keys = F.normalize(features, dim=1)
    if method == "zero_shot":
        counts = (dataset.train.rowptr[1:] - dataset.train.rowptr[:-1]).to(features)
        queries = spmm(history, features) / counts.clamp(min=1)[:, None]
    else:
        queries = spmm(history, keys)
    return queries, keys


def feature_metrics(
    dataset: Dataset,
    features: torch.Tensor,
    *,
    ks: tuple[int, ...] = (10, 20),
    metrics: tuple[str, ...] = ("recall", "ndcg"),
    splits: tuple[str, ...] = ("valid", "test"),
    batch_size: int = 4096,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {split: {"recall@20": ...}}}`` for zero-shot and item-CF."""
    evaluator = Evaluator(dataset, ks=list(ks), metrics=list(metrics), batch_size=batch_size)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        queries, keys = feature_queries(dataset, features, method)
        out[method] = {s: evaluator.evaluate(s, queries, keys) for s in splits}
    return out


def results_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """A readable table of ``rows[name][split][metric]``: one line per name and split, one
    column per metric."""
    metrics = list(dict.fromkeys(k for r in rows.values() for part in r.values() for k in part))
    lines_ = [(f"{name}  {split}", part) for name, r in rows.items() for split, part in r.items()]
    width = max([len(label) for label, _ in lines_] + [8])
    cw = max([len(m) for m in metrics] + [7])
    out = [f"{'':<{width}}" + "".join(f"  {m:>{cw}}" for m in metrics)]
    for label, part in lines_:
        out.append(f"{label:<{width}}" + "".join(
            f"  {part[m]:>{cw}.4f}" if m in part else f"  {'':>{cw}}" for m in metrics))
    return "\n".join(out)
