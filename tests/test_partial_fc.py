"""Partial FC (losses/partial_fc.py): one process against the plain head, two gloo processes against one process
computing the whole loss on the same data, sampling, checkpoints and the config wiring.

Tolerance. Over two ranks the softmax's normaliser is summed in another order (per rank, then across), so the loss
and every gradient agree with the single-process head to float32 round-off: asserted to 1e-5 relative, 1e-6
absolute; measured at most 5e-7 of the largest entry (loss, embeddings', centres' and scale's gradients). In one
process at sample_rate 1 the arithmetic is the head's own: equal to the bit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import main
from facerec.config import ConfigError, load_config
from facerec.engine.build import build_loss_fn
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.distributed import GatherLoss, gather_shards, keep_own_shard_state
from facerec.inference.load import load
from facerec.losses.base import CombinedLoss, build_loss
from facerec.losses.partial_fc import PartialFC, build_partial_fc, shard_range, supported_heads

WORLD, C, D, B = 2, 13, 8, 12  # 13 classes: shards of 7 and 6 rows
TOL = {"rtol": 1e-5, "atol": 1e-6}
# (head, its parameters, sample_rate): every margin head that only overrides target_logit, with the options
# that change the distributed maths (label smoothing, a learned scale)
CASES = [
    ("arcface", {"scale": 16.0, "label_smoothing": 0.1, "learn_scale": True}, 1.0),
    ("cosface", {"scale": 16.0}, 1.0),
    ("sphereface", {"scale": 16.0, "label_smoothing": 0.2}, 0.5),
    ("normface", {"scale": 16.0, "learn_scale": True}, 0.3),
]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g), torch.tensor([0, 3, 3, 12, 7, 1, 9, 12, 6, 6, 2, 11])


def _reference(name: str, params: dict, x: torch.Tensor, y: torch.Tensor, cols: torch.Tensor | None) -> dict:
    """The plain head in one process, on the same seed and data; with `cols`, the cross-entropy over those classes
    only (what sampling keeps)."""
    torch.manual_seed(0)
    head = build_loss(name, embedding_dim=D, num_classes=C, **params)
    x = x.clone().requires_grad_()
    if cols is None:
        loss = head(x, y)
    else:  # the same head, its softmax restricted to the sampled classes
        target = torch.searchsorted(cols, y)
        logits = head.margin_logits(head.cosine(x)[:, cols], target)
        loss = F.cross_entropy(logits, target, label_smoothing=head.label_smoothing)
    loss.backward()
    scale = head.scale.grad if isinstance(head.scale, torch.Tensor) else None
    return {"loss": loss.detach(), "x": x.grad, "w": head.weight.grad, "weight": head.weight.detach(), "s": scale}


# --- one process -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, params, _", CASES)
def test_one_process_at_full_rate_is_the_plain_head_to_the_bit(name, params, _):
    x, y = _data()
    ref = _reference(name, params, x, y, None)
    torch.manual_seed(0)
    pfc = build_partial_fc(name, params, embedding_dim=D, num_classes=C)
    x = x.clone().requires_grad_()
    loss = pfc(x, y)
    loss.backward()
    assert torch.equal(pfc.weight, ref["weight"])  # the same initial centres from the same seed
    assert (
        torch.equal(loss, ref["loss"]) and torch.equal(x.grad, ref["x"]) and torch.equal(pfc.weight.grad, ref["w"])
    )
    assert torch.equal(pfc.logits(x), pfc.head.logits(x))


def test_shards_split_the_classes_evenly_and_in_order():
    for classes, world in [(13, 2), (10, 3), (1_000_000, 8), (5, 5)]:
        shards = [shard_range(classes, r, world) for r in range(world)]
        assert [s for s, _ in shards] == [sum(n for _, n in shards[:r]) for r in range(world)]
        assert sum(n for _, n in shards) == classes and max(n for _, n in shards) - min(n for _, n in shards) <= 1


def test_sampling_keeps_every_positive_and_the_stated_count():
    torch.manual_seed(0)
    pfc = build_partial_fc("arcface", {}, embedding_dim=D, num_classes=1000, sample_rate=0.1)
    assert pfc.num_sample == 100
    few = torch.randint(0, 1000, (64,))  # at most 64 distinct positives: topped up with negatives to 100
    many = torch.randperm(1000)[:150].repeat(2)  # 150 positives: all of them, no negatives
    for labels, count in ((few, 100), (many, 150)):
        index, target = pfc.sample(labels)
        assert len(index) == count and len(set(index.tolist())) == count
        assert set(labels.tolist()) <= set(index.tolist())
        assert torch.equal(index[target], labels)  # each row's column is its own class


def test_unsampled_centres_get_no_gradient_and_sgd_leaves_them_alone():
    torch.manual_seed(0)
    pfc = build_partial_fc("cosface", {}, embedding_dim=D, num_classes=200, sample_rate=0.25)
    x, y = torch.randn(16, D), torch.randint(0, 200, (16,))
    torch.manual_seed(5)
    index, _ = pfc.sample(y)
    before = pfc.weight.detach().clone()
    torch.manual_seed(5)
    pfc(x, y).backward()
    unsampled = torch.ones(200, dtype=torch.bool)
    unsampled[index] = False
    assert pfc.weight.grad[unsampled].abs().sum() == 0 and pfc.weight.grad[index].abs().sum() > 0
    torch.optim.SGD(pfc.parameters(), lr=0.1).step()  # no momentum, no weight decay: only sampled rows move
    assert torch.equal(pfc.weight[unsampled], before[unsampled])


def test_sampled_training_lowers_the_whole_loss():
    torch.manual_seed(0)
    pfc = build_partial_fc("arcface", {"scale": 16.0}, embedding_dim=D, num_classes=300, sample_rate=0.1)
    x, y = torch.randn(64, D, requires_grad=True), torch.randint(0, 300, (64,))
    opt = torch.optim.SGD([x, *pfc.parameters()], lr=0.5, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        start = pfc.head(x, y).item()  # in one process the head holds all 300 centres: the whole loss
    for _ in range(10):
        opt.zero_grad()
        pfc(x, y).backward()
        opt.step()
    with torch.no_grad():
        assert pfc.head(x, y).item() < 0.8 * start


# --- two gloo processes ------------------------------------------------------------------------------------------


def _worker(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = [_rank_case(rank, *case) for case in CASES]
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _rank_case(rank: int, name: str, params: dict, rate: float) -> dict:
    """One rank's loss, gradients, sample and gathered matrix, with its half of the batch under GatherLoss."""
    torch.manual_seed(0)
    pfc = build_partial_fc(
        name, params, embedding_dim=D, num_classes=C, sample_rate=rate, rank=rank, world_size=WORLD
    )
    loss_fn = GatherLoss(CombinedLoss([(1.0, pfc)]))
    x, y = _data()
    half = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    mine = x[half].clone().requires_grad_()
    torch.manual_seed(1)
    index, _ = pfc.sample(y)
    torch.manual_seed(1)  # the forward draws the same sample
    loss = loss_fn(mine, y[half])
    loss.backward()
    gather_shards(loss_fn)
    state = pfc.state_dict() if rank == 0 else None
    scores = pfc.logits(x) if rank == 0 else None
    return {
        "loss": loss.detach(),
        "x": mine.grad,
        "w": pfc.weight.grad,
        "weight": pfc.weight.detach(),
        "s": pfc.head.scale.grad if isinstance(pfc.head.scale, torch.Tensor) else None,
        "index": (pfc.start + (index if index is not None else torch.arange(pfc.num_local))),
        "start": pfc.start,
        "params": sum(p.numel() for p in pfc.parameters()),
        "state": state,
        "scores": scores,
        "has_logits": loss_fn.has_logits,
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict]]:
    """Every case of CASES run by two gloo processes (fork: they start in milliseconds with torch imported)."""
    tmp = tmp_path_factory.mktemp("pfc")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp / "result")), nprocs=WORLD, start_method="fork")
    return [torch.load(f"{tmp / 'result'}.{rank}", weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_two_ranks_match_one_process(two_ranks, case):
    name, params, rate = CASES[case]
    x, y = _data()
    cols = torch.cat([two_ranks[r][case]["index"] for r in range(WORLD)])
    assert set(y.tolist()) <= set(cols.tolist())  # positives on both ranks are sampled
    ref = _reference(name, params, x, y, None if rate == 1 else cols)
    for rank in range(WORLD):
        got, (start, count) = two_ranks[rank][case], shard_range(C, rank, WORLD)
        rows, half = slice(start, start + count), slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        torch.testing.assert_close(got["loss"], ref["loss"], **TOL)
        # the embeddings' gradient is N x dL/de, which DDP's average over N ranks turns into dL/dtheta
        torch.testing.assert_close(got["x"] / WORLD, ref["x"][half], **TOL)
        torch.testing.assert_close(got["w"], ref["w"][rows], **TOL)
        assert torch.equal(got["weight"], ref["weight"][rows])  # the rows of the matrix one process draws
        if ref["s"] is not None:
            torch.testing.assert_close(got["s"], ref["s"], **TOL)
        assert got["params"] == count * D + (ref["s"] is not None)  # memory: C / N centres per rank
        assert not got["has_logits"]  # no step accuracy: it would need all (B, C) logits
        positives = {c for c in y.tolist() if start <= c < start + count}
        expected = count if rate == 1 else max(int(rate * count), len(positives))
        assert len(got["index"]) == expected


def test_rank_zero_gathers_the_whole_matrix_for_checkpoints_and_class_scores(two_ranks):
    name, params, _ = CASES[0]
    x, y = _data()
    whole = _reference(name, params, x, y, None)["weight"]
    state = two_ranks[0][0]["state"]
    assert sorted(state) == ["head.scale", "head.weight"] and torch.equal(state["head.weight"], whole)
    torch.manual_seed(0)
    one = build_partial_fc(name, params, embedding_dim=D, num_classes=C)
    torch.testing.assert_close(two_ranks[0][0]["scores"], one.logits(x), **TOL)  # val_acc sees every class
    for rank in range(WORLD):  # a whole matrix loads as the rank's rows
        torch.manual_seed(9)
        pfc = build_partial_fc(name, params, embedding_dim=D, num_classes=C, rank=rank, world_size=WORLD)
        pfc.load_state_dict(state)
        start, count = shard_range(C, rank, WORLD)
        assert torch.equal(pfc.weight, whole[start : start + count])


def test_a_shard_will_not_save_itself_as_the_model():
    torch.manual_seed(0)
    pfc = build_partial_fc("arcface", {}, embedding_dim=D, num_classes=C, rank=1, world_size=WORLD)
    with pytest.raises(RuntimeError, match=r"classes \[7, 13\) of 13 only"):
        pfc.state_dict()


# --- config and training runs ------------------------------------------------------------------------------------


def test_sample_rate_is_range_checked_and_other_heads_are_refused():
    with pytest.raises(ConfigError, match=r"loss.sample_rate=0.0 is out of range: must lie in \(0.0, 1.0\]"):
        load_config(None, ["loss.sample_rate=0"])
    cfg = load_config(None, ["loss.name=adaface", "loss.sample_rate=0.5"])
    with pytest.raises(
        ConfigError, match=r"loss.name='adaface' cannot be used with Partial FC.*'arcface', 'cosface'"
    ):
        build_loss_fn(cfg, C)
    assert supported_heads() == ["arcface", "cosface", "normface", "sphereface"]
    cfg = load_config(None, ["loss.name=arcface", "loss.partial_fc=true", "train.ema=0.9"])
    with pytest.raises(ConfigError, match="train.ema cannot be used with Partial FC over several processes"):
        build_loss_fn(cfg, C, (1, WORLD))


def test_config_builds_partial_fc_as_the_first_term_only():
    cfg = load_config(
        None, ["loss.name=cosface", "loss.sample_rate=0.5", "loss.extra=[{name: center, weight: 0.01}]"]
    )
    loss = build_loss_fn(cfg, C, (1, WORLD))
    assert isinstance(loss.terms[0], PartialFC) and loss.terms[0].weight.shape == (6, cfg.model.embedding_dim)
    assert type(loss.terms[1]).__name__ == "CenterLoss" and loss.weights == [1.0, 0.01]
    assert not isinstance(build_loss_fn(load_config(None, ["loss.name=cosface"]), C).terms[0], PartialFC)


def test_one_process_training_run_saves_a_model_that_classifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    data = make_hw2p2(tmp_path / "hw", n_ids=8, per_id=8)
    args = tiny_overrides("loss.name=arcface", "loss.sample_rate=0.5", "train.epochs=1", "train.device=cpu")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *args]) == 0
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["loss"]["terms.0.head.weight"].shape == (8, 32)
    assert "train_acc" not in best["metrics"] and 0.0 <= best["metrics"]["val_acc"] <= 1.0
    model = load(tmp_path / "run" / "best.pt")
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    assert model.class_scores(images).shape == (3, 8)


