"""Property-based tests (hypothesis): the pair-file parser, the sample-submission reader and config overrides
accept every valid input exactly and turn any garbage into their own error type, never another exception."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from facerec.config import Config, ConfigError, known_keys, load_config, parse_override
from facerec.data.folder import DataError, load_image
from facerec.data.pairs import PairList, read_pairs
from facerec.outputs.submission import read_sample_submission

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# A path token: no whitespace, no line separator, no BOM (utf-8-sig would strip one at the start of the file).
token = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="\ufeff"),
    min_size=1,
    max_size=12,
).filter(lambda t: t.split() == [t] and len(t.splitlines()) == 1)


# ------------------------------------------------------------------ pair files
@FAST
@given(
    rows=st.lists(st.tuples(token, token, st.sampled_from([0, 1])), min_size=1, max_size=15),
    labelled=st.booleans(),
    sep=st.sampled_from([" ", "\t", "  ", " \t "]),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    padding=st.sampled_from(["", " ", "\t"]),
    blank_every=st.integers(0, 4),
)
def test_valid_pair_files_round_trip(
    tmp_path: Path, rows, labelled: bool, sep: str, eol: str, bom: bool, padding: str, blank_every: int
) -> None:
    lines: list[str] = []
    for n, (a, b, label) in enumerate(rows):
        if blank_every and n % blank_every == 0:
            lines.append(padding)  # blank (or whitespace-only) lines are skipped
        fields = [a, b, str(label)] if labelled else [a, b]
        lines.append(padding + sep.join(fields) + padding)
    path = tmp_path / "pairs.txt"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (eol.join(lines) + eol).encode())
    pairs = read_pairs(path)
    assert pairs.a == [r[0] for r in rows] and pairs.b == [r[1] for r in rows]
    assert pairs.labels == ([r[2] for r in rows] if labelled else None)
    assert [lines[n - 1].strip() for n in pairs.line_numbers] == [ln.strip() for ln in lines if ln.strip()]


def _parse_or_data_error(path: Path) -> PairList | None:
    try:
        pairs = read_pairs(path)
    except DataError as err:
        assert str(path) in str(err)  # every message names the file
        return None
    assert len(pairs.a) == len(pairs.b) == len(pairs.line_numbers) > 0
    assert pairs.labels is None or (len(pairs.labels) == len(pairs.a) and set(pairs.labels) <= {0, 1})
    assert pairs.line_numbers == sorted(set(pairs.line_numbers))
    return pairs


@FAST
@given(text=st.text(max_size=200) | st.text(alphabet="ab01 2\t\r\n\x0b\x85\u2028-", max_size=80))
def test_any_text_gives_pairs_or_a_data_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    _parse_or_data_error(tmp_path / "p.txt")


@FAST
@given(data=st.binary(max_size=200))
def test_any_bytes_give_pairs_or_a_data_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "p.txt").write_bytes(data)
    _parse_or_data_error(tmp_path / "p.txt")


# ------------------------------------------------------------------ sample submissions
HEADER = {"classification": ["id", "label"], "verification": ["Id", "Category"]}


@FAST
@given(
    ids=st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=12, unique=True),
    kind=st.sampled_from(sorted(HEADER)),
    eol=st.sampled_from(["\n", "\r\n"]),
    quote_all=st.booleans(),
    bom=st.booleans(),
)
def test_valid_sample_submissions_round_trip(
    tmp_path: Path, ids: list[str], kind: str, eol: str, quote_all: bool, bom: bool
) -> None:
    # csv.writer quotes a field holding "\r" only when "\r" is part of its line terminator (or with QUOTE_ALL);
    # unquoted, that file is not valid CSV, so it is not a valid input here.
    assume(quote_all or "\r" in eol or not any("\r" in i for i in ids))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=eol, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(HEADER[kind])
    writer.writerows([i, "0"] for i in ids)
    path = tmp_path / "sample.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode())
    assert read_sample_submission(path, kind) == ids  # type: ignore[arg-type]


@FAST
@given(
    content=st.binary(max_size=200)
    | st.text(alphabet='id,label"\r\n x\x00', max_size=80).map(str.encode)
    | st.text(max_size=120).map(lambda t: ("id,label\n" + t).encode())
)
def test_any_file_gives_ids_or_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(content)
    try:
        ids = read_sample_submission(path, "classification")
    except DataError as err:
        assert str(path) in str(err)
        return
    assert ids and len(set(ids)) == len(ids)


# ------------------------------------------------------------------ config overrides
KEYS = known_keys()
DEFAULTS: dict[str, Any] = {}
for _key in KEYS:
    _node: Any = asdict(Config())
    for _part in _key.split("."):
        _node = _node[_part]
    DEFAULTS[_key] = _node


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


@FAST
@given(
    key=st.sampled_from(KEYS) | st.text(max_size=25) | st.sampled_from(KEYS).map(lambda k: k + ".x"),
    value=st.text(max_size=40)
    | st.sampled_from(["[1, 2", "{a: 1}", "!!python/name:os.system", "~", "- a", "&x *x"]),
)
def test_any_override_parses_or_is_a_config_error(key: str, value: str) -> None:
    text = f"{key}={value}"
    try:
        keys, _ = parse_override(text)
        assert "=" in key or ".".join(keys) == key.strip()  # the first "=" splits key from value
        load_config(None, [text])
    except ConfigError as err:
        assert str(err)


@FAST
@given(text=st.text(max_size=60))
@example("=")
@example("a")
@example("data..root=1")
def test_any_text_as_an_override_parses_or_is_a_config_error(text: str) -> None:
    try:
        load_config(None, [text])
    except ConfigError:
        pass


@FAST
@given(data=st.data())
def test_typed_overrides_round_trip(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from([k for k, v in DEFAULTS.items() if type(v) in (int, float, bool)]))
    kind = type(DEFAULTS[key])
    if kind is bool:
        value: Any = data.draw(st.booleans())
        text = str(value).lower()
    elif kind is int:
        value = data.draw(st.integers(-(10**9), 10**9))
        text = str(value)
    else:
        value = data.draw(st.floats(-1e6, 1e6, allow_nan=False))
        text = f"{value:.6f}"
        value = float(text)
    if _allowed(key, value):
        assert _value(load_config(None, [f"{key}={text}"]), key) == value
    else:  # outside the field's declared range: refused at load, naming the key
        with pytest.raises(ConfigError, match=rf"{re.escape(key)}=\S+ is out of range"):
            load_config(None, [f"{key}={text}"])


def _allowed(key: str, value: Any) -> bool:
    """Whether `value` lies in the range declared on the field of `key` (checked here, not via check_values)."""
    section, name = key.split(".")
    meta = {f.name: f.metadata for f in fields(type(getattr(Config(), section)))}[name]
    if "range" not in meta:
        return True
    lo, hi, open_lo, open_hi = meta["range"]
    if lo is not None and (value < lo or (open_lo and value == lo)):
        return False
    return hi is None or (value < hi or (not open_hi and value == hi))


def test_float_in_exponent_notation_is_accepted() -> None:
    assert load_config(None, ["optim.lr=1e-5"]).optim.lr == 1e-5


# ------------------------------------------------------------------ image files
def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


SEEDS = {ext: _encoded(fmt) for ext, fmt in [("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("tif", "TIFF")]}


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")  # corrupt tags
@FAST
@given(
    ext=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(0, 10**6),
)
def test_mutated_image_files_decode_or_give_none(tmp_path: Path, ext: str, edits, cut: int | None) -> None:
    data = bytearray(SEEDS[ext])
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    (tmp_path / f"x.{ext}").write_bytes(bytes(data))
    out = load_image(tmp_path / f"x.{ext}", 8)  # never raises: a bad file is None, counted by the caller
    assert out is None or (out.shape == (8, 8, 3) and out.dtype == np.uint8)
