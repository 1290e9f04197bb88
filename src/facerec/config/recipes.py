"""The recipes shipped in `facerec/recipes/*.yaml`: find one by name, describe them all, compare one to a cfg."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from facerec.config.load import load_config
from facerec.config.schema import Config
from facerec.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_conflicts(path: str | Path, cfg: Config) -> list[str]:
    """The `section.key`s that the YAML file at `path` sets to other values than `cfg` holds. Values are compared
    after the file is resolved against the defaults (so `lr: 1e-1` equals 0.1); dicts and lists compare whole."""
    resolved, have = asdict(load_config(path)), asdict(cfg)
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [
        f"{section}.{key}"
        for section, values in loaded.items()
        for key in (values or {})
        if resolved[section][key] != have[section][key]
    ]


def recipe_path(name: str) -> Path:
    """A recipe shipped with the package (`facerec/recipes/NAME.yaml`), or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    here = RECIPES / f"{name}.yaml"
    if here.exists():
        return here
    available = sorted(x.stem for x in (RECIPES).glob("*.yaml"))
    raise ConfigError(f"no config file or recipe named {name!r}; shipped recipes: {available}")


def describe_recipes() -> dict[str, str]:
    """Each shipped recipe's name -> its description: the first sentence of the comment at the top of its file
    (which may run over several comment lines)."""
    out = {}
    for p in sorted(RECIPES.glob("*.yaml")):
        header = []
        for line in p.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#").strip())
        text = " ".join(header)
        end = next(
            (i for i in range(len(text)) if text[i] == "." and (i + 1 == len(text) or text[i + 1] == " ")), None
        )
        out[p.stem] = text if end is None else text[: end + 1]
    return out
