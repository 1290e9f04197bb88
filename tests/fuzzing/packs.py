"""Fuzz target for insightface's .bin verification packs: pickles of (bins, issame_list), read by
data.binpack.read_pack and scored by `facerec benchmark bin` (evaluation.bins.benchmark_bins) with a tiny model.

Besides byte edits, `pack_op` edits the bytes of one image inside the pickle, or changes one node of the pack's
tree (an image replaced by another type, a label by 2 or None, an image or label dropped, the lists swapped for
other values), and pickles it again at protocol 2 or 4: the decoder sees damaged images in a well-formed pack, and
the reader's structure checks well-formed pickles holding something unexpected.
"""

from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import facerec
from facerec.evaluation.bins import benchmark_bins
from fuzzing.base import Seed, Target, payloads
from fuzzing.models import tiny_checkpoint
from fuzzing.mutate import byte_mutation, mutate_tree

PAIRS = 10  # the protocol's 10 folds need at least 10 pairs
PACK_VALUES: tuple[Any, ...] = (
    None, 0, 1, 2, -1, 1.5, True, False, "", "x", b"", b"\xff\xd8\xff", [], [b"x"], (1, 2), {"a": 1},
    np.zeros(0, np.uint8), np.zeros((3, 3), np.uint8), np.arange(4, dtype=np.uint8),
)  # fmt: skip


def _images(seed: int = 0) -> list[bytes]:
    """2 * PAIRS small face-like crops: a gradient per image with noise, JPEG (and every fifth as PNG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:20, 0:20]
    out = []
    for i in range(2 * PAIRS):
        rgb = np.stack([x * (3 + i % 4), y * 5, (x + y) * 2 + 10 * (i // 2)], axis=2) + rng.integers(
            0, 30, (20, 20, 3)
        )
        buf = io.BytesIO()
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="PNG" if i % 5 == 4 else "JPEG")
        out.append(buf.getvalue())
    return out


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """(bins, issame) as Python 2's pickle (protocol 2) writes it: each image a `str` (SHORT_BINSTRING or
    BINSTRING), the way the classic lfw.bin, cfp_fp.bin and agedb_30.bin were written."""
    out = [b"\x80\x02]("]  # PROTO 2, EMPTY_LIST, MARK
    for b in bins:
        out.append(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b)
    out.append(b"e](")  # APPENDS, EMPTY_LIST, MARK
    out += [b"\x88" if s else b"\x89" for s in issame]
    out.append(b"e\x86.")  # APPENDS, TUPLE2, STOP
    return b"".join(out)


class _Trusted(pickle.Unpickler):
    """Reads back the packs made here (to mutate their tree in `pack_op`): numpy's array names and bytes only."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy") or (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def pack_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Unpickle, then edit one image's bytes or change one node of the [bins, issame] tree (`mutate_tree`), and
    pickle again at protocol 2 or 4; a file that no longer unpickles gets a byte edit instead."""
    try:
        bins, issame = _Trusted(io.BytesIO(data), encoding="bytes").load()
        tree = [list(bins), list(issame)]
    except Exception:  # already broken by an earlier step (any of pickle's many errors): a byte edit
        return byte_mutation(data, rng)
    images = [i for i, item in enumerate(tree[0]) if isinstance(item, bytes | np.ndarray)]
    if images and rng.random() < 0.5:  # the pickle stays valid, one image is damaged: the decoder's turn
        i = rng.choice(images)
        edited, what = byte_mutation(bytes(tree[0][i]), rng)
        tree[0][i] = np.frombuffer(edited, np.uint8).copy() if isinstance(tree[0][i], np.ndarray) else edited
        what = f"image {i}: {what}"
    else:
        tree, what = mutate_tree(tree, rng, PACK_VALUES)
    protocol = rng.choice((2, 4))
    return pickle.dumps(tree, protocol=protocol), f"{what} (protocol {protocol})"


def pack_corpus(folder: Path) -> list[Seed]:
    """The same 10 pairs as Python 2 wrote packs (str images), at protocol 4 (bytes), as cv2-style uint8 arrays,
    and from Python 3 at protocol 2 (bytes as _codecs.encode); 3 malicious packs whose first image pickles
    `os.system`, `exec` or `eval` (must be refused). The tiny model they are scored with goes in `folder`."""
    tiny_checkpoint(folder / "bin_model.pt")
    bins, issame = _images(), [i % 2 == 0 for i in range(PAIRS)]
    arrays = [np.frombuffer(b, np.uint8).copy() for b in bins]
    files = {
        "py2.bin": python2_pickle(bins, issame),
        "py3.bin": pickle.dumps((bins, issame), protocol=4),
        "ndarray.bin": pickle.dumps((arrays, issame), protocol=4),
        "py3_protocol2.bin": pickle.dumps((bins, issame), protocol=2),
    }
    seeds = [Seed(name, {name: data}, name, (pack_op,)) for name, data in files.items()]
    for kind, payload in payloads().items():
        data = pickle.dumps(([payload, *bins[1:]], issame), protocol=4)
        seeds.append(Seed(f"pickled {kind}.bin", {"evil.bin": data}, "evil.bin", (pack_op,), "clear"))
    return seeds


def prepare_pack(folder: Path) -> Any:
    return facerec.load(folder / "bin_model.pt")


def run_pack(case: Path, fm: Any) -> tuple[str, str]:
    """`facerec benchmark bin` on the file: read and check the pack, decode at the model's 32x32, embed, score."""
    (path,) = case.iterdir()
    (r,) = benchmark_bins(fm, [path], batch_size=8, log=lambda line: None)
    n = r["n_pairs"]
    assert n >= PAIRS and 0 < r["n_pos"] < n, (n, r["n_pos"])
    assert len(r["fold_accuracy"]) == len(r["fold_threshold"]) == 10, r["fold_accuracy"]
    for key in ("accuracy", "accuracy_std", "auc", "eer", "tar@far=1e-3", *r["fold_accuracy"]):
        value = r[key] if isinstance(key, str) else key
        assert math.isfinite(value) and 0 <= value <= 1, (key, value)
    assert all(0 <= t < 4 for t in r["fold_threshold"]), r["fold_threshold"]
    return "ok", f"{n} pairs, AUC {r['auc']:.3f}"


BIN_TARGETS = [
    Target(
        "bin",
        ".bin verification packs -> evaluation.bins.benchmark_bins (data.binpack.read_pack)",
        pack_corpus,
        run_pack,
        prepare_pack,
    )
]
