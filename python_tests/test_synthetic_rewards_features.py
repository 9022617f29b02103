"""The embedded synthetic dataset rewards item features (issue 10, item 6).

Every model trains its ``--no-grid`` point on the default synthetic dataset until early
stopping (patience on valid Recall@20, MMRec's protocol), and each multimodal model's best
valid Recall@20 must beat LightGCN's by at least 5% relative. Adding a model is one line:
append its name to ``MULTIMODAL``.
"""
from __future__ import annotations

import os

import pytest
import torch

from mmfast import models
from mmfast.trainer import run
from mmfast.trainer import config as cfg

MULTIMODAL = ["FREEDOM", "SEA", "SAND", "ALIGNREC", "DREPMREC", "FREEDOM+BMA"]
MARGIN = 1.05  # multimodal best valid Recall@20 >= MARGIN x LightGCN's

# Patience 10 instead of overall.yaml's 20 keeps the file within CI time; the epoch cap is
# only a guard, every run must end by early stopping (asserted below).
FAST = {"stopping_step": 10, "epochs": 600}


def best_valid_recall(model_name: str, tmp_path, **overrides) -> float:
    """Train ``model_name``'s default point on the default synthetic dataset to early
    stopping (CPU, one thread) and return its best valid Recall@20. ``overrides`` are config
    keys (``stopping_step=5``) on top of ``FAST``."""
    settings = {**FAST, **overrides}
    config = cfg.resolve(
        model_name, "synthetic", model_defaults=models.get(model_name).default_config("synthetic"),
        overrides=[f"{k}={v}" for k, v in settings.items()],
        cli={"device": "cpu", "no_grid": True},
    )
    threads, cache = torch.get_num_threads(), os.environ.get("MMFAST_CACHE")
    torch.set_num_threads(1)
    os.environ["MMFAST_CACHE"] = str(tmp_path / "cache")
    try:
        result = run(config, out=tmp_path / "runs", console=False)
    finally:
        torch.set_num_threads(threads)
        if cache is None:
            os.environ.pop("MMFAST_CACHE", None)
        else:
            os.environ["MMFAST_CACHE"] = cache
    point = result.points[0]
    assert point["status"] == "early_stopped", (model_name, point["status"], len(point["epochs"]))
    return float(result.best["valid"]["recall@20"])


@pytest.fixture(scope="module")
def lightgcn_recall(tmp_path_factory) -> float:
    """LightGCN's number, trained once for every multimodal model of this file."""
    return best_valid_recall("LightGCN", tmp_path_factory.mktemp("lightgcn"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:SeparateLearning. negative-L2")  # SAND's reference weight
@pytest.mark.parametrize("model_name", MULTIMODAL)
def test_multimodal_beats_lightgcn_at_early_stopping(model_name, lightgcn_recall, tmp_path):
    recall = best_valid_recall(model_name, tmp_path)
    assert recall >= MARGIN * lightgcn_recall, (
        f"{model_name} valid Recall@20 {recall:.4f} < {MARGIN} x LightGCN's {lightgcn_recall:.4f}")