def _ddp_worker(rank: int, port: int, cache: str, argv: list[str]) -> None:
    """`facerec ARGV` as rank `rank` of a 2-process job, as torchrun would start it (fork: torch is imported)."""
    os.environ.update(
        WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ["FACEREC_CACHE"] = cache
    torch.set_num_threads(1)
    assert main(argv) == 0


def _ddp(argv: list[str], cache: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(cache), argv), nprocs=WORLD, start_method="fork")


def test_two_process_run_validates_on_every_class_and_saves_the_whole_matrix(tmp_path: Path):
    data = make_hw2p2(tmp_path / "hw", n_ids=9, per_id=8)  # 9 classes: shards of 5 and 4
    args = tiny_overrides("loss.name=cosface", "loss.partial_fc=true", "loss.sample_rate=0.5", "train.device=cpu")
    run = tmp_path / "run"
    _ddp(["train", "--data", str(data), "--out", str(run), *args, "train.epochs=2"], tmp_path / "cache")
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["loss"]["terms.0.head.weight"].shape == (9, 32)  # gathered from both ranks
    assert 0.0 <= last["metrics"]["val_acc"] <= 1.0  # rank 0 scored the val images against all 9 classes
    torch.manual_seed(0)  # train.seed: the centres both ranks started from
    start = build_loss_fn(load_config(None, args), 9).terms[0].weight.detach()
    moved = (last["loss"]["terms.0.head.weight"] - start).norm(dim=1)
    assert (moved[:5] > 0).all() and (moved[5:] > 0).all()  # both ranks' centres trained
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    assert load(run / "best.pt").class_scores(images).shape == (3, 9)  # one process serves it


def test_other_ranks_drop_rank_zeros_optimiser_state_for_their_shard():
    for rank, kept in ((0, True), (1, False)):
        pfc = build_partial_fc("arcface", {}, embedding_dim=D, num_classes=C, rank=rank, world_size=WORLD)
        opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9)
        opt.state[pfc.weight]["momentum_buffer"] = torch.ones_like(pfc.weight)
        saved = opt.state_dict()  # as rank 0's checkpoint holds it
        keep_own_shard_state(opt, CombinedLoss([(1.0, pfc)]))
        opt.load_state_dict(saved)  # --resume or a fault rollback
        assert (pfc.weight in opt.state) == kept
    one = build_partial_fc("arcface", {}, embedding_dim=D, num_classes=C)  # resumed in one process: all 13 rows
    opt = torch.optim.SGD(one.parameters(), lr=0.1, momentum=0.9)
    keep_own_shard_state(opt, one)
    opt.load_state_dict(saved)  # the last shard's state (6 rows) does not fit 13
    assert one.weight not in opt.state
    one(*_data()).backward()
    opt.step()  # momentum starts afresh instead of failing on the shapes
    assert opt.state[one.weight]["momentum_buffer"].shape == (C, D)
