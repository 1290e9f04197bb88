"""Typed run configuration: dataclass defaults <- a YAML recipe <- `key=value` overrides from the command line.

The resolved config is saved as YAML in the run folder and as a plain dict inside every checkpoint.
YAML is read with `yaml.safe_load` only; values from the command line are parsed as YAML scalars (no eval).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from facerec.errors import ConfigError  # noqa: F401 (re-exported)


@dataclass
class DataConfig:
    """Where the images are and how they are batched and augmented."""

    root: str = ""  # the dataset: an HW2P2 root (either layout) or any folder of identity folders
    val: str = ""  # optional labelled split (identity folders); found automatically in HW2P2 layouts
    pairs: str = ""  # optional labelled pair file for verification AUC; found automatically in HW2P2 layouts
    image_size: int = 64
    batch_size: int = 256
    sampler: str = "auto"  # auto | random | pk  (auto: pk when the loss needs positives in the batch)
    p: int = 32  # identities per batch for the pk sampler (batch = p * k)
    k: int = 4  # images per identity for the pk sampler
    augment: str = "standard"  # none | flip | standard | strong | robust (strong + loss of resolution)
    num_workers: int = 2  # threads that decode images when the dataset is first loaded
    cache: bool = True  # cache decoded images as .npy next to the run (the second run starts in seconds)
    max_per_class: int = 0  # cap images per identity (0 = all); for quick experiments
    max_classes: int = 0  # use only the first N identities (0 = all); for quick experiments
    # validation carved out of the training folders, for datasets without a val split or pair file:
    holdout: float = 0.0  # share of identities kept out of training; pairs drawn from them give val AUC
    holdout_pairs: int = 6000  # pairs drawn from the held-out identities (half same-identity, all distinct)
    val_per_class: int = 0  # images of each training identity moved to a val split (val accuracy); 0 = none


@dataclass
class ModelConfig:
    backbone: str = "facenet_s"
    embedding_dim: int = 256
    dropout: float = 0.0  # dropout before the embedding layer
    neck: str = "pool"  # pool | flatten (see models/embedder.py)


@dataclass
class LossTerm:
    name: str = "center"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "softmax"
    params: dict[str, Any] = field(default_factory=dict)
    extra: list[LossTerm] = field(default_factory=list)  # more weighted terms, e.g. center loss
    scoring: str = "auto"  # auto (the loss's own) | cosine | euclidean


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    loss_lr: float = 0.0  # learning rate for loss parameters (class centres); 0 = same as lr
    schedule: str = "cosine"  # cosine | step | plateau | constant
    warmup_epochs: float = 1.0  # linear warm-up from lr/100, in epochs (fractions allowed)
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step and plateau: decay factor
    patience: int = 2  # plateau: epochs without improvement before a decay
    min_lr: float = 0.0
    grad_clip: float = 0.0  # max gradient norm (0 = off)


@dataclass
class TrainConfig:
    epochs: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with dynamic loss scaling) | off
    channels_last: str = "auto"  # auto (= on: faster on CUDA and, measured, on CPU too) | on | off
    compile: bool = False
    threads: int = 0  # torch intra-op threads on CPU (0 = torch's default)
    best_metric: str = "val_auc"  # val_auc | val_acc | train_loss (checkpoint "best.pt" follows it)
    eval_every: int = 1
    flip_tta: bool = True  # average embeddings of the image and its mirror at evaluation
    log_every: int = 20  # steps between progress lines
    max_steps_per_epoch: int = 0  # 0 = full epochs; for smoke tests
    early_stop: int = 0  # stop once this many epochs pass without a better best_metric (0 = never)
    time_limit_min: float = 0.0  # stop after the epoch that passes this many minutes (0 = no limit)
    ema: float = 0.0  # EMA decay of the weights per step (e.g. 0.998); validation and best.pt use the average
    init_from: str = ""  # start the network (not the loss) from this checkpoint, e.g. ArcFace after softmax


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


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


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


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
            raise ConfigError(
                f"unknown config key {prefix + str(k)!r}; known keys: {', '.join(_known_keys(Config))}"
            )
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
                raise ConfigError(f"unknown config key {full_key!r}; known keys: {', '.join(known_keys())}")
            schema = _resolve(schema, part)
        else:
            schema = None  # inside a free-form dict such as loss.params
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {full_key!r}: {'.'.join(path[: i + 1])} is not a mapping")
    if is_dataclass(schema) and path[-1] not in {f.name for f in fields(schema)}:
        raise ConfigError(f"unknown config key {full_key!r}; known keys: {', '.join(known_keys())}")
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
    return _from_dict(Config, tree)


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


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `key=value` overrides applied (validated like load_config's)."""
    tree = asdict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(tree, keys, value, ".".join(keys))
    return _from_dict(Config, tree)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _from_dict(Config, _merge(asdict(Config()), data))


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def recipe_path(name: str) -> Path:
    """A recipe shipped with the package (`facerec/recipes/NAME.yaml`), or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    here = Path(__file__).parent / "recipes" / f"{name}.yaml"
    if here.exists():
        return here
    available = sorted(x.stem for x in (Path(__file__).parent / "recipes").glob("*.yaml"))
    raise ConfigError(f"no config file or recipe named {name!r}; shipped recipes: {available}")
