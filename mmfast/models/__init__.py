"""Models by name. ``mmfast.models.get("FREEDOM")``; add one with ``@mmfast.models.register()``."""
from mmfast.models.base import Recommender
from mmfast.models.registry import UnknownModelError, aliases, available, canonical, get, register

# Importing the modules registers the built-in models.
from mmfast.models import lightgcn as _lightgcn  # noqa: E402,F401
from mmfast.models import freedom as _freedom  # noqa: E402,F401
from mmfast.models import sea as _sea  # noqa: E402,F401
from mmfast.models import freedom_sea as _freedom_sea  # noqa: E402,F401
from mmfast.models import alignrec as _alignrec  # noqa: E402,F401
from mmfast.models.alignrec import ALIGNREC  # noqa: E402
from mmfast.models import drepmrec as _drepmrec  # noqa: E402,F401
from mmfast.models import freedom_bma as _freedom_bma  # noqa: E402,F401
from mmfast.models.drepmrec import DREPMREC  # noqa: E402
from mmfast.models.freedom_bma import FREEDOMBMA  # noqa: E402
from mmfast.models.freedom import FREEDOM  # noqa: E402
from mmfast.models.freedom_sea import FREEDOMSEA  # noqa: E402
from mmfast.models.lightgcn import LightGCN  # noqa: E402
from mmfast.models.sea import SAND, SEA  # noqa: E402

__all__ = ["ALIGNREC", "DREPMREC", "FREEDOM", "FREEDOMBMA", "FREEDOMSEA", "LightGCN", "SAND", "SEA",
           "Recommender", "UnknownModelError", "aliases", "available", "canonical", "get",
           "register"]
