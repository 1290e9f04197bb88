"""The learning-rate range test: its sweep, smoothing and suggestion against independent computations, and
`facerec lr-find` end to end (files, suggestion, divergence stop, bad ranges)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from facerec.cli.main import main
from facerec.engine.lr_find import GeometricSweep, lowest_loss, smooth, steepest_descent
from test_cli import TINY


def test_sweep_is_log_spaced_from_start_to_end():
    sweep = GeometricSweep(1e-4, 1.0, 9)
    np.testing.assert_allclose([sweep.lr_at(i) for i in range(9)], np.geomspace(1e-4, 1.0, 9), rtol=1e-12)
    assert sweep.lr_at(100) == pytest.approx(1.0)  # past the end it stays at the end


@pytest.mark.parametrize(
    "start, end, steps", [(0.0, 1.0, 10), (1.0, 0.1, 10), (1e-3, math.inf, 10), (1e-3, 1.0, 4)]
)
def test_bad_ranges_are_clear_errors(start, end, steps):
    with pytest.raises(ValueError, match="start < end|at least 5 steps"):
        GeometricSweep(start, end, steps)


def test_smoothing_is_the_bias_corrected_average_and_skips_non_finite_losses():
    losses = [4.0, 2.0, float("nan"), 1.0]
    beta = 0.5
    # by hand: avg1 = 2.0 -> 2.0 / 0.5 = 4; avg2 = 1 + 1 = 2.0 -> 2 / 0.75; NaN keeps it; avg3 = 1 + 0.5 = 1.5
    # -> 1.5 / 0.875
    np.testing.assert_allclose(smooth(losses, beta), [4.0, 2.0 / 0.75, 2.0 / 0.75, 1.5 / 0.875])


def test_the_lowest_loss_and_the_steepest_descent_of_a_known_curve():
    lrs = list(np.geomspace(1e-5, 10, 121))
    x = np.log10(lrs)
    # falls fastest at lr 1e-2 (the tanh's centre), bottoms out at 1, then shoots up
    loss = list(2 - np.tanh(2 * (x + 2)) + np.where(x > 0, 5 * x**2, 0))
    assert steepest_descent(lrs, loss) == pytest.approx(1e-2, rel=0.07)  # within one grid step (1.06x apart)
    assert lowest_loss(lrs, loss) == pytest.approx(1.0, rel=0.07)
    rising, falling = list(np.linspace(1, 3, 121)), list(np.linspace(3, 1, 121))
    assert steepest_descent(lrs, rising) is None and lowest_loss(lrs, rising) is None  # never fell
    assert lowest_loss(lrs, falling) is None  # still falling at the end of the range: no minimum seen


def test_cli_writes_the_curve_and_suggests_a_rate(hw2p2_dir: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lr"
    assert (
        main(
            [
                "lr-find",
                "--data",
                str(hw2p2_dir),
                "--out",
                str(out),
                "--steps",
                "40",
                "--start",
                "1e-4",
                "--end",
                "1e4",
                *TINY,
                "train.threads=1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    # 1e4 makes any network diverge: the sweep stops before its last step, and says so
    assert "stopped at lr" in printed and 5 <= len(rows) < 40
    np.testing.assert_allclose(lrs, np.geomspace(1e-4, 1e4, 40)[: len(rows)], rtol=1e-5)
    smoothed = [float(r["smoothed_loss"]) for r in rows]
    np.testing.assert_allclose(smoothed, smooth([float(r["loss"]) for r in rows]), rtol=1e-4)
    assert (out / "lr_find.png").stat().st_size > 1000
    line = next(t for t in printed.splitlines() if t.startswith("suggested optim.lr="))
    value = float(line.split("=")[1].split()[0])
    assert value == pytest.approx(lowest_loss(lrs, smoothed), rel=1e-2)
    assert value == pytest.approx(lrs[int(np.argmin(smoothed))], rel=1e-2) and 1e-4 <= value <= 1e4
    assert (
        main(["lr-find", "--data", str(hw2p2_dir), "--out", str(out), "--start", "1", "--end", "0.1", *TINY]) == 1
    )
    assert "0 < start < end" in capsys.readouterr().err
    assert main(["lr-find", "--out", str(out), *TINY]) == 1  # no dataset
    assert "no dataset given: pass --data DIR" in capsys.readouterr().err


def test_python_api_runs_the_same_test(hw2p2_dir: Path, tmp_path: Path, monkeypatch):
    import facerec

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    overrides = {k: v for k, v in (t.split("=", 1) for t in TINY)}
    result = facerec.find_lr(
        hw2p2_dir, overrides={**overrides, "train.threads": 1}, start=1e-4, end=1e4, steps=40, out=tmp_path / "lr"
    )
    assert result.stopped_at is not None and len(result.lrs) == len(result.losses) < 40
    assert result.suggestion == lowest_loss(result.lrs, result.smoothed)
    assert (tmp_path / "lr" / "lr_find.csv").read_text().count("\n") == len(result.lrs) + 1
