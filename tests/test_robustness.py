"""Bad inputs, full disks, untrusted files and numerical faults: a clear message naming the file (or a skip counted
in the log), never silent wrong output and never a bare traceback.

docs/robustness.md is the catalogue (input -> behaviour -> test). Rows already covered by tests/test_data.py,
tests/test_submission.py, tests/test_engine.py and tests/test_cli.py are not repeated here.
"""

from __future__ import annotations

import errno
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facerec.engine.checkpoint as checkpoint_module
import facerec.engine.run as pipeline
from conftest import make_hw2p2, make_identity_folder, tiny_overrides
from facerec.cli.main import main
from facerec.config import ConfigError, config_to_dict, load_config
from facerec.data.augment import get_preset
from facerec.data.folder import DataError
from facerec.data.hw2p2 import detect_layout
from facerec.data.memory import load_identity_folders
from facerec.data.pairs import read_pairs
from facerec.engine import train as train_module
from facerec.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerec.engine.optim import build_optimizer, skips_on_device
from facerec.engine.progress import read_metrics
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_one_epoch
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder
from facerec.outputs.submission import classification_test_ids, read_sample_submission, write_classification_csv

TINY = tiny_overrides("optim.lr=0.05", "train.log_every=100", "train.threads=1", "data.num_workers=1")


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Decoded-image cache in tmp_path; one torch thread, as the runs' train.threads=1 (restored afterwards)."""
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend (100x slower on a busy 2-core machine)
    yield
    torch.set_num_threads(threads)


def _fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the CLI, expect exit status 1 with a one-line `facerec <cmd>: error: ...`; return that message."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"facerec {argv[0]}: error: ") and "Traceback" not in err, err
    return err


def _jpeg_bytes(tmp_path: Path) -> bytes:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
        tmp_path / "t.jpg"
    )
    return (tmp_path / "t.jpg").read_bytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels (a decompression bomb) with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


def _untrained_checkpoint(path: Path, classes: list[str]) -> Path:
    """A loadable facerec checkpoint without training (for evaluate / predict error paths)."""
    cfg = load_config(None, TINY)
    model, loss_fn = pipeline.build_model(cfg), pipeline.build_loss_fn(cfg, len(classes))
    state = {
        "config": config_to_dict(cfg),
        "classes": classes,
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "scoring": "cosine",
        "epoch": 0,
    }
    return save_checkpoint(state, path)


# ------------------------------------------------------------------ images and identity folders
def test_train_skips_bad_files_and_counts_them_in_the_log(tmp_path: Path, capsys) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b", "c"], 6)
    good = _jpeg_bytes(tmp_path)
    (faces / "a" / "zero.jpg").write_bytes(b"")
    (faces / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (faces / "a" / "text.png").write_text("not an image")
    (faces / "a" / "bomb.png").write_bytes(_png_claiming(9000, 9000))  # 81 MP: refused before decoding
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(faces / "b" / "cmyk.jpg")
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(faces / "b" / "gray16.png")
    Image.new("RGBA", (16, 16), (1, 2, 3, 0)).save(faces / "b" / "rgba.png")
    Image.new("L", (16, 16), 9).save(faces / "b" / "gray.png")
    (faces / ".DS_Store").write_bytes(b"\0")
    (faces / "__MACOSX").mkdir()
    (faces / "a" / "._0000.jpg").write_bytes(b"\0\5\26\7")  # macOS resource fork: hidden, never decoded
    (faces / "b" / "notes.txt").write_text("x")
    (faces / "c" / "thumbs").mkdir()
    (faces / "empty").mkdir()
    val = make_identity_folder(tmp_path / "val", ["a", "stranger"], 2)
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(faces), "--out", str(run), f"data.val={val}", "train.epochs=1", *TINY]) == 0
    )
    out = capsys.readouterr().out
    assert f"skipped 4 unreadable images, e.g. {faces / 'a'}" in out
    assert f"decoded 22 images from {faces}" in out  # 18 noise JPEGs + the CMYK, 16-bit, RGBA and grey images
    assert f"skipped 5 hidden or non-image files in {faces}" in out
    assert "1 empty identity folders" in out and "'empty'" in out
    assert "1 identities in" in out and "'stranger'" in out
    start = next(r for r in read_metrics(run) if r["event"] == "start")
    assert start["num_train_images"] == 22 and start["num_classes"] == 3


