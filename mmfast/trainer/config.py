"""Configuration: YAML layers merged as MMRec does, checked keys, and the hyper-parameter grid.

Layers, later wins: ``configs/overall.yaml`` < ``configs/dataset/<dataset>.yaml`` <
the model's YAML < its per-dataset layer < ``--config FILE`` < command line (``--set key=value``
and explicit flags).
Only the package layers may introduce keys; a key in a user file or on the command line that
no package layer defines is an error (a typo would otherwise be silently ignored).
"""
from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from mmfast.configs import (
    CONFIG_DIR, ConfigError, dataset_config_path, load_yaml, merge, model_config_path, parse_yaml,
)

__all__ = [
    "CONFIG_DIR", "ConfigError", "check_layer", "dataset_config_path", "default_point",
    "dump", "grid_keys", "grid_points", "load_yaml", "merge", "merge_mg_layer", "model_config_path",
    "parse_override", "point_params", "resolve", "validate",
]

def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with ``value`` read as YAML (``n_layers=[1,2]``, ``x=null``, ``a.b=3``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    """``a.b.c=v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _family(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def check_layer(
    known: Mapping[str, Any], layer: Mapping[str, Any], source: str, prefix: str = ""
) -> None:
    """Every key of ``layer`` must exist in ``known`` with a compatible type.

    A list is accepted for a scalar key (a grid axis; whether it is one is decided later by
    ``hyper_parameters``) when its elements have the key's type, and a scalar for a list key
    whose elements have the scalar's type (one point of a grid axis). ``null`` defaults
    accept anything.
    """
    for key, value in layer.items():
        name = prefix + key
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {name!r} ({source}){hint}")
        default = known[key]
        want, got = _family(default), _family(value)
        if want == "mapping":
            if got != "mapping":
                raise ConfigError(f"config key {name!r} ({source}) must be a mapping, got {value!r}")
            check_layer(default, value, source, prefix=name + ".")
            continue
        if want in ("null", got) or got == "null":
            continue
        if got == "list" and want != "list" and value and all(_family(v) == want for v in value):
            continue  # a grid axis over a scalar key
        if want == "list" and default and all(_family(v) == got for v in default):
            continue  # one value of a grid axis (n_layers=2 where the default is [1, 2, 3, 4])
        raise ConfigError(
            f"config key {name!r} ({source}) expects a {want} like {default!r}, got {value!r}"
        )


def resolve(
    model: str,
    dataset: str,
    *,
    model_defaults: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    cli: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The merged configuration of one experiment (grid lists still as lists).

    ``model_defaults``: the model's own layer (from its registered class); defaults to the
    package's ``configs/model/<model>.yaml`` when that exists. ``overrides``: ``key=value``
    strings. ``cli``: explicit flags already parsed (``epochs``, ``seed``, ...); ``None``
    values are skipped.
    """
    config = load_yaml(CONFIG_DIR / "overall.yaml")
    ds_path = dataset_config_path(dataset)
    if ds_path.is_file():  # a user's own dataset folder needs no YAML of its own
        config = merge(config, load_yaml(ds_path))
    if model_defaults is None:
        path = model_config_path(model)
        model_defaults = load_yaml(path) if path.is_file() else {}
    config = merge(config, model_defaults)

    # The user's layers, in order; each is checked against the package layers' keys.
    layers: list[tuple[dict[str, Any], str]] = []
    if config_file is not None:
        layer = load_yaml(config_file)
        for key in ("model", "dataset"):
            if key in layer and layer[key] != {"model": model, "dataset": dataset}[key]:
                raise ConfigError(
                    f"{config_file}: sets {key}={layer[key]!r} but the run uses {key}="
                    f"{ {'model': model, 'dataset': dataset}[key]!r}; choose it with --{key}"
                )
            layer.pop(key, None)
        layers.append((layer, f"from {config_file}"))
    for text in overrides:
        key, value = parse_override(text)
        layers.append((_nest(key, value), f"from --set {text}"))
    flags = {k: v for k, v in (cli or {}).items() if v is not None}
    layers.append((flags, "from the command line"))

    # Mirror Gradient (``mg: true``, ``--mg``) brings its own layer, as in MMRec: its keys, and
    # its axes appended to the model's grid. Whether it is on is the last layer's say.
    mg = bool(config.get("mg"))
    for layer, _ in layers:
        if "mg" in layer:
            mg = bool(layer["mg"])
    if mg:
        config = merge_mg_layer(config)
    known = dict(config)
    for layer, source in layers:
        check_layer(known, layer, source)
        config = merge(config, layer)
        if "hyper_parameters" in layer and "default_point" not in layer:
            # A user layer that redraws the grid keeps the YAML's default_point only for the
            # axes still in it (``--set hyper_parameters=[...]`` needs no default_point of its own).
            axes = grid_keys(config)
            named = config.get("default_point") or {}
            if isinstance(named, Mapping):
                config["default_point"] = {k: v for k, v in named.items() if k in axes}
    config["model"], config["dataset"] = model, dataset
    validate(config)
    return config


MG_CONFIG = CONFIG_DIR / "mg.yaml"


def merge_mg_layer(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with Mirror Gradient's layer (``configs/mg.yaml``, MMRec's ``mg.yaml``) merged
    over it: its keys, its grid axes appended to ``hyper_parameters`` (MMRec extends the list the
    same way) and its ``default_point`` entries added to the model's."""
    layer = load_yaml(MG_CONFIG)
    axes = list(config.get("hyper_parameters") or [])
    axes += [k for k in layer.pop("hyper_parameters", []) if k not in axes]
    out = merge(config, layer)
    out["hyper_parameters"] = axes
    out["mg"] = True
    return out


def validate(config: Mapping[str, Any]) -> None:
    """Checks that need the whole merged config."""
    hp = config.get("hyper_parameters") or []
    if not isinstance(hp, list) or not all(isinstance(k, str) for k in hp):
        raise ConfigError(f"hyper_parameters must be a list of config keys, got {hp!r}")
    for key in hp:
        if key not in config:
            raise ConfigError(f"hyper_parameters names {key!r}, which is not a config key")
        if isinstance(config[key], list) and not config[key]:
            raise ConfigError(f"grid axis {key!r} is an empty list")
    named = config.get("default_point") or {}
    if not isinstance(named, Mapping):
        raise ConfigError(f"default_point must be a mapping of grid axis: value, got {named!r}")
    for key in named:
        if key not in grid_keys(config):
            raise ConfigError(f"default_point names {key!r}, which is not a grid axis "
                              f"(seed or hyper_parameters: {grid_keys(config)})")
    if config.get("selection") not in ("valid", "mmrec"):
        raise ConfigError(f"selection must be 'valid' or 'mmrec', got {config.get('selection')!r}")
    if config.get("backend") not in ("mmfast", "torch"):
        raise ConfigError(f"backend must be 'mmfast' or 'torch', got {config.get('backend')!r}")
    sched = config.get("learning_rate_scheduler")
    if not (isinstance(sched, list) and len(sched) == 2 and sched[1] not in (0, None)):
        raise ConfigError(f"learning_rate_scheduler must be [gamma, T] with T != 0, got {sched!r}")
    for key in ("epochs", "train_batch_size", "eval_batch_size", "eval_step", "checkpoint_every"):
        values = config[key] if isinstance(config[key], list) else [config[key]]
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
            raise ConfigError(f"{key} must be a positive integer, got {config[key]!r}")
    steps = config["stopping_step"] if isinstance(config["stopping_step"], list) else [config["stopping_step"]]
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in steps):
        raise ConfigError(f"stopping_step must be an integer >= 0, got {config['stopping_step']!r}")
    if config.get("optimizer_impl") not in ("fused", "foreach", "loop"):
        raise ConfigError("optimizer_impl must be 'fused', 'foreach' or 'loop', got "
                          f"{config.get('optimizer_impl')!r}")
    if config.get("mg"):
        for key, positive_int in (("alpha1", False), ("alpha2", False), ("beta", True)):
            values = config[key] if isinstance(config[key], list) else [config[key]]
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
                   or (positive_int and (not isinstance(v, int) or v <= 0))]
            if bad:
                want = "a positive integer" if positive_int else "a number"
                raise ConfigError(f"{key} (Mirror Gradient) must be {want}, got {config[key]!r}")
    valid_metric = str(config.get("valid_metric", "")).lower()
    metrics = [str(m).lower() for m in config.get("metrics", [])]
    name, _, k = valid_metric.partition("@")
    if name not in metrics or not k.isdigit() or int(k) not in config.get("topk", []):
        raise ConfigError(
            f"valid_metric {config.get('valid_metric')!r} must be one of metrics@topk "
            f"({config.get('metrics')} @ {config.get('topk')})"
        )


