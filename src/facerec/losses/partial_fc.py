"""Partial FC: a margin head whose class-centre matrix is split over the DDP ranks, each step using a sample of it.

An et al., "Partial FC: Training 10 Million Identities on a Single Machine" (ICCV-W 2021); insightface's
`recognition/arcface_torch/partial_fc_v2.py`. The margin comes from an ordinary head (`arcface`, `cosface`, ...):
every head that only overrides `target_logit` works, as the margin alone decides how the target logit changes.

Sharding. With N processes, rank r holds the centres of classes [start_r, start_r + n_r) as its (n_r, D) parameter
(n_r = C // N, one more on the first C % N ranks); while training no process holds the whole (C, D) matrix or
(B, C) logits. The loss is given the global batch (GatherLoss all-gathers embeddings and labels,
engine/distributed.py) and scores all B embeddings against its own centres. The initial matrix is the one a single
process would draw (xavier, from the global random stream; every rank draws all of it and keeps its rows), so any N
starts from the same centres, and one process starts from the plain head's.

Sampling. With `sample_rate` < 1, each step keeps the rank's positive centres (classes of the global batch in its
shard, always) plus random others, max(#positives, int(sample_rate * n_r)) in all (insightface's `sample`, on the
global random stream, so a resumed run replays it), and computes (B, k_r) logits against those only. The gradient
of the full parameter is zero on the unsampled rows; as in insightface v2, the optimiser still applies momentum and
weight decay to them.

Gradients. The softmax's normaliser is combined across ranks (losses/dist_softmax.py), and each rank's graph gives
the exact gradient for its own centres and its share of the embeddings' gradient. The shares are summed by the
all_gather's backward; the embeddings' gradient is first multiplied by N, so that DDP's average over ranks leaves
dL/dtheta, as for every other loss under GatherLoss. A learned scale's gradient is summed over ranks.

Checkpoints and inference. `gather_whole()` (every rank calls it; `fit` does before each validation) gives rank 0
the whole matrix on the CPU for the epoch's validation and checkpoint: its `logits()` (closed-set class scores) and
`state_dict()` use it. A checkpoint, model file or export therefore holds all (C, D) centres, and inference builds
the same head in one process, which holds them all. Loading a whole matrix under N ranks keeps the rank's rows,
so a run can also resume under another number of processes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facerec.errors import ConfigError
from facerec.losses._utils import at_least_fp32, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.losses.dist_softmax import ScaleGrad, SumGradOverRanks, distributed_cross_entropy
from facerec.losses.margin import AngularMarginLoss, adacos_scale
from facerec.registry import LOSSES

GATHER_FLOATS = 1 << 24  # floats per rank in one gather of the matrix: 64 MB at a time, not a second matrix


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, count) of rank `rank`'s classes: C // N each, one more on the first C % N ranks."""
    base, extra = divmod(num_classes, world_size)
    return rank * base + min(rank, extra), base + (rank < extra)


def supports(cls: Any) -> bool:
    """Whether a loss class is a margin head that only overrides `target_logit` (Partial FC can use it)."""
    hooks = ("forward", "margin_logits", "cosine", "logits")
    return (
        isinstance(cls, type)
        and issubclass(cls, AngularMarginLoss)
        and all(getattr(cls, h) is getattr(AngularMarginLoss, h) for h in hooks)
    )


def supported_heads() -> list[str]:
    return [name for name in LOSSES.names() if supports(LOSSES.get(name))]


