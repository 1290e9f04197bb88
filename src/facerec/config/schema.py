"""The run configuration's schema: typed dataclasses with their defaults, ranges and choices.

A field made with `_limit` or `_choice` carries its valid values; `config.checks.check_values` enforces them when a
config is loaded, so a bad value stops before any data is read, with the key and the valid range in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _limit(
    default: Any, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False
) -> Any:
    """A field whose value must lie in [lo, hi] (or an open end: `open_lo` / `open_hi`); checked at load time."""
    return field(default=default, metadata={"range": (lo, hi, open_lo, open_hi)})


def _choice(default: str, *choices: str) -> Any:
    """A field whose value must be one of `choices` (the default first); checked at load time."""
    return field(default=default, metadata={"choices": (default, *choices)})


@dataclass
class DataConfig:
    """Where the images are and how they are batched and augmented."""

    root: str = ""  # the dataset: an HW2P2 root (either layout) or any folder of identity folders
    val: str = ""  # optional labelled split (identity folders); found automatically in HW2P2 layouts
    pairs: str = ""  # optional labelled pair file for verification AUC; found automatically in HW2P2 layouts
    image_size: int = _limit(64, 8, 1024)
    # the framing of aligned crops, saved with the model so photos are aligned as its data were: facehw (HW2P2's
    # 64x64) | arcface (insightface's 112x112 five-point template); photos/warp.py TEMPLATES, scaled to image_size
    align_template: str = _choice("facehw", "arcface")
    batch_size: int = _limit(256, 1)
    sampler: str = _choice(
        "auto", "random", "pk"
    )  # auto | random | pk  (auto: pk when the loss needs positives in the batch)
    p: int = _limit(32, 1)  # identities per batch for the pk sampler (batch = p * k)
    k: int = _limit(4, 1)  # images per identity for the pk sampler
    augment: str = "standard"  # none | flip | standard | strong | robust (strong + loss of resolution) | adaface
    num_workers: int = _limit(2, 0)  # threads that decode images when the dataset is first loaded
    cache: bool = True  # cache decoded images as .npy next to the run (the second run starts in seconds)
    max_per_class: int = _limit(0, 0)  # cap images per identity (0 = all); for quick experiments
    max_classes: int = _limit(0, 0)  # use only the first N identities (0 = all); for quick experiments
    # validation carved out of the training folders, for datasets without a val split or pair file:
    holdout: float = _limit(
        0.0, 0.0, 1.0, open_hi=True
    )  # share of identities kept out of training; pairs drawn from them give val AUC
    holdout_pairs: int = _limit(
        6000, 2
    )  # pairs drawn from the held-out identities (half same-identity, all distinct)
    val_per_class: int = _limit(
        0, 0
    )  # images of each training identity moved to a val split (val accuracy); 0 = none
    # insightface verification packs (.bin) scored every epoch by their protocol: bin_<stem>_acc / bin_<stem>_auc
    val_bins: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    backbone: str = "facenet_s"
    embedding_dim: int = _limit(256, 1)
    dropout: float = _limit(0.0, 0.0, 1.0, open_hi=True)  # dropout before the embedding layer
    neck: str = _choice("pool", "flatten", "gdc")  # pool | flatten | gdc (see models/embedder.py)


@dataclass
class LossTerm:
    name: str = "center"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "softmax"
    params: dict[str, Any] = field(default_factory=dict)
    extra: list[LossTerm] = field(default_factory=list)  # more weighted terms, e.g. center loss
    scoring: str = _choice("auto", "cosine", "euclidean")  # auto (the loss's own) | cosine | euclidean
    # Partial FC (losses/partial_fc.py) for a margin head: the class centres split over the DDP processes, each
    # step using this share of them (positives always); a sample_rate below 1 turns it on by itself
    partial_fc: bool = False
    sample_rate: float = _limit(1.0, 0.0, 1.0, open_lo=True)


@dataclass
class OptimConfig:
    name: str = _choice("sgd", "adamw")  # sgd | adamw
    lr: float = _limit(0.1, 0.0, open_lo=True)
    momentum: float = _limit(0.9, 0.0, 1.0, open_hi=True)
    nesterov: bool = True
    weight_decay: float = _limit(5e-4, 0.0)
    loss_lr: float = _limit(0.0, 0.0)  # learning rate for loss parameters (class centres); 0 = same as lr
    schedule: str = _choice("cosine", "step", "plateau", "constant")  # cosine | step | plateau | constant
    warmup_epochs: float = _limit(1.0, 0.0)  # linear warm-up from lr/100, in epochs (fractions allowed)
    step_size: int = _limit(10, 1)  # step schedule: epochs between decays
    gamma: float = _limit(0.1, 0.0, 1.0, open_lo=True)  # step and plateau: decay factor
    patience: int = _limit(2, 0)  # plateau: epochs without improvement before a decay
    min_lr: float = _limit(0.0, 0.0)
    grad_clip: float = _limit(0.0, 0.0)  # max gradient norm (0 = off)


@dataclass
class TrainConfig:
    epochs: int = _limit(20, 1)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = _choice(
        "auto", "bf16_if_fast", "bf16", "fp16", "off"
    )  # auto (bf16 on CUDA, off on CPU) | bf16_if_fast (+ CPUs with AMX / AVX512-BF16) | bf16 | fp16 | off
    channels_last: str = _choice(
        "auto", "on", "off"
    )  # auto (= on: faster on CUDA and, measured, on CPU too) | on | off
    compile: bool = False
    threads: int = _limit(0, 0)  # torch intra-op threads on CPU (0 = torch's default)
    best_metric: str = _choice(
        "val_auc", "val_acc", "bins_auc", "train_loss"
    )  # val_auc | val_acc | bins_auc (mean AUC of the data.val_bins packs) | train_loss (best.pt follows it)
    eval_every: int = _limit(1, 1)
    flip_tta: bool = True  # average embeddings of the image and its mirror at evaluation
    log_every: int = _limit(20, 1)  # steps between progress lines
    max_steps_per_epoch: int = _limit(0, 0)  # 0 = full epochs; for smoke tests
    early_stop: int = _limit(0, 0)  # stop once this many epochs pass without a better best_metric (0 = never)
    time_limit_min: float = _limit(0.0, 0.0)  # stop after the epoch that passes this many minutes (0 = no limit)
    ema: float = _limit(
        0.0, 0.0, 1.0, open_hi=True
    )  # EMA decay of the weights per step (e.g. 0.998); validation and best.pt use the average
    init_from: str = ""  # start the network (not the loss) from this checkpoint, e.g. ArcFace after softmax
    # with init_from: take the loss's weights (class centres) too, for a warm restart on the same classes
    init_head: bool = False


@dataclass
class DistillConfig:
    """Teacher-student training (`facerec distill`, facerec/distillation/): the teacher, the weights of the three
    training signals, and how the teacher's inputs are prepared. Unused by `facerec train`."""

    teacher: str = ""  # dlib | a facerec model file (.pt, ensemble .pt, facerec .onnx) | a foreign .onnx
    weight_embedding: float = _limit(1.0, 0.0)  # 1 - cos(projected student, teacher) per image
    weight_relational: float = _limit(1.0, 0.0)  # MSE of the batch's pairwise cosine matrices
    weight_labels: float = _limit(1.0, 0.0)  # the student's own loss (loss.*) on labelled images
    teacher_view: str = _choice("clean", "augmented")  # clean: flip-averaged, cached | augmented: online (.pt)
    center: bool = True  # subtract the teacher's mean training embedding before the cosines
    extra: list[str] = field(default_factory=list)  # more training folders (identity folders or flat photos)
    cache_dir: str = ""  # teacher embeddings (.npz); "" = $FACEREC_CACHE/distill
    teacher_batch: int = _limit(64, 1)  # images per teacher call while caching
    teacher_workers: int = _limit(1, 1, 256)  # processes that run the dlib teacher (one core each)
    # the teacher embeds each image and its mirror, summed; auto: on, off for dlib (twice its cost for +0.0004 AUC)
    flip: str = _choice("auto", "on", "off")
    dlib_box: str = _choice("inset", "detector", "whole")  # dlib's face box on the upscaled aligned crop
    dlib_size: int = _limit(200, 150, 1024)  # the crop is upscaled to this side before dlib sees it
    onnx_size: int = _limit(0, 0, 1024)  # a foreign ONNX teacher's input side (0: from its input shape)
    onnx_channels: str = _choice("rgb", "bgr")  # a foreign ONNX teacher's colour order
    onnx_layout: str = _choice("auto", "nchw", "nhwc")  # auto: from its input shape
    onnx_mean: float = _limit(127.5, 0.0, 255.0)  # a foreign ONNX teacher's input: (pixel - mean) / std
    onnx_std: float = _limit(127.5, 0.0, open_lo=True)
    onnx_inset: float = _limit(0.0, 0.0, 0.4)  # crop this share off each side of the aligned crop first
    # the 5-point framing a foreign ONNX teacher was trained on: none (resize the crop, after onnx_inset) | arcface
    # (insightface's 112x112 template: the crop is warped onto it from data.align_template's) | facehw
    onnx_template: str = _choice("none", "arcface", "facehw")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
