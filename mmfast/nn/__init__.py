"""Reusable modules and losses that models are composed from (plain PyTorch unless a kernel
pays off): the LightGCN ID line, per-modality feature projections, the user lift R̂, SEA's
CLUB q-net, FREEDOM's edge pruning, BPR."""
from mmfast.nn.bpr import bpr_loss, embedding_norm_loss
from mmfast.nn.club import ClubNet
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.features import ModalityProjection
from mmfast.nn.id_graph import LightGCNEmbeddings
from mmfast.nn.lift import UserLift

__all__ = [
    "ClubNet", "DegreeSensitivePruning", "LightGCNEmbeddings", "ModalityProjection", "UserLift",
    "bpr_loss", "embedding_norm_loss",
]
