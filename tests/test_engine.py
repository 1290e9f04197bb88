from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from pathlib import Path

import pytest
import torch

from facerec.cli.main import main
from facerec.data.augment import PRESETS, augment, get_preset, to_input
from facerec.data.sampler import PKBatchSampler, RandomBatchSampler
from facerec.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerec.engine.ema import WeightAverage
from facerec.engine.fit import FitOptions
from facerec.engine.log import Logger
from facerec.engine.optim import build_optimizer
from facerec.engine.progress import MetricsLog, Progress, read_metrics
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_step
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder
from facerec.registry import BACKBONES, Registry
from test_cli import TINY


def test_registry_refuses_duplicates_and_names_choices():
    reg: Registry = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(KeyError, match="registered twice"):
        reg.register("a")(lambda: 2)
    with pytest.raises(ValueError, match=r"unknown thing 'b'; choose one of \['a'\]"):
        reg.get("b")


@pytest.mark.parametrize("name", ["tiny_cnn", "facenet_s", "facenet_m", "resnet18"])
def test_backbones_embed_64px_faces(name):
    model = FaceEmbedder(name, embedding_dim=32, neck="pool").eval()
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 32)


def test_every_backbone_is_registered_with_a_description():
    described = BACKBONES.describe()
    assert {"resnet18", "resnet34", "resnet50", "facenet_s", "tiny_cnn"} <= set(described)
    assert all(described.values())


def test_resnet_stem_is_3x3_stride_1_without_maxpool():
    trunk = BACKBONES.build("resnet34")
    conv = trunk.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in trunk.modules())
    assert trunk(torch.zeros(1, 3, 64, 64)).shape[-1] == 8  # 64 / 8


def test_flatten_neck_keeps_spatial_layout():
    model = FaceEmbedder("tiny_cnn", embedding_dim=16, neck="flatten").eval()
    assert model.fc.in_features == 64 * 8 * 8
    with pytest.raises(ValueError, match="unknown neck"):
        FaceEmbedder("tiny_cnn", neck="gap")


def test_pk_sampler_gives_p_identities_with_k_images():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 7 + [3] * 3)
    sampler = PKBatchSampler(labels, p=2, k=3)
    batches = list(sampler.batches(torch.Generator().manual_seed(0)))
    assert len(batches) == len(sampler) == 2
    for b in batches:
        ids = labels[b]
        assert len(b) == 6 and len(ids.unique()) == 2
        assert all((ids == i).sum() == 3 for i in ids.unique())
    seen = torch.cat([labels[b] for b in batches]).unique()
    assert len(seen) == 4  # every identity once per epoch
    with pytest.raises(ValueError, match="only 4"):
        PKBatchSampler(labels, p=5, k=2)


def test_random_sampler_is_a_seeded_permutation():
    s = RandomBatchSampler(10, 4)
    a = torch.cat(list(s.batches(torch.Generator().manual_seed(1))))
    b = torch.cat(list(s.batches(torch.Generator().manual_seed(1))))
    assert len(s) == 2 and torch.equal(a, b) and len(a.unique()) == 8


