"""insightface RecordIO training sets read without MXNet (issue #15), against files written by MXNet's own writer
(../shared/data/formats/insightface/faces_tiny): record and class counts, labels (checked against the facehw
folders the images came from), pixels (against PIL decoding the JPEG bytes directly), a pack round trip, training
from the folder, concurrent readers, and a DataError naming the record for each kind of damage."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_overrides
from facerec.cli.main import main
from facerec.data import recordset
from facerec.data.memory import load_pack
from facerec.data.pack import pack_dataset
from facerec.data.recordimages import RecordImages, take_rows
from facerec.data.recordset import decode_records, open_recordio, read_recordio
from facerec.engine.progress import read_metrics
from facerec.errors import DataError
from facerec.inference.load import load
from rec_writer import ir_header, record, write_records, write_set

MAGIC = 0xCED7230A


@pytest.fixture
def rec_dir(shared_data: Path) -> Path:
    folder = shared_data / "formats" / "insightface" / "faces_tiny"
    if not (folder / "train.rec").is_file():
        pytest.skip(f"no RecordIO fixture at {folder}")
    return folder


def parse(folder: Path) -> list[tuple[int, float | tuple[float, ...], bytes]]:
    """The records of train.rec in file order, parsed here with struct alone (no facerec code): (flag, label or
    labels, the bytes after the header)."""
    data, out, pos = (folder / "train.rec").read_bytes(), [], 0
    while pos < len(data):
        magic, lrecord = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC and lrecord >> 29 == 0
        payload = data[pos + 8 : pos + 8 + (lrecord & (1 << 29) - 1)]
        flag, label = struct.unpack_from("<If", payload)
        labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else label
        out.append((flag, labels, payload[24 + 4 * flag :]))
        pos += 8 + ((lrecord & (1 << 29) - 1) + 3) // 4 * 4
    return out


def pil(data: bytes, size: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.Resampling.BILINEAR))


def names(folder: Path) -> list[str]:
    return [line.split("\t")[1] for line in (folder / "classes.txt").read_text().splitlines()]


def quiet(message: str) -> None:
    pass


# -- the MXNet-written fixture ------------------------------------------------------------------------------------
def test_the_fixture_holds_183_images_of_40_identities_with_the_header_and_identity_records(rec_dir: Path):
    records = parse(rec_dir)
    index, classes = read_recordio(rec_dir, quiet)
    assert len(index.keys) == 183 and index.keys.tolist() == list(range(1, 184))
    assert records[0][:2] == (2, (184.0, 224.0)) and len(records) == 224
    assert index.labels.tolist() == [int(label) for _, label, _ in records[1:184]]
    assert classes == names(rec_dir) and len(classes) == 40 == int(
        (rec_dir / "property").read_text().split(",")[0]
    )
    for c, (flag, (start, end), _) in enumerate(records[184:]):  # identity record c: the keys labelled c
        assert flag == 2 and np.flatnonzero(index.labels == c).tolist() == list(
            range(int(start) - 1, int(end) - 1)
        )


def test_labels_name_the_facehw_folders_the_images_came_from(rec_dir: Path, facehw: Path):
    """Each image, shrunk back to 64x64, is nearest to an image of the facehw folder that classes.txt names for
    its label (an independent check of labels and names: the distances differ 20- to 100-fold)."""
    images = open_recordio(rec_dir, 64, log=quiet)
    train = facehw / "classification_data" / "train_data"
    folders = {
        c: np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in sorted((train / n).iterdir())])
        for c, n in enumerate(images.classes)
    }
    for x, y in zip(images.images.numpy().astype(np.float32), images.labels.tolist(), strict=True):
        distance = {c: ((f - x) ** 2).mean(axis=(1, 2, 3)).min() for c, f in folders.items()}
        assert min(distance, key=distance.get) == y


@pytest.mark.parametrize("size", [112, 64])
@pytest.mark.parametrize("eager", [True, False])
def test_images_equal_the_jpegs_decoded_by_pil(rec_dir: Path, size: int, eager: bool):
    images = open_recordio(rec_dir, size, log=quiet, eager_bytes=None if eager else 0)
    assert isinstance(images.images, torch.Tensor) == eager and images.images.shape == (183, size, size, 3)
    expected = np.stack([pil(data, size) for _, _, data in parse(rec_dir)[1:184]])
    pick = torch.tensor([182, 0, 77, 77, 5])
    assert np.array_equal(images.images[pick].numpy(), expected[pick.numpy()])
    assert np.array_equal(images.images[:].numpy(), expected)
    assert np.array_equal(images.images[3].numpy(), expected[3]) and images.images[3].dtype == torch.uint8
    mask = torch.zeros(183, dtype=torch.bool)
    mask[[1, 7]] = True
    assert np.array_equal(images.images[mask].numpy(), expected[[1, 7]])


def test_the_test_writer_reproduces_the_mxnet_file_byte_for_byte(rec_dir: Path, tmp_path: Path):
    records = parse(rec_dir)
    by_class = [[data for _, label, data in records[1:184] if label == c] for c in range(40)]
    write_set(tmp_path, by_class, 112, names(rec_dir))
    for name in ("train.rec", "train.idx", "classes.txt"):
        assert (tmp_path / name).read_bytes() == (rec_dir / name).read_bytes(), name


def test_pack_round_trip(rec_dir: Path, tmp_path: Path, capsys):
    assert main(["pack", str(rec_dir), str(tmp_path / "pack"), "--image-size", "112"]) == 0
    assert "packed 183 images of 40 identities" in capsys.readouterr().out
    packed, direct = load_pack(tmp_path / "pack"), open_recordio(rec_dir, 112, log=quiet)
    assert torch.equal(packed.images, direct.images) and torch.equal(packed.labels, direct.labels)
    assert packed.classes == names(rec_dir) and packed.paths == []


def test_training_from_the_rec_folder_saves_its_class_names(rec_dir: Path, tmp_path: Path, capsys):
    overrides = tiny_overrides("train.epochs=1", "data.augment=none", "data.holdout=0.2")
    assert main(["train", "--data", str(rec_dir), "--out", str(tmp_path / "run"), *overrides]) == 0
    assert "183 images of 40 identities, decoded up front" in capsys.readouterr().out
    epoch = next(r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch")
    assert np.isfinite(epoch["train_loss"]) and "val_auc" in epoch
    assert set(load(tmp_path / "run" / "best.pt", device="cpu").classes) < set(names(rec_dir))  # 32 of 40 kept


def test_training_decodes_batch_by_batch_when_the_set_is_big(rec_dir: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(recordset, "EAGER_BYTES", 0)
    overrides = tiny_overrides("train.epochs=1", "data.holdout=0.2", "data.val_per_class=1")
    assert main(["train", "--data", str(rec_dir), "--out", str(tmp_path / "run"), *overrides]) == 0
    assert "decoded batch by batch" in capsys.readouterr().out
    epoch = next(r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch")
    assert np.isfinite(epoch["train_loss"]) and "val_auc" in epoch and "val_acc" in epoch


def test_a_split_of_lazy_images_stays_lazy_and_limits_apply(rec_dir: Path):
    images = open_recordio(rec_dir, 16, log=quiet, eager_bytes=0, max_classes=5, max_per_class=3)
    labels = [int(label) for _, label, _ in parse(rec_dir)[1:184]]
    assert images.labels.tolist() == [c for c in range(5) for _ in range(min(3, labels.count(c)))]
    assert images.classes == names(rec_dir)[:5]
    part = take_rows(images.images, torch.tensor([4, 0]))
    assert isinstance(part, RecordImages) and torch.equal(part[:], images.images[torch.tensor([4, 0])])


# -- several processes --------------------------------------------------------------------------------------------
def _read_all(images: RecordImages, seed: int, queue: mp.Queue) -> None:
    order = np.random.default_rng(seed).permutation(len(images))
    out = np.empty(images.shape, dtype=np.uint8)
    for batch in np.array_split(order, 12):
        out[batch] = images[torch.from_numpy(batch)].numpy()
    queue.put((os.getpid(), images.index.file._pid, out))


def test_forked_workers_read_concurrently_with_their_own_handles(rec_dir: Path):
    images = open_recordio(rec_dir, 112, num_workers=2, log=quiet, eager_bytes=0).images
    expected = np.stack([pil(data, 112) for _, _, data in parse(rec_dir)[1:184]])
    assert np.array_equal(images[:4].numpy(), expected[:4])  # the parent's handle and thread pool now exist
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_read_all, args=(images, seed, queue)) for seed in (1, 2)]
    for w in workers:
        w.start()
    for seed in (3, 4):  # the parent reads at the same time
        _read_all(images, seed, queue)
    results = [queue.get(timeout=60) for _ in range(4)]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert {pid for pid, _, _ in results} == {os.getpid(), *(w.pid for w in workers)}
    for pid, handle_pid, out in results:
        assert handle_pid == pid and np.array_equal(out, expected)  # each process read through its own handle
    clone = pickle.loads(pickle.dumps(images))  # what a spawned process receives: no handle, no threads
    assert clone.index.file._fd is None and np.array_equal(clone[torch.arange(183)].numpy(), expected)


# -- damaged files ------------------------------------------------------------------------------------------------
def _copy(rec_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "set"
    shutil.copytree(rec_dir, out)
    for f in out.iterdir():
        f.chmod(0o644)
    return out


def _offsets(folder: Path) -> dict[int, int]:
    return {
        int(k): int(v) for k, v in (line.split("\t") for line in (folder / "train.idx").read_text().splitlines())
    }


def _patch(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    path.write_bytes(bytes(raw))


def _damage(folder: Path, kind: str) -> None:
    rec, idx, at = folder / "train.rec", folder / "train.idx", _offsets(folder)
    if kind == "magic":
        _patch(rec, at[5], b"\0\0\0\0")
    elif kind == "truncated":
        rec.write_bytes(rec.read_bytes()[: at[100] + 100])
    elif kind == "offset past the end":
        idx.write_text(idx.read_text().replace(f"3\t{at[3]}\n", "3\t999999999\n"))
    elif kind == "offset inside a record":
        idx.write_text(idx.read_text().replace(f"3\t{at[3]}\n", f"3\t{at[3] + 40}\n"))
    elif kind == "length":
        (lrecord,) = struct.unpack_from("<I", rec.read_bytes(), at[10] + 4)
        _patch(rec, at[10] + 4, struct.pack("<I", lrecord + 100))
    elif kind == "label":
        _patch(rec, at[7] + 12, struct.pack("<f", 40.0))
    elif kind == "fractional label":
        _patch(rec, at[7] + 12, struct.pack("<f", 2.5))
    elif kind == "missing key":
        idx.write_text(idx.read_text().replace(f"50\t{at[50]}\n", ""))
    elif kind == "identity record":
        _patch(rec, at[190] + 32, struct.pack("<ff", 9.0, 3.0))
    elif kind == "header":
        _patch(rec, 8 + 24, struct.pack("<ff", 184.0, 9e6))


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("magic", "record 5 of {rec} (at byte {at5}): no RecordIO magic"),
        ("truncated", "record 100 of {rec} (at byte {at100}): its length runs past"),
        ("offset past the end", "record 3 of {rec} (at byte 999999999): its offset in {idx} is past the end"),
        ("offset inside a record", "record 3 of {rec}"),
        ("length", "record 10 of {rec} (at byte {at10}): its length runs past the next record"),
        ("label", "record 7 of {rec} has label 40, not a class id in 0 .. 39"),
        ("fractional label", "record 7 of {rec} has label 2.5"),
        ("missing key", "image record 50 is missing from {idx}"),
        ("identity record", "identity record 190 of {rec}"),
        ("header", "header record 0 of {rec} puts the identity records at 184 .. 8999999"),
    ],
)
def test_a_damaged_file_is_a_data_error_naming_the_record(rec_dir: Path, tmp_path: Path, kind: str, expected: str):
    folder = _copy(rec_dir, tmp_path)
    at = _offsets(folder)
    _damage(folder, kind)
    with pytest.raises(DataError) as err:
        open_recordio(folder, 16, log=quiet)
    rec, idx = folder / "train.rec", folder / "train.idx"
    assert expected.format(rec=rec, idx=idx, at5=at[5], at10=at[10], at100=at[100]) in str(err.value)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("property", "41,112,112", "says 41 classes but the header record"),
        ("property", "forty", "expected `num_classes,height,width`"),
        ("train.idx", "0\t0\n1\tx\n", "train.idx line 2: expected `key<TAB>byte offset`"),
        ("train.idx", "0\t0\n0\t40\n", "train.idx line 2: key 0 is listed twice"),
        ("train.idx", "", "lists no records"),
        ("classes.txt", "0\ta\n1\ta\n", "names two classes alike"),
    ],
)
def test_damaged_side_files_are_data_errors(rec_dir: Path, tmp_path: Path, name: str, text: str, expected: str):
    folder = _copy(rec_dir, tmp_path)
    (folder / name).write_text(text)
    with pytest.raises(DataError, match=expected.replace("(", r"\(")):
        read_recordio(folder, quiet)


def test_an_undecodable_image_is_a_counted_skip_never_a_stop(rec_dir: Path, tmp_path: Path):
    folder = _copy(rec_dir, tmp_path)
    _patch(folder / "train.rec", _offsets(folder)[9] + 8 + 24, b"not a jpeg")  # key 9: class 1's first image
    messages: list[str] = []
    eager = open_recordio(folder, 32, log=messages.append)
    assert len(eager) == 182 and any("skipped 1 image records" in m and "keys 9" in m for m in messages)
    lazy = open_recordio(folder, 32, log=messages.append, eager_bytes=0)
    batch = lazy.images[torch.tensor([8, 9, 8])]  # key 9 is row 8; its class-mate key 10 is row 9
    assert torch.equal(batch[0], batch[1]) and torch.equal(batch, lazy.images[torch.tensor([9, 9, 9])])
    assert lazy.images.replaced == 1 and sum("record 9 of" in m for m in messages) == 1
    _, labels, _, skipped = decode_records(folder, 32, log=quiet)
    assert skipped == ["train.rec:9"] and len(labels) == 182
    pack_dataset(folder, tmp_path / "pack", 32, log=messages.append)
    assert "skipped 1 undecodable records, e.g. train.rec:9" in messages[-1]


def test_a_record_holding_the_magic_number_is_split_into_parts_and_joined_back(tmp_path: Path):
    """dmlc-core splits a payload at each 4-byte aligned magic number (cflag 1, 2, 3); the reader must put the
    magic back. JPEG comments carrying the magic at aligned positions force two splits."""
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(buf, "JPEG")
    magic = struct.pack("<I", MAGIC)
    pad = -(len(ir_header(0, 0, 1)) + 2 + 4) % 4  # aligns the comment's text within the payload
    comment = b"x" * pad + magic + b"yyyy" + magic
    jpeg = buf.getvalue()[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + buf.getvalue()[2:]
    assert struct.unpack_from("<I", record(ir_header(0, 0, 1) + jpeg), 4)[0] >> 29 == 1  # written in parts
    write_records(
        tmp_path, [(0, ir_header(2, [2, 3], 0)), (1, ir_header(0, 0, 1) + jpeg), (2, ir_header(2, [1, 2], 2))]
    )
    for eager in (None, 0):
        images = open_recordio(tmp_path, 20, log=quiet, eager_bytes=eager)
        assert np.array_equal(images.images[0].numpy(), pil(jpeg, 20)) and images.labels.tolist() == [0]
