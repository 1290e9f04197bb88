"""CNN trunks for 64x64 faces: ResNet-18/34/50 with a 3x3 stride-1 stem and no max-pool, and small CPU networks.

Every backbone maps (B, 3, H, W) -> a feature map (B, C, H/8, W/8) (H/16 for facenet_s) and sets
`.num_features = C`. The ImageNet stem (7x7 stride 2 + max-pool) would shrink a 64x64 face to 16x16 before the
first block, so faces use the CIFAR-style stem instead, as HW2P2 recommends.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet

from facerec.registry import BACKBONES


class ResNetTrunk(nn.Module):
    """torchvision ResNet body, 3x3 stride-1 stem, no max-pool, no classifier: (B,3,H,W) -> (B,C,H/8,W/8)."""

    def __init__(self, block: type[nn.Module], layers: list[int], widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        net = resnet.ResNet(block, layers)  # builds layer1..4 with the usual widths
        if widths != (64, 128, 256, 512):
            raise ValueError("custom widths are not supported for torchvision ResNets")
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = 512 * getattr(block, "expansion", 1)
        for m in self.modules():  # zero-init the last BN of each residual branch (Goyal et al. 2017)
            if isinstance(m, resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x):
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@BACKBONES.register("resnet18")
def resnet18() -> ResNetTrunk:
    """ResNet-18 (He et al. 2016), 3x3 stride-1 stem, no max-pool; 11.2M parameters; GPU-sized."""
    return ResNetTrunk(resnet.BasicBlock, [2, 2, 2, 2])


@BACKBONES.register("resnet34")
def resnet34() -> ResNetTrunk:
    """ResNet-34 (He et al. 2016), 3x3 stride-1 stem, no max-pool; 21.3M parameters; GPU-sized."""
    return ResNetTrunk(resnet.BasicBlock, [3, 4, 6, 3])


@BACKBONES.register("resnet50")
def resnet50() -> ResNetTrunk:
    """ResNet-50 (He et al. 2016), bottleneck blocks, 3x3 stride-1 stem, no max-pool; 23.5M parameters."""
    return ResNetTrunk(resnet.Bottleneck, [3, 4, 6, 3])


def _block(cin: int, cout: int, stride: int) -> nn.Module:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    return resnet.BasicBlock(cin, cout, stride=stride, downsample=down)


class SmallResNet(nn.Module):
    """A narrow ResNet whose first stage already runs at half resolution: cheap enough to train on 2 CPU cores.

    (B,3,64,64) -> stem 3x3 s1 -> one stride-2 stage per entry of `widths`, each `depths[i]` basic blocks deep.
    """

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], stem: int = 32):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU(inplace=True),
        ]
        cin = stem
        for width, depth in zip(widths, depths):
            layers.append(_block(cin, width, stride=2))
            layers += [_block(width, width, stride=1) for _ in range(depth - 1)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        return self.body(x)


@BACKBONES.register("facenet_s")
def facenet_s() -> SmallResNet:
    """Small ResNet (32-64-128-256 channels, 1-2-2-1 blocks, 1.6M parameters): the fast CPU default."""
    return SmallResNet(widths=(32, 64, 128, 256), depths=(1, 2, 2, 1), stem=32)


@BACKBONES.register("facenet_m")
def facenet_m() -> SmallResNet:
    """facenet_s with wider, deeper late stages (32-64-160-320 channels, 1-2-3-1 blocks, 2.8M parameters).

    About 0.9x facenet_s's speed; with the flatten neck 4.1M parameters (facenet_s: 2.65M).
    """
    return SmallResNet(widths=(32, 64, 160, 320), depths=(1, 2, 3, 1), stem=32)


@BACKBONES.register("tiny_cnn")
def tiny_cnn() -> SmallResNet:
    """Very small ResNet (16-32-64 channels, one block each): for tests and smoke runs, not for accuracy."""
    return SmallResNet(widths=(16, 32, 64), depths=(1, 1, 1), stem=16)
