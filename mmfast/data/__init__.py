"""mmfast.data: MMRec-format datasets, the embedded synthetic dataset, sampling and graphs.

``load("synthetic")`` gives the embedded dataset with no download; ``load(name, root)`` reads
``<root>/<name>`` in MMRec layout (``<name>.inter`` + ``<modality>_feat.npy``).
"""
from __future__ import annotations

from mmfast.data.dataset import SPLITS, DataFormatError, Dataset, Interactions
from mmfast.data.graphs import (
    cache_dir,
    interactions_hash,
    normalized_adjacency,
    user_item_lift,
)
from mmfast.data.knn import (
    item_knn_graph, knn_graph, max_graphs, mix_graphs, modality_weights, shrunk_knn_graph,
)
from mmfast.data.loading import dataset_root, load, load_dataset
from mmfast.data.mmrec import read_inter, read_mmrec, write_mmrec
from mmfast.data.sampler import NegativeSampler, sample_negatives_reference
from mmfast.data.split import k_core, mmrec_split
from mmfast.data.synthetic import generate as generate_synthetic


__all__ = [
    "SPLITS",
    "DataFormatError",
    "Dataset",
    "Interactions",
    "NegativeSampler",
    "cache_dir",
    "dataset_root",
    "generate_synthetic",
    "interactions_hash",
    "item_knn_graph",
    "k_core",
    "knn_graph",
    "load",
    "load_dataset",
    "max_graphs",
    "mix_graphs",
    "mmrec_split",
    "modality_weights",
    "shrunk_knn_graph",
    "normalized_adjacency",
    "read_inter",
    "read_mmrec",
    "sample_negatives_reference",
    "user_item_lift",
    "write_mmrec",
]
