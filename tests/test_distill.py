"""Distillation (issue #18): a student learns the teacher's pair scores; teacher embeddings are cached; only
training images are used; a teacher exported to ONNX teaches as its checkpoint does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import facerec
from conftest import facehw_dir, tiny_overrides
from facerec.data.images import decode_batch
from facerec.distillation.cache import teacher_targets
from facerec.distillation.onnx_teacher import OnnxTeacher, OnnxTeacherOptions
from facerec.distillation.teachers import ModelTeacher, has_facerec_metadata
from facerec.engine.checkpoint import load_checkpoint
from facerec.errors import ConfigError, DataError
from facerec.inference.export import export_onnx

pytestmark = pytest.mark.data
FACEHW = facehw_dir()
SLICE = ("data.max_classes=30", "data.max_per_class=10", "loss.name=cosface", "train.log_every=1000")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny facerec teacher trained for 3 epochs on 30 facehw identities, and 200 val pairs to compare on.
    No run validates (no pair file): best.pt is the last epoch, and the runs take seconds."""
    if not (FACEHW / "classification_data").is_dir():
        pytest.skip(f"facehw data not found at {FACEHW} (set FACEREC_DATA)")
    root = tmp_path_factory.mktemp("distill")
    lines = (FACEHW / "verification_pairs_val.txt").read_text().splitlines()[:200]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    facerec.train(
        FACEHW, root / "teacher", overrides=student_config(root, "model.embedding_dim=32", "train.seed=0")
    )
    return root


def student_config(root: Path, *changes: str) -> list[str]:
    return tiny_overrides(
        *SLICE,
        f"distill.cache_dir={root / 'cache'}",
        "train.epochs=3",
        "model.embedding_dim=16",
        "train.seed=1",
        *changes,
    )


def pair_paths(root: Path) -> tuple[list[str], list[str]]:
    rows = [line.split() for line in (root / "pairs.txt").read_text().splitlines()]
    return [str(FACEHW / r[0]) for r in rows], [str(FACEHW / r[1]) for r in rows]


@pytest.mark.slow  # three (two) tiny runs on facehw: 20-40 s on 2 busy cores
def test_distilled_student_ends_closer_to_the_teachers_pair_scores(work: Path) -> None:
    teacher = ModelTeacher(work / "teacher" / "best.pt")
    a, b = pair_paths(work)
    ta, tb = (F.normalize(torch.from_numpy(teacher.embed(x)), dim=1) for x in (a, b))
    mean = torch.from_numpy(teacher_targets(teacher, _train_paths(work), work / "cache").mean)
    target_scores = F.cosine_similarity(ta - mean, tb - mean).numpy()  # the scores the student is taught
    plain = facerec.train(FACEHW, work / "plain", overrides=student_config(work))
    taught = facerec.distill(
        work / "teacher" / "best.pt",
        FACEHW,
        work / "taught",
        overrides=student_config(work, "distill.weight_labels=0"),
    )
    corr = {}
    for name, path in (("plain", plain), ("taught", taught)):
        model = facerec.load(path)
        scores = F.cosine_similarity(model.embed(decode_batch(a, 16)), model.embed(decode_batch(b, 16))).numpy()
        corr[name] = float(np.corrcoef(scores, target_scores)[0, 1])
    assert corr["taught"] > corr["plain"] + 0.05, corr


def _train_paths(work: Path) -> list[str]:
    """The training images of the slice, in the order the run reads them."""
    from facerec.config import load_config
    from facerec.distillation.data import load_distill_data

    cfg = load_config(None, [f"data.root={FACEHW}", *student_config(work)])
    return load_distill_data(cfg, lambda _: None).train.paths


@pytest.mark.slow  # three (two) tiny runs on facehw: 20-40 s on 2 busy cores
def test_onnx_teacher_round_trip(work: Path) -> None:
    pt = work / "teacher" / "best.pt"
    onnx_path, _ = export_onnx(pt, work / "onnx" / "teacher.onnx")
    paths = _train_paths(work)
    from_pt = teacher_targets(ModelTeacher(pt), paths, work / "cache")
    from_onnx = teacher_targets(ModelTeacher(onnx_path), paths, work / "cache")
    assert from_onnx.path != from_pt.path  # another file: another cache entry, computed by ONNX Runtime
    np.testing.assert_allclose(from_onnx.embeddings, from_pt.embeddings, rtol=1e-4, atol=1e-4)
    runs = {}
    for name, teacher in (("pt", pt), ("onnx", onnx_path)):
        over = student_config(work, "train.epochs=1", "distill.weight_labels=0")
        runs[name] = load_checkpoint(facerec.distill(teacher, FACEHW, work / f"student_{name}", overrides=over))
    for key, value in runs["pt"]["model"].items():
        torch.testing.assert_close(runs["onnx"]["model"][key], value, rtol=1e-3, atol=1e-3)


def test_foreign_onnx_teacher_is_fed_as_its_options_say(work: Path) -> None:
    import onnx

    exported = work / "onnx" / "teacher.onnx"
    if not exported.is_file():
        export_onnx(work / "teacher" / "best.pt", exported)
    graph = onnx.load(str(exported))
    del graph.metadata_props[:]
    foreign = work / "onnx" / "foreign.onnx"
    onnx.save(graph, str(foreign))  # no facerec metadata, no sidecar
    assert not has_facerec_metadata(foreign)
    paths = _train_paths(work)[:12]
    reference = ModelTeacher(work / "teacher" / "best.pt").embed(paths)
    same = OnnxTeacher(foreign, OnnxTeacherOptions(size=16, mean=127.5, std=127.5, channels="rgb"))
    np.testing.assert_allclose(same.embed(paths), reference, rtol=1e-4, atol=1e-4)
    bgr = OnnxTeacher(foreign, OnnxTeacherOptions(size=16, channels="bgr"))
    assert not np.allclose(bgr.embed(paths), reference, atol=1e-3)
    assert bgr.fingerprint != same.fingerprint
    arcface = OnnxTeacher(foreign, OnnxTeacherOptions(size=16, template="arcface"))  # warped, not resized
    assert not np.allclose(arcface.embed(paths), reference, atol=1e-3) and arcface.fingerprint != same.fingerprint


