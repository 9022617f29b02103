"""The trainer's view of evaluation: ``evaluate(user_vectors, item_vectors, splits) -> [metrics]``.

Metrics are MMRec's (MODELS.md §1.3), keyed like ``recall@20``, in the order metric by
metric, k by k, rounded to 4 decimals as MMRec reports them. The work is done by
:class:`mmfast.eval.Evaluator` (fused top-K with training items masked, metrics on device).
"""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch

from mmfast.data.dataset import Dataset


class SplitEvaluator(Protocol):
    """The metrics of each named split (``("valid", "test")``), in that order."""

    def __call__(self, users: torch.Tensor, items: torch.Tensor,
                 splits: Sequence[str]) -> list[dict[str, float]]:
        ...


def metric_names(config: Mapping) -> list[str]:
    return [f"{m.lower()}@{k}" for m in config["metrics"] for k in config["topk"]]


def valid_metric(config: Mapping) -> str:
    return str(config["valid_metric"]).lower()


def build_evaluator(dataset: Dataset, config: Mapping, device: torch.device) -> SplitEvaluator:
    """The fused full-ranking evaluator over ``dataset``'s splits (training items masked);
    it runs on the device of the embeddings it is given and on the default op backend. The
    splits share one ranking (they mask the same training items)."""
    from mmfast.eval import Evaluator

    evaluator = Evaluator(
        dataset, ks=[int(k) for k in config["topk"]],
        metrics=[str(m).lower() for m in config["metrics"]],
        batch_size=int(config["eval_batch_size"]),
    )

    def evaluate(users: torch.Tensor, items: torch.Tensor,
                 splits: Sequence[str]) -> list[dict[str, float]]:
        return evaluator.evaluate_splits(splits, users, items)

    return evaluate
