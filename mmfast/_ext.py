"""Loads the compiled kernels (``mmfast._C``) and says clearly why when they cannot be used.

Importing mmfast never fails because of the extension: the pure-PyTorch references
(``backend="torch"``) keep working, and the first call that needs a kernel raises
:class:`KernelsUnavailable`, one line naming the cause and the command that fixes it (the
README's install commands), which the command lines print as their only output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# The README's install commands (README.md, "Install"); python_tests/test_readme.py checks
# that the README still says them.
DEVELOPER_INSTALL = 'pip install --no-build-isolation -e ".[test,tune]"'
USER_INSTALL = "pip install ."

_C: Any = None
_LOAD_ERROR: str | None = None
_HERE = Path(__file__).resolve().parent


def _source_checkout() -> Path | None:
    """The clone's folder when mmfast is imported from a source checkout (setup.py beside it)."""
    root = _HERE.parent
    return root if (root / "setup.py").is_file() and (root / "csrc").is_dir() else None


def _how_to_fix() -> str:
    root = _source_checkout()
    if root is not None:
        return (f"run `{DEVELOPER_INSTALL}` in {root} (the README's developer install: "
                "kernels built in place)")
    return f"reinstall mmfast (`{USER_INSTALL}` from its source folder)"


try:
    from mmfast import _C  # type: ignore[attr-defined, no-redef]
except ImportError as exc:  # not built, or built against another torch (undefined symbols)
    if not any(_HERE.glob("_C*.so")) and not any(_HERE.glob("_C*.pyd")):
        _LOAD_ERROR = f"mmfast's kernels are not built in {_HERE}"
    else:
        _LOAD_ERROR = f"mmfast's kernels did not load ({type(exc).__name__}: {exc})"
else:
    _built_for = _C.build_info()["torch_version"]
    if _built_for.split("+")[0] != torch.__version__.split("+")[0]:
        _LOAD_ERROR = (f"mmfast's kernels were compiled against torch {_built_for} but torch "
                       f"{torch.__version__} is installed (the C++ ABI differs between releases)")
        _C = None


class KernelsUnavailable(RuntimeError):
    """The compiled kernels are needed (``backend="mmfast"``) but did not load."""


def available() -> bool:
    """True when the compiled kernels loaded."""
    return _C is not None


def unavailable_message() -> str | None:
    """One line: why the kernels are unavailable and what to run; None when they loaded."""
    if _C is not None:
        return None
    return (f"{_LOAD_ERROR}: {_how_to_fix()}, or use the pure-PyTorch reference "
            "(--backend torch, backend='torch')")


def require() -> None:
    """Raise :class:`KernelsUnavailable` (one line: cause and fix) when the kernels are
    unavailable."""
    if _C is not None:
        return
    raise KernelsUnavailable(unavailable_message())


def load_error() -> str | None:
    return _LOAD_ERROR
