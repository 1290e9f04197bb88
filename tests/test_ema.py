"""The weight average (`train.ema`): its rule against a plain loop, the swap for validation, checkpoints that keep
both weight sets, evaluation of the average, and --resume with the average; and early stopping
(`train.early_stop`), the other option that decides what best.pt holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_overrides
from facerec.cli.main import main
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.ema import WeightAverage
from facerec.engine.progress import read_metrics

TINY = tiny_overrides("optim.lr=0.05", "train.log_every=2", "train.threads=1")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_average_follows_the_decay_rule_with_warm_up():
    net, head = _net(), nn.Linear(4, 2)
    ema = WeightAverage({"model": net, "loss": head}, decay=0.9)
    # the reference: plain Python floats, one per tensor entry, updated by the documented rule
    ref = {k: v.clone().double() for k, v in net.state_dict().items()}
    ref_head = {k: v.clone().double() for k, v in head.state_dict().items()}
    for n in range(6):
        with torch.no_grad():
            for p in list(net.parameters()) + list(head.parameters()):
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(8, 3))  # moves the BatchNorm statistics and num_batches_tracked
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))
        for refs, live in ((ref, net.state_dict()), (ref_head, head.state_dict())):
            for k, v in live.items():
                refs[k] = d * refs[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone().double()
    got, got_head = ema.state_dict("model"), ema.state_dict("loss")
    for k in ref:
        assert torch.allclose(got[k].double(), ref[k], atol=1e-6), k
    for k in ref_head:
        assert torch.allclose(got_head[k].double(), ref_head[k], atol=1e-6), k
    assert got["1.num_batches_tracked"] == 6  # integer buffers are copied, not averaged
    assert ema.counters() == {"decay": 0.9, "updates": 6}


def test_applied_swaps_the_average_in_and_the_live_weights_back():
    net = _net()
    ema = WeightAverage({"model": net}, decay=0.5)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update()
    live = {k: v.clone() for k, v in net.state_dict().items()}
    avg = ema.state_dict("model")
    assert not torch.equal(avg["0.weight"], live["0.weight"])
    with ema.applied():
        assert all(torch.equal(net.state_dict()[k], avg[k]) for k in avg)
    assert all(torch.equal(net.state_dict()[k], live[k]) for k in live)
    with pytest.raises(RuntimeError), ema.applied():  # restored even when the block fails
        raise RuntimeError("validation failed")
    assert all(torch.equal(net.state_dict()[k], live[k]) for k in live)


@pytest.mark.parametrize("decay", [1.0, -0.5, 1.5])
def test_a_decay_outside_0_1_is_a_clear_error(decay):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        WeightAverage({"model": _net()}, decay)


def test_training_with_ema_validates_and_saves_the_average(hw2p2_dir: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(hw2p2_dir), "--out", str(run), "train.epochs=3", "train.ema=0.8", *TINY]) == 0
    )
    assert "weight average (EMA, decay 0.8" in capsys.readouterr().out
    last = load_checkpoint(run / "last.pt")
    assert last["ema"]["updates"] == last["global_step"] > 0
    avg, live = last["model"], last["train_model"]
    assert set(avg) == set(live) and any(not torch.equal(avg[k], live[k]) for k in avg)
    assert set(last["loss"]) == set(last["train_loss"])
    # the recorded val AUC is the average's: `evaluate` on best.pt (which loads "model") reproduces it
    best = load_checkpoint(run / "best.pt")
    epochs = {r["epoch"]: r for r in read_metrics(run) if r["event"] == "epoch"}
    capsys.readouterr()
    # validation matched by class centres during training; the finished model's default is its class means
    argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(hw2p2_dir), "--json"]
    assert main([*argv, "--match", "centres"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auc"] == pytest.approx(epochs[best["epoch"]]["val_auc"], abs=1e-6)
    assert result["accuracy"] == pytest.approx(epochs[best["epoch"]]["val_acc"], abs=1e-6)
    assert main(["report", str(run)]) == 0
    assert "the weights' EMA (decay 0.8 per step)" in (run / "report" / "report.md").read_text()


def test_resume_continues_the_average(hw2p2_dir: Path, tmp_path: Path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--data", str(hw2p2_dir), "train.epochs=3", "train.ema=0.8", *TINY]
    assert main(["train", "--out", str(full), *args]) == 0
    assert main(["train", "--out", str(cut), *args, "train.time_limit_min=0.000001"]) == 0  # stops after epoch 1
    assert main(["train", "--out", str(cut), "--resume", "train.time_limit_min=0"]) == 0
    a = [r for r in read_metrics(full) if r["event"] == "epoch"]
    b = [r for r in read_metrics(cut) if r["event"] == "epoch"]
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        assert rb["val_auc"] == pytest.approx(ra["val_auc"], abs=1e-5)
    wa, wb = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert wa["ema"] == wb["ema"]
    for part in ("model", "train_model"):
        assert all(torch.allclose(wa[part][k].float(), wb[part][k].float(), atol=1e-5) for k in wa[part]), part


def test_early_stop_ends_the_run_after_epochs_without_improvement(
    hw2p2_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    """Scripted val AUCs: best at epoch 2, then three epochs without a better one: the run stops after epoch 5,
    and best.pt is epoch 2's."""
    import facerec.engine.fit as fit_module

    aucs = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.95, 0.96, 0.97])
    monkeypatch.setattr(fit_module, "validate", lambda parts: ({"val_auc": next(aucs)}, None))
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(hw2p2_dir), "--out", str(run), "train.epochs=8", "train.early_stop=3", *TINY])
        == 0
    )
    assert "early stop after epoch 5: no better val_auc for 3 epochs (best at epoch 2)" in capsys.readouterr().out
    records = read_metrics(run)
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2, 3, 4, 5]
    assert [r["best_epoch"] for r in records if r["event"] == "early_stop"] == [2]
    assert records[-1]["event"] == "end" and records[-1]["best_epoch"] == 2
    assert load_checkpoint(run / "best.pt")["epoch"] == 2
    assert main(["report", str(run)]) == 0
    assert (
        "5 run of 8 planned; early stop after 3 epochs without a better val_auc"
        in (run / "report" / "report.md").read_text()
    )
    assert (
        main(["train", "--data", str(hw2p2_dir), "--out", str(tmp_path / "x"), "train.early_stop=-1", *TINY]) == 1
    )
    assert "train.early_stop=-1" in capsys.readouterr().err
