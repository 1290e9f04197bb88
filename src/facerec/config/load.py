"""Defaults <- a YAML recipe <- `key=value` overrides: parsed, type-checked and range-checked into a Config.

YAML is read with `yaml.safe_load` only; values from the command line are parsed as YAML scalars (no eval).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from facerec.config.checks import _resolve, check_values, unknown_key
from facerec.config.schema import Config
from facerec.errors import ConfigError


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert a parsed YAML value to the field's declared type."""
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if origin in (list,):
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML reads on/off/yes/no as booleans: keep the switch's spelling
            return "on" if value else "off"
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    names = {f.name for f in fields(cls)}
    for k in data:
        if k not in names:
            raise unknown_key(prefix + str(k))
    kwargs = {k: _coerce(v, _resolve(cls, k), prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as a YAML scalar/flow value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # malformed, a huge integer, absurd nesting
        value = raw
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, full_key: str) -> None:
    node = tree
    schema: Any = Config
    for i, part in enumerate(path[:-1]):
        if is_dataclass(schema):
            if part not in {f.name for f in fields(schema)}:
                raise unknown_key(full_key)
            schema = _resolve(schema, part)
        else:
            schema = None  # inside a free-form dict such as loss.params
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {full_key!r}: {'.'.join(path[: i + 1])} is not a mapping")
    if is_dataclass(schema) and path[-1] not in {f.name for f in fields(schema)}:
        raise unknown_key(full_key)
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (only the keys that differ), then `key=value` overrides."""
    tree: dict[str, Any] = asdict(Config())
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ConfigError(f"config file {str(p)!r} is not valid UTF-8 YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections (data, model, ...)")
        _from_dict(Config, _merge(asdict(Config()), loaded))  # validate keys early, with the file's names
        tree = _merge(tree, loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, ".".join(keys))
    cfg = _from_dict(Config, tree)
    check_values(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `key=value` overrides applied (validated like load_config's)."""
    tree = asdict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, ".".join(keys))
    cfg = _from_dict(Config, tree)
    check_values(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, _merge(asdict(Config()), data))


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))
