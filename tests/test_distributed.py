"""Data-parallel training on CPU (gloo): two processes against one process that sees the same global batches.

Tolerances. Without BatchNorm the two runs do the same arithmetic in a different order: they agree to float32
round-off (rtol 1e-4 after three momentum steps). Through the CLI the model has BatchNorm, which normalises each
rank's half-batch with its own statistics (plain BatchNorm, no SyncBatchNorm; see engine/distributed.py), so the
runs drift apart: with 32 images per rank and 4 steps at lr 0.01, per-epoch train loss within 10% (measured 0.5%
and 2.5%), and the weight updates point the same way (cosine > 0.9, measured 0.97) with lengths within 25%
(measured ratio 0.96).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import main
from facerec.config import load_config
from facerec.data.sampler import PKBatchSampler, RandomBatchSampler
from facerec.engine.build import build_model
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.distributed import DistContext, GatherLoss, ShardedBatchSampler, wrap_model
from facerec.engine.progress import read_metrics
from facerec.losses.base import build_combined_loss

WORLD = 2


def test_shards_rebuild_every_global_batch_in_order():
    sampler = PKBatchSampler(torch.arange(10).repeat_interleave(3), p=4, k=2)
    shards = [ShardedBatchSampler(sampler, r, WORLD) for r in range(WORLD)]
    assert len(shards[0]) == len(sampler) and shards[0].batch_size == 4
    per_rank = [list(s.batches(torch.Generator().manual_seed(3))) for s in shards]
    whole = list(sampler.batches(torch.Generator().manual_seed(3)))
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([per_rank[r][i] for r in range(WORLD)]), batch)


def test_uneven_split_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="divisible by 2"):
        ShardedBatchSampler(RandomBatchSampler(40, 15), 0, WORLD)


def test_gather_loss_is_the_inner_loss_in_one_process(batch):
    x, y = batch
    inner = build_combined_loss([("arcface", 1.0, {})], embedding_dim=8, num_classes=3)
    wrapped = GatherLoss(inner)
    torch.testing.assert_close(wrapped(x, y), inner(x, y))
    assert wrapped.has_logits and wrapped.scoring == inner.scoring
    assert list(wrapped.parameters()) == list(inner.parameters())


# --- two gloo processes vs one, without BatchNorm: exact up to round-off ---------------------------------------


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(48, 12, generator=g), torch.arange(12).repeat_interleave(4)


def _parts() -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """A BatchNorm-free embedder, a loss with its own parameters (ArcFace) plus a whole-batch loss (triplet)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    loss = build_combined_loss(
        [("arcface", 1.0, {"scale": 8.0}), ("triplet", 1.0, {})], embedding_dim=8, num_classes=12
    )
    opt = torch.optim.SGD(list(model.parameters()) + list(loss.parameters()), lr=0.1, momentum=0.9)
    return model, loss, opt


def _train(model: nn.Module, loss_fn: nn.Module, opt: torch.optim.Optimizer, sampler, steps: int = 3) -> list:
    x, y = _data()
    losses = []
    for _, idx in zip(range(steps), sampler.batches(torch.Generator().manual_seed(1)), strict=False):
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, loss, opt = _parts()
        sampler = ShardedBatchSampler(PKBatchSampler(_data()[1], p=4, k=2), rank, WORLD)
        ddp = wrap_model(model, DistContext(rank, WORLD), torch.device("cpu"))
        losses = _train(ddp, GatherLoss(loss), opt, sampler)
        torch.save({"losses": losses, "model": model.state_dict(), "loss": loss.state_dict()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_without_batchnorm(tmp_path: Path):
    # fork: the children start in milliseconds with torch already imported (as DataLoader workers do)
    mp.start_processes(
        _worker, args=(str(tmp_path / "init"), str(tmp_path / "result")), nprocs=WORLD, start_method="fork"
    )
    model, loss, opt = _parts()
    ref_losses = _train(model, loss, opt, PKBatchSampler(_data()[1], p=4, k=2))
    for rank in range(WORLD):
        got = torch.load(f"{tmp_path / 'result'}.{rank}", weights_only=True)
        assert got["losses"] == pytest.approx(ref_losses, rel=1e-5)
        for name, ref in [*model.state_dict().items(), *(("loss." + k, v) for k, v in loss.state_dict().items())]:
            value = got["loss"][name[5:]] if name.startswith("loss.") else got["model"][name]
            torch.testing.assert_close(value, ref, rtol=1e-4, atol=1e-6, msg=f"rank {rank}: {name}")


# --- the CLI under torchrun vs one process -----------------------------------------------------------------------

ARGS = tiny_overrides(
    "data.batch_size=64",
    "data.augment=none",
    "optim.lr=0.01",
    "train.epochs=2",
    "train.device=cpu",
    "train.log_every=1",
    "train.ema=0.5",  # with a weight average, kept by rank 0 alone
)


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The trainable weights as one vector (BatchNorm running statistics left out)."""
    return torch.cat(
        [v.flatten() for k, v in sorted(state.items()) if v.is_floating_point() and "running" not in k]
    )


def test_torchrun_cli_matches_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    data = make_hw2p2(tmp_path / "hw", n_ids=8, per_id=16)  # 128 images: 2 steps of 64 per epoch
    env = {**os.environ, "FACEREC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "facerec",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "ddp"),
        *ARGS,
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("== epoch 1/2 done") == 1  # rank 0 alone prints
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "one"), *ARGS]) == 0

    ddp, one = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "one")
    assert [r["event"] for r in ddp] == ["start", "epoch", "epoch", "end"]  # one writer
    assert ddp[0]["world_size"] == WORLD and ddp[0]["sampler"] == "ShardedBatchSampler"
    for a, b in zip(ddp[1:3], one[1:3], strict=True):
        assert a["images"] == b["images"] == 128 and a["steps"] == b["steps"] == 2
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.1)
        assert 0.0 <= a["val_auc"] <= 1.0
    torch.manual_seed(0)  # train.seed: the weights both runs started from
    w_init = _flat(build_model(load_config(None, ARGS)).state_dict())
    for key in ("train_model", "model"):  # the optimiser's weights, then their average
        w_ddp, w_one = (_flat(load_checkpoint(tmp_path / run / "last.pt")[key]) for run in ("ddp", "one"))
        step_ddp, step_one = w_ddp - w_init, w_one - w_init
        cosine = float(torch.nn.functional.cosine_similarity(step_ddp, step_one, dim=0))
        ratio = float(step_ddp.norm() / step_one.norm())
        print(
            json.dumps(
                {
                    "weights": key,
                    "cosine": cosine,
                    "length_ratio": ratio,
                    "loss_ddp": [r["train_loss"] for r in ddp[1:3]],
                    "loss_one": [r["train_loss"] for r in one[1:3]],
                }
            )
        )
        assert cosine > 0.9 and 0.75 < ratio < 1.25  # same direction, same length; BatchNorm accounts for the rest
    best = load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert set(best["model"]) == set(load_checkpoint(tmp_path / "one" / "best.pt")["model"])  # no "module." prefix
