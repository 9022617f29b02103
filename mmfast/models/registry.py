"""Models by name: ``@register`` a class and ``--model Name`` finds it; the trainer never changes."""
from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from mmfast.models.base import Recommender

_MODELS: dict[str, type[Recommender]] = {}
M = TypeVar("M", bound=type[Recommender])


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def register(name: str | None = None) -> Callable[[M], M]:
    """Class decorator: ``@register()`` uses the class name (MMRec's ``-m`` spelling)."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Recommender)):
            raise TypeError(f"register: {cls!r} is not a mmfast.models.Recommender subclass")
        key = name or cls.__name__
        if key in _MODELS and _MODELS[key] is not cls:
            raise ValueError(f"register: a different model is already registered as {key!r}")
        _MODELS[key] = cls
        return cls

    return deco


def get(name: str) -> type[Recommender]:
    """The model class registered as ``name`` (case-insensitive fallback, with suggestions)."""
    if name in _MODELS:
        return _MODELS[name]
    lower = {k.lower(): k for k in _MODELS}
    if name.lower() in lower:
        return _MODELS[lower[name.lower()]]
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} Available: {', '.join(available())} "
        "(models from other packages: --import MODULE that calls mmfast.models.register)"
    )


def canonical(name: str) -> str:
    """The name ``name`` is registered under (``sea`` -> ``SEA``)."""
    cls = get(name)
    if name in _MODELS:
        return name
    return next(k for k, v in _MODELS.items() if v is cls and k.lower() == name.lower())


def available() -> list[str]:
    """Each registered model once, under the name it was first registered as."""
    return sorted(_primary_names().values())


def aliases(name: str) -> list[str]:
    """The other names the model ``name`` is registered under (``DREPMREC`` -> ``['DREAM']``)."""
    cls = get(name)
    return [k for k, v in _MODELS.items() if v is cls and k != _primary_names()[cls]]


def _primary_names() -> dict[type[Recommender], str]:
    first: dict[type[Recommender], str] = {}
    for key, cls in _MODELS.items():  # dicts keep registration order
        first.setdefault(cls, key)
    return first
