"""Models by name. ``mmfast.models.get("FREEDOM")``; add one with ``@mmfast.models.register()``.

Every module of this package is imported here, so a model file dropped into ``mmfast/models/``
registers itself: the registry, not this file, is the list of models.
"""
import importlib
import pkgutil

from mmfast.models.base import PluginViews, Recommender
from mmfast.models.registry import UnknownModelError, aliases, available, canonical, get, register

_INFRASTRUCTURE = {"base", "registry"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

from mmfast.models.alignrec import ALIGNREC  # noqa: E402
from mmfast.models.drepmrec import DREPMREC  # noqa: E402
from mmfast.models.freedom import FREEDOM  # noqa: E402
from mmfast.models.lightgcn import LightGCN  # noqa: E402
from mmfast.models.sea import SAND, SEA  # noqa: E402

__all__ = ["ALIGNREC", "DREPMREC", "FREEDOM", "LightGCN", "SAND", "SEA",
           "PluginViews", "Recommender", "UnknownModelError", "aliases", "available", "canonical",
           "get", "register"]
