"""Loads the compiled kernels (``mmfast._C``) and says clearly why when they cannot be used.

Importing mmfast never fails because of the extension: the pure-PyTorch references
(``backend="torch"``) keep working, and the first call that needs a kernel raises
with the reason and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_C: Any = None
_LOAD_ERROR: str | None = None

try:
    from mmfast import _C  # type: ignore[attr-defined, no-redef]
except ImportError as exc:  # not built, or built against another torch (undefined symbols)
    _here = Path(__file__).parent
    if not any(_here.glob("_C*.so")) and not any(_here.glob("_C*.pyd")):
        _LOAD_ERROR = (
            f"no compiled mmfast._C in {_here}: this looks like an unbuilt source checkout "
            "(run from another directory after `pip install .`, or build in place with "
            "`python setup.py build_ext --inplace`)"
        )
    else:
        _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _built_for = _C.build_info()["torch_version"]
    if _built_for.split("+")[0] != torch.__version__.split("+")[0]:
        _LOAD_ERROR = (
            f"mmfast was compiled against torch {_built_for} but torch {torch.__version__} "
            "is installed; the C++ ABI differs between releases"
        )
        _C = None


def available() -> bool:
    """True when the compiled kernels loaded."""
    return _C is not None


def require() -> None:
    """Raise a RuntimeError naming the cause when the compiled kernels are unavailable."""
    if _C is None:
        raise RuntimeError(
            f"mmfast's compiled kernels are unavailable ({_LOAD_ERROR}). Reinstall with "
            "`pip install .` from the mmfast source tree (or `pip install --no-build-isolation .` "
            "to build against the torch already installed), or pass backend='torch' to use the "
            "pure-PyTorch reference."
        )


def load_error() -> str | None:
    return _LOAD_ERROR
