"""IResNet trunks (Deng et al. 2019, ArcFace; insightface `arcface_torch/backbones/iresnet.py`) for 112x112 faces.

An "improved" residual unit: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, added to the (projected)
input, with no activation after the sum. The stem is a 3x3 stride-1 conv + BN + PReLU and each of the four
stages (64-128-256-512 channels) halves the map, so (B, 3, 112, 112) -> (B, 512, 7, 7) (stride 16; a 64x64 face
gives 4x4). insightface's output block (BN2d -> dropout -> flatten -> FC -> BN1d) is FaceEmbedder's "flatten"
neck, so `model.backbone=iresnet50 model.neck=flatten model.embedding_dim=512 data.image_size=112` is insightface's
IResNet-50 (its FC bias, redundant before the BN, is the only parameter left out: 512 of 43.6M).
"""

from __future__ import annotations

import torch
from torch import nn

from facerec.registry import BACKBONES


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the input (1x1 conv + BN if the shape changes).

    (B, cin, H, W) -> (B, cout, H/stride, W/stride). Unlike He et al.'s block there is no ReLU after the sum, and
    the first BN normalises the sum that the previous block left un-normalised.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            _conv3x3(cin, cout),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            _conv3x3(cout, cout, stride),
            nn.BatchNorm2d(cout),
        )
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.downsample(x)


class IResNetTrunk(nn.Module):
    """Stem (conv3x3 s1 + BN + PReLU) and four stages of IBasicBlocks, the first block of each with stride 2.

    (B, 3, H, W) -> (B, 512, H/16, W/16); `num_features` = 512, `stride` = 16.
    """

    def __init__(self, depths: tuple[int, int, int, int], widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        stages, cin = [], widths[0]
        for width, depth in zip(widths, depths):
            blocks = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        self.stride = 2 ** len(stages)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions; the last BN of each residual branch starts at zero, so every block starts as
        its shortcut (Goyal et al. 2017), as in facerec's ResNets. (insightface draws convolutions from N(0, 0.1);
        every convolution here is followed by a BN, so the choice changes the start, not the function class.)"""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, IBasicBlock):
                nn.init.zeros_(m.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@BACKBONES.register("iresnet18")
def iresnet18() -> IResNetTrunk:
    """IResNet-18 (insightface; 2-2-2-2 blocks, PReLU, stride 16): 24.0M parameters, flatten neck, 512-d, 112px."""
    return IResNetTrunk((2, 2, 2, 2))


@BACKBONES.register("iresnet34")
def iresnet34() -> IResNetTrunk:
    """IResNet-34 (insightface; 3-4-6-3 blocks, PReLU, stride 16): 34.1M parameters, flatten neck, 512-d, 112px."""
    return IResNetTrunk((3, 4, 6, 3))


@BACKBONES.register("iresnet50")
def iresnet50() -> IResNetTrunk:
    """IResNet-50 (ArcFace's LResNet50E-IR; 3-4-14-3 blocks): 43.6M parameters, flatten neck, 512-d, 112px."""
    return IResNetTrunk((3, 4, 14, 3))


@BACKBONES.register("iresnet100")
def iresnet100() -> IResNetTrunk:
    """IResNet-100 (ArcFace's LResNet100E-IR; 3-13-30-3 blocks): 65.2M parameters, flatten neck, 512-d, 112px."""
    return IResNetTrunk((3, 13, 30, 3))
