"""Checks that need a CUDA GPU, skipped without one. With a GPU: `python -m pytest -q tests/test_gpu.py`.

- The training step makes no host synchronisation, under bf16 and under fp16 with its loss scaling:
  `torch.cuda.set_sync_debug_mode("error")` turns every sync (`.item()`, a device-to-host copy, `nonzero`, a
  boolean mask) into an exception, for every step of an epoch after the epoch's one-off transfer of its batch
  order.
- cuDNN's BatchNorm takes fp16 but not bf16 inputs (the reason for train.amp=fp16).
- NCCL: the embedding all-gather (with its gradient) and DDP run on an NCCL process group (one rank: one GPU is all
  a lent machine has; tests/test_distributed.py runs two ranks on gloo).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from facerec.data.augment import get_preset
from facerec.data.memory import ImageSet
from facerec.data.sampler import RandomBatchSampler
from facerec.engine.data import epoch_batches
from facerec.engine.ema import WeightAverage
from facerec.engine.optim import build_optimizer
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_one_epoch
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CLASSES = 10


def _no_sync_after_first(batches: Iterator) -> Iterator:
    """Yield `batches`, raising on any host sync from the first step on (the epoch's order is copied before)."""
    first = next(batches)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield first
        yield from batches
    finally:  # runs when the loop has taken the last batch, before train_one_epoch reads its sums
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize(
    "terms",
    [
        [("softmax", 1.0, {})],
        [("arcface", 1.0, {"margin_warmup_epochs": 2})],
        [("cosface", 1.0, {})],
        [("softmax", 1.0, {}), ("center", 0.01, {})],
    ],
    ids=["softmax", "arcface", "cosface", "softmax+center"],
)
@pytest.mark.parametrize("grad_clip", [0.0, 5.0])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("ema", [0.0, 0.99], ids=["no_ema", "ema"])
def test_training_step_never_waits_for_the_gpu(terms, grad_clip: float, amp: str, ema: float) -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = FaceEmbedder("resnet18", 64, image_size=32).to(dev, memory_format=torch.channels_last)
    loss_fn = build_combined_loss(terms, embedding_dim=64, num_classes=CLASSES).to(dev)
    optimizer = build_optimizer(model, loss_fn, "sgd", 0.05, 5e-4)
    n = 8 * 32
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, device=dev)
    train = ImageSet(images, torch.arange(n) % CLASSES, [str(c) for c in range(CLASSES)])
    sampler = RandomBatchSampler(n, 32)
    batches = epoch_batches(train, sampler, torch.Generator().manual_seed(0), dev)
    opts = StepOptions(dev, amp=amp, channels_last=True, grad_clip=grad_clip, log_every=10**9)
    average = WeightAverage({"model": model, "loss": loss_fn}, ema) if ema else None
    parts = StepParts(
        model, loss_fn, optimizer, LRSchedule(0.05, 1, len(sampler)), get_preset("standard"), opts, average
    )
    aug_gen = torch.Generator(device=dev).manual_seed(0)
    result = train_one_epoch(parts, _no_sync_after_first(batches), aug_gen, steps=len(sampler))
    overflows = result.get("overflow_steps", 0)  # fp16: the first steps may overflow the starting loss scale
    assert result["steps"] == len(sampler) - overflows and result["skipped_steps"] == 0
    assert result["images"] == n - 32 * overflows and math.isfinite(result["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cudnn_runs_batchnorm_under_fp16_but_not_bf16() -> None:
    """Why train.amp=fp16 exists (engine/loss_scale.py): PyTorch hands BatchNorm to cuDNN for fp16 inputs with fp32
    weights, and to its own kernels for bf16 inputs."""
    dev = torch.device("cuda")
    w, b, mean, var = (
        torch.ones(64, device=dev),
        torch.zeros(64, device=dev),
        torch.zeros(64, device=dev),
        torch.ones(64, device=dev),
    )
    backends = {}
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(8, 64, 16, 16, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
        backends[dtype] = torch._C._select_batch_norm_backend(x, w, b, mean, var, True, 1e-5).name
    assert backends == {torch.float16: "Cudnn", torch.bfloat16: "Native"}


def test_a_non_finite_step_is_skipped_on_the_gpu_without_a_sync() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = FaceEmbedder("tiny_cnn", 16, image_size=16).to(dev)
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=16, num_classes=CLASSES).to(dev)
    optimizer = build_optimizer(model, loss_fn, "sgd", 0.05, 5e-4)
    before = [p.detach().clone() for p in model.parameters()]
    forward = loss_fn.forward
    loss_fn.forward = lambda e, y: forward(e, y) * math.nan  # every step non-finite
    x = torch.randint(0, 256, (4, 16, 16, 16, 3), dtype=torch.uint8, device=dev)
    y = (torch.arange(64, device=dev) % CLASSES).view(4, 16)
    batches = iter(list(zip(x, y, strict=True)))
    parts = StepParts(model, loss_fn, optimizer, LRSchedule(0.05, 1, 4), get_preset("none"), StepOptions(dev))
    result = train_one_epoch(
        parts, _no_sync_after_first(batches), torch.Generator(device=dev).manual_seed(0), steps=4
    )
    assert result["skipped_steps"] == 4 and result["steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_nccl_gather_and_ddp_step(tmp_path: Path) -> None:
    import torch.distributed as dist

    from facerec.engine.distributed import _GatherWithGrad

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        dev = torch.device("cuda", 0)
        x = torch.randn(8, 4, device=dev, requires_grad=True)
        g = torch.randn(8, 4, device=dev)
        gathered = _GatherWithGrad.apply(x)
        (gathered * g).sum().backward()
        torch.testing.assert_close(gathered, x)  # one rank: the gather is the identity ...
        torch.testing.assert_close(x.grad, g)  # ... and so is its backward (all_reduce over one rank)

        torch.manual_seed(0)
        plain = FaceEmbedder("tiny_cnn", 16, image_size=16).to(dev)
        ddp_model = FaceEmbedder("tiny_cnn", 16, image_size=16).to(dev)
        ddp_model.load_state_dict(plain.state_dict())
        ddp = torch.nn.parallel.DistributedDataParallel(ddp_model, device_ids=[0])
        images = torch.rand(16, 3, 16, 16, device=dev) * 2 - 1
        for m in (plain, ddp):
            m(images).square().mean().backward()
        for a, b in zip(plain.parameters(), ddp_model.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad)
    finally:
        dist.destroy_process_group()