@pytest.mark.slow  # a tiny run on facehw: 10-45 s on 2 busy cores
def test_augmented_view_runs_with_a_pytorch_teacher_and_is_refused_for_onnx(work: Path) -> None:
    over = student_config(work, "train.epochs=1", "distill.teacher_view=augmented")
    best = facerec.distill(work / "teacher" / "best.pt", FACEHW, work / "online", overrides=over)
    assert facerec.load(best).info()["embedding_dim"] == 16
    exported = work / "onnx" / "teacher.onnx"
    if not exported.is_file():
        export_onnx(work / "teacher" / "best.pt", exported)
    with pytest.raises(ConfigError, match="teacher_view=augmented needs a facerec PyTorch teacher"):
        facerec.distill(exported, FACEHW, work / "online_onnx", overrides=over)
    assert not (work / "online_onnx").exists()


@pytest.mark.slow  # a one-step run on the facehw slice: 10-20 s on 2 busy cores
def test_a_warm_restart_takes_the_students_network_and_centres(work: Path) -> None:
    """train.init_from + train.init_head in `facerec distill`: the restart's head starts as the run's own (the
    teacher run stands in for a student here: same slice, same head), not fresh."""
    start = work / "teacher" / "best.pt"
    same = ("model.embedding_dim=32", "train.epochs=1", "train.max_steps_per_epoch=1", "optim.lr=1e-9")
    over = student_config(work, *same, "optim.weight_decay=0", f"train.init_from={start}", "train.init_head=true")
    restarted = load_checkpoint(facerec.distill(start, FACEHW, work / "restart", overrides=over))
    trained = load_checkpoint(start)
    for part in ("model", "loss"):
        for key, value in trained[part].items():
            if value.is_floating_point() and "running_" not in key:  # BatchNorm's statistics move in one step
                torch.testing.assert_close(restarted[part][key], value, rtol=0, atol=1e-6)
    no_start = student_config(work, f"distill.cache_dir={work / 'cache_unused'}", "train.init_head=true")
    with pytest.raises(ConfigError, match="set train.init_from=CHECKPOINT"):
        facerec.distill(start, FACEHW, work / "restart_without_checkpoint", overrides=no_start)
    assert not (work / "cache_unused").exists()  # refused before the teacher embedded anything


@pytest.mark.slow  # two tiny runs on facehw: 10-40 s on 2 busy cores
def test_unlabelled_face_crops_train_on_the_teachers_losses_alone(work: Path) -> None:
    crops = work / "unlabelled" / "crops"
    crops.mkdir(parents=True)
    for i, p in enumerate(_train_paths(work)[:40]):
        shutil.copy(p, crops / f"{i}.jpg")
    over = student_config(work, "train.epochs=1", "data.max_classes=0", "data.max_per_class=0")
    best = facerec.distill(work / "teacher" / "best.pt", crops, work / "run_unlabelled", overrides=over)
    state = load_checkpoint(best)
    assert state["classes"] == [] and state["distill"]["teacher"] == "best"
    assert np.isfinite(state["metrics"]["train_loss"])
    assert facerec.load(best).embed(decode_batch([crops / "0.jpg"], 16)).shape == (1, 16)
    # labelled training images plus the unlabelled crops: the student's own loss on the labelled ones only
    over = student_config(work, "train.epochs=1", f"distill.extra=[{crops}]")
    state = load_checkpoint(
        facerec.distill(work / "teacher" / "best.pt", FACEHW, work / "run_mixed", overrides=over)
    )
    assert len(state["classes"]) == 30 and np.isfinite(state["metrics"]["train_loss"])
    (work / "unlabelled" / "pairs.txt").write_text("a.jpg b.jpg 1\n")  # now a verification set
    with pytest.raises(DataError, match="pair file"):
        facerec.distill(work / "teacher" / "best.pt", crops, work / "run_refused", overrides=over)


def test_cache_only_computes_the_teachers_embeddings_and_trains_nothing(
    work: Path, capsys: pytest.CaptureFixture
) -> None:
    from facerec.cli.main import main

    args = ["distill", "--teacher", str(work / "teacher" / "best.pt"), "--data", str(FACEHW), "--cache-only"]
    assert main([*args, *student_config(work, "distill.flip=off")]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    with np.load(path, allow_pickle=False) as f:
        assert (
            f["embeddings"].shape == (len(_train_paths(work)), 32) and int(f["done"]) == f["embeddings"].shape[0]
        )
    assert main([*args, *student_config(work, "distill.flip=off")]) == 0
    assert "from the cache" in capsys.readouterr().out


def test_the_shipped_ensemble_teaches_as_it_embeds() -> None:
    ensemble = Path(__file__).resolve().parents[1] / "models" / "facehw_ensemble.pt"
    if not ensemble.is_file():
        pytest.skip(f"{ensemble} not found")
    paths = [str(p) for p in sorted((FACEHW / "classification_data" / "train_data" / "3").glob("*.jpg"))[:4]]
    teacher = ModelTeacher(ensemble)
    model = facerec.load(ensemble)
    assert teacher.embedding_dim == model.info()["embedding_dim"] and type(teacher.network()) is type(model.model)
    np.testing.assert_allclose(teacher.embed(paths), model.embed(paths).numpy(), rtol=1e-5, atol=1e-5)
