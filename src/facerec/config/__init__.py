"""Typed run configuration: dataclass defaults <- a YAML recipe <- `key=value` overrides from the command line.

The resolved config is saved as YAML in the run folder and as a plain dict inside every checkpoint. An unknown key
names the closest valid one; a value out of its range names the key and the range (config/checks.py).
"""

from facerec.config.checks import check_values, closest_key, known_keys, unknown_key
from facerec.config.load import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_yaml,
    load_config,
    parse_override,
    save_config,
)
from facerec.config.recipes import RECIPES, describe_recipes, recipe_conflicts, recipe_path
from facerec.config.schema import (
    Config,
    DataConfig,
    DistillConfig,
    LossConfig,
    LossTerm,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from facerec.errors import ConfigError

__all__ = [
    "RECIPES",
    "Config",
    "ConfigError",
    "DataConfig",
    "DistillConfig",
    "LossConfig",
    "LossTerm",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "check_values",
    "closest_key",
    "config_from_dict",
    "config_to_dict",
    "config_yaml",
    "describe_recipes",
    "known_keys",
    "load_config",
    "parse_override",
    "recipe_conflicts",
    "recipe_path",
    "save_config",
    "unknown_key",
]
