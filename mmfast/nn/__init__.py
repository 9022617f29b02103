"""Reusable modules and losses that models are composed from (plain PyTorch unless a kernel pays off)."""
from mmfast.nn.club import ClubNet
from mmfast.nn.edge_pruning import DegreeSensitivePruning
from mmfast.nn.losses import bpr_loss, embedding_norm_loss

__all__ = ["ClubNet", "DegreeSensitivePruning", "bpr_loss", "embedding_norm_loss"]
