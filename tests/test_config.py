from __future__ import annotations

import pytest
import yaml

from facerec.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    known_keys,
    load_config,
    save_config,
)


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("optim:\n  lr: 0.05\nloss:\n  name: arcface\n  params: {scale: 16}\n")
    cfg = load_config(f, ["optim.lr=0.01", "loss.params.margin=0.3", "data.augment=flip", "train.compile=true"])
    assert cfg.optim.lr == 0.01  # override beats file
    assert cfg.loss.name == "arcface"
    assert cfg.loss.params == {"scale": 16, "margin": 0.3}
    assert cfg.data.augment == "flip" and cfg.train.compile is True
    assert cfg.optim.momentum == Config().optim.momentum  # untouched default


def test_unknown_key_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'data.batchsize'.*data.batch_size"):
        load_config(None, ["data.batchsize=3"])
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(f)


def test_type_errors_are_reported():
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_yaml_is_parsed_safely(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("optim: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid UTF-8 YAML"):
        load_config(f)


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(None, ["loss.name=cosface", "model.embedding_dim=64"])
    cfg.loss.extra = config_from_dict({"loss": {"extra": [{"name": "center", "weight": 0.01}]}}).loss.extra
    save_config(cfg, tmp_path / "c.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.loss.extra[0].name == "center" and again.loss.extra[0].weight == 0.01


def test_known_keys_cover_every_section():
    keys = known_keys()
    assert {"data.root", "model.backbone", "loss.name", "optim.lr", "train.epochs"} <= set(keys)
