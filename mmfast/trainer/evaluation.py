"""The trainer's view of evaluation: ``evaluate(user_vectors, item_vectors, split) -> metrics``.

Metrics are MMRec's (MODELS.md §1.3), keyed like ``recall@20``, in the order metric by
metric, k by k. The work is done by the top-K family's ``Evaluator`` (issue #4).
"""
from __future__ import annotations

from typing import Mapping, Protocol

import torch

from mmfast.data.dataset import Dataset


class SplitEvaluator(Protocol):
    def __call__(self, users: torch.Tensor, items: torch.Tensor, split: str) -> dict[str, float]:
        ...


def metric_names(config: Mapping) -> list[str]:
    return [f"{m.lower()}@{k}" for m in config["metrics"] for k in config["topk"]]


def valid_metric(config: Mapping) -> str:
    return str(config["valid_metric"]).lower()


def build_evaluator(dataset: Dataset, config: Mapping, device: torch.device) -> SplitEvaluator:
    from mmfast.trainer._interim_eval import DenseEvaluator

    return DenseEvaluator(dataset, config, device)
