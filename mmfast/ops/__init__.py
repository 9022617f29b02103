"""The Python face of every mmfast op.

Each op takes ``backend=None`` (the process default, see :func:`set_default_backend`),
``"mmfast"`` (compiled CPU/CUDA kernels) or ``"torch"`` (the pure-PyTorch reference
of the same op, used by tests and benchmarks).
"""
from mmfast.ops._backend import get_default_backend, set_default_backend, use_backend
from mmfast.ops.club import (
    club_learn,
    club_learn_reference,
    club_nll,
    club_upper_bound,
    club_upper_bound_reference,
)
from mmfast.ops.graph import (
    layer_coefficients,
    propagate,
    propagate_reference,
    spmm,
    spmm_reference,
)
from mmfast.ops.metrics import METRICS, rank_metrics
from mmfast.ops.rows import select_rows
from mmfast.ops.solosim import solosim_loss, solosim_reference
from mmfast.ops.sparse_graph import SparseGraph
from mmfast.ops.topk import CUDA_MAX_K, topk_of_scores, topk_scores, topk_scores_reference

__all__ = [
    "CUDA_MAX_K",
    "METRICS",
    "SparseGraph",
    "club_learn",
    "club_learn_reference",
    "club_nll",
    "club_upper_bound",
    "club_upper_bound_reference",
    "select_rows",
    "get_default_backend",
    "layer_coefficients",
    "propagate",
    "propagate_reference",
    "rank_metrics",
    "set_default_backend",
    "solosim_loss",
    "solosim_reference",
    "spmm",
    "spmm_reference",
    "topk_of_scores",
    "topk_scores",
    "topk_scores_reference",
    "use_backend",
]