def test_train_fails_when_no_training_image_decodes(tmp_path: Path, capsys) -> None:
    faces = tmp_path / "faces"
    for identity in ("a", "b"):
        (faces / identity).mkdir(parents=True)
        for i in range(2):
            (faces / identity / f"{i}.jpg").write_bytes(b"\xff\xd8\xff broken")
    err = _fails(["train", "--data", str(faces), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert f"none of the 4 images under {faces} could be decoded, e.g. {faces / 'a' / '0.jpg'}" in err


def test_val_split_without_any_training_identity_is_an_error(tmp_path: Path, capsys) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b"], 2)
    val = make_identity_folder(tmp_path / "val", ["x", "y"], 1)
    err = _fails(["train", "--data", str(faces), "--out", str(tmp_path / "run"), f"data.val={val}", *TINY], capsys)
    assert f"none of the 2 identities in {val} (e.g. 'x') is a training identity" in err


def test_corrupt_pair_image_stops_before_training(tmp_path: Path, capsys) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=4, per_id=4)
    victim = root / "verification_data" / read_pairs(root / "verification_pairs_val.txt").a[0].split("/")[-1]
    victim.write_bytes(victim.read_bytes()[:40])
    err = _fails(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert "could not be decoded" in err and victim.name in err
    assert not (tmp_path / "run" / "last.pt").exists()


# ------------------------------------------------------------------ pair files
@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("verification_data/10000000.jpg verification_data/10000001.jpg 1 extra", ":3: 4 fields"),
        ("verification_data/10000000.jpg verification_data/10000001.jpg yes", ":3: label 'yes' is not 0 or 1"),
        ("verification_data/10000000.jpg verification_data/10000001.jpg -1", ":3: label '-1' is not 0 or 1"),
        ("verification_data/10000000.jpg", ":3: 1 fields"),
    ],
)
def test_bad_pair_line_through_the_cli_names_file_and_line(tmp_path: Path, capsys, line: str, match: str) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=4, per_id=2)
    pairs = root / "verification_pairs_val.txt"
    lines = pairs.read_text().splitlines()
    pairs.write_text("\r\n".join(lines[:2] + [line] + lines[2:]) + "\r\n")  # CRLF endings are fine
    err = _fails(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY], capsys)
    assert f"{pairs}{match}" in err


@pytest.mark.parametrize("kind", ["folder", "binary", "missing"])
def test_unreadable_pair_file_is_reported(tmp_path: Path, capsys, kind: str) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b"], 2)
    pairs = tmp_path / "pairs.txt"
    if kind == "folder":
        pairs.mkdir()
    elif kind == "binary":
        pairs.write_bytes(b"\xff\xfe\x00a b 1\n")
    expected = {"folder": "cannot read pair file", "binary": "is not UTF-8 text", "missing": "does not exist"}[
        kind
    ]
    err = _fails(
        ["train", "--data", str(faces), "--out", str(tmp_path / "run"), f"data.pairs={pairs}", *TINY], capsys
    )
    assert expected in err and str(pairs) in err


# ------------------------------------------------------------------ sample submissions
@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"id,label\n", "has a header but no rows"),
        (b"id,label\n\n\n", "has a header but no rows"),
        (b"id,label\n\xff\xfe.jpg,0\n", "is not UTF-8 text"),
        (b"id,label\n" + b"x" * 200_000 + b",0\n", r"s.csv:2: not a valid CSV row \(field larger"),
    ],
)
def test_sample_submission_without_rows_or_not_csv(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "s.csv").write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_sample_submission(tmp_path / "s.csv", "classification")


def test_truncated_classification_sample_is_refused(tmp_path: Path) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=2)
    sample = root / "classification_sample_submission.csv"
    sample.write_text("\n".join(sample.read_text().splitlines()[:-2]) + "\n")  # cut short: 10 of 12 ids
    with pytest.raises(DataError, match=r"lists 10 ids, but 2 more images in .*test_data are not in it"):
        classification_test_ids(detect_layout(root))


def test_predict_refuses_a_verification_sample_with_missing_rows(tmp_path: Path, capsys) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=2)
    sample = root / "verification_sample_submission.csv"
    sample.write_text("\n".join(sample.read_text().splitlines()[:-1]) + "\n")
    ckpt = _untrained_checkpoint(tmp_path / "m.pt", ["1", "4", "7"])
    err = _fails(
        [
            "predict",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(root),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert f"40 rows to write but the sample submission {sample} has 39" in err
    assert not (tmp_path / "o" / "verification_submission.csv").exists()


def test_predict_refuses_a_truncated_classification_sample(tmp_path: Path, capsys) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=2)
    sample = root / "classification_sample_submission.csv"
    sample.write_text("\n".join(sample.read_text().splitlines()[:-1]) + "\n")
    ckpt = _untrained_checkpoint(tmp_path / "m.pt", ["1", "4", "7"])
    _fails(["predict", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "o")], capsys)


