"""Models by name. ``mmfast.models.get("FREEDOM")``; add one with ``@mmfast.models.register()``."""
from mmfast.models.base import Recommender
from mmfast.models.registry import UnknownModelError, available, get, register

# Importing the modules registers the built-in models.
from mmfast.models import lightgcn as _lightgcn  # noqa: E402,F401
from mmfast.models import freedom as _freedom  # noqa: E402,F401
from mmfast.models.freedom import FREEDOM  # noqa: E402
from mmfast.models.lightgcn import LightGCN  # noqa: E402

__all__ = ["FREEDOM", "LightGCN", "Recommender", "UnknownModelError", "available", "get", "register"]
