"""The package's YAML defaults and how they are read.

Files: ``overall.yaml`` (every run), ``dataset/<name>.yaml``, ``model/<Name>.yaml``. This module
is the bottom layer of mmfast (it imports nothing from the package): models read their
defaults through it and the trainer merges the layers (:mod:`mmfast.trainer.config`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

CONFIG_DIR = Path(__file__).resolve().parent


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML (YAML 1.1) reads ``1e-4`` as a string, users mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, with YAML 1.2 floats."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A configuration file or override is malformed, unknown or of the wrong type."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of key: value, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """Later layer wins; nested mappings merge key by key, lists are replaced whole."""
    out = dict(base)
    for k, v in layer.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def model_config_path(model: str) -> Path:
    return CONFIG_DIR / "model" / f"{model}.yaml"


def dataset_config_path(dataset: str) -> Path:
    return CONFIG_DIR / "dataset" / f"{dataset}.yaml"
