"""Reusable pieces that models are composed from (plain PyTorch unless a kernel pays off)."""
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.losses import bpr_loss, embedding_norm_loss

__all__ = ["DegreeSensitivePruning", "bpr_loss", "embedding_norm_loss"]
