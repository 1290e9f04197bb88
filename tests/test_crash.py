"""Crash safety with real processes: SIGKILL loses at most the current epoch and `--resume` reproduces the
uninterrupted run; a kill in the middle of a checkpoint write leaves the previous checkpoint intact; SIGINT
finishes the step, saves where the epoch stopped and exits with status 0, and `--resume` reproduces the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import main
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.progress import read_metrics

EPOCHS = 6
ARGS = tiny_overrides(
    "data.batch_size=8",
    "optim.lr=0.05",
    "train.log_every=100",
    "train.threads=1",
    "data.num_workers=1",
    f"train.epochs={EPOCHS}",
)
# Resumed and uninterrupted runs agree to float rounding on CPU with one thread (they are bitwise equal in
# practice); on CUDA, cudnn.benchmark and atomics make them agree only approximately.
RTOL = 1e-5

# Runs `facerec` with torch.save patched to hang (after writing the temp file, before the rename) in the second
# write of last.pt, after creating $FACEREC_TEST_MARKER: the test then kills the process mid-write.
HANG_IN_SECOND_LAST_PT_WRITE = """
import os, sys, time
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    folder, name = os.path.split(getattr(f, "name", ""))
    if name.startswith(".last.pt.tmp") and os.path.exists(os.path.join(folder, "last.pt")):
        f.flush()
        open(os.environ["FACEREC_TEST_MARKER"], "w").close()
        time.sleep(600)
torch.save = save
from facerec.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated(cache_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FACEREC_CACHE", str(cache_dir))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the in-process runs set train.threads=1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hw2p2(tmp_path_factory.mktemp("data") / "hw", n_ids=4, per_id=6)


@pytest.fixture(scope="module")
def uninterrupted(dataset: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_CACHE", str(cache_dir))
        assert main(["train", "--data", str(dataset), "--out", str(run), *ARGS]) == 0
    torch.set_num_threads(threads)
    return run


def _start(run: Path, dataset: Path, tmp_path: Path, code: str | None = None) -> subprocess.Popen:
    """`python -m facerec train ...` (or `python -c code train ...`) in a new process; output goes to files."""
    entry = ["-c", code] if code else ["-m", "facerec"]
    env = {**os.environ, "FACEREC_TEST_MARKER": str(tmp_path / "marker")}
    return subprocess.Popen(
        [sys.executable, *entry, "train", "--data", str(dataset), "--out", str(run), *ARGS],
        stdout=(tmp_path / "stdout.txt").open("w"),
        stderr=(tmp_path / "stderr.txt").open("w"),
        env=env,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {path.name} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.005)


def _epochs(run: Path) -> dict[int, dict]:
    """The last record of each epoch: a run killed between logging an epoch and saving its checkpoint logs that
    epoch again after --resume."""
    return {r["epoch"]: r for r in read_metrics(run) if r["event"] == "epoch"}


def _assert_same_run(run: Path, reference: Path) -> None:
    got, want = _epochs(run), _epochs(reference)
    assert sorted(got) == sorted(want) == list(range(1, EPOCHS + 1))
    for epoch, ref in want.items():
        assert got[epoch]["train_loss"] == pytest.approx(ref["train_loss"], rel=RTOL), epoch
        assert got[epoch]["val_auc"] == pytest.approx(ref["val_auc"], abs=RTOL), epoch
        assert got[epoch]["val_acc"] == pytest.approx(ref["val_acc"], abs=RTOL), epoch
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(reference / "last.pt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=RTOL, atol=1e-6) for k in b)


def test_sigkill_loses_at_most_the_current_epoch_and_resume_reproduces_the_run(
    dataset: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _start(run, dataset, tmp_path)
    _wait_for(run / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(300) == -signal.SIGKILL, "training finished before it could be killed"
    saved = load_checkpoint(run / "last.pt")["epoch"]
    assert saved >= 1 and max(_epochs(run)) <= saved + 1  # only the epoch in progress is lost
    assert main(["train", "--out", str(run), "--resume"]) == 0
    _assert_same_run(run, uninterrupted)
    assert read_metrics(run)[-1]["event"] == "end"


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(
    dataset: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = _start(run, dataset, tmp_path, HANG_IN_SECOND_LAST_PT_WRITE)
    _wait_for(tmp_path / "marker", proc)
    partial = [p.name for p in run.iterdir() if p.name.startswith(".last.pt.tmp")]
    assert partial, "the new checkpoint should be half-way: written to its temp file, not yet renamed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(300) == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 2's write never replaced it
    assert main(["train", "--out", str(run), "--resume"]) == 0
    _assert_same_run(run, uninterrupted)


def test_sigint_finishes_the_step_saves_and_exits_cleanly(
    dataset: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """Ctrl-C mid-epoch: the step finishes, last.pt records where the epoch stopped (batches done, metrics so far,
    the augmentation generator), and --resume continues right there: the run matches the uninterrupted one."""
    run = tmp_path / "run"
    proc = _start(run, dataset, tmp_path)
    _wait_for(run / "last.pt", proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(300) == 0
    out, err = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert "stopping after this step" in out and f"interrupted: saved {run / 'last.pt'}" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    events = [r["event"] for r in read_metrics(run)]
    assert "interrupted" in events and "end" not in events
    saved = load_checkpoint(run / "last.pt")
    assert 1 <= saved["epoch"] < EPOCHS
    assert saved["fit_state"]["step_in_epoch"] >= 1  # the batches of the stopped epoch already trained
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert read_metrics(run)[-1]["event"] == "end"
    _assert_same_run(run, uninterrupted)
