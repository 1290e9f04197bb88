"""insightface .bin verification packs: the safe reader (data/binpack.py), the protocol (metrics/insightface.py),
`facerec benchmark bin` (evaluation/bins.py) and `data.val_bins` during training."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from conftest import make_hw2p2, tiny_overrides
from facerec.data.binpack import decode_pack, read_pack
from facerec.errors import DataError
from facerec.metrics.insightface import fold_accuracy, protocol_report
from test_export import make_tiny_checkpoint
from test_lfw import run_cli

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


# -- the protocol ----------------------------------------------------------------------------------------------
def reference_accuracy(emb: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> tuple[list[float], list[float]]:
    """insightface's calculate_roc, written out: loops over folds and thresholds, folds by np.array_split."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((e[0::2] - e[1::2]) ** 2).sum(axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accs, thrs = [], []
    for test in np.array_split(np.arange(len(issame)), nfolds):
        train = np.setdiff1d(np.arange(len(issame)), test)
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accs.append(float(np.mean((dist[test] < best) == issame[test])))
        thrs.append(float(best))
    return accs, thrs


def test_fold_accuracy_matches_a_loop_reimplementation() -> None:
    rng = np.random.default_rng(0)
    n = 53  # folds of 6 and 5 pairs
    issame = rng.random(n) < 0.5
    base = rng.normal(size=(n, 8))
    other = np.where(issame[:, None], base + rng.normal(scale=0.9, size=(n, 8)), rng.normal(size=(n, 8)))
    emb = np.stack([base, other], axis=1).reshape(2 * n, 8)
    report = protocol_report(torch.from_numpy(emb).float(), issame)
    accs, thrs = reference_accuracy(emb.astype(np.float32).astype(np.float64), issame)
    assert report["fold_accuracy"] == pytest.approx(accs, abs=1e-12) and report["fold_threshold"] == thrs
    assert report["accuracy"] == pytest.approx(np.mean(accs)) and report["accuracy_std"] == pytest.approx(
        np.std(accs)
    )
    assert 0.6 < report["accuracy"] < 0.95  # not trivial
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert report["auc"] == pytest.approx(roc_auc_score(issame, (e[0::2] * e[1::2]).sum(1)), abs=1e-9)


def test_fold_accuracy_hand_computed() -> None:
    """20 pairs, 2 per fold: same pairs at squared distance 0.555, different at 3.005; pair 0 is labelled same
    but lies at 3.005. The other folds then pick the first threshold above 0.555 (0.56): fold 0 scores 1/2,
    every other fold 2/2; mean 0.95, std sqrt((0.45^2 + 9 * 0.05^2) / 10) = 0.15."""
    issame = np.array([i % 2 == 0 for i in range(20)])
    d = np.where(issame, 0.555, 3.005)
    d[0] = 3.005
    r = fold_accuracy(d, issame)
    assert r["fold_threshold"][1:] == [0.56] * 9 and r["fold_accuracy"] == [0.5] + [1.0] * 9
    assert r["accuracy"] == pytest.approx(0.95) and r["accuracy_std"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="at least 10"):
        fold_accuracy(d[:9], issame[:9])


# -- facerec benchmark bin -------------------------------------------------------------------------------------
def test_cli_benchmark_bin_pt_and_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from facerec.inference.export import export_onnx

    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", image_size=32)
    a, b = synthetic_pack(tmp_path / "a.bin"), synthetic_pack(tmp_path / "b.bin", arrays=True)
    assert (
        run_cli(["benchmark", "bin", str(a), str(b), "--checkpoint", str(ckpt), "--json", "--device", "cpu"]) == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in results] == ["a", "b"] and results[0]["auc"] == results[1]["auc"]
    assert {k: v for k, v in results[0].items() if k not in ("pack", "name")} == {
        k: v for k, v in results[1].items() if k not in ("pack", "name")
    }
    assert results[0]["source_size"] == [16, 16] and results[0]["image_size"] == 32 and results[0]["n_pairs"] == 20
    onnx, _ = export_onnx(ckpt, tmp_path / "m.onnx")
    assert run_cli(["benchmark", "bin", str(a), "--checkpoint", str(onnx), "--batch-size", "7"]) == 0
    table = capsys.readouterr().out
    assert "| a | 20 | " in table and f"{results[0]['auc']:.4f}" in table and "16x16 -> 32" in table
    with pytest.raises(DataError, match="missing.bin does not exist"):
        run_cli(["benchmark", "bin", str(a), str(tmp_path / "missing.bin"), "--checkpoint", str(ckpt)])
    with pytest.raises(ValueError, match="needs one or more packs"):
        run_cli(["benchmark", "bin", "--checkpoint", str(ckpt)])


