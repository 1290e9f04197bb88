"""Fuzzing every untrusted input (issue #17): seeded mutations of each file type a user can hand facerec, through
its public entry point, give a result or facerec's own clear error; never another exception, a hang, a crash or
code run. The engine is tests/fuzzing/ (bench/fuzz.py runs 1,000+ cases per type; docs/robustness.md "Fuzzing").

Here: about 50 cases per type, and the runner's own checks (it does report a hang, a crash, an allocation bomb,
an unexpected exception and code run by unpickling). tests/test_fuzz_found.py holds a regression test, on a small
hand-made file, for each bug the fuzzer found.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from fuzzing import checks  # noqa: E402
from fuzzing.mutate import MAGICS, mutate, png_chunk_op, zip_member_op  # noqa: E402
from fuzzing.runner import Worker, campaign  # noqa: E402
from fuzzing.targets import TARGETS  # noqa: E402

COUNT = 50  # mutated cases per type (bench/fuzz.py: 1,000)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tmp_path_factory.mktemp("fuzz"), timeout=60.0)
    yield w
    w.stop()


@pytest.mark.parametrize("name", list(TARGETS))
def test_mutated_inputs_give_a_result_or_a_clear_error(name: str, worker: Worker) -> None:
    summary = campaign(TARGETS[name], COUNT, worker)
    failures = "\n".join(summary.failures)
    assert not failures, f"{failures}\nrun one again: python bench/fuzz.py --types {name} --replay CASE"
    assert summary.cases > COUNT  # the seed files as they are, then the mutations
    assert summary.ok > 0 and summary.clear > 0, summary  # both paths taken: usable files and refused ones


# -- the runner catches every kind of failure ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("hang", "hang: no answer within 1 s"),
        ("crash", "crash: the worker died (exit code -6)"),
        ("allocate", "MemoryError"),
        ("unexpected", "KeyError"),
        ("unpickle", "CODE RAN: the payload wrote CODE_RAN"),
    ],
)
def test_the_runner_reports_each_kind_of_failure(name: str, expected: str, tmp_path: Path) -> None:
    w = Worker(tmp_path, timeout=1.0, memory_gib=2.0, registry="fuzzing.checks")
    try:
        summary = campaign(checks.TARGETS[name], 0, w)  # the seed file alone
    finally:
        w.stop()
    assert summary.cases == 1 and len(summary.failures) == 1 and expected in summary.failures[0], summary
    assert not (tmp_path / "corpus" / "CODE_RAN").exists()  # the runner removes the marker after reporting it


def test_a_clear_error_is_not_a_failure(tmp_path: Path) -> None:
    w = Worker(tmp_path, registry="fuzzing.checks")
    try:
        summary = campaign(checks.TARGETS["clear"], 3, w)
    finally:
        w.stop()
    assert (summary.cases, summary.ok, summary.clear, summary.failures) == (4, 0, 4, [])


# -- the mutations ---------------------------------------------------------------------------------------------
def test_mutations_are_reproducible_and_of_every_kind() -> None:
    data = bytes(range(256)) * 8
    cases = [mutate(data, f"t/{i}") for i in range(300)]
    assert cases == [mutate(data, f"t/{i}") for i in range(300)]  # a case number is enough to replay it
    assert len({out for out, _ in cases}) > 290
    kinds = {step.split()[0] for _, what in cases for step in what.split("; ")}
    assert kinds >= {"bitflip", "overwrite", "int", "truncate", "insert", "delete", "copy", "prepend", "replace"}
    assert any(out == b"" for out, _ in cases)


@pytest.mark.parametrize("name", ["npz", "pt", "gallery", "rec", "bin"])
def test_seed_files_are_the_same_wherever_they_are_made(name: str, tmp_path: Path) -> None:
    """So that a case number names the same file in every run (the payloads write a relative path, storage
    addresses and random ids are normalised away; bench/fuzz.py --replay relies on it)."""
    made = []
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        made.append([seed.files for seed in TARGETS[name].corpus(folder)])
    assert made[0] == made[1]


def test_zip_member_and_png_chunk_edits_keep_the_checksums_valid() -> None:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(100), b=np.ones(3))
    rng = random.Random(3)
    for _ in range(20):
        out, what = zip_member_op()(buf.getvalue(), rng)
        with zipfile.ZipFile(io.BytesIO(out)) as z:
            assert z.namelist() == ["a.npy", "b.npy"] and z.testzip() is None, what
    png = MAGICS["png"] + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        for kind, body in [(b"IHDR", bytes(13)), (b"IDAT", b"x" * 40), (b"IEND", b"")]
    )
    for _ in range(20):
        out, what = png_chunk_op(png, rng)
        pos = 8
        while pos < len(out):
            (n,) = struct.unpack(">I", out[pos : pos + 4])
            chunk = out[pos + 4 : pos + 8 + n]
            assert struct.unpack(">I", out[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(chunk), what
            pos += 12 + n
