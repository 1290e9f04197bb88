"""Data input: identity folders, image decoding, HW2P2 layout detection and pair files (tiny trees in tmp_path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from conftest import make_identity_folder
from facerec.data.folder import DataError, list_flat_images, load_image, load_images, scan_identity_folders
from facerec.data.hw2p2 import detect_layout, resolve_pair_path
from facerec.data.pairs import check_pair_files, read_pairs


def _touch_images(folder: Path, names: list[str], size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (size, size), (120, 60, 30)).save(folder / name)


# ---------------------------------------------------------------- identity folders
def test_classes_and_files_sort_numerically(tmp_path: Path) -> None:
    root = make_identity_folder(tmp_path / "train", ["10", "2", "9", "1"], 1)
    _touch_images(root / "2", ["10.jpg", "2.jpg"])
    index = scan_identity_folders(root)
    assert index.classes == ["1", "2", "9", "10"]
    assert [p.parent.name for p in index.paths] == ["1", "2", "2", "2", "9", "10"]
    assert [p.name for p in index.paths if p.parent.name == "2"] == ["0000.jpg", "2.jpg", "10.jpg"]
    assert index.labels == [0, 1, 1, 1, 2, 3]
    mixed = make_identity_folder(tmp_path / "n", ["b", "a", "10"], 1)
    assert scan_identity_folders(mixed).classes == ["10", "a", "b"]  # not all integers: lexicographic


def test_val_is_mapped_onto_train_classes_by_folder_name(tmp_path: Path) -> None:
    train = scan_identity_folders(make_identity_folder(tmp_path / "train", ["0", "1", "2", "10"], 2))
    val = scan_identity_folders(make_identity_folder(tmp_path / "val", ["10", "1", "7"], 1), train.classes)
    assert val.classes == train.classes == ["0", "1", "2", "10"]
    assert val.unknown_classes == ["7"]  # reported and excluded, never given a label of its own
    assert [train.classes[label] for label in val.labels] == [p.parent.name for p in val.paths] == ["1", "10"]
    own = scan_identity_folders(tmp_path / "val")  # scanned alone, "10" would get index 2: the bug this prevents
    assert own.classes.index("10") != train.classes.index("10")
    with pytest.raises(DataError, match="more than once"):
        scan_identity_folders(tmp_path / "val", ["1", "1"])


def test_empty_hidden_and_non_image_entries_are_reported(tmp_path: Path) -> None:
    root = make_identity_folder(tmp_path / "train", ["a", "b"], 2)
    (root / "empty").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "a" / ".hidden.jpg").write_bytes(b"junk")
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "PHOTO.JPEG").write_bytes((root / "b" / "0000.jpg").read_bytes())  # extension case-insensitive
    index = scan_identity_folders(root)
    assert index.classes == ["a", "b"] and index.empty_classes == ["empty"]
    assert len(index) == 5 and all(not p.name.startswith(".") for p in index.paths)
    assert {p.name for p in index.skipped_files} == {".ipynb_checkpoints", ".DS_Store", ".hidden.jpg", "notes.txt"}


def test_wrong_layouts_raise_with_the_expected_layout(tmp_path: Path) -> None:
    _touch_images(tmp_path / "flat", ["0.jpg", "1.jpg"])
    with pytest.raises(DataError, match=r"<identity>/<image>.*flat test folder"):
        scan_identity_folders(tmp_path / "flat")
    make_identity_folder(tmp_path / "wrapper" / "train_data", ["0"], 1)
    with pytest.raises(DataError, match="holds folders"):
        scan_identity_folders(tmp_path / "wrapper")
    (tmp_path / "nothing" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="none of the 1 identity folders"):
        scan_identity_folders(tmp_path / "nothing")
    with pytest.raises(DataError, match="not a directory"):
        scan_identity_folders(tmp_path / "missing")


def test_flat_images_in_numeric_order(tmp_path: Path) -> None:
    _touch_images(tmp_path / "test", [f"{i}.jpg" for i in (10, 2, 0, 1, 11)])
    (tmp_path / "test" / "readme.txt").write_text("x")
    assert [p.name for p in list_flat_images(tmp_path / "test")] == ["0.jpg", "1.jpg", "2.jpg", "10.jpg", "11.jpg"]


# ---------------------------------------------------------------- decoding
def _noise_jpeg(path: Path, size: int = 64) -> bytes:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims a huge size but holds a few bytes of pixels: refuse it before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _no_decode(self: ImageFile.ImageFile) -> None:
    raise AssertionError("a decompression bomb was decoded")


@pytest.mark.parametrize("kind", ["zero_byte", "text", "truncated", "garbage_png", "bomb", "huge_bomb", "dir"])
def test_bad_images_give_none(tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ("x.png" if "png" in kind or "bomb" in kind else "x.jpg")
    good = _noise_jpeg(tmp_path / "good.jpg")
    content = {
        "zero_byte": b"",
        "text": b"this is not an image\n",
        "truncated": good[: len(good) // 2],
        "garbage_png": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "bomb": _png_claiming(9000, 9000),  # 81 MP: over MAX_PIXELS, under PIL's own warning threshold
        "huge_bomb": _png_claiming(30000, 30000),  # PIL raises DecompressionBombError itself
    }
    if "bomb" in kind:  # refused from the header alone: decoding (allocating) must not start
        monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decode)
    if kind == "dir":
        path.mkdir()
    else:
        path.write_bytes(content[kind])
    assert load_image(path, 16) is None
    assert load_image(tmp_path / "good.jpg", 16, max_pixels=64 * 64 - 1) is None
    if "bomb" not in kind:
        assert load_image(tmp_path / "good.jpg", 16).shape == (16, 16, 3)


def test_modes_convert_to_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # cyan 0, magenta+yellow: red
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "gray16.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.save(tmp_path / "pal.png", transparency=0)
    expected = {"gray.png": (77,) * 3, "rgba.png": (10, 20, 30), "pal.png": (200, 100, 50)}
    expected["gray16.png"] = (40000 >> 8,) * 3  # scaled from 16 bits, not clipped to 255
    for name, rgb in expected.items():
        out = load_image(tmp_path / name, 8)
        assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
        assert (out == rgb).all(), name
    cmyk = load_image(tmp_path / "cmyk.jpg", 8).astype(int)
    assert (abs(cmyk - (255, 0, 0)) <= 3).all()


def test_resize_only_when_needed(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "same.png")
    np.testing.assert_array_equal(load_image(tmp_path / "same.png", 12), pixels)  # no resampling at all
    Image.new("RGB", (400, 200), (0, 128, 255)).save(tmp_path / "big.jpg")  # goes through JPEG draft mode
    out = load_image(tmp_path / "big.jpg", 32).astype(int)
    assert out.shape == (32, 32, 3) and (abs(out - (0, 128, 255)) <= 3).all()


def test_load_images_keeps_order_and_reports_failures(tmp_path: Path) -> None:
    paths = []
    for i in range(300):  # more than one thread-pool chunk
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), (i % 256, 0, 0)).save(paths[-1])
    paths[5].write_bytes(b"")
    paths[290].write_text("nope")
    calls: list[tuple[int, int]] = []
    images, failed = load_images(paths, 4, num_workers=2, progress=lambda d, t: calls.append((d, t)))
    assert failed == [5, 290] and images.shape == (298, 4, 4, 3) and images.dtype == np.uint8
    kept = [i for i in range(300) if i not in failed]
    np.testing.assert_array_equal(images[:, 0, 0, 0], [i % 256 for i in kept])
    assert calls[-1] == (300, 300)
    serial, serial_failed = load_images(paths, 4, num_workers=1)
    np.testing.assert_array_equal(serial, images)
    assert serial_failed == failed


# ---------------------------------------------------------------- layouts
def _spec_tree(root: Path) -> Path:
    make_identity_folder(root / "classification_data" / "train_data", ["0", "1", "10"], 1)
    make_identity_folder(root / "classification_data" / "val_data", ["0", "10"], 1)
    _touch_images(root / "classification_data" / "test_data", ["0.jpg", "1.jpg"])
    _touch_images(root / "verification_data", ["00000001.jpg", "00000002.jpg"])
    pair = "verification_data/00000001.jpg verification_data/00000002.jpg"
    (root / "verification_pairs_val.txt").write_text(pair + " 1\n")
    (root / "verification_pairs_test.txt").write_text(pair + "\n")
    (root / "classification_sample_submission.csv").write_text("id,label\n0.jpg,0\n1.jpg,0\n")
    (root / "verification_sample_submission.csv").write_text("Id,Category\n")
    return root


def test_detects_spec_layout_also_from_classification_data(tmp_path: Path) -> None:
    root = _spec_tree(tmp_path / "hw")
    for start in (root, root / "classification_data"):
        layout = detect_layout(start)
        assert layout.kind == "spec" and layout.root.resolve() == root.resolve()
        assert [layout.train.name, layout.val.name, layout.test.name] == ["train_data", "val_data", "test_data"]
        assert layout.verification.name == "verification_data"
        assert layout.pairs_val.name == "verification_pairs_val.txt" and layout.pairs_test is not None
        assert layout.class_sample is not None and layout.verif_sample is not None


def test_detects_kaggle_layout_with_nesting_and_renamed_files(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    make_identity_folder(root / "train_data", ["5", "6"], 1)
    make_identity_folder(root / "val_data", ["5"], 1)
    _touch_images(root / "test_data" / "test_data", ["0.jpg"])
    _touch_images(root / "verification_data" / "verification_data", ["00000001.jpg", "00000002.jpg"])
    (root / "11785_verification_pairs_val.txt").write_text("verification_data/00000001.jpg 00000002.jpg 0\n")
    (root / "sample_submission.csv").write_text("id,label\n0.jpg,5\n")
    layout = detect_layout(root)
    assert layout.kind == "kaggle" and layout.train == root / "train_data"
    assert layout.test == root / "test_data" / "test_data"
    assert layout.verification == root / "verification_data" / "verification_data"
    assert layout.pairs_val.name == "11785_verification_pairs_val.txt" and layout.pairs_test is None
    assert layout.class_sample.name == "sample_submission.csv" and layout.verif_sample is None
    nested = root / "verification_data" / "verification_data" / "00000001.jpg"
    for rel in ("verification_data/00000001.jpg", "00000001.jpg"):
        assert resolve_pair_path(rel, layout.root, layout.verification) == nested
    a, b = check_pair_files(read_pairs(layout.pairs_val), layout.root, layout.verification)
    assert a == [nested] and b == [nested.with_name("00000002.jpg")]
    (root / "verification_pairs_val_v2.txt").write_text("")
    with pytest.raises(DataError, match="several files"):
        detect_layout(root)


def test_plain_folder_verification_only_and_unknown(tmp_path: Path) -> None:
    layout = detect_layout(make_identity_folder(tmp_path / "faces", ["x", "y"], 1))
    assert layout.kind == "folder" and layout.train == tmp_path / "faces" and layout.val is None
    _touch_images(tmp_path / "verif" / "verification_data", ["1.jpg"])
    only = detect_layout(tmp_path / "verif")
    assert only.kind == "kaggle" and only.train is None and only.verification is not None
    (tmp_path / "junk" / "docs").mkdir(parents=True)
    (tmp_path / "junk" / "readme.md").write_text("x")
    with pytest.raises(DataError, match=r"classification_data/.*found docs/, readme.md"):
        detect_layout(tmp_path / "junk")


def test_real_facehw(facehw: Path) -> None:
    layout = detect_layout(facehw)
    assert layout.kind == "spec" and None not in (layout.train, layout.val, layout.test, layout.pairs_val)
    train = scan_identity_folders(layout.train)
    val = scan_identity_folders(layout.val, train.classes)
    assert train.classes[:3] == ["0", "1", "2"] and train.classes.index("10") == 10
    assert not val.unknown_classes and [train.classes[y] for y in val.labels] == [p.parent.name for p in val.paths]
    pairs = read_pairs(layout.pairs_val)
    a, b = check_pair_files(pairs, layout.root, layout.verification)
    assert len(a) == len(b) == len(pairs) and pairs.labels is not None
    images, failed = load_images(val.paths[:32], 64)
    assert images.shape == (32, 64, 64, 3) and failed == []


# ---------------------------------------------------------------- pair files
def test_pairs_tolerate_crlf_tabs_spaces_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_bytes(b"\xef\xbb\xbfd/1.jpg  d/2.jpg 1\r\n\r\n  d/3.jpg\td/4.jpg\t0  \r\n\n")
    pairs = read_pairs(path)
    assert (pairs.a, pairs.b) == (["d/1.jpg", "d/3.jpg"], ["d/2.jpg", "d/4.jpg"])
    assert pairs.labels == [1, 0] and pairs.line_numbers == [1, 3]
    path.write_text("d/1.jpg d/2.jpg\nd/3.jpg d/4.jpg\n")
    assert read_pairs(path).labels is None and read_pairs(path, labelled=False).a == ["d/1.jpg", "d/3.jpg"]


@pytest.mark.parametrize(
    ("text", "labelled", "match"),
    [
        ("a b 1\na b c 1\n", None, r"pairs.txt:2: 4 fields"),
        ("a b 1\n\na b 2\n", None, r"pairs.txt:3: label '2' is not 0 or 1"),
        ("a b 1\na b\n", None, r"pairs.txt:2: .*mixes labelled"),
        ("a b\na b 1\n", None, r"pairs.txt:2: .*mixes labelled"),
        ("a b 1\n", False, r"pairs.txt:1: .*labelled=False"),
        ("only_one\n", None, r"pairs.txt:1: 1 fields"),
        ("\n\n", None, "holds no pairs"),
    ],
)
def test_bad_pair_lines_name_file_and_line(tmp_path: Path, text: str, labelled: bool | None, match: str) -> None:
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_pairs(tmp_path / "pairs.txt", labelled)


def test_reads_the_real_fall21_pair_file(shared_data: Path) -> None:
    path = shared_data / "formats" / "hw2p2_f21_verification_pairs_val.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rows = [line.split(" ") for line in path.read_text().split("\n") if line]
    pairs = read_pairs(path)
    assert len(pairs) == len(rows) == 8805
    ones, zeros = sum(r[2] == "1" for r in rows), sum(r[2] == "0" for r in rows)
    assert (pairs.labels.count(1), pairs.labels.count(0)) == (ones, zeros) and ones + zeros == 8805
    assert pairs.a[0] == rows[0][0] and pairs.b[-1] == rows[-1][1]


def test_missing_pair_image_reports_line_and_paths_tried(tmp_path: Path) -> None:
    root = _spec_tree(tmp_path / "hw")
    (root / "p.txt").write_text(
        "verification_data/00000001.jpg verification_data/00000002.jpg 1\n\n"
        "verification_data/00000001.jpg verification_data/gone.jpg 0\nverification_data/lost.jpg x.jpg 1\n"
    )
    match = r"p.txt:3: image 'verification_data/gone.jpg' not found \(tried .*gone.jpg.*\); 2 other"
    with pytest.raises(DataError, match=match):
        check_pair_files(read_pairs(root / "p.txt"), root, root / "verification_data")