class PartialFC(EmbeddingLoss):
    """A margin `head` over rank `rank`'s shard of C classes, sampled at `sample_rate` (module notes).

    Args:
        head: the margin head, built for this rank's n_r classes: its `weight` (n_r, D) is the shard.
        num_classes: C, over all ranks.
        sample_rate: share of the shard's centres each step uses, in (0, 1]; positives are always among them.
        rank, world_size: this process's place in the job (0, 1 for a single process).
    """

    needs_classes = True
    has_logits = True
    scoring = "cosine"

    def __init__(
        self,
        head: AngularMarginLoss,
        num_classes: int,
        sample_rate: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.start, self.num_local = shard_range(num_classes, rank, world_size)
        if head.weight.shape[0] != self.num_local:
            raise ValueError(f"rank {rank}'s head must hold {self.num_local} classes, not {head.weight.shape[0]}")
        self.head, self.num_classes, self.sample_rate = head, num_classes, float(sample_rate)
        self.rank, self.world_size = rank, world_size
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self._whole: torch.Tensor | None = None  # rank 0, after gather_whole(): the (C, D) matrix on the CPU
        self.register_state_dict_post_hook(_save_whole)
        self.register_load_state_dict_pre_hook(_load_own_rows)

    @property
    def weight(self) -> torch.nn.Parameter:
        """(n_r, D): this rank's class centres."""
        return self.head.weight

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(B,) global labels -> (index (k,) sorted shard rows used this step, or None for all; (B,) column of each
        row's class in them, -1 where it lives on another rank)."""
        local = labels - self.start
        mine = (local >= 0) & (local < self.num_local)
        if self.num_sample >= self.num_local:
            return None, torch.where(mine, local, -1)
        positive = torch.unique(local[mine])
        if len(positive) >= self.num_sample:
            index = positive
        else:
            score = torch.rand(self.num_local, device=labels.device)
            score[positive] = 2.0
            index = score.topk(self.num_sample).indices.sort().values
        return index, torch.where(mine, torch.searchsorted(index, local.clamp(0, self.num_local - 1)), -1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, D) global batch, (B,) labels -> the scalar loss, the same on every rank."""
        with fp32(embeddings.device):
            x = at_least_fp32(embeddings)
            if self.world_size > 1:
                x = ScaleGrad.apply(x, float(self.world_size))
            index, target = self.sample(labels)
            w = self.weight if index is None else self.weight[index]
            cos = F.linear(F.normalize(x, dim=1), F.normalize(at_least_fp32(w), dim=1))  # (B, k)
            column = target.clamp_min(0)[:, None]  # rows whose class is elsewhere write their column 0 back as is
            cos_target = cos.gather(1, column).squeeze(1)
            penalised = torch.where(target >= 0, self.head.target_logit(cos_target), cos_target)
            logits = self._scale() * cos.scatter(1, column, penalised[:, None].to(cos.dtype))
            if self.world_size == 1:
                return F.cross_entropy(logits, target, label_smoothing=self.head.label_smoothing)
            return distributed_cross_entropy(logits, target, self.head.label_smoothing)

    def _scale(self) -> float | torch.Tensor:
        s = self.head.scale
        return SumGradOverRanks.apply(s) if self.world_size > 1 and isinstance(s, torch.Tensor) else s

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) scaled cosines to every class, without margin (closed-set prediction): the whole
        matrix, which under several ranks only rank 0 has, after `gather_whole()`."""
        if self.world_size == 1:
            return self.head.logits(embeddings)
        if self._whole is None:
            raise RuntimeError(
                f"rank {self.rank} holds classes {self._shard_text()} only; call gather_whole() first"
            )
        with fp32(embeddings.device):
            w = F.normalize(self._whole.to(embeddings.device, torch.float32), dim=1)
            return self.head.scale * F.linear(F.normalize(at_least_fp32(embeddings), dim=1), w)

    def on_epoch_start(self, epoch: int) -> None:
        self.head.on_epoch_start(epoch)
        self._whole = None  # gathered for the last validation and checkpoint; a new one comes with the next

    @torch.no_grad()
    def gather_whole(self) -> None:
        """Every rank calls it: rank 0 receives the whole (C, D) matrix on the CPU, a block of rows at a time."""
        if self.world_size == 1:
            return
        w = self.weight.detach()
        longest, dim = shard_range(self.num_classes, 0, self.world_size)[1], w.shape[1]
        whole = torch.empty(self.num_classes, dim, dtype=w.dtype) if self.rank == 0 else None
        step = max(1, GATHER_FLOATS // dim)
        for off in range(0, longest, step):
            block = w.new_zeros(min(step, longest - off), dim)  # equal sizes on every rank, as gather requires
            own = w[off : off + len(block)]
            block[: len(own)] = own
            parts = [torch.empty_like(block) for _ in range(self.world_size)] if self.rank == 0 else None
            dist.gather(block, parts, dst=0)
            for r, part in enumerate(parts or []):
                start, count = shard_range(self.num_classes, r, self.world_size)
                rows = max(0, min(len(block), count - off))
                whole[start + off : start + off + rows] = part[:rows].cpu()
        self._whole = whole

    def _shard_text(self) -> str:
        return f"[{self.start}, {self.start + self.num_local}) of {self.num_classes}"


def _save_whole(module: PartialFC, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: under several ranks, a checkpoint holds the gathered (C, D) matrix, not the shard."""
    if module.world_size == 1:
        return
    if module._whole is None:
        raise RuntimeError(
            f"rank {module.rank} holds classes {module._shard_text()} only; every rank calls gather_whole() "
            "before rank 0 saves"
        )
    state[prefix + "head.weight"] = module._whole


def _load_own_rows(module: PartialFC, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: a whole (C, D) matrix becomes this rank's rows."""
    key = prefix + "head.weight"
    value = state.get(key)
    if module.world_size > 1 and value is not None and value.shape[0] == module.num_classes:
        state[key] = value[module.start : module.start + module.num_local]


def build_partial_fc(
    name: str,
    params: dict[str, Any],
    *,
    embedding_dim: int,
    num_classes: int,
    sample_rate: float = 1.0,
    rank: int = 0,
    world_size: int = 1,
) -> PartialFC:
    """The registered margin head `name` (with `params`) as Partial FC for rank `rank` of `world_size`.

    The head supplies the margin (a scale "auto" is resolved for all C first); its centres are the rank's rows of
    the matrix one process would draw (module notes).
    """
    cls = LOSSES.get(name)
    if not supports(cls):
        raise ConfigError(
            f"loss.name={name!r} cannot be used with Partial FC (loss.partial_fc / loss.sample_rate < 1); "
            f"choose one of {supported_heads()}, or loss.sample_rate=1 and loss.partial_fc=false"
        )
    if num_classes < world_size:
        raise ConfigError(
            f"Partial FC over {world_size} processes needs at least as many classes, got {num_classes}"
        )
    params = dict(params)
    if params.get("scale") == "auto":
        params["scale"] = adacos_scale(num_classes)
    start, count = shard_range(num_classes, rank, world_size)
    with torch.random.fork_rng(devices=[]):  # the head's own (1, D) draw must not take from the stream
        try:
            head = cls(embedding_dim=embedding_dim, num_classes=1, **params)
        except TypeError as err:
            raise ValueError(f"bad parameters for loss {name!r}: {err}") from None
    head.weight = nn.Parameter(torch.empty(count, embedding_dim))  # the shard, drawn as the whole matrix would be
    _draw_rows(head.weight, num_classes, start)
    return PartialFC(head, num_classes, sample_rate, rank, world_size)


@torch.no_grad()
def _draw_rows(weight: torch.Tensor, num_classes: int, start: int) -> None:
    """Fill `weight` (n, D) with rows start..start+n-1 of a xavier-uniform (C, D) matrix drawn, a block at a time,
    from the global random stream: the values and the stream's state afterwards are those of one process's
    `nn.init.xavier_uniform_` on the whole matrix."""
    dim = weight.shape[1]
    bound = math.sqrt(6.0 / (num_classes + dim))
    step = max(1, GATHER_FLOATS // dim)
    for off in range(0, num_classes, step):
        block = torch.empty(min(step, num_classes - off), dim).uniform_(-bound, bound)
        lo, hi = max(off, start), min(off + len(block), start + len(weight))
        if lo < hi:
            weight[lo - start : hi - start] = block[lo - off : hi - off]