def test_to_input_scales_to_unit_range():
    img = torch.tensor([[[[0, 255, 127]]]], dtype=torch.uint8)  # (1,1,1,3)
    x = to_input(img)
    assert x.shape == (1, 3, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


def test_flip_preset_mirrors_exactly_and_none_is_identity():
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    g = torch.Generator().manual_seed(0)
    y = augment(x, get_preset("flip"), g)
    flipped = (y == x.flip(3)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert (flipped | same).all() and 10 < flipped.sum() < 54
    fresh = x.clone()  # the in-place variant (the training step's) flips the same images, inside its input
    z = augment(fresh, get_preset("flip"), torch.Generator().manual_seed(0), inplace=True)
    assert torch.equal(z, augment(x, get_preset("flip"), torch.Generator().manual_seed(0)))
    assert torch.equal(fresh, z) and not torch.equal(fresh, x)
    assert torch.equal(augment(x, PRESETS["none"], g), x)
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("heavy")


def test_standard_preset_stays_in_range_and_is_seeded():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a = augment(x, PRESETS["strong"], torch.Generator().manual_seed(3))
    b = augment(x, PRESETS["strong"], torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1 and not torch.equal(a, x)


def _down_up(x: torch.Tensor, side: int) -> torch.Tensor:
    small = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    return torch.nn.functional.interpolate(small, size=x.shape[-2:], mode="bilinear")


@pytest.mark.parametrize("by_index", [True, False])
def test_low_res_resamples_the_chosen_images_down_and_back_up(by_index):
    from facerec.data.augment import LOW_RES_FACTORS, _low_res

    x = torch.rand(96, 3, 24, 24) * 2 - 1
    y = _low_res(x, 1.0, torch.Generator().manual_seed(0), by_index)  # p = 1: every image loses resolution
    refs = [_down_up(x, round(24 / f)) for f in LOW_RES_FACTORS]  # sides 16, 12, 8
    which = torch.stack([(y - r).abs().flatten(1).amax(1) < 1e-5 for r in refs])  # (levels, images)
    assert (which.sum(0) == 1).all()  # each image is exactly one of the down-and-up versions
    assert (which.sum(1) > 15).all()  # and every factor is used
    # at p = 0.25 about a quarter change; the rest stay bit-identical
    z = _low_res(x, 0.25, torch.Generator().manual_seed(1), by_index)
    changed = (z != x).flatten(1).any(1)
    assert 10 <= changed.sum() <= 40
    assert torch.equal(z[~changed], x[~changed])


def test_low_res_by_index_matches_the_sync_free_select():
    """The CPU path (resample only the chosen images) and the GPU path (resample all, select) agree."""
    from facerec.data.augment import _low_res

    x = torch.rand(64, 3, 16, 16) * 2 - 1
    a = _low_res(x, 0.3, torch.Generator().manual_seed(2), by_index=True)
    b = _low_res(x, 0.3, torch.Generator().manual_seed(2), by_index=False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert PRESETS["robust"].low_res > 0 and PRESETS["strong"].low_res == PRESETS["standard"].low_res == 0
    assert PRESETS["robust"] == dataclasses.replace(PRESETS["strong"], low_res=PRESETS["robust"].low_res)


def test_schedule_warmup_then_cosine():
    s = LRSchedule(0.1, epochs=10, steps_per_epoch=10, kind="cosine", warmup_epochs=1)
    assert s.lr_at(0) == pytest.approx(0.001)
    assert s.lr_at(10) == pytest.approx(0.1)
    assert s.lr_at(55) == pytest.approx(0.05 * (1 + math.cos(math.pi * 45 / 90)))
    assert s.lr_at(100) == pytest.approx(0.0)


def test_schedule_step_and_plateau():
    s = LRSchedule(1.0, 30, 5, kind="step", step_size=10, gamma=0.1)
    assert s.lr_at(49) == 1.0 and s.lr_at(50) == pytest.approx(0.1) and s.lr_at(100) == pytest.approx(0.01)
    p = LRSchedule(1.0, 30, 5, kind="plateau", patience=1, gamma=0.5)
    for v in [0.5, 0.6, 0.6, 0.6]:
        p.observe(v)
    assert p.lr_at(100) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule(1.0, 1, 1, kind="poly")


def test_checkpoint_round_trip_is_atomic(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "classes": ["0", "10"], "config": {"a": 1}}, path)
    state = load_checkpoint(path)
    assert state["classes"] == ["0", "10"] and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "facerec", "x": Evil()}, fh)
    torch.save({"format": "facerec", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_train_step_is_the_textbook_sgd_step_and_moves_the_average():
    """One `train_step` against the step written out by hand: the same loss, the gradient norm, and Nesterov SGD's
    first update p - lr * (1 + momentum) * grad; the weight average takes its first (warm-up) step."""
    torch.manual_seed(0)
    model = FaceEmbedder("tiny_cnn", 16, image_size=16)
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=16, num_classes=3)
    ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss_fn)
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    optimizer = build_optimizer(model, loss_fn, "sgd", 1.0, 0.0)  # momentum 0.9, Nesterov
    ema = WeightAverage({"model": model, "loss": loss_fn}, 0.99)
    schedule = LRSchedule(1.0, 1, 1, "constant")
    parts = StepParts(
        model, loss_fn, optimizer, schedule, get_preset("none"), StepOptions(torch.device("cpu")), ema
    )
    out = train_step(parts, images, labels, 0.05, torch.Generator())

    ref_params = list(ref_model.parameters()) + list(ref_loss.parameters())
    before = [p.detach().clone() for p in ref_params]
    loss = ref_loss(ref_model(to_input(images)), labels)
    loss.backward()
    assert bool(out.ok) and not bool(out.overflow)
    torch.testing.assert_close(out.loss, loss.detach())
    torch.testing.assert_close(out.norm, torch.stack([p.grad.norm() for p in ref_params]).norm())
    after = list(model.parameters()) + list(loss_fn.parameters())
    for got, p0, p in zip(after, before, ref_params, strict=True):
        torch.testing.assert_close(got, p0 - 0.05 * 1.9 * p.grad)
    assert optimizer.param_groups[0]["lr"] == 0.05
    d = 1 / 10  # the average's warm-up decay after 0 updates: min(0.99, (1 + 0) / (10 + 0))
    averaged, start = ema.state_dict("model"), dict(ref_model.named_parameters())  # start: before the step
    for name, live in model.named_parameters():
        torch.testing.assert_close(averaged[name], d * start[name].detach() + (1 - d) * live.detach())
    assert ema.updates == 1


def test_progress_lines_keep_their_format():
    """The live lines users read (and scripts may grep): step lines with ETA, and the epoch summary."""
    p = Progress(epochs=3, steps_per_epoch=10)
    assert (
        p.step_line(0, 4, 2.5, 0.25, 0.1, 1234.4, 8.0)
        == "epoch 1/3  step 4/10  loss 2.5000  acc  25.0%  lr 0.1  1,234 img/s  eta 0:12 (run 0:52)"
    )
    line = p.epoch_line(0, 75.0, {"train_loss": 2.0, "train_acc": None, "images_per_s": 100.0, "val_auc": 0.9})
    assert line == "== epoch 1/3 done in 1:15: train_loss 2.0000  images_per_s 100.0000  val_auc 0.9000"
    # after an epoch, the run's ETA uses that epoch's duration; no accuracy for losses without a classifier
    assert p.step_line(1, 5, 1.0, None, 0.05, 10.0, 10.0).endswith("lr 0.05  10 img/s  eta 0:10 (run 1:25)")


def test_logger_prints_lines_and_records_events(tmp_path: Path):
    lines: list[str] = []
    log = Logger(lines.append, MetricsLog(tmp_path, tensorboard=False))
    log("hello")
    log(event="start", device="cpu")
    log("time limit reached", event="time_limit", epoch=2)
    assert lines == ["hello", "time limit reached"]
    records = read_metrics(tmp_path)
    assert [(r["event"], r.get("device"), r.get("epoch")) for r in records] == [
        ("start", "cpu", None),
        ("time_limit", None, 2),
    ]
    with pytest.raises(TypeError, match=r"fields \['epoch'\] need an event="):
        log("x", epoch=3)
    Logger(lines.append)("no metrics log", event="epoch", epoch=1)  # before the run folder exists: a line only
    assert lines[-1] == "no metrics log"


def test_fit_options_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown best_metric 'auc'; choose one of \['val_auc', 'val_acc'"):
        FitOptions(epochs=1, run_dir=Path("run"), best_metric="auc")
    with pytest.raises(ValueError, match="train.early_stop=-2: give a number of epochs"):
        FitOptions(epochs=1, run_dir=Path("run"), early_stop=-2)


def test_a_failed_data_check_leaves_no_run_folder(hw2p2_dir: Path, tmp_path: Path, monkeypatch, capsys):
    """`facerec train` with a missing dataset or a pair file naming a missing image fails before training and
    takes away the --out folder it made (and its parent, made for it); a folder that existed before stays."""
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    assert main(["train", "--data", str(tmp_path / "nonexistent"), "--out", str(runs / "x"), *TINY]) == 1
    assert "nonexistent" in capsys.readouterr().err
    assert not runs.exists()
    pairs = hw2p2_dir / "verification_pairs_val.txt"
    lines = pairs.read_text().splitlines()
    lines[4] = "verification_data/missing.jpg " + lines[4].split(" ", 1)[1]
    pairs.write_text("\n".join(lines) + "\n")
    assert main(["train", "--data", str(hw2p2_dir), "--out", str(runs / "y"), *TINY]) == 1
    err = capsys.readouterr().err
    assert ":5:" in err and "missing.jpg" in err
    assert not runs.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["train", "--data", str(tmp_path / "nonexistent"), "--out", str(mine), *TINY]) == 1
    assert mine.is_dir() and not any(mine.iterdir())
