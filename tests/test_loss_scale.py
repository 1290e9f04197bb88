"""fp16 autocast with dynamic loss scaling (engine/loss_scale.py, train.amp=fp16): the scale follows
torch.amp.GradScaler's rule, the training step matches a GradScaler loop, and the scale survives --resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import facerec.engine.loss_scale as loss_scale
from facerec.cli.main import main
from facerec.data.augment import get_preset, to_input
from facerec.engine.build import amp_advice, cpu_has_bf16, resolve_amp
from facerec.engine.loss_scale import LossScale
from facerec.engine.optim import build_optimizer
from facerec.engine.progress import read_metrics
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_one_epoch
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder
from test_cli import TINY
from test_robustness import _poison


def test_update_follows_torchs_own_scale_update():
    """Against torch._amp_update_scale_ (the kernel GradScaler.update runs) over a random run of overflows,
    with a short growth interval so that both growth and back-off happen many times."""
    gen = torch.Generator().manual_seed(0)
    ours = LossScale("cpu", init_scale=2.0**10, growth_interval=3)
    scale, tracker = torch.full((), 2.0**10), torch.zeros((), dtype=torch.int32)
    grew = backed_off = 0
    for _ in range(300):
        finite = bool(torch.rand((), generator=gen) < 0.8)
        before = ours.scale.item()
        ours.update(torch.tensor(finite))
        torch._amp_update_scale_(scale, tracker, torch.tensor(0.0 if finite else 1.0), 2.0, 0.5, 3)
        assert ours.scale.item() == scale.item() and ours.good_steps.item() == tracker.item()
        grew += ours.scale.item() > before
        backed_off += ours.scale.item() < before
    assert grew > 10 and backed_off > 10


def test_the_scale_never_grows_to_infinity():
    s = LossScale("cpu", init_scale=2.0**127, growth_interval=1)
    s.update(torch.tensor(True))
    assert s.scale.item() == 2.0**127 and s.good_steps.item() == 0


def test_state_dict_round_trip_and_bad_settings():
    a = LossScale("cpu", init_scale=8.0, growth_interval=5)
    for finite in (True, True, False, True):
        a.update(torch.tensor(finite))
    b = LossScale("cpu")
    b.load_state_dict(a.state_dict())
    assert (b.scale.item(), b.good_steps.item(), b.growth_interval) == (4.0, 1, 5)
    with pytest.raises(ValueError, match="backoff_factor"):
        LossScale("cpu", backoff_factor=2.0)


def test_amp_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (resolve_amp("auto", cpu), resolve_amp("auto", cuda)) == ("off", "bf16")
    assert resolve_amp("fp16", cpu) == "fp16"
    # the CPU recipes' setting: bf16 only where it is fast (CUDA, or a CPU with AMX / AVX512-BF16)
    assert [resolve_amp("bf16_if_fast", cpu, has) for has in (True, False)] == ["bf16", "off"]
    assert resolve_amp("bf16_if_fast", cuda, False) == "bf16"
    assert resolve_amp("bf16_if_fast", cpu) == ("bf16" if cpu_has_bf16() else "off")
    with pytest.raises(ValueError, match="unknown train.amp 'fp8'.*fp16"):
        resolve_amp("fp8", cpu)
    assert StepOptions(cpu, amp="fp16").loss_scale is not None
    assert StepOptions(cpu, amp="bf16").loss_scale is None
    with pytest.raises(ValueError, match="unknown amp"):
        StepOptions(cpu, amp="half")


@pytest.mark.parametrize(
    ("setting", "device", "has_bf16", "expected"),
    [
        ("fp16", "cpu", True, "warning: train.amp=fp16 is for CUDA GPUs"),
        ("fp16", "cpu", False, "warning: train.amp=fp16 is for CUDA GPUs"),
        ("bf16", "cpu", False, "warning: train.amp=bf16 on a CPU without bf16 matrix instructions"),
        ("bf16", "cpu", True, None),  # the fast path: nothing to say
        ("auto", "cpu", True, "hint: this CPU has bf16 matrix instructions"),
        ("auto", "cpu", False, None),  # fp32, the right choice there
        ("off", "cpu", True, None),  # the user's explicit choice
        ("fp16", "cuda", False, None),  # on a GPU every setting is sound
        ("bf16", "cuda", False, None),
    ],
)
def test_amp_advice_on_cpus_with_and_without_bf16_instructions(setting, device, has_bf16, expected):
    advice = amp_advice(setting, torch.device(device), has_bf16)
    assert advice == expected if expected is None else advice.startswith(expected)


def test_fp16_step_matches_a_gradscaler_loop():
    """The same model, data and starting scale through train_one_epoch(amp="fp16") and through the textbook
    GradScaler loop with a plain (foreach) SGD. The starting scale is too large on purpose: the first steps
    overflow, are skipped and halve the scale, in both; they count as overflow_steps, not as faults."""
    torch.manual_seed(0)
    n, size, classes = 96, 16, 5
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8)
    labels = torch.arange(n) % classes
    model = FaceEmbedder("tiny_cnn", 16, image_size=size)
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=16, num_classes=classes)
    ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss_fn)
    init, interval, lr, steps = 2.0**24, 4, 0.05, 12
    batches = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, n, 8)]

    opt = build_optimizer(model, loss_fn, "sgd", lr, 0.0)  # fused
    scale = LossScale("cpu", init, growth_interval=interval)
    opts = StepOptions(torch.device("cpu"), amp="fp16", loss_scale=scale)
    parts = StepParts(model, loss_fn, opt, LRSchedule(lr, 1, steps, "constant"), get_preset("none"), opts)
    result = train_one_epoch(parts, iter(batches), torch.Generator(), steps=steps)

    params = list(ref_model.parameters()) + list(ref_loss.parameters())
    ref_opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, foreach=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=init, growth_interval=interval)
    ref_model.train()
    skipped = 0
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.float16):
            emb = ref_model(to_input(x))
        loss = ref_loss(emb.float(), y)
        ref_opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(ref_opt)
        scaler.update()
        skipped += scaler.get_scale() < before

    assert skipped >= 3  # the test exercises the back-off
    assert result["overflow_steps"] == skipped and result["skipped_steps"] == 0
    assert result["steps"] == steps - skipped
    assert result["loss_scale"] == scaler.get_scale()
    for a, b in zip(list(model.parameters()) + list(loss_fn.parameters()), params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_under_fp16_a_nan_loss_is_a_fault_and_nan_gradients_back_off_the_scale():
    """A non-finite loss is a fault (skipped_steps, the warning, FaultPolicy), as under bf16. Non-finite gradients
    from a finite loss look like an overflow of the scaled gradients, as in GradScaler: skipped, scale halved;
    they become faults once the scale is down to 1. Both halve the scale."""
    torch.manual_seed(0)
    model = FaceEmbedder("tiny_cnn", 16, image_size=16)
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=16, num_classes=3)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    _poison(loss_fn, {2: "nan", 3: "nan_grad", 5: "nan_grad"})
    opt = build_optimizer(model, loss_fn, "sgd", 0.01, 0.0)
    opts = StepOptions(torch.device("cpu"), amp="fp16", loss_scale=LossScale("cpu", init_scale=2.0))

    def epoch(steps: int, opts: StepOptions) -> dict:
        parts = StepParts(model, loss_fn, opt, LRSchedule(0.01, 1, steps, "constant"), get_preset("none"), opts)
        return train_one_epoch(parts, iter([(images, labels)] * steps), torch.Generator(), steps=steps)

    r = epoch(6, opts)
    # scale 2 -> 1 (NaN loss: a fault) -> 0.5 (NaN gradients at scale 1: a fault) -> 0.25 (the same at 0.5)
    assert (r["skipped_steps"], r["overflow_steps"], r["steps"]) == (3, 0, 3)
    assert r["loss_scale"] == 0.25
    opts = StepOptions(torch.device("cpu"), amp="fp16")  # scale 65536: NaN gradients count as overflows
    _poison(loss_fn, {1: "nan_grad"})
    r = epoch(2, opts)
    assert (r["skipped_steps"], r["overflow_steps"], r["steps"], r["loss_scale"]) == (0, 1, 1, 2.0**15)


def test_fp16_training_resumes_with_its_loss_scale(hw2p2_dir: Path, tmp_path: Path, monkeypatch, capsys):
    """train.amp=fp16 through the CLI; the loss scale is saved in last.pt and restored by --resume. The starting
    scale is set high enough for the first epoch to overflow and lower it: a resumed run that started the scale
    afresh would overflow again in epoch 2, which the uninterrupted run does not."""
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loss_scale, "INIT_SCALE", 2.0**18)
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--data", str(hw2p2_dir), "train.epochs=2", "train.amp=fp16", *TINY]
    assert main(["train", "--out", str(full), *args]) == 0
    assert "warning: train.amp=fp16 is for CUDA GPUs" in capsys.readouterr().out  # this is a CPU run
    assert main(["train", "--out", str(cut), *args, "train.time_limit_min=0.000001"]) == 0  # stops after epoch 1
    saved = torch.load(cut / "last.pt", weights_only=True)["loss_scale"]
    assert main(["train", "--out", str(cut), "--resume", "train.time_limit_min=0"]) == 0
    a, b = ([r for r in read_metrics(run) if r["event"] == "epoch"] for run in (full, cut))
    assert a[0]["overflow_steps"] >= 1 and saved["scale"] == a[0]["loss_scale"] < 2.0**18
    assert [(r["overflow_steps"], r["loss_scale"], r["steps"]) for r in b] == [
        (r["overflow_steps"], r["loss_scale"], r["steps"]) for r in a
    ]
    assert b[1]["train_loss"] == pytest.approx(a[1]["train_loss"], rel=1e-4)
