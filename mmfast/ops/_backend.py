"""The switch between the compiled kernels and the pure-PyTorch reference of every op.

Models call ``mmfast.ops.<name>(..., backend=None)``; ``None`` means the process-wide
default, so one call to :func:`set_default_backend` (or the trainer's ``--backend``)
moves a whole model between the two implementations.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

from mmfast import _ext

Backend = Literal["mmfast", "torch"]
BACKENDS: tuple[str, ...] = ("mmfast", "torch")

_default: str = "mmfast"


def set_default_backend(name: Backend) -> None:
    """Make ``name`` the backend used when an op is called with ``backend=None``."""
    global _default
    _default = _check(name)


def get_default_backend() -> str:
    return _default


@contextlib.contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Temporarily change the default backend: ``with use_backend("torch"): ...``."""
    global _default
    previous, _default = _default, _check(name)
    try:
        yield
    finally:
        _default = previous


def resolve(backend: str | None) -> str:
    """The backend an op call should run on; raises if it is unknown or not built."""
    name = _check(_default if backend is None else backend)
    if name == "mmfast":
        _ext.require()
    return name


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name
