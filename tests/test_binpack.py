"""insightface .bin verification packs, the safe reader (data/binpack.py): the fixture packs, packs that name code
to run (refused, nothing runs), malformed and unreadable packs. The protocol, `facerec benchmark bin` and
`data.val_bins`: tests/test_bins_protocol.py."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.data.binpack import decode_pack, read_pack
from facerec.errors import DataError

FIXTURES = ("pairs_tiny.bin", "pairs_tiny_py3.bin", "pairs_tiny_ndarray.bin")


class Call:
    """Pickles as `fn(*args)`: what a malicious (or malformed) pack makes the unpickler call."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


def encoded(rng: np.random.Generator, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_pack(path: Path, content: Any, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


def synthetic_pack(path: Path, n_pairs: int = 20, arrays: bool = False, seed: int = 0) -> Path:
    """n_pairs pairs of 16x16 noise PNGs, alternately same and different; images as bytes or uint8 arrays."""
    rng = np.random.default_rng(seed)
    bins = [encoded(rng) for _ in range(2 * n_pairs)]
    if arrays:
        bins = [np.frombuffer(b, np.uint8).reshape(-1, 1) for b in bins]  # cv2.imencode's (N, 1) shape
    return write_pack(path, (bins, [i % 2 == 0 for i in range(n_pairs)]))


def refused(path: Path, *phrases: str) -> str:
    with pytest.raises(DataError) as err:
        read_pack(path)
    message = str(err.value)
    assert str(path) in message and all(p in message for p in phrases), message
    return message


# -- the real packs --------------------------------------------------------------------------------------------
def test_the_three_fixture_packs_hold_the_same_pairs(shared_data: Path) -> None:
    folder = shared_data / "formats" / "insightface"
    packs = [read_pack(folder / name) for name in FIXTURES]
    assert [len(p) for p in packs] == [300] * 3 and int(packs[0].issame.sum()) == 148
    decoded = [decode_pack(p, 112) for p in packs]
    for pack, images in zip(packs[1:], decoded[1:]):
        assert np.array_equal(pack.issame, packs[0].issame) and torch.equal(images, decoded[0])
    # the labels agree with facehw's own val pair file, for the pair lines the pack was made from
    val = {}
    for line in (shared_data / "facehw" / "verification_pairs_val.txt").read_text().split("\n"):
        if line.strip():
            a, b, label = line.split()
            val[(a, b)] = label == "1"
    sources = (folder / "pairs_tiny_sources.txt").read_text().split()
    pairs = [(sources[i], sources[i + 1]) for i in range(0, len(sources), 3)]
    assert [val[p] for p in pairs] == packs[0].issame.tolist()
    first = np.asarray(Image.open(shared_data / "facehw" / pairs[0][0]).convert("RGB").resize((112, 112)))
    assert np.abs(first.astype(int) - decoded[0][0].numpy()).mean() < 8  # image 0 is the pair's first photo


# -- code in a pack never runs ---------------------------------------------------------------------------------
def test_a_pack_naming_os_system_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # os.system("touch ...") as protocol 0 writes it
    pickle.loads(payload)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    pack = write_pack(tmp_path / "evil.bin", ([payload, b"x"], [True]))  # a pickled pickle: harmless bytes
    assert len(read_pack(pack)) == 1
    pack.write_bytes(b"\x80\x02(" + payload[:-1] + b"U\x01xl]\x88a\x86.")  # ([os.system(...), b"x"], [True])
    refused(pack, "os.system", "nothing in it was run")
    assert not marker.exists()


@pytest.mark.parametrize(
    "fn, args, name",
    [
        (eval, "__import__('pathlib').Path({m!r}).touch()", "builtins.eval"),
        (exec, "open({m!r}, 'w').close()", "builtins.exec"),
        (subprocess.Popen, ["touch", "{m}"], "subprocess.Popen"),
        (os.system, "touch {m}", "posix.system"),
    ],
)
def test_other_globals_are_refused_and_run_nothing(tmp_path: Path, fn: Any, args: Any, name: str) -> None:
    marker = tmp_path / "pwned"
    arg = [a.format(m=str(marker)) for a in args] if isinstance(args, list) else args.format(m=str(marker))
    pack = write_pack(tmp_path / "evil.bin", ([Call(fn, arg), b"x"], [True]))
    refused(pack, name)
    assert not marker.exists()


RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own _reconstruct, as array pickles name it


@pytest.mark.parametrize(
    "item, phrase",
    [
        (Call(np.dtype, "O"), "numpy dtype 'O'"),  # object arrays could hold anything
        (np.array([1, "x"], dtype=object), "numpy dtype 'O8'"),
        (np.arange(4), "numpy dtype 'i8'"),
        (np.zeros(4, np.float32), "numpy dtype 'f4'"),
        (Call(np.ndarray, (10**12,)), "numpy.ndarray called directly"),  # would allocate a terabyte
        (Call(RECONSTRUCT, np.ndarray, (10**10,), b"b"), "_reconstruct called with"),
        (Call(RECONSTRUCT, np.dtype, (0,), b"b"), "_reconstruct called with function"),
    ],
)
def test_allowed_numpy_names_with_other_arguments_are_refused(tmp_path: Path, item: Any, phrase: str) -> None:
    refused(write_pack(tmp_path / "bad.bin", ([item, b"x"], [True])), phrase)


# -- structure -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, phrase",
    [
        ([b"a", b"b", b"c"], "expected a pickle of (bins, issame_list), found a list of 3 items"),
        ({"bins": []}, "found dict"),
        (([b"a", b"b"], [True], [1]), "found a tuple of 3 items"),
        ((b"ab", [True]), "bins must be a list, found bytes"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([], []), "holds no pairs"),
        (([b"a", "b"], [True]), "image 1 is str 'b'"),
        (([b"a", 7], [True]), "image 1 is int 7"),
        (([b"a", b"b", b"c", b"d"], [True, 2]), "issame_list[1] is int 2"),
        (([b"a", b"b"], ["yes"]), "issame_list[0] is str"),
    ],
)
def test_a_malformed_pack_names_what_is_wrong(tmp_path: Path, content: Any, phrase: str) -> None:
    refused(write_pack(tmp_path / "bad.bin", content), phrase)


def test_unreadable_files_are_data_errors(tmp_path: Path) -> None:
    refused(tmp_path / "missing.bin", "does not exist")
    good = synthetic_pack(tmp_path / "good.bin").read_bytes()
    for name, data in {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "jpeg": b"\xff\xd8\xff\xe0" + good,
    }.items():
        refused(write_bytes(tmp_path / f"{name}.bin", data), "not a readable verification pack")
    pack = read_pack(write_pack(tmp_path / "junk.bin", ([b"not an image", b"x"], [True])))
    with pytest.raises(DataError, match=r"junk.bin: image 0 \(pair 0\) cannot be decoded"):
        decode_pack(pack, 16)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bytes_and_cv2_style_arrays_read_alike(tmp_path: Path) -> None:
    a, b = (
        read_pack(synthetic_pack(tmp_path / "a.bin")),
        read_pack(synthetic_pack(tmp_path / "b.bin", arrays=True)),
    )
    assert a.images == b.images and np.array_equal(a.issame, b.issame) and len(a) == 20
    assert torch.equal(decode_pack(a, 24), decode_pack(b, 24))
