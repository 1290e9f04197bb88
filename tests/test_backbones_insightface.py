"""insightface's IResNets and MobileFaceNet: output shapes, parameter counts against published and independently
computed ones, a few training steps, the registry listing, and one CLI run that trains and reloads a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import facerec
from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import main
from facerec.config import load_config
from facerec.engine.build import build_model
from facerec.errors import ConfigError
from facerec.models.embedder import FaceEmbedder, count_parameters
from facerec.registry import BACKBONES

IRESNET_DEPTHS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3)}
IRESNET_DEPTHS["iresnet100"] = (3, 13, 30, 3)


def insightface_iresnet_params(depths: tuple[int, ...], emb: int = 512, side: int = 7) -> int:
    """Parameters of insightface's IResNet (arcface_torch/backbones/iresnet.py), counted layer by layer from its
    definition: stem conv3x3 + BN + PReLU; IBasicBlock = BN, conv3x3, BN, PReLU, conv3x3, BN (+ conv1x1 + BN
    downsample on each stage's first block); output = BN2d, Linear(512 * 7 * 7 -> emb) WITH a bias, BN1d."""
    n = 3 * 64 * 9 + 2 * 64 + 64
    cin = 64
    for width, depth in zip((64, 128, 256, 512), depths):
        for i in range(depth):
            c = cin if i == 0 else width
            n += 2 * c + 9 * c * width + 2 * width + width + 9 * width * width + 2 * width
            if i == 0:
                n += c * width + 2 * width
        cin = width
    return n + 2 * 512 + 512 * side * side * emb + emb + 2 * emb


def multiply_adds(model: nn.Module, size: int) -> int:
    """Multiply-adds of the convolutions and linear layers for one (1, 3, size, size) image."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += (
            out[0].numel() * module.weight[0].numel() if isinstance(module, nn.Conv2d) else module.weight.numel()
        )

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return total


# insightface's iresnet50 / iresnet100 at 112x112 with a 512-d output: 43.6M and 65.2M parameters (the figures
# the issue quotes; the arcface_r100_v1 weights file of insightface's model zoo holds 261 MB of float32 = 65.2M).
PUBLISHED = {"iresnet18": None, "iresnet34": None, "iresnet50": 43.6e6, "iresnet100": 65.2e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_iresnet_has_stride_16_and_the_insightface_parameter_count(name):
    model = FaceEmbedder(name, embedding_dim=512, neck="flatten", image_size=112)
    assert model.backbone.stride == 16 and model.backbone.num_features == 512
    assert model.fc.in_features == 512 * 7 * 7  # a 112x112 face leaves a 7x7 map
    n = count_parameters(model)
    # facerec's flatten neck = insightface's output block minus the FC bias (512 values, redundant before the BN)
    assert n == insightface_iresnet_params(IRESNET_DEPTHS[name]) - 512
    if PUBLISHED[name]:
        assert n == pytest.approx(PUBLISHED[name], rel=1e-3)


def test_iresnet_block_is_bn_conv_bn_prelu_conv_bn_with_a_projected_shortcut():
    block = BACKBONES.build("iresnet18").layer2[0]
    kinds = [type(m) for m in block.body]
    assert kinds == [nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.Conv2d, nn.BatchNorm2d]
    assert block.body[4].stride == (2, 2) and block.body[1].stride == (1, 1)  # the second conv strides
    assert block.downsample[0].kernel_size == (1, 1) and block.downsample[0].stride == (2, 2)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), block.body(x) + block.downsample(x))  # no activation after the sum


@pytest.mark.parametrize("size", [112, 64])
def test_insightface_backbones_embed_112_and_64_px_faces(size):
    for name, neck in (("iresnet18", "flatten"), ("mobilefacenet", "gdc"), ("mobilefacenet_x2", "pool")):
        model = FaceEmbedder(name, embedding_dim=64, neck=neck, image_size=size).eval()
        assert model.backbone(torch.zeros(1, 3, size, size)).shape == (1, 512, size // 16, size // 16)
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 64)


def insightface_mbf_params(scale: int, emb: int) -> int:
    """Parameters of insightface's MobileFaceNet (arcface_torch/backbones/mobilefacenet.py, blocks (1, 4, 6, 2)),
    counted from its definition: conv3x3 s2, a 3x3 conv in 64 groups, then DepthWise bottlenecks whose expansion
    widths (the `groups` argument there) are 128, 128, 256, 256, 512, 256 at every scale; conv_sep to 512; GDC =
    depthwise 7x7 + BN, Linear (no bias), BN1d."""

    def cbp(cin: int, cout: int, k: int = 1, groups: int = 1, act: bool = True) -> int:  # conv, BN, PReLU
        return cin // groups * cout * k * k + 2 * cout + (cout if act else 0)

    def bottleneck(cin: int, cout: int, hidden: int) -> int:
        return cbp(cin, hidden) + cbp(hidden, hidden, 3, hidden) + cbp(hidden, cout, act=False)

    c1, c2 = 64 * scale, 128 * scale
    n = cbp(3, c1, 3) + cbp(c1, c1, 3, 64)
    n += bottleneck(c1, c1, 128) * 5 + bottleneck(c1, c2, 256) + bottleneck(c2, c2, 256) * 6
    n += bottleneck(c2, c2, 512) + bottleneck(c2, c2, 256) * 2 + cbp(c2, 512)
    return n + 512 * 49 + 2 * 512 + 512 * emb + 2 * emb


@pytest.mark.parametrize(("name", "scale", "emb"), [("mobilefacenet", 1, 128), ("mobilefacenet_x2", 2, 512)])
def test_mobilefacenet_has_insightfaces_parameter_count(name, scale, emb):
    """mobilefacenet_x2 is insightface's default `get_mbf` (scale 2); mobilefacenet is its scale 1, the paper's."""
    model = FaceEmbedder(name, embedding_dim=emb, neck="gdc", image_size=112)
    assert count_parameters(model) == insightface_mbf_params(scale, emb)
    gdc = model.pre[0]
    assert gdc.kernel_size == (7, 7) and gdc.groups == 512 and model.fc.in_features == 512


def test_mobilefacenet_matches_the_paper():
    """Chen et al. 2018 (MobileFaceNets), Table 2: 0.99M parameters and 221M multiply-adds for 112x112 faces
    and a 128-d embedding. The multiply-adds pin the structure (the paper's Table 1); the parameter count, 1.003M,
    is within the paper's rounding plus its 7,552 PReLU slopes."""
    model = FaceEmbedder("mobilefacenet", embedding_dim=128, neck="gdc", image_size=112)
    assert multiply_adds(model, 112) == pytest.approx(221e6, rel=2e-3)
    assert count_parameters(model) == pytest.approx(0.99e6, rel=0.015)


def test_gdc_neck_is_a_config_choice_sized_by_data_image_size():
    cfg = load_config(None, ["model.backbone=mobilefacenet", "model.neck=gdc", "data.image_size=64"])
    assert build_model(cfg).pre[0].kernel_size == (4, 4)  # 64 / 16
    with pytest.raises(ConfigError, match=r"model.neck='gcd' is not a valid choice; .*'gdc'"):
        load_config(None, ["model.neck=gcd"])


def test_gdc_neck_weighs_positions_and_its_kernel_follows_the_image_size():
    model = FaceEmbedder("tiny_cnn", embedding_dim=8, neck="gdc", image_size=32).eval()
    assert model.pre[0].kernel_size == (4, 4)  # tiny_cnn has stride 8
    with torch.no_grad():
        model.pre[0].weight.zero_()
        model.pre[0].weight[:, :, 0, 0] = 1.0  # look only at the top-left position
        x = torch.randn(3, 3, 32, 32)
        y = x.clone()
        y[:, :, 16:, 16:] = torch.randn(3, 3, 16, 16)  # change the bottom-right quarter only
        assert torch.allclose(model(x), model(y))


def test_few_sgd_steps_lower_the_loss_of_iresnet18_at_64px():
    torch.manual_seed(0)
    model = FaceEmbedder("iresnet18", embedding_dim=32, neck="flatten", image_size=64)
    head = nn.Linear(32, 4)
    x, y = torch.randn(8, 3, 64, 64), torch.arange(4).repeat(2)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(head(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_list_backbones_shows_them_with_one_line_docs(capsys):
    assert main(["list", "backbones"]) == 0
    out = capsys.readouterr().out
    for name in ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet", "mobilefacenet_x2"):
        assert name in out
        assert BACKBONES.describe()[name]
    assert "65.2M" in BACKBONES.describe()["iresnet100"]


def test_train_iresnet18_at_64px_from_the_cli_and_load_it(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    data = make_hw2p2(tmp_path / "hw", n_ids=4, per_id=4, size=64)
    run = tmp_path / "run"
    overrides = tiny_overrides(
        "model.backbone=iresnet18", "data.image_size=64", "data.batch_size=8", "train.max_steps_per_epoch=2"
    )
    assert main(["train", "--data", str(data), "--out", str(run), "train.epochs=1", *overrides]) == 0
    fm = facerec.load(run / "best.pt")
    assert fm.image_size == 64
    face = (torch.rand(64, 64, 3) * 255).to(torch.uint8).numpy()
    assert fm.embed([face]).shape == (1, 32)
