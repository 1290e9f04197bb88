"""Config -> the parts of a model: device, precision, network, loss and scoring. Light: inference imports it."""

from __future__ import annotations

from pathlib import Path

import torch

from facerec.config import Config, ConfigError
from facerec.losses.base import CombinedLoss, build_combined_loss, build_loss
from facerec.losses.partial_fc import build_partial_fc
from facerec.metrics.scoring import Scoring
from facerec.models.embedder import FaceEmbedder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device asks for CUDA but no GPU is visible; use train.device=cpu or auto")
    return dev


AMP_SETTINGS = ("auto", "bf16_if_fast", "bf16", "fp16", "off")


def resolve_amp(setting: str, device: torch.device, has_bf16: bool | None = None) -> str:
    """train.amp: "auto" is bf16 autocast on CUDA and fp32 ("off") on the CPU; "bf16_if_fast" (the CPU recipes)
    is bf16 on CUDA and on CPUs with bf16 matrix instructions (`has_bf16`, default `cpu_has_bf16()`), where it
    trains 1.6-1.8x faster at the same val AUC, and fp32 on other CPUs, which emulate bf16 1.5x slower than fp32
    (docs/benchmarks.md); "bf16", "fp16" (with dynamic loss scaling) and "off" are taken as they are."""
    if setting not in AMP_SETTINGS:
        raise ValueError(f"unknown train.amp {setting!r}; choose one of {list(AMP_SETTINGS)}")
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "off"
    if setting == "bf16_if_fast":
        fast = device.type == "cuda" or (cpu_has_bf16() if has_bf16 is None else has_bf16)
        return "bf16" if fast else "off"
    return setting


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX512-BF16), where `train.amp=bf16` pays off on the
    CPU. Read from /proc/cpuinfo; False where that is missing (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_advice(setting: str, device: torch.device, has_bf16: bool) -> str | None:
    """A warning or hint about train.amp on a CPU (None when there is nothing to say): fp16 and, on CPUs without
    bf16 instructions (`has_bf16`, see `cpu_has_bf16`), bf16 are emulated there and slower than fp32; on CPUs with
    them, "auto" leaves a 1.6-1.8x speed-up unused (figures: docs/benchmarks.md)."""
    amp = resolve_amp(setting, device, has_bf16)
    if device.type != "cpu":
        return None
    if amp == "fp16":
        return (
            "warning: train.amp=fp16 is for CUDA GPUs (it lets cuDNN run the BatchNorms); CPUs lack fast fp16 "
            "kernels (80x slower than fp32 in docs/benchmarks.md): use train.amp=bf16 or off here"
        )
    if amp == "bf16" and not has_bf16:
        return (
            "warning: train.amp=bf16 on a CPU without bf16 matrix instructions (no AMX or AVX512-BF16 in "
            "/proc/cpuinfo): bf16 is emulated and trained 1.5x slower than fp32 in docs/benchmarks.md; "
            "use train.amp=off here"
        )
    if setting == "auto" and has_bf16:  # not when the user chose "off"
        return (
            "hint: this CPU has bf16 matrix instructions; train.amp=bf16 trained the cpu recipe 1.6-1.8x "
            "faster at the same val AUC (docs/benchmarks.md)"
        )
    return None


def use_channels_last(setting: str, device: torch.device) -> bool:
    """train.channels_last: "on", "off" or "auto". auto is on for every device: NHWC convolutions are the fast
    path of cuDNN under bf16 and of oneDNN on CPU."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"unknown train.channels_last {setting!r}; choose one of ['auto', 'on', 'off']")
    return setting != "off"


def build_model(cfg: Config) -> FaceEmbedder:
    m = cfg.model
    return FaceEmbedder(m.backbone, m.embedding_dim, m.dropout, m.neck, cfg.data.image_size)


def build_loss_fn(cfg: Config, num_classes: int, shard: tuple[int, int] = (0, 1)) -> CombinedLoss:
    """loss.name plus the loss.extra terms. With Partial FC (loss.partial_fc, or loss.sample_rate < 1) the first is
    built for process `shard` = (rank, world_size) of a DDP job: it holds that rank's class centres only."""
    terms = [(cfg.loss.name, 1.0, cfg.loss.params)] + [(t.name, t.weight, t.params) for t in cfg.loss.extra]
    loss, dim = cfg.loss, cfg.model.embedding_dim
    if not (loss.partial_fc or loss.sample_rate < 1):
        return build_combined_loss(terms, embedding_dim=dim, num_classes=num_classes)
    if shard[1] > 1 and cfg.train.ema:
        raise ConfigError(
            "train.ema cannot be used with Partial FC over several processes (rank 0 keeps the weight average and "
            "holds only its share of the class centres); set train.ema=0 or train in one process"
        )
    rank, world = shard
    head = build_partial_fc(
        loss.name,
        loss.params,
        embedding_dim=dim,
        num_classes=num_classes,
        sample_rate=loss.sample_rate,
        rank=rank,
        world_size=world,
    )
    extra = [(w, build_loss(n, embedding_dim=dim, num_classes=num_classes, **dict(p))) for n, w, p in terms[1:]]
    return CombinedLoss([(1.0, head), *extra])


def resolve_scoring(cfg: Config, loss_fn: CombinedLoss) -> str:
    if cfg.loss.scoring == "auto":
        return loss_fn.scoring
    return Scoring.of(cfg.loss.scoring, key="loss.scoring", also=("auto",)).name
