"""Models by name: ``@register`` a class and ``--model Name`` finds it; the trainer never changes.

A name ``Base+PLUGIN`` (case-insensitive, chainable: ``FREEDOM+SEA+BMA``) is the registered
model ``Base`` with the plug-in ``PLUGIN`` attached (:func:`register_plugin`;
``mmfast/models/plugins.py`` holds ``+SEA`` and ``+BMA``). The composed class is built once per
process and cached; it lives under its name in this module (``__getattr__`` below), so pickle
finds it and a checkpoint that stores the name rebuilds it.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from mmfast.configs import CONFIG_DIR, ConfigError, load_yaml, merge, model_config_path
from mmfast.models.base import PluginViews, Recommender

_MODELS: dict[str, type[Recommender]] = {}
_PLUGINS: dict[str, type] = {}
_COMPOSED: dict[tuple[type, str], type[Recommender]] = {}
M = TypeVar("M", bound=type[Recommender])
VIEWS = tuple(PluginViews.__dataclass_fields__)


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class PluginRefusedError(UnknownModelError):
    """A model cannot take a plug-in (one line naming the missing view)."""


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


# --------------------------------------------------------------------------- plug-ins
def register_plugin(name: str, needs: Iterable[str]) -> Callable[[type], type]:
    """Class decorator for a plug-in mixin (see ``mmfast/models/plugins.py``): ``-m Base+name``
    composes ``type("Base+name", (mixin, Base), ...)``. ``needs`` names the
    :class:`~mmfast.models.base.PluginViews` fields the mixin reads."""
    needs = tuple(needs)
    unknown = set(needs) - set(VIEWS)
    if unknown:
        raise ValueError(f"register_plugin: {sorted(unknown)} are not PluginViews fields {VIEWS}")

    def deco(mixin: type) -> type:
        if isinstance(mixin, type) and issubclass(mixin, Recommender):
            raise TypeError(f"register_plugin: {mixin.__name__} must be a mixin, not a Recommender")
        if name.lower() in {k.lower() for k in _PLUGINS} and _PLUGINS.get(name) is not mixin:
            raise ValueError(f"register_plugin: a different plug-in is registered as {name!r}")
        mixin.plugin_name, mixin.plugin_reads = name, needs
        _PLUGINS[name] = mixin
        return mixin

    return deco


def plugins() -> list[str]:
    """The registered plug-in names."""
    return sorted(_PLUGINS)


def plugin_config_path(plugin: str) -> Path:
    return CONFIG_DIR / "plugin" / f"{plugin}.yaml"


def _implements_protocol(cls: type[Recommender]) -> bool:
    return cls.loss_and_views is not Recommender.loss_and_views


def refusal(base: type[Recommender], plugin: str) -> str | None:
    """Why ``base`` cannot take ``plugin`` (one line), or None if it can (as far as the class
    declares: a model without ``plugin_views`` is checked at its first training step)."""
    mixin = _PLUGINS[plugin]
    base_name = _name_of(base)
    if plugin in getattr(base, "plugins", ()):
        return f"{base_name} has the {plugin} plug-in already"
    needs = ", ".join(mixin.plugin_reads)
    if not _implements_protocol(base):
        return (f"{base_name} cannot take +{plugin}: it does not implement loss_and_views (the "
                f"plug-in protocol; {plugin} needs the {needs} view)")
    declared = getattr(base, "plugin_views", None)
    if declared is not None:
        missing = [v for v in mixin.plugin_reads if v not in declared]
        if missing:
            return (f"{base_name} cannot take +{plugin}: its PluginViews has no "
                    f"{' / '.join(missing)} ({plugin} needs {needs})")
    for hook in getattr(mixin, "plugin_hooks", ()):
        if not callable(getattr(base, hook, None)):
            return f"{base_name} cannot take +{plugin}: it has no {hook}() ({plugin} needs it)"
    return None


def compose(base: type[Recommender], plugin: str) -> type[Recommender]:
    """``base`` with the plug-in ``plugin`` attached (cached: the same class every call)."""
    key = (base, plugin)
    if key in _COMPOSED:
        return _COMPOSED[key]
    why = refusal(base, plugin)
    if why is not None:
        raise PluginRefusedError(why)
    mixin = _PLUGINS[plugin]
    name = f"{_name_of(base)}+{plugin}"
    reads = frozenset(getattr(base, "plugin_needs", None) or ()) | frozenset(mixin.plugin_reads)

    def default_config(cls, dataset: str | None = None) -> dict[str, Any]:
        """The base model's defaults, then ``configs/plugin/<PLUGIN>.yaml`` (the plug-in's keys,
        which must not be the base's), then ``configs/model/<Base+PLUGIN>.yaml`` where a
        setting of the pair was logged; each with its ``<name>/<dataset>.yaml`` layer."""
        config = base.default_config(dataset)
        layer = _with_dataset_layer(plugin_config_path(plugin), dataset)
        clash = sorted(set(layer) & set(config))
        if clash:
            raise ConfigError(f"{name}: the {plugin} plug-in's keys {clash} are also keys of "
                              f"{_name_of(base)} (they would mean two things)")
        config = merge(config, layer)
        pair = model_config_path(name)
        if pair.is_file():
            config = merge(config, _with_dataset_layer(pair, dataset))
        return config

    cls = type(name, (mixin, base), {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"{_name_of(base)} with the {plugin} plug-in ({mixin.__doc__ or ''}".strip()
                   + ")",
        "base_model": base, "plugins": (*getattr(base, "plugins", ()), plugin),
        "plugin_needs": reads, "default_config": classmethod(default_config),
    })
    _COMPOSED[key] = cls
    return cls


def _with_dataset_layer(path: Path, dataset: str | None) -> dict[str, Any]:
    config = load_yaml(path)
    layer = path.parent / path.stem / f"{dataset}.yaml"
    if dataset is not None and layer.is_file():
        config = merge(config, load_yaml(layer))
    return config


def _name_of(cls: type[Recommender]) -> str:
    if "+" in cls.__name__ and getattr(cls, "plugins", ()):
        return cls.__name__
    return _primary_names().get(cls, cls.__name__)


def _plugin(name: str, full: str) -> str:
    lower = {k.lower(): k for k in _PLUGINS}
    if name.lower() not in lower:
        raise UnknownModelError(f"unknown plug-in {name!r} in {full!r}; plug-ins: "
                                f"{', '.join(plugins()) or 'none'}")
    return lower[name.lower()]


# --------------------------------------------------------------------------- look-up
def get(name: str) -> type[Recommender]:
    """The model class registered as ``name`` (case-insensitive fallback, with suggestions),
    or ``Base+PLUGIN[+PLUGIN...]`` composed."""
    if name in _MODELS:
        return _MODELS[name]
    lower = {k.lower(): k for k in _MODELS}
    if name.lower() in lower:
        return _MODELS[lower[name.lower()]]
    if "+" in name:
        base_name, *extras = name.split("+")
        cls = get(base_name)
        for p in extras:
            cls = compose(cls, _plugin(p, name))
        return cls
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint} Available: {', '.join(available())} "
        "(models from other packages: --import MODULE that calls mmfast.models.register)"
    )


def canonical(name: str) -> str:
    """The name ``name`` is registered under (``sea`` -> ``SEA``, ``freedom+sea`` ->
    ``FREEDOM+SEA``)."""
    cls = get(name)
    if name in _MODELS:
        return name
    if cls not in _primary_names() and getattr(cls, "plugins", ()):
        return cls.__name__
    return next(k for k, v in _MODELS.items() if v is cls and k.lower() == name.lower())


def available() -> list[str]:
    """Each registered model once, under the name it was first registered as."""
    return sorted(_primary_names().values())


def aliases(name: str) -> list[str]:
    """The other names the model ``name`` is registered under (``DREPMREC`` -> ``['DREAM']``)."""
    cls = get(name)
    return [k for k, v in _MODELS.items() if v is cls and k != _primary_names()[cls]]


def combinations() -> list[tuple[str, str]]:
    """``(Base+PLUGIN, note)`` for every registered model and plug-in that compose: the note is
    empty where the model declares its views (``plugin_views``), else says that the views are
    checked at the first training step."""
    out = []
    for base in available():
        cls = _MODELS[base]
        for plugin in plugins():
            if refusal(cls, plugin) is None:
                sure = getattr(cls, "plugin_views", None) is not None
                out.append((f"{base}+{plugin}", "" if sure else "views checked when training"))
    return out


def _primary_names() -> dict[type[Recommender], str]:
    first: dict[type[Recommender], str] = {}
    for key, cls in _MODELS.items():  # dicts keep registration order
        first.setdefault(cls, key)
    return first


def __getattr__(name: str) -> type[Recommender]:
    """``registry.FREEDOM+SEA`` (how pickle finds a composed class): composed on demand."""
    if "+" not in name:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return get(name)
    except UnknownModelError as exc:
        raise AttributeError(str(exc)) from None

