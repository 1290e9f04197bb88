"""`facerec export` and `facerec ensemble` read checkpoints through the checked loader (issue #17): a checkpoint
whose content does not make a model is a CheckpointError naming the file, not a raw KeyError or RuntimeError
from building the network, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facerec.cli.main import main
from facerec.engine.checkpoint import CheckpointError, save_checkpoint
from facerec.evaluation.ensemble import build_ensemble
from facerec.inference.export import export_model
from fuzzing.models import tiny_checkpoint

DAMAGE = {
    "no_model": (lambda s: s.pop("model"), "KeyError: 'model'"),
    "classes_cut": (lambda s: s.update(classes=["1", "4"]), "size mismatch"),  # RuntimeError in load_state_dict
}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("models") / "good.pt")


def _damaged(good: Path, folder: Path, kind: str) -> Path:
    state = torch.load(good, weights_only=True)
    DAMAGE[kind][0](state)
    return save_checkpoint(state, folder / "damaged.pt")


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_export_of_a_damaged_checkpoint_is_a_checkpoint_error(good, tmp_path, kind, suffix) -> None:
    if suffix == ".onnx":
        pytest.importorskip("onnx")
    bad, out = _damaged(good, tmp_path, kind), tmp_path / f"out{suffix}"
    with pytest.raises(CheckpointError, match=rf"(?s)damaged.pt is damaged: .*{DAMAGE[kind][1]}.*copied from"):
        export_model(bad, out)
    assert not out.exists()


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_an_ensemble_with_a_damaged_member_is_a_checkpoint_error(good, tmp_path, kind) -> None:
    bad, out = _damaged(good, tmp_path, kind), tmp_path / "ens.pt"
    with pytest.raises(CheckpointError, match=rf"(?s)damaged.pt is damaged: .*{DAMAGE[kind][1]}"):
        build_ensemble([good, bad], out, log=lambda m: None)
    assert not out.exists()


def test_the_commands_say_what_is_wrong_without_a_traceback(good, tmp_path, capsys) -> None:
    bad = _damaged(good, tmp_path, "classes_cut")
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.pt")]) == 1
    assert main(["ensemble", str(good), str(bad), "--out", str(tmp_path / "e.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("damaged.pt is damaged") == 2 and "Traceback" not in err, err
    assert "facerec export: error:" in err and "facerec ensemble: error:" in err
