"""The torch modules of a checkpoint's inference state: the embedding network, and the closed-set class head.

`ClassHead` maps flip-summed embeddings to class scores through engine.evaluate.class_scores (the classifier of
the loss, or cosine similarity to class prototypes), as a module, so that the ONNX export runs the very function
the PyTorch model and the submission files use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facerec.config import Config, config_from_dict
from facerec.engine.build import build_loss_fn, build_model
from facerec.engine.evaluate import class_scores
from facerec.losses.base import CombinedLoss
from facerec.models.embedder import FaceEmbedder


def float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model files may store fp16 weights (`export_inference(half=True)`); compute in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def network_from_state(state: dict[str, Any]) -> tuple[FaceEmbedder, Config]:
    """The eval-mode embedding network of one model's state (config + "model" weights), and its config."""
    cfg = config_from_dict(state["config"])
    net = build_model(cfg)
    net.load_state_dict(float32(state["model"]))
    return net.eval(), cfg


def loss_from_state(state: dict[str, Any], cfg: Config) -> CombinedLoss:
    """The eval-mode loss (with its classifier, if it has one) of one model's state."""
    loss_fn = build_loss_fn(cfg, len(state["classes"]))
    loss_fn.load_state_dict(float32(state["loss"]))
    return loss_fn.eval()


class ClassHead(nn.Module):
    """(N, D) flip-summed embeddings -> (N, C) closed-set scores: `engine.evaluate.class_scores` as a module."""

    def __init__(self, loss_fn: CombinedLoss | None, prototypes: torch.Tensor | None) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.prototypes = prototypes

    @property
    def available(self) -> bool:
        """Whether there is something to score classes with: a classifier, or class prototypes."""
        return (self.loss_fn is not None and bool(self.loss_fn.has_logits)) or self.prototypes is not None

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return class_scores(embeddings, self.loss_fn, self.prototypes)


def log_prob_mean(member_scores: list[torch.Tensor]) -> torch.Tensor:
    """The members' (N, C) class scores -> (N, C) probabilities: softmax of the mean log-probability, i.e. the
    normalised geometric mean of the members' softmax probabilities (docs/benchmarks.md "Ensembles")."""
    logp = torch.stack([s.float().log_softmax(dim=1) for s in member_scores])
    return logp.mean(0).softmax(dim=1)


class EnsembleHead(nn.Module):
    """(N, sum D_i) members' flip-summed raw embeddings side by side -> (N, C) ensemble probabilities."""

    def __init__(self, heads: list[ClassHead], dims: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.dims = list(dims)

    @property
    def available(self) -> bool:
        return all(h.available for h in self.heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = features.split(self.dims, dim=1)
        return log_prob_mean([head(p) for head, p in zip(self.heads, parts)])
