"""One training epoch at real scale, mmfast vs pure PyTorch: LightGCN, FREEDOM, DREPMREC, SEA and
ALIGNREC at Amazon Baby scale, SEA on the real TikTok set, and every other MMRec baseline at Baby
scale (``test_train_epoch_zoo``; ``-k zoo`` runs them alone).

The same model code on both backends (``mmfast.ops`` kernels vs their references), MMRec's
batches (2048, fresh negatives) and Adam. Data: the real Baby training graph when
../shared/data/baby is present (with RANDOM features of the real widths, image 4096-d and
text 384-d, since the Amazon feature files are not available: timings only, no accuracy),
else a synthetic dataset of Baby's shape. SEA transforms every item's features with a
d x d matrix each batch (4096 x 4096 for Baby images, ~0.5 TFLOP a batch with its backward): on a
CPU its Baby benchmark cuts the image features to ``SEA_CPU_IMAGE_DIM`` (named in the result);
on a GPU it runs the full widths. ALIGNREC reads one RANDOM 768-d fused feature per item (the
width of AlignRec's released BEiT-3 features).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEVICE
from mmfast import models
from mmfast.data import load
from mmfast.ops import use_backend
from mmfast.trainer import Trainer
from mmfast.trainer import config as cfg

SHARED_DATA = Path(os.environ.get("MMFAST_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
BABY = {"n_users": 19_445, "n_items": 7_050, "n_interactions": 160_792}
SINGLE = {"LightGCN": ["n_layers=2", "reg_weight=1e-4"], "FREEDOM": ["dropout=0.8", "reg_weight=1e-3"],
          "DREPMREC": [], "SEA": [], "SAND": [], "FREEDOM+SEA": [], "ALIGNREC": []}
# MMRec's other baselines at their --no-grid points (ItemKNNCBF trains nothing).
ZOO = ["BPR", "VBPR", "MMGCN", "GRCN", "DualGNN", "LATTICE", "SLMRec", "BM3", "MGCN", "DRAGON",
       "LGMRec", "SELFCFED_LGN", "LayerGCN", "MVGAE", "SMORE", "PGL", "MMGCF", "DAMRS"]
ROUNDS = {"LightGCN": 3, "FREEDOM": 2, "DREPMREC": 1, "SEA": 1, "SAND": 1, "FREEDOM+SEA": 1,
          "ALIGNREC": 1}
SEA_CPU_IMAGE_DIM = 512


@functools.lru_cache(maxsize=None)
def baby():
    if (SHARED_DATA / "baby").is_dir():
        ds = load("baby", root=SHARED_DATA)
        rng = np.random.default_rng(0)
        ds.features = {"image": rng.standard_normal((ds.n_items, 4096), dtype=np.float32),
                       "text": rng.standard_normal((ds.n_items, 384), dtype=np.float32)}
        return ds
    return load("synthetic", **BABY, image_dim=4096, text_dim=384)


@functools.lru_cache(maxsize=None)
def tiktok():
    return load("tiktok", root=SHARED_DATA)


def baby_for_sea():
    """Baby with the image features cut to SEA_CPU_IMAGE_DIM on a CPU (full width on a GPU)."""
    ds = baby()
    if DEVICE.type == "cuda":
        return ds, "baby"
    cut = dict(ds.features, image=np.ascontiguousarray(ds.features["image"][:, :SEA_CPU_IMAGE_DIM]))
    return dataclasses.replace(ds, features=cut), f"baby, image cut to {SEA_CPU_IMAGE_DIM}-d"


def make_trainer(model: str, backend: str, *extra: str, dataset: str = "baby", ds=None) -> Trainer:
    config = cfg.resolve(model, dataset, model_defaults=models.get(model).default_config(dataset),
                         overrides=[*SINGLE.get(model, []), *extra],
                         cli={"device": str(DEVICE), "backend": backend, "no_grid": True})
    config = cfg.grid_points(config)[0]
    ds = baby() if ds is None else ds
    torch.manual_seed(999)
    with use_backend(backend):
        net = models.get(model)(config, ds, DEVICE).to(DEVICE)
    sampler = ds.sampler(batch_size=config["train_batch_size"], device=DEVICE, seed=999)
    folder = Path(tempfile.mkdtemp(prefix="mmfast-bench-train-"))
    return Trainer(config, net, sampler, lambda u, i, s: {}, folder, logging.getLogger("bench"))


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("model", ["LightGCN", "FREEDOM", "DREPMREC"])
def test_train_epoch(compare, model, backend):
    trainer = make_trainer(model, backend)

    def epoch():
        with use_backend(backend):
            trainer.train_epoch(0)

    compare(f"train epoch {model} baby", backend, epoch, rounds=ROUNDS[model])


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_train_epoch_sea_tiktok(compare, backend):
    if not (SHARED_DATA / "tiktok").is_dir():
        pytest.skip(f"{SHARED_DATA / 'tiktok'} absent")
    trainer = make_trainer("SEA", backend, dataset="tiktok", ds=tiktok())

    def epoch():
        with use_backend(backend):
            trainer.train_epoch(0)

    compare("train epoch SEA tiktok", backend, epoch, rounds=1)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_train_epoch_sea_baby(compare, backend):
    ds, label = baby_for_sea()
    trainer = make_trainer("SEA", backend, ds=ds)

    def epoch():
        with use_backend(backend):
            trainer.train_epoch(0)

    compare(f"train epoch SEA {label}", backend, epoch, rounds=1)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
def test_train_epoch_alignrec_baby(compare, backend):
    ds = baby()
    rng = np.random.default_rng(1)
    fused = {"fused": rng.standard_normal((ds.n_items, 768), dtype=np.float32)}
    trainer = make_trainer("ALIGNREC", backend, ds=dataclasses.replace(ds, features=fused))

    def epoch():
        with use_backend(backend):
            trainer.train_epoch(0)

    compare("train epoch ALIGNREC baby (random 768-d fused)", backend, epoch, rounds=1)


@pytest.mark.parametrize("backend", ["mmfast", "torch"])
@pytest.mark.parametrize("model", ZOO)
def test_train_epoch_zoo(compare, model, backend):
    if model not in models.available():
        pytest.skip(f"{model} is not registered")
    trainer = make_trainer(model, backend)

    def epoch():
        with use_backend(backend):
            trainer.model.current_epoch = 0
            trainer.train_epoch(0)

    compare(f"train epoch {model} baby", backend, epoch, rounds=1)