# ------------------------------------------------------------------ output folders and full disks
def test_unwritable_output_folder(tmp_path: Path, capsys) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b"], 2)
    (tmp_path / "file").write_text("a file, not a folder")  # tests run as root: chmod would not stop writes
    err = _fails(["train", "--data", str(faces), "--out", str(tmp_path / "file" / "run"), *TINY], capsys)
    assert f"cannot write to the output folder {tmp_path / 'file' / 'run'}" in err
    with pytest.raises(DataError, match="cannot write .*file/c.csv .*choose another output folder"):
        write_classification_csv(tmp_path / "file" / "c.csv", ["0.jpg"], ["a"])


def test_predict_into_an_unwritable_folder(tmp_path: Path, capsys) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=2)
    ckpt = _untrained_checkpoint(tmp_path / "m.pt", ["1", "4", "7"])
    (tmp_path / "file").write_text("x")
    _fails(
        ["predict", "--checkpoint", str(ckpt), "--data", str(root), "--out", str(tmp_path / "file" / "o")], capsys
    )


def test_full_disk_while_writing_a_submission_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    out = write_classification_csv(tmp_path / "c.csv", ["0.jpg"], ["old"])
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(DataError, match="could not write .*c.csv .*No space left on device.*unchanged"):
        write_classification_csv(out, ["0.jpg"], ["new"])
    assert out.read_text() == "id,label\n0.jpg,old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.csv"]  # the temp file is gone


def test_full_disk_while_writing_a_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b", "c"], 4)
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second write of last.pt runs out of space half-way
        name = Path(getattr(f, "name", "")).name
        calls.append(name)
        if name.startswith(".last.pt.tmp") and sum(c.startswith(".last.pt.tmp") for c in calls) == 2:
            f.write(b"partial")
            _disk_full()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    run = tmp_path / "run"
    err = _fails(["train", "--data", str(faces), "--out", str(run), "train.epochs=3", *TINY], capsys)
    assert f"could not write checkpoint {run / 'last.pt'}: [Errno 28] No space left on device" in err
    assert "free disk space or choose another --out" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint survives, intact
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def test_full_disk_while_writing_the_image_cache_is_not_fatal(tmp_path: Path, monkeypatch) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b"], 2)
    monkeypatch.setattr("facerec.data.memory.save_pack", _disk_full)
    lines: list[str] = []
    data = load_identity_folders(faces, 16, num_workers=1, cache=True, log=lines.append)
    assert len(data) == 4 and any("could not write the image cache" in m and "No space left" in m for m in lines)