def grid_keys(config: Mapping[str, Any]) -> list[str]:
    """The grid axes in MMRec's order: ``seed`` first, then ``hyper_parameters``."""
    return ["seed"] + [k for k in (config.get("hyper_parameters") or []) if k != "seed"]


def default_point(config: Mapping[str, Any]) -> dict[str, Any]:
    """The one point ``no_grid`` trains: each grid axis at the value ``default_point`` names
    (the paper's reported setting, where the model's YAML knows one), else its first value.
    An axis already fixed to one value (``--set learning_rate=0.01``) keeps that value."""
    named = config.get("default_point") or {}
    point = {}
    for key in grid_keys(config):
        if not isinstance(config[key], list):
            point[key] = config[key]
            continue
        point[key] = named.get(key, config[key][0])
    return point


def grid_points(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One resolved config per grid point (cartesian product, first key slowest); with
    ``no_grid`` only :func:`default_point`."""
    keys = grid_keys(config)
    if config.get("no_grid"):
        fixed = default_point(config)
        axes = [[fixed[k]] for k in keys]
    else:
        axes = [config[k] if isinstance(config[k], list) else [config[k]] for k in keys]
    points = []
    for values in itertools.product(*axes):
        point = dict(config)
        point.update(zip(keys, values))
        points.append(point)
    return points


def point_params(config: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    return {k: point[k] for k in grid_keys(config)}


def dump(config: Mapping[str, Any]) -> str:
    """YAML text of a resolved config, keys in merge order."""
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
