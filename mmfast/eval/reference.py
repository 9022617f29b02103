"""A straightforward dense evaluator in MMRec's style, the yardstick of :class:`Evaluator`.

It writes the whole users x items score matrix, masks training items with -1e10 as MMRec's
``TopKEvaluator`` does, takes ``torch.topk``, marks hits against a dense truth matrix and
applies the formulas of MMRec's ``utils/metrics.py`` in numpy (vectorized: MMRec's per-row
loops in ndcg/map become ``np.minimum``). Memory is O(users x items): for tests only.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from mmfast.data.dataset import Interactions


def evaluate_reference(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    train: Interactions,
    truth: Interactions,
    ks: Iterable[int] = (5, 10, 20, 50),
    metrics: Sequence[str] = ("recall", "ndcg", "precision", "map"),
) -> dict[str, float]:
    """Metrics over the users present in ``truth`` (unrounded means)."""
    ks = sorted(set(ks))
    users = truth.active_users()
    scores = (user_emb[users] @ item_emb.T).detach().cpu()
    dense_train = train.to_graph().to_dense()[users] > 0
    scores[dense_train] = -1e10
    topk = torch.topk(scores, max(ks), dim=1).indices
    dense_truth = truth.to_graph().to_dense()[users] > 0
    pos_index = dense_truth.gather(1, topk).numpy()
    pos_len = dense_truth.sum(1).numpy()

    k_max = pos_index.shape[1]
    ranks = np.arange(1, k_max + 1)
    hits = pos_index.astype(np.float64)
    cum = np.cumsum(hits, axis=1)
    table = {
        "recall": cum / pos_len[:, None],
        "precision": cum / ranks,
        "hit": (cum > 0).astype(np.float64),
    }
    # ndcg: idcg stops growing after min(|T_u|, k_max) ranks.
    idcg_len = np.minimum(pos_len, k_max)
    idcg = np.cumsum(1.0 / np.log2(ranks + 1))
    idcg = idcg[np.minimum(ranks[None, :], idcg_len[:, None]) - 1]
    dcg = np.cumsum(np.where(pos_index, 1.0 / np.log2(ranks + 1), 0.0), axis=1)
    table["ndcg"] = dcg / idcg
    # map: sum of precision@r at hits, over min(|T_u|, r) for r past |T_u|.
    sum_pre = np.cumsum(cum / ranks * hits, axis=1)
    table["map"] = sum_pre / np.minimum(ranks[None, :], idcg_len[:, None])
    return {f"{m}@{k}": float(table[m][:, k - 1].mean()) for m in metrics for k in ks}