# ------------------------------------------------------------------ checkpoints (untrusted files)
class _Payload:
    """Unpickling this runs `exec`, which writes a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_never_runs_its_payload(tmp_path: Path, capsys) -> None:
    marker, evil = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    torch.save({"format": "facerec", "version": 1, "epoch": 1, "model": {}, "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    err = _fails(["evaluate", "--checkpoint", str(evil), "--data", str(tmp_path)], capsys)
    assert "refusing to load" in err
    run = tmp_path / "run"
    run.mkdir()
    evil.rename(run / "last.pt")
    assert "refusing to load" in _fails(["train", "--out", str(run), "--resume"], capsys)
    assert not marker.exists()
    # Control: the payload is live. Were checkpoint.py to pass weights_only=False, the marker would exist.
    torch.load(run / "last.pt", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "plain_state_dict", "folder", "missing"])
def test_unusable_checkpoints_are_reported(tmp_path: Path, capsys, kind: str) -> None:
    path = tmp_path / "model.pt"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        _untrained_checkpoint(path, ["a", "b"])
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "plain_state_dict":
        torch.save(FaceEmbedder("tiny_cnn", 8, image_size=16).state_dict(), path)
    elif kind == "folder":
        path.mkdir()
    expected = {
        "zero_byte": "corrupt or truncated",
        "truncated": "corrupt or truncated",
        "plain_state_dict": "is not a facerec checkpoint",
        "folder": "does not exist",
        "missing": "does not exist",
    }[kind]
    err = _fails(["evaluate", "--checkpoint", str(path), "--data", str(tmp_path)], capsys)
    assert expected in err and str(path) in err


def test_resume_without_or_with_a_corrupt_checkpoint(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert "--resume: no checkpoint at" in _fails(["train", "--out", str(run), "--resume"], capsys)
    run.mkdir()
    (run / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    err = _fails(["train", "--out", str(run), "--resume"], capsys)
    assert f"checkpoint {run / 'last.pt'} is corrupt or truncated" in err


# ------------------------------------------------------------------ config values (gaps in config.py)
@pytest.mark.parametrize(
    "override",
    [
        pytest.param("train.epochs=" + "9" * 5000, id="huge_int"),  # int(): ValueError, not ConfigError
        pytest.param("train.epochs=" + "[" * 3000, id="deep_nesting"),  # yaml: RecursionError
        pytest.param("optim.lr=.nan", id="nan_lr"),  # accepted: training would skip every step
    ],
)
def test_config_values_that_should_be_config_errors(override: str) -> None:
    try:
        load_config(None, [override])
    except ConfigError:
        return
    except Exception as err:  # reported without its (1000-frame, for RecursionError) traceback
        pytest.fail(f"{type(err).__name__} instead of ConfigError: {str(err)[:80]}", pytrace=False)
    pytest.fail("accepted without a ConfigError", pytrace=False)


def test_string_option_on_stays_on() -> None:
    assert load_config(None, ["train.channels_last=on"]).train.channels_last == "on"


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_bytes(b"optim:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match="c.yaml.*not valid UTF-8 YAML"):
        load_config(tmp_path / "c.yaml")


# ------------------------------------------------------------------ numerical faults
def _tiny_setup(grad_clip: float = 0.0):
    torch.manual_seed(0)
    model = FaceEmbedder("tiny_cnn", 8, image_size=16)
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=8, num_classes=3)
    optimizer = build_optimizer(model, loss_fn, "sgd", 0.05, 5e-4)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=g), torch.arange(3).repeat(2))
        for _ in range(6)
    ]
    opts = StepOptions(torch.device("cpu"), grad_clip=grad_clip, log_every=100)
    return model, loss_fn, optimizer, batches, opts


def _poison(loss_fn, bad: dict[int, str]) -> None:
    """Make call n of loss_fn return a NaN / inf loss, or a finite loss whose gradient is NaN."""
    forward, calls = loss_fn.forward, [0]

    def poisoned(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        kind = bad.get(calls[0])
        if kind == "nan_grad":
            emb = emb.clone()
            emb.register_hook(lambda g: torch.full_like(g, math.nan))
        loss = forward(emb, labels)
        return loss * {"nan": math.nan, "inf": math.inf}[kind] if kind in ("nan", "inf") else loss

    loss_fn.forward = poisoned


def _run_epoch(model, loss_fn, optimizer, batches, opts):
    parts = StepParts(model, loss_fn, optimizer, LRSchedule(0.05, 1, len(batches)), get_preset("none"), opts)
    return train_one_epoch(parts, iter(batches), torch.Generator().manual_seed(0), steps=len(batches))


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_non_finite_loss_or_gradient_skips_the_step(grad_clip: float, capsys) -> None:
    model, loss_fn, optimizer, batches, opts = _tiny_setup(grad_clip)
    _poison(loss_fn, {2: "nan", 4: "nan_grad", 5: "inf"})  # nan_grad: finite loss, so only the gradient shows it
    result = _run_epoch(model, loss_fn, optimizer, batches, opts)
    assert result["skipped_steps"] == 3 and result["steps"] == 3 and math.isfinite(result["train_loss"])
    assert all(torch.isfinite(p).all() for p in list(model.parameters()) + list(loss_fn.parameters()))
    assert all(torch.isfinite(s["momentum_buffer"]).all() for s in optimizer.state.values())
    out = capsys.readouterr().out
    assert out.count("warning: epoch 1 step 2: non-finite loss (nan)") == 1 and "step skipped" in out


def test_a_skipped_step_changes_no_weight() -> None:
    model, loss_fn, optimizer, batches, opts = _tiny_setup()
    before = [p.detach().clone() for p in model.parameters()]
    _poison(loss_fn, {n: "nan_grad" for n in range(1, 7)})
    result = _run_epoch(model, loss_fn, optimizer, batches, opts)
    assert result["skipped_steps"] == 6 and result["steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    momentum = [s["momentum_buffer"] for s in optimizer.state.values() if s.get("momentum_buffer") is not None]
    assert all(not m.any() for m in momentum)  # no momentum was accumulated either


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_device_side_skip_matches_skipping_on_the_host(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused optimisers skip a non-finite step on the device (no host sync). The weights must be exactly those
    of the same optimiser whose bad steps the host leaves out, also when the very first step is a bad one (SGD's
    momentum then starts from the zero buffers the device path sets up)."""
    results = []
    for device_side in (True, False):
        monkeypatch.setattr(train_module, "skips_on_device", lambda opt, on=device_side: on)
        model, loss_fn, _, batches, opts = _tiny_setup()
        optimizer = build_optimizer(model, loss_fn, name, 0.05, 5e-4)
        assert skips_on_device(optimizer)  # the real check: build_optimizer made a fused one
        _poison(loss_fn, {1: "nan_grad", 4: "nan"})
        result = _run_epoch(model, loss_fn, optimizer, batches, opts)
        assert result["skipped_steps"] == 2 and result["steps"] == 4
        results.append((result, [p.detach().clone() for p in model.parameters()], optimizer))
    (dev_result, dev_params, dev_opt), (host_result, host_params, _) = results
    assert dev_result["train_loss"] == host_result["train_loss"]
    assert all(torch.equal(a, b) for a, b in zip(dev_params, host_params, strict=True))
    if name == "adamw":  # skipped steps do not advance Adam's step count (bias correction)
        assert all(int(s["step"]) == 4 for s in dev_opt.state.values())


