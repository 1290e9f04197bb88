"""MobileFaceNet (Chen et al. 2018; insightface `arcface_torch/backbones/mobilefacenet.py`): a ~1M-parameter trunk.

MobileNetV2-style bottlenecks (1x1 expand -> 3x3 depthwise -> 1x1 linear projection, PReLU instead of ReLU6) on
a stride-16 body: (B, 3, 112, 112) -> (B, 512, 7, 7). The paper's head, a global depthwise convolution ("GDC": a
7x7 depthwise conv that weighs every position of the map instead of averaging them) -> BN -> linear -> BN, is
FaceEmbedder's "gdc" neck, so `model.backbone=mobilefacenet model.neck=gdc model.embedding_dim=128
data.image_size=112` is the paper's network (221M multiply-adds; 1.00M parameters, the paper's 0.99M).
"""

from __future__ import annotations

import torch
from torch import nn

from facerec.registry import BACKBONES


def _conv_bn(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """conv (no bias) -> BN [-> PReLU]; "same" padding, so only `stride` changes the map size."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """1x1 conv to `hidden` (PReLU) -> 3x3 depthwise (stride, PReLU) -> 1x1 linear conv to `cout`.

    (B, cin, H, W) -> (B, cout, H/stride, W/stride); the input is added back when the shapes match.
    """

    def __init__(self, cin: int, cout: int, hidden: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, hidden),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, act=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """conv3x3 s2 -> 3x3 grouped conv -> three stride-2 stages of bottlenecks -> 1x1 conv to 512 (PReLU).

    (B, 3, H, W) -> (B, 512, H/16, W/16); `num_features` = 512, `stride` = 16. `scale` multiplies the stage widths
    (64, 128, 128) and `depths` counts the residual bottlenecks after each stage's stride-2 one; the expansion
    widths (`hidden`) are those of the paper's Table 1 (expansion 2 and 4 at scale 1), which insightface keeps
    fixed when it widens the network.
    """

    def __init__(self, scale: int = 1, depths: tuple[int, int, int] = (4, 6, 2)) -> None:
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        stages = (  # (width, hidden of the stride-2 bottleneck, hidden of the residual ones, residual count)
            (c1, 128, 128, depths[0]),
            (c2, 256, 256, depths[1]),
            (c2, 512, 256, depths[2]),
        )
        layers: list[nn.Module] = [_conv_bn(3, c1, 3, 2), _conv_bn(c1, c1, 3, 1, groups=64)]
        cin = c1
        for width, hidden_down, hidden, depth in stages:
            layers.append(Bottleneck(cin, width, hidden_down, stride=2))
            layers += [Bottleneck(width, width, hidden) for _ in range(depth)]
            cin = width
        layers.append(_conv_bn(cin, 512))
        self.body = nn.Sequential(*layers)
        self.num_features = 512
        self.stride = 16
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@BACKBONES.register("mobilefacenet")
def mobilefacenet() -> MobileFaceNet:
    """MobileFaceNet (Chen et al. 2018, Table 1; PReLU, stride 16): 1.0M parameters, gdc neck, 128-d, 112px."""
    return MobileFaceNet(scale=1)


@BACKBONES.register("mobilefacenet_x2")
def mobilefacenet_x2() -> MobileFaceNet:
    """MobileFaceNet at twice the widths (insightface's "mbf"): 2.1M parameters, gdc neck, 512-d, 112px."""
    return MobileFaceNet(scale=2)
