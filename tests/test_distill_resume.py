"""`facerec distill --resume`: a distillation run stopped by Ctrl-C mid-epoch continues from RUN/last.pt and ends
as the uninterrupted run does; another teacher, a weight average and misplaced options are refused, saying why."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import main
from facerec.config import load_config
from facerec.data.images import decode_batch
from facerec.distillation.run import distill, resume_config
from facerec.engine.checkpoint import load_checkpoint
from facerec.errors import ConfigError


class ColourTeacher:
    """A deterministic stand-in teacher: each image's mean colour per quadrant (12-d)."""

    name, embedding_dim = "colour", 12

    def __init__(self, fingerprint: str = "colour-1") -> None:
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed(self, images) -> np.ndarray:
        x = decode_batch(images, 16).float()  # (N, 16, 16, 3)
        quads = [x[:, i : i + 8, j : j + 8].mean((1, 2)) for i in (0, 8) for j in (0, 8)]
        return torch.cat(quads, 1).numpy().astype(np.float32) + 1.0


def _config(data: Path, tmp: Path, *changes: str):
    over = tiny_overrides(
        f"data.root={data}", f"distill.cache_dir={tmp / 'cache'}", "train.epochs=3", "train.seed=3", *changes
    )
    return load_config(None, over)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hw2p2(tmp_path_factory.mktemp("hw") / "hw", n_ids=4, per_id=12)


def test_a_stopped_distillation_resumes_and_ends_as_the_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    cfg = _config(data, tmp_path)
    distill(cfg, tmp_path / "straight", ColourTeacher(), log=lambda *a, **k: None)

    def stop_in_epoch_two(*args, **kwargs) -> None:  # Ctrl-C once epoch 1 is done: the run stops in epoch 2
        if args and str(args[0]).startswith("== epoch 1/3 done"):
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "stopped"
    distill(_config(data, tmp_path), run, ColourTeacher(), log=stop_in_epoch_two)
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] == 1 and saved["fit_state"]["step_in_epoch"] >= 1  # stopped inside epoch 2
    assert not (run / "best.pt").exists() or load_checkpoint(run / "best.pt")["epoch"] <= 1
    resumed_cfg = resume_config(run, [])
    assert resumed_cfg.train.epochs == 3 and resumed_cfg.distill.cache_dir == str(tmp_path / "cache")
    distill(resumed_cfg, run, ColourTeacher(), log=lambda *a, **k: None, resume=True)
    got, want = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "straight" / "last.pt")
    assert got["epoch"] == want["epoch"] == 3
    for part in ("model", "loss"):
        for k, v in want[part].items():
            torch.testing.assert_close(got[part][k], v, rtol=1e-4, atol=1e-6, msg=f"{part}.{k}")
    torch.testing.assert_close(
        got["distill"]["state"]["projection.weight"], want["distill"]["state"]["projection.weight"]
    )
    assert "prototypes" in load_checkpoint(run / "best.pt")  # finished like a fresh run


def test_resume_refuses_another_teacher_a_weight_average_and_a_missing_run(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    distill(_config(data, tmp_path, "train.epochs=1"), run, ColourTeacher(), log=lambda *a, **k: None)
    with pytest.raises(ConfigError, match="not the one this run started with"):
        distill(resume_config(run, []), run, ColourTeacher("colour-2"), log=lambda *a, **k: None, resume=True)
    with pytest.raises(ConfigError, match="train.ema"):
        distill(resume_config(run, ["train.ema=0.9"]), run, ColourTeacher(), log=lambda *a, **k: None, resume=True)
    assert main(["distill", "--out", str(tmp_path / "nothing"), "--resume"]) == 1  # no last.pt: a clear error


def test_cli_resume_takes_no_teacher_data_or_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["distill", "--out", str(tmp_path), "--resume", "--teacher", "dlib", "--data", "x"]) == 2
    assert "drop --teacher, --data" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "r"), "--data", "x"]) == 2
    assert "give --teacher" in capsys.readouterr().err
