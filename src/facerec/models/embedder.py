"""FaceEmbedder: backbone + neck -> (B, D) face embedding (the network's penultimate layer, not normalised)."""

from __future__ import annotations

import torch
from torch import nn

from facerec.registry import BACKBONES

NECKS = ("pool", "flatten", "gdc")


class FaceEmbedder(nn.Module):
    """(B, 3, S, S) images in [-1, 1] -> (B, D) embeddings.

    The backbone maps the images to a (B, C, h, w) map (h = w = S / its stride, found by running it once on a
    blank image). Necks: "pool" = global average pool -> BN -> Dropout -> Linear -> BN (the ResNet default);
    "flatten" = BN -> Dropout -> flatten the (C, h, w) map -> Linear -> BN, which keeps where on the face a
    feature fired (as ArcFace's "E" output layer does) at the cost of more parameters; "gdc" = an h x w depthwise
    conv (a learned weighting of the positions, per channel: MobileFaceNet's global depthwise conv) -> BN ->
    Dropout -> Linear -> BN, which keeps the position weighting for C * h * w parameters instead of C * h * w * D.
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
        in_features = c * side * side if neck == "flatten" else c
        self.neck_kind = neck
        # gdc: an h x w depthwise conv, (B, C, h, w) -> (B, C, 1, 1), before the BN
        gdc = [nn.Conv2d(c, c, kernel_size=side, groups=c, bias=False)] if neck == "gdc" else []
        self.pre = nn.Sequential(*gdc, nn.BatchNorm2d(c), nn.Dropout(dropout))
        self.fc = nn.Linear(in_features, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pre(self.backbone(x))  # (B, C, h, w); (B, C, 1, 1) after the gdc neck
        f = f.mean(dim=(2, 3)) if self.neck_kind == "pool" else f.flatten(1)
        return self.bn(self.fc(f))  # (B, D)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
