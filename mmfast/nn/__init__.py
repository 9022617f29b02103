"""Reusable modules that models compose (mmfast.nn)."""
from mmfast.nn.club import ClubNet

__all__ = ["ClubNet"]
