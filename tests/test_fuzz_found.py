"""Regression tests for the bugs the fuzzer (tests/test_fuzz.py, bench/fuzz.py) found: each on a small hand-made
file, each saying what happened before the fix. docs/robustness.md ("Fuzzing") lists them."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("faiss")
import onnx  # noqa: E402

import facerec  # noqa: E402
from facerec.data.folder import DataError  # noqa: E402
from facerec.engine.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from facerec.inference.export import export_onnx  # noqa: E402
from facerec.inference.sidecar import CLASS_HEAD_KEY, sidecar_path, write_metadata  # noqa: E402
from facerec.photos.embed import load_embeddings  # noqa: E402
from facerec.photos.gallery import Gallery  # noqa: E402
from fuzzing.gallery import DIM, forge_cache, legacy_files, random_vectors, seed_gallery  # noqa: E402
from fuzzing.models import tiny_checkpoint  # noqa: E402
from fuzzing.mutate import MAGICS  # noqa: E402


# -- model files (.pt, .onnx) ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("models")
    ckpt = tiny_checkpoint(tmp / "tiny.pt")
    return ckpt, export_onnx(ckpt, tmp / "model.onnx")[0]


def _legacy(ckpt: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(torch.load(ckpt, weights_only=True), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "edit, message",
    [
        # torch.load raised IndexError, UnicodeDecodeError (and more) from its reader and restricted unpickler
        (lambda ckpt: MAGICS["webp"] + ckpt.read_bytes(), "is corrupt or truncated (IndexError"),
        (lambda ckpt: _legacy(ckpt)[:33] + b"\xff" + _legacy(ckpt)[34:], "is corrupt or truncated (UnicodeDecode"),
    ],
    ids=["another_header", "legacy_format_bad_utf8"],
)
def test_a_damaged_pt_file_is_a_checkpoint_error(model_files, tmp_path, edit, message) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(edit(model_files[0]))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        facerec.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("model"), "KeyError: 'model'"),  # was a KeyError from FaceModel.from_state
        (lambda s: s.update(classes=["1", "4"]), "size mismatch"),  # was a RuntimeError from load_state_dict
        (lambda s: s.update(threshold="x"), "threshold 'x' is not a number"),  # was a TypeError in verify
    ],
    ids=["no_model", "classes_cut", "threshold_text"],
)
def test_a_checkpoint_whose_content_does_not_make_a_model_is_a_checkpoint_error(
    model_files, tmp_path, change, message
) -> None:
    state = torch.load(model_files[0], weights_only=True)
    change(state)
    path = save_checkpoint(state, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=rf"(?s)model.pt is damaged: .*{message}"):
        facerec.load(path)


def _onnx_copy(model_files: tuple[Path, Path], folder: Path) -> Path:
    dst = folder / "model.onnx"
    shutil.copyfile(model_files[1], dst)
    shutil.copyfile(sidecar_path(model_files[1]), sidecar_path(dst))
    return dst


def _sidecar(text: str | None = None, drop: str | None = None, **changes: object) -> Callable[[Path], None]:
    """An edit of the ONNX sidecar: replaced by `text`, or its JSON with `drop` removed and `changes` made."""

    def edit(path: Path) -> None:
        meta = json.loads(sidecar_path(path).read_text())
        meta.pop(drop, None)
        sidecar_path(path).write_text(text if text is not None else json.dumps({**meta, **changes}))

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [  # was: onnxruntime's InvalidProtobuf, json's JSONDecodeError, AttributeError, KeyError in info()
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), "ONNX Runtime cannot load it"),
        (_sidecar('{"format": "facerec-onnx", '), "model.onnx.json is damaged"),
        (_sidecar("[1, 2]"), "is not a facerec ONNX sidecar"),
        (_sidecar("[" * 100_000), "model.onnx.json is damaged"),  # was RecursionError
        (_sidecar(drop="model"), "metadata of .* is damaged .*KeyError"),
        (_sidecar(threshold="x"), "threshold 'x' is not a number"),
        (_sidecar(image_size=4096), "two image sizes"),
    ],
    ids="truncated sidecar_not_json sidecar_a_list sidecar_deep no_model_facts threshold_text image_size".split(),
)
def test_a_damaged_onnx_model_is_a_checkpoint_error_when_loaded(model_files, tmp_path, edit, message) -> None:
    path = _onnx_copy(model_files, tmp_path)
    edit(path)
    with pytest.raises(CheckpointError, match=message):
        facerec.load(path)


def test_a_damaged_onnx_graph_or_class_head_is_a_checkpoint_error_when_run(model_files, tmp_path) -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    path = _onnx_copy(model_files, tmp_path)
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 48  # the graph now wants 48 x 32 inputs
    onnx.save(proto, str(path))
    with pytest.raises(CheckpointError, match="ONNX Runtime failed to run the model"):  # was InvalidArgument
        facerec.load(path).embed([image])
    path = _onnx_copy(model_files, tmp_path)
    sidecar_path(path).unlink()
    write_metadata(path, {CLASS_HEAD_KEY: "not base64!"})
    with pytest.raises(CheckpointError, match="the class head in its metadata is missing or damaged"):
        facerec.load(path).class_scores([image])  # was binascii.Error


# -- embedding files (.npz, .csv) ------------------------------------------------------------------------------
def _npz(path: Path, **arrays) -> Path:
    emb = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.savez(path, **{"embeddings": emb, "paths": np.asarray(["a.jpg", "b.jpg", "c.jpg"]), **arrays})
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(_npz(path).read_bytes()[:300])
    return path


def _broken_member(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("embeddings.npy", b"not an array")
        z.writestr("paths.npy", b"")
    return path


@pytest.mark.parametrize(
    "make, message",
    [  # was: zipfile.BadZipFile, AttributeError, a silently loaded file (the last three)
        (_truncated, "is not an embedding file written by"),
        (_broken_member, "is damaged: embeddings, paths not as `facerec embed` writes"),
        (lambda p: _npz(p, paths=np.asarray(["a.jpg"])), r"1 paths for embeddings of shape \(3, 4\)"),
        (lambda p: _npz(p, embeddings=np.full((3, 4), np.nan)), "embedding of 'a.jpg' .and 2 more. holds NaN"),
        (lambda p: _npz(p, scoring=np.asarray("cosinx")), "unknown scoring 'cosinx'"),
    ],
    ids=["truncated", "member_not_npy", "paths_cut", "nan", "scoring"],
)
def test_a_damaged_npz_embedding_file_is_a_data_error(tmp_path, make, message) -> None:
    path = make(tmp_path / "e.npz")
    with pytest.raises(DataError, match=message):
        load_embeddings(path)


@pytest.mark.parametrize(
    "content, message",
    [  # was: UnicodeDecodeError; "a value is not a number" for a short row; a silently loaded NaN
        (b"path,e0,e1\na.jpg,1,2\n\xe9.jpg,3,4\n", "is not an embedding CSV written by"),
        (b"path,e0,e1\na.jpg,1,2\n\nb.jpg,3,4\n", "e.csv:3: every row must have a path and 2 values"),
        (b"path,e0,e1\na.jpg,1,2\nb.jpg,nan,4\n", "embedding of 'b.jpg' .and 0 more. holds NaN"),
    ],
    ids=["latin1", "blank_row", "nan"],
)
def test_a_damaged_csv_embedding_file_is_a_data_error(tmp_path, content, message) -> None:
    (tmp_path / "e.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_embeddings(tmp_path / "e.csv")


# -- gallery folders -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gallery_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return seed_gallery(tmp_path_factory.mktemp("gallery"))


def _folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _sql(folder: Path, *statements: tuple[str, tuple]) -> Path:
    conn = sqlite3.connect(folder / "gallery.db")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.commit()
    conn.close()
    return folder


def test_a_damaged_gallery_database_is_a_data_error(gallery_files, tmp_path) -> None:
    """An index that no longer matches its table: SQLite keeps no checksums, and the gallery answered from half
    of its data (people() named one person, search three)."""
    folder = _folder(tmp_path / "g", {"gallery.db": gallery_files["gallery.db"]})
    new_index = "CREATE INDEX photos_by_person ON photos(added)"
    _sql(
        folder,
        ("PRAGMA writable_schema = ON", ()),
        ("UPDATE sqlite_master SET sql = ? WHERE name = 'photos_by_person'", (new_index,)),
    )
    with pytest.raises(DataError, match=r"gallery.db is damaged \(row 1 missing from index photos_by_person"):
        Gallery.open(folder)


def test_a_stored_embedding_that_is_not_a_unit_vector_is_a_data_error(gallery_files, tmp_path) -> None:
    """Was: searched, with scores of 1e30 in a cosine gallery."""
    folder = _folder(tmp_path / "g", {"gallery.db": gallery_files["gallery.db"]})
    _sql(folder, ("UPDATE photos SET embedding = ? WHERE id = 2", (np.full(DIM, 1e30, np.float32).tobytes(),)))
    with pytest.raises(DataError, match="some stored embeddings are not valid vectors"):
        Gallery.open(folder)


def _zipped(npy: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("vectors.npy", npy)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    "edit, message",
    [  # was: tokenize.TokenError from numpy's header parser; AttributeError; a migrated gallery scoring 1e30
        (lambda npy: npy.replace(b"}", b"\x00"), "vectors.npy / ids.npy cannot be read"),
        (lambda npy: MAGICS["zip"] + npy, "vectors.npy / ids.npy cannot be read"),  # was zipfile.BadZipFile
        (_zipped, "vectors.npy / ids.npy are not arrays"),
        (lambda npy: _npy(np.full((6, DIM), 1e15, np.float32)), "vectors.npy holds damaged vectors"),
    ],
    ids=["bad_header", "zip_header", "an_npz", "not_unit_length"],
)
def test_an_old_gallery_with_damaged_vectors_is_a_data_error(tmp_path, edit, message) -> None:
    files = legacy_files(random_vectors(6, 0), ["ann", "ann", "bob", "bob", "cid", "cid"])
    folder = _folder(tmp_path / "g", {**files, "vectors.npy": edit(files["vectors.npy"])})
    with pytest.raises(DataError, match=message):
        Gallery.open(folder)


def test_a_forged_cache_naming_other_photo_ids_is_rebuilt(gallery_files, tmp_path) -> None:
    """The cache's id list shifted by 100 (checksum fixed): FAISS answered ids the list lacks (was IndexError, or
    photos of the wrong person; then a DataError). Its content digest differs from gallery.db's: it is rebuilt."""

    def shift(head: dict, body: bytes) -> tuple[dict, bytes]:
        ids = np.frombuffer(body[: 8 * head["n"]], np.int64) + 100
        return head, ids.tobytes() + body[8 * head["n"] :]

    files = {**gallery_files, "index.cache": forge_cache(gallery_files["index.cache"], shift)}
    with pytest.warns(UserWarning, match="does not hold what"), Gallery.open(_folder(tmp_path / "g", files)) as g:
        (top,) = g.search(g.vectors[:1], k=1)
        assert top[0].score == pytest.approx(1.0, abs=1e-5)


def test_a_forged_cache_that_makes_faiss_allocate_too_much_is_rebuilt(gallery_files, tmp_path) -> None:
    """The flat index's stored vector count set to 2**34 (64 GiB), checksum fixed: FAISS's reader raised
    MemoryError (std::bad_alloc), which escaped. Run under a 6 GiB address-space cap, as the fuzzer's worker."""

    def huge(head: dict, body: bytes) -> tuple[dict, bytes]:
        at = 16 * head["n"] + 74  # IndexIDMap (37 bytes) + IndexFlatIP header (37): the codes' length (uint64)
        assert struct.unpack("<Q", body[at : at + 8]) == (head["n"] * DIM,)
        return head, body[:at] + struct.pack("<Q", 1 << 34) + body[at + 8 :]

    files = {**gallery_files, "index.cache": forge_cache(gallery_files["index.cache"], huge)}
    folder = _folder(tmp_path / "g", files)
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); import numpy as np; "
        "from facerec.photos.gallery import Gallery; g = Gallery.open(sys.argv[1]); "
        f"print(len(g.search(np.ones((1, {DIM}), np.float32), k=2)[0]))"
    )
    run = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["2"], run.stderr[-3000:]
