"""Checks on a config: the settable keys, the closest key to a mistyped one, and values within their ranges."""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from facerec.config.schema import Config
from facerec.errors import ConfigError


def _known_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(cls):
        t = _resolve(cls, f.name)
        if is_dataclass(t):
            keys += _known_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def known_keys() -> list[str]:
    """Every settable dotted key, e.g. `optim.lr`."""
    return _known_keys(Config)


# Names people reach for from other tools, and the key facerec spells them with.
SYNONYMS = {
    "learning_rate": "lr",
    "lr_min": "min_lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "num_epochs": "epochs",
    "epoch": "epochs",
    "optimizer": "name",
    "optimiser": "name",
    "warmup": "warmup_epochs",
    "img_size": "image_size",
    "input_size": "image_size",
    "emb_dim": "embedding_dim",
    "embedding_size": "embedding_dim",
    "arch": "backbone",
    "workers": "num_workers",
    "scheduler": "schedule",
    "clip_grad": "grad_clip",
    "patience_epochs": "patience",
}


def closest_key(key: str) -> str | None:
    """The settable key a mistyped `key` most likely means (`optim.learning_rate` -> `optim.lr`), or None."""
    keys = known_keys()
    section, _, leaf = key.rpartition(".")
    guess = f"{section}.{SYNONYMS[leaf]}" if leaf in SYNONYMS else None
    if guess in keys:
        return guess
    same_section = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, same_section, n=1, cutoff=0.6)
    if close:
        return f"{section}.{close[0]}"
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key(key: str) -> ConfigError:
    """The error for a key the schema does not have: the likely meant key first, then every valid one."""
    guess = closest_key(key)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return ConfigError(f"unknown config key {key!r}{hint} Known keys: {', '.join(known_keys())}")


def check_values(cfg: Any, prefix: str = "") -> None:
    """Every value within its declared range or choices; else a ConfigError naming the key and the valid values."""
    for f in fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if is_dataclass(value):
            check_values(value, f"{key}.")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(
                f"{key}={value!r} is not a valid choice; choose one of {list(f.metadata['choices'])}"
            )
        elif "range" in f.metadata and not _in_range(value, *f.metadata["range"]):
            raise ConfigError(f"{key}={value!r} is out of range: {_range_text(*f.metadata['range'])}")


def _in_range(v: float, lo: float | None, hi: float | None, open_lo: bool, open_hi: bool) -> bool:
    above = lo is None or (v > lo if open_lo else v >= lo)
    below = hi is None or (v < hi if open_hi else v <= hi)
    return above and below


def _range_text(lo: float | None, hi: float | None, open_lo: bool, open_hi: bool) -> str:
    if hi is None:
        return f"must be {'>' if open_lo else '>='} {lo}"
    return f"must lie in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]
