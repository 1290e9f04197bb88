"""Data-parallel training over several processes (`torchrun --nproc_per_node=N -m facerec train ...`).

How a global batch of B images is split and put back together:
  * every rank draws the same global batches (same seed, same generator) and keeps its contiguous slice of B / N
    images (`ShardedBatchSampler`);
  * DistributedDataParallel averages the model's gradients over the ranks;
  * `GatherLoss` all-gathers the embeddings (with gradient) and labels in rank order, which rebuilds the global
    batch exactly, and evaluates the loss on it. Every rank then computes the same loss, so the loss's own
    parameters (class centres) get the same full-batch gradient everywhere and stay in sync without DDP, pair and
    proxy losses see all B embeddings, and the all_gather backward (a sum over ranks) times DDP's average gives the
    model the gradient of the global-batch loss.
What differs from one process with batch B: BatchNorm normalises each rank's B / N slice with that slice's
statistics (plain BatchNorm, as insightface's arcface_torch does; SyncBatchNorm needs CUDA and costs a collective
per layer), and the saved running statistics are rank 0's. Rank 0 alone validates, logs and writes files; the
numbers every rank needs (validation metrics for the schedule, the time-limit decision) are broadcast from it.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from facerec.losses.base import EmbeddingLoss
from facerec.losses.partial_fc import PartialFC

T = TypeVar("T")
# Rank 0 decodes the dataset and validates while the others wait in a collective: allow for that.
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job; the default is the single-process run (every method a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` (any picklable value) on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (decoding the dataset into the shared cache), then the other ranks."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); without it, a single process.

    On CUDA each rank takes GPU LOCAL_RANK and the backend is NCCL; on CPU it is gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible; "
                f"use torchrun --nproc_per_node={torch.cuda.device_count()} or fewer"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        bind = device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT, **({"device_id": device} if bind else {})
        )  # NCCL: this rank's GPU, known up front
    return DistContext(rank, world, local), device


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (call after a final `ctx.barrier()` on success)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when there are several ranks; `model` itself otherwise.

    Buffers are synced once at the start but not before every forward: rank 0's BatchNorm running statistics are
    the ones saved and evaluated either way (the per-step broadcast would only overwrite the other ranks' copies).
    """
    if not ctx.enabled:
        return model
    ddp = nn.parallel.DistributedDataParallel
    new_api = "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters  # torch >= 2.12 renamed it
    buffers = {"forward_sync_buffers": False} if new_api else {"broadcast_buffers": False}
    return ddp(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **buffers,
    )


class ShardedBatchSampler:
    """Rank `rank`'s contiguous slice of every global batch of `sampler` (RandomBatchSampler / PKBatchSampler).

    All ranks pass generators with the same seed, so they agree on the global batches; gathering the slices in
    rank order gives back each global batch in its original order.
    """

    def __init__(self, sampler: Any, rank: int, world_size: int) -> None:
        if sampler.batch_size % world_size:
            raise ValueError(
                f"a global batch of {sampler.batch_size} images cannot be split evenly over "
                f"{world_size} processes; choose data.batch_size (or data.p * data.k) divisible by "
                f"{world_size}"
            )
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.batch_size = sampler.batch_size // world_size

    def __len__(self) -> int:
        return len(self.sampler)

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        n = self.batch_size
        for batch in self.sampler.batches(generator):
            if len(batch) != n * self.world_size:  # a short last batch would leave ranks waiting on each other
                raise ValueError(
                    f"global batch of {len(batch)} images, expected {n * self.world_size}; "
                    "use a sampler that drops the last partial batch"
                )
            yield batch[self.rank * n : (self.rank + 1) * n]


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each of N ranks -> (N * b, ...), in rank order; no gradient."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of the gradients for its own slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _all_gather(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # (N * b, D) is small: a plain sum instead of a reduce-scatter (gloo lacks one)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


class GatherLoss(EmbeddingLoss):
    """Evaluate `inner` on the global batch: (B/N, D) local embeddings -> all_gather -> inner((B, D), (B,)).

    The embeddings are gathered with a gradient: the backward sums the gradients of every rank's copy of the loss
    into each rank's slice. Since every rank computes the same loss,
    that is N x dL/de; DDP's average over N ranks then leaves exactly dL/dtheta of the global-batch loss.
    Only the training step uses this wrapper; checkpoints hold `inner`'s state_dict. The loss head's work is
    repeated on every rank (cheap next to the backbone for a few thousand classes), except a Partial FC head's
    (losses/partial_fc.py), which splits its classes over the ranks: its shards are not broadcast, and the step
    reports no training accuracy with it (in one process too), which would need the (B, C) logits it avoids.
    """

    def __init__(self, inner: EmbeddingLoss) -> None:
        super().__init__()
        self.inner = inner
        if dist.is_available() and dist.is_initialized():  # start every rank from rank 0's class centres
            shards = {id(head.weight) for head in partial_fc_heads(inner)}
            for tensor in list(inner.parameters()) + list(inner.buffers()):
                if id(tensor) not in shards:
                    dist.broadcast(tensor.data, src=0)

    @property
    def has_logits(self) -> bool:  # type: ignore[override]
        return self.inner.has_logits and not partial_fc_heads(self.inner)

    @property
    def needs_pk(self) -> bool:  # type: ignore[override]
        return self.inner.needs_pk

    @property
    def scoring(self) -> str:  # type: ignore[override]
        return self.inner.scoring

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.inner(embeddings, labels)
        return self.inner(_GatherWithGrad.apply(embeddings), _all_gather(labels))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.inner.logits(embeddings)

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)


def partial_fc_heads(loss_fn: nn.Module) -> list[PartialFC]:
    """The Partial FC heads inside `loss_fn` (losses/partial_fc.py)."""
    return [m for m in loss_fn.modules() if isinstance(m, PartialFC)]


def gather_shards(loss_fn: nn.Module) -> None:
    """Every rank calls it before rank 0 validates and saves: rank 0 receives the whole class-centre matrix of each
    Partial FC head (its `logits()` and `state_dict()` use it until the next epoch starts). A no-op otherwise."""
    for head in partial_fc_heads(loss_fn):
        head.gather_whole()


def keep_own_shard_state(optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> None:
    """After the optimiser loads a checkpoint's state (--resume, a fault rollback), ranks 1..N-1 drop what it holds
    for their Partial FC shard: a checkpoint has rank 0's optimiser state only. So does any rank whose shard has
    another shape than that state (a run resumed with another number of processes). Those centres' momentum
    restarts from zero (`zero_momentum`) and rebuilds within about 1 / (1 - momentum) steps."""
    heads = partial_fc_heads(loss_fn)
    if not heads:
        return

    def drop(opt: torch.optim.Optimizer) -> None:
        for head in heads:
            state = opt.state.get(head.weight, {})
            foreign = head.world_size > 1 and head.rank != 0
            if foreign or any(t.ndim and t.shape != head.weight.shape for t in state.values()):
                opt.state.pop(head.weight, None)

    optimizer.register_load_state_dict_post_hook(drop)
