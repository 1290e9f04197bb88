"""`facerec benchmark folder`: every pair of an identity-folder dataset and leave-one-out identification."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_identity_folder
from facerec.cli.main import main
from facerec.data.folder import DataError
from facerec.evaluation.folder import leave_one_out_identification, pair_indices
from facerec.metrics.verification import pair_scores, score_matrix
from test_export import make_tiny_checkpoint
from test_lfw import one_thread, run_cli  # noqa: F401  (one_thread: autouse fixture)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_score_matrix_holds_the_pair_scores(metric: str) -> None:
    a, b = torch.randn(5, 8), torch.randn(7, 8)
    m = score_matrix(a, b, metric)
    i, j = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    torch.testing.assert_close(m, pair_scores(a[i.flatten()], b[j.flatten()], metric).view(5, 7))


def test_every_pair_when_under_the_budget() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    i, j, sampled = pair_indices(labels, max_pairs=15)
    assert not sampled and sorted(zip(i.tolist(), j.tolist())) == list(itertools.combinations(range(6), 2))


def test_over_the_budget_every_same_pair_and_sampled_different_ones() -> None:
    labels = np.repeat(np.arange(40), 5)  # 200 items: 400 same pairs of 19,900
    i, j, sampled = pair_indices(labels, max_pairs=1000, seed=3)
    pairs = set(zip(i.tolist(), j.tolist()))
    same = {(a, b) for a, b in itertools.combinations(range(200), 2) if labels[a] == labels[b]}
    assert sampled and len(i) == len(pairs) == 1000 and (i < j).all()  # no repeats, ordered
    assert same <= pairs and sum(labels[a] != labels[b] for a, b in pairs) == 600
    again = pair_indices(labels, max_pairs=1000, seed=3)
    assert np.array_equal(again[0], i) and np.array_equal(again[1], j)  # seeded


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leave_one_out_identification_against_brute_force(metric: str) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])  # 2 and 4 have one photo: not probes
    emb = torch.randn(len(labels), 4, generator=gen) + torch.as_tensor(labels).float().unsqueeze(1) * 0.3
    r = leave_one_out_identification(emb, labels, metric, ks=(1, 2), chunk=3)
    hits = {1: 0, 2: 0}
    probes = [p for p in range(len(labels)) if (labels == labels[p]).sum() > 1]
    for p in probes:
        others = sorted(
            (q for q in range(len(labels)) if q != p),
            key=lambda q: -float(pair_scores(emb[p : p + 1], emb[q : q + 1], metric)),
        )
        for k in hits:
            hits[k] += any(labels[q] == labels[p] for q in others[:k])
    assert r["n_probes"] == len(probes) == 9
    assert r["rank1"] == hits[1] / 9 and r["rank2"] == hits[2] / 9
    assert 0 < r["rank1"] < r["rank2"] <= 1  # the example is not trivial


def test_cli_folder_benchmark_agrees_with_evaluate_on_an_all_pairs_file(tmp_path: Path, capsys) -> None:
    """The same AUC through `facerec evaluate --pairs` (the training-time scoring path) on a pair file listing
    every pair of the folder."""
    root = make_identity_folder(tmp_path / "people", ["ann", "bob", "cy", "dee"], 4, size=32)
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt")
    assert run_cli(["benchmark", "folder", "--root", str(root), "--checkpoint", str(ckpt), "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["n_images"], r["n_people"], r["n_pairs"], r["n_pos"], r["pairs"]) == (16, 4, 120, 24, "all")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    lines = [f"{a} {b} {int(a.split('/')[0] == b.split('/')[0])}" for a, b in itertools.combinations(files, 2)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--pairs",
                str(tmp_path / "pairs.txt"),
                "--root",
                str(root),
                "--json",
            ]
        )
        == 0
    )
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["auc"] == pytest.approx(ref["auc"], abs=1e-6) and r["eer"] == pytest.approx(ref["eer"], abs=1e-6)
    assert 0.0 <= r["rank1"] <= r["rank5"] <= 1.0 and r["n_probes"] == 16
    assert run_cli(["benchmark", "folder", "--root", str(root), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "verification, 120 pairs (24 same; all): AUC" in out and "rank-1" in out


def test_folder_benchmark_errors(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt")
    alone = make_identity_folder(tmp_path / "alone", ["ann"], 3, size=32)
    with pytest.raises(DataError, match="at least 2 people"):
        run_cli(["benchmark", "folder", "--root", str(alone), "--checkpoint", str(ckpt)])
    singles = make_identity_folder(tmp_path / "singles", ["ann", "bob", "cy"], 1, size=32)
    with pytest.raises(DataError, match="no person has two photos"):
        run_cli(["benchmark", "folder", "--root", str(singles), "--checkpoint", str(ckpt)])
    with pytest.raises(ValueError, match="needs --pairs"):
        run_cli(["benchmark", "lfw", "--root", str(singles), "--checkpoint", str(ckpt)])