def test_nan_batchnorm_statistics_count_as_a_fault() -> None:
    """A skipped step still ran its forward pass; a NaN batch there poisons BatchNorm's running statistics."""
    model, loss_fn, optimizer, batches, opts = _tiny_setup()
    calls = [0]

    def nan_input_on_step_2(module, args):
        calls[0] += 1
        return (args[0] * math.nan,) if calls[0] == 2 else None

    model.register_forward_pre_hook(nan_input_on_step_2)
    result = _run_epoch(model, loss_fn, optimizer, batches, opts)
    assert result["skipped_steps"] == 1 and result["steps"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opts.faults.triggered(result, model)  # 1 skip is below max_skipped, but the statistics are NaN
    assert not opts.faults.triggered(result, _tiny_setup()[0])


def _nan_loss_from_call(monkeypatch: pytest.MonkeyPatch, bad_calls) -> None:
    """Every loss built by the pipeline returns NaN on the given (1-based) training-step calls."""
    build = pipeline.build_loss_fn

    def patched(cfg, num_classes, *args, **kwargs):
        loss_fn = build(cfg, num_classes, *args, **kwargs)
        _poison(loss_fn, {n: "nan" for n in bad_calls})
        return loss_fn

    monkeypatch.setattr(pipeline, "build_loss_fn", patched)


def test_repeated_faults_roll_back_to_last_checkpoint_and_halve_the_lr(tmp_path: Path, monkeypatch) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b", "c"], 16)  # 48 images: 12 steps of 4 per epoch
    _nan_loss_from_call(monkeypatch, range(13, 24))  # epoch 2: 11 of 12 steps NaN (> FaultPolicy.max_skipped=10)
    run = tmp_path / "run"
    args = ["train.epochs=3", "data.batch_size=4", "optim.schedule=constant", f"data.val={faces}"]
    assert main(["train", "--data", str(faces), "--out", str(run), *TINY, *args]) == 0
    e1, e2, e3 = (r for r in read_metrics(run) if r["event"] == "epoch")
    assert (e1["skipped_steps"], e2["skipped_steps"], e3["skipped_steps"]) == (0, 11, 0)
    assert e2["rolled_back"] is True and e2["lr_scale"] == 0.5
    # epoch 2's one good step was undone: its weights are epoch 1's, so validation gives identical numbers
    assert e2["val_acc"] == e1["val_acc"] and e2["val_top5"] == e1["val_top5"]
    assert e1["lr"] == pytest.approx(0.05) and e3["lr"] == pytest.approx(0.025)  # the halved LR persists
    last = load_checkpoint(run / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr_scale"] == 0.5  # ... also across --resume
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_persistent_faults_stop_with_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    faces = make_identity_folder(tmp_path / "faces", ["a", "b", "c"], 4)
    _nan_loss_from_call(monkeypatch, range(1, 1000))  # every step
    run = tmp_path / "run"
    err = _fails(["train", "--data", str(faces), "--out", str(run), "train.epochs=6", *TINY], capsys)
    assert "training diverged: non-finite losses or gradients in 4 epochs despite 3 rollbacks" in err
    assert "lower optim.lr" in err
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    assert len(epochs) == 3 and all(r["steps"] == 0 and r["skipped_steps"] > 0 for r in epochs)
    assert [r["lr_scale"] for r in epochs] == [0.5, 0.25, 0.125]
    last = load_checkpoint(run / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
