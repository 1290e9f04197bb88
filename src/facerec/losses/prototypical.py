"""B-way prototypical loss (spec Appendix B): classify each query among the batch's identity prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import attached_zero, check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES

QUERY_MODES = ("loo", "split")


@LOSSES.register("bway")
class BWayPrototypicalLoss(EmbeddingLoss):
    """Angular prototypical loss: CE over a * cos(query, prototype) + b, a and b learnable (Chung et al. 2020).

    A P x K batch is a P-way ("B-way") episode (Snell et al. 2017). Embeddings are L2-normalised, a prototype is
    the mean of an identity's support embeddings, logits = a * cos + b with a > 0 (init 10) and b (init -5)
    learned, and cross-entropy picks the own identity among the P in the batch.
      query="loo" (default): every image is a query; its own identity's prototype leaves it out (needs K >= 2),
        the other identities' prototypes use all their images (as GE2E, Wan et al. 2018), so no image is wasted.
      query="split": each identity's last image is the query, the other K - 1 form the support (Chung et al.).
    Identities with a single image are only prototypes, never queries. No class count is needed.
    Note: b shifts every logit of a row equally, so the softmax cancels it and its gradient is exactly zero (as in
    Chung et al.'s loss); it is kept, learnable, for fidelity to the spec. Only a changes the loss.
    """

    needs_pk = True
    scoring = "cosine"

    def __init__(self, init_a: float = 10.0, init_b: float = -5.0, query: str = "loo") -> None:
        super().__init__()
        check_positive("init_a", init_a)
        if query not in QUERY_MODES:
            raise ValueError(f"unknown query mode {query!r}; choose one of {list(QUERY_MODES)}")
        self.query = query
        self.a = nn.Parameter(torch.tensor(float(init_a)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = F.normalize(embeddings.float(), dim=1)  # (B, D)
            ids, target = torch.unique(labels, return_inverse=True)  # target: (B,) in [0, P)
            onehot = F.one_hot(target, len(ids)).to(x.dtype)  # (B, P)
            counts = onehot.sum(0)  # (P,)
            if self.query == "split":
                last = torch.arange(len(labels), device=x.device)[:, None] * onehot  # (B, P)
                is_query = (onehot * (last == last.amax(0))).sum(1).bool() & (counts[target] >= 2)
                support = onehot * (~is_query)[:, None].to(x.dtype)
                protos = (support.t() @ x) / support.sum(0).clamp_min(1)[:, None]  # (P, D)
                cos = x @ F.normalize(protos, dim=1).t()  # (B, P)
            else:
                is_query = counts[target] >= 2
                protos = (onehot.t() @ x) / counts[:, None]  # (P, D) with every image
                cos = x @ F.normalize(protos, dim=1).t()
                own = (onehot.t() @ x)[target] - x  # (B, D) own-identity sum without the query
                own_cos = (x * F.normalize(own, dim=1)).sum(1)
                cos = torch.where(onehot.bool(), own_cos[:, None], cos)
            if not is_query.any():
                return attached_zero(embeddings) + 0.0 * (self.a + self.b)
            logits = self.a.clamp_min(1e-6) * cos + self.b
            return F.cross_entropy(logits[is_query], target[is_query])
