"""mmfast.data: MMRec-format datasets, the embedded synthetic dataset, sampling and graphs.

``load("synthetic")`` gives the embedded dataset with no download; ``load(name, root)`` reads
``<root>/<name>`` in MMRec layout (``<name>.inter`` + ``<modality>_feat.npy``).
"""
from __future__ import annotations

import os
from typing import Any

from mmfast.data.dataset import SPLITS, DataFormatError, Dataset, Interactions
from mmfast.data.graphs import (
    cache_dir,
    interactions_hash,
    normalized_adjacency,
    user_item_lift,
)
from mmfast.data.knn import item_knn_graph, knn_graph, mix_graphs
from mmfast.data.mmrec import read_inter, read_mmrec, write_mmrec
from mmfast.data.sampler import NegativeSampler, sample_negatives_reference
from mmfast.data.split import k_core, mmrec_split
from mmfast.data.synthetic import generate as generate_synthetic


def load(name: str, root: str | os.PathLike | None = None, **kwargs: Any) -> Dataset:
    """The dataset called ``name``.

    With ``root=None`` only ``"synthetic"`` is known: the embedded dataset, generated in
    memory (``kwargs`` go to :func:`mmfast.data.synthetic.generate`, e.g. ``seed``). With a
    ``root``, reads ``<root>/<name>`` in MMRec layout (``kwargs`` go to :func:`read_mmrec`).
    """
    if root is None:
        if name == "synthetic":
            return generate_synthetic(**kwargs)
        raise FileNotFoundError(
            f"mmfast.data.load: no root given and {name!r} is not an embedded dataset; pass "
            "root=<folder holding the MMRec dataset folders>, or use name='synthetic'"
        )
    return read_mmrec(root, name, **kwargs)


__all__ = [
    "SPLITS",
    "DataFormatError",
    "Dataset",
    "Interactions",
    "NegativeSampler",
    "cache_dir",
    "generate_synthetic",
    "interactions_hash",
    "item_knn_graph",
    "k_core",
    "knn_graph",
    "load",
    "mix_graphs",
    "mmrec_split",
    "normalized_adjacency",
    "read_inter",
    "read_mmrec",
    "sample_negatives_reference",
    "user_item_lift",
    "write_mmrec",
]
