"""FaceEmbedder: backbone + neck -> (B, D) face embedding (the network's penultimate layer, not normalised)."""

from __future__ import annotations

import torch
from torch import nn

from facerec.registry import BACKBONES

NECKS = ("pool", "flatten")


class FaceEmbedder(nn.Module):
    """(B, 3, S, S) images in [-1, 1] -> (B, D) embeddings.

    Necks: "pool" = global average pool -> BN -> Dropout -> Linear -> BN (the ResNet default);
    "flatten" = BN -> Dropout -> flatten the (C, S/8, S/8) map -> Linear -> BN, which keeps where on the face a
    feature fired (as ArcFace's "E" output layer does) at the cost of more parameters.
    """

    def __init__(
        self,
        backbone: str,
        embedding_dim: int = 256,
        dropout: float = 0.0,
        neck: str = "pool",
        image_size: int = 64,
    ) -> None:
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}; choose one of {list(NECKS)}")
        self.backbone = BACKBONES.build(backbone)
        c = self.backbone.num_features
        with torch.no_grad():
            was_training = self.backbone.training
            self.backbone.eval()
            side = self.backbone(torch.zeros(1, 3, image_size, image_size)).shape[-1]
            self.backbone.train(was_training)
        in_features = c if neck == "pool" else c * side * side
        self.neck_kind = neck
        self.pre = nn.Sequential(nn.BatchNorm2d(c), nn.Dropout(dropout))
        self.fc = nn.Linear(in_features, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pre(self.backbone(x))  # (B, C, h, w)
        f = f.mean(dim=(2, 3)) if self.neck_kind == "pool" else f.flatten(1)
        return self.bn(self.fc(f))  # (B, D)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