@pytest.mark.slow
def test_shipped_model_on_the_fixture_packs_agrees_with_its_own_evaluation(shared_data: Path, capsys) -> None:
    """models/facehw.pt on the three packs: identical results; AUC close to facerec's own evaluation of the same
    pairs from the facehw files (same photos after a 64 -> 112 JPEG -> 64 round trip)."""
    import facerec
    from facerec.data.pairs import read_pairs
    from facerec.evaluation.lfw import score_photo_pairs
    from facerec.metrics.verification import verification_report

    folder = shared_data / "formats" / "insightface"
    model = Path(__file__).resolve().parents[1] / "models" / "facehw.pt"
    packs = [str(folder / name) for name in FIXTURES]
    assert run_cli(["benchmark", "bin", *packs, "--checkpoint", str(model), "--json", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    strip = [{k: v for k, v in r.items() if k not in ("pack", "name")} for r in results]
    assert strip[0] == strip[1] == strip[2]
    pairs = read_pairs(folder / "pairs_tiny_sources.txt")
    scores, _, _ = score_photo_pairs(facerec.load(model), pairs, shared_data / "facehw", None, True, print)
    own = verification_report(scores, pairs.labels)
    print(f"pack AUC {results[0]['auc']:.6f}, own evaluation AUC {own['auc']:.6f}, acc {results[0]['accuracy']}")
    assert abs(results[0]["auc"] - own["auc"]) < 0.01 and results[0]["auc"] > 0.9
    assert abs(results[0]["tar@far=1e-3"] - own["tar@far=1e-3"]) < 0.05
    assert abs(results[0]["accuracy"] - own["best_acc"]) < 0.05


# -- data.val_bins during training -----------------------------------------------------------------------------
def pack_of_pair_file(root: Path, out: Path) -> Path:
    """A pack of the labelled pairs of an HW2P2 val pair file: the JPEG files' bytes, pickled by Python 3 at
    protocol 2 (bytes then pickle as _codecs.encode(text, "latin1"))."""
    lines = (root / "verification_pairs_val.txt").read_text().split()
    lines = [" ".join(lines[i : i + 3]) for i in range(0, len(lines), 3)]
    bins, issame = [], []
    for line in lines:
        a, b, label = line.split()
        bins += [(root / a).read_bytes(), (root / b).read_bytes()]
        issame.append(label == "1")
    return write_pack(out, (bins, issame), protocol=2)


def test_val_bins_are_scored_every_epoch(tmp_path: Path, monkeypatch, capsys) -> None:
    from facerec.cli.main import main
    from facerec.engine.progress import read_metrics

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    hw2p2_dir = make_hw2p2(tmp_path / "hw", n_ids=6, per_id=4)
    a = pack_of_pair_file(hw2p2_dir, tmp_path / "val-a.bin")
    b = synthetic_pack(tmp_path / "b.bin", arrays=True)
    run = tmp_path / "run"
    args = ["train", "--data", str(hw2p2_dir), "--out", str(run), "train.epochs=2", f"data.val_bins=[{a},{b}]"]
    assert main([*args, *tiny_overrides("train.max_steps_per_epoch=3")]) == 0
    out = capsys.readouterr().out
    assert "val pack val_a: 46 pairs" in out and "bin_val_a_auc" in out.split("== epoch 2/2")[1]
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    keys = {"val_auc", "bin_val_a_acc", "bin_val_a_auc", "bin_b_acc", "bin_b_auc"}
    assert len(epochs) == 2 and all(keys <= set(e) for e in epochs)
    # the logged numbers are what `facerec benchmark bin` gives for the epoch's weights (last.pt)
    assert run_cli(["benchmark", "bin", str(a), "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)[0]
    assert bench["auc"] == pytest.approx(epochs[-1]["bin_val_a_auc"], abs=1e-6)
    assert bench["accuracy"] == pytest.approx(epochs[-1]["bin_val_a_acc"], abs=1e-6)


def test_a_missing_or_unsafe_val_bin_stops_the_run_before_training(hw2p2_dir: Path, tmp_path: Path, capsys):
    from facerec.cli.main import main

    marker = tmp_path / "pwned"
    evil = write_pack(tmp_path / "evil.bin", ([Call(os.system, f"touch {marker}"), b"x"], [True]))
    few = synthetic_pack(tmp_path / "few.bin", n_pairs=6)
    for pack, phrase in [(tmp_path / "no.bin", "no.bin does not exist"), (evil, "posix.system"), (few, "6 pairs")]:
        run = tmp_path / "runs" / pack.stem
        args = ["train", "--data", str(hw2p2_dir), "--out", str(run), f"data.val_bins=[{pack}]", *tiny_overrides()]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "data.val_bins" in err and str(pack) in err and phrase in err, err
        assert not run.exists() and not marker.exists()
