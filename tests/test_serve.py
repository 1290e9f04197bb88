"""The HTTP service against create_app with a tiny random model: answers, limits (always 4xx), concurrency."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")
from fastapi.testclient import TestClient  # noqa: E402

from facerec.data.folder import load_image  # noqa: E402
from facerec.inference.load import load  # noqa: E402
from facerec.inference.model import FaceModel  # noqa: E402
from facerec.serve.app import create_app  # noqa: E402
from facerec.serve.ports import Unavailable  # noqa: E402
from facerec.serve.uploads import Limits  # noqa: E402
from test_export import make_tiny_checkpoint, photos  # noqa: E402


class FakeGallery:
    """The serve.ports.Gallery interface over a dict, standing in for the FAISS gallery."""

    def __init__(self) -> None:
        self.store: dict[str, torch.Tensor] = {}

    def enroll(self, identity: str, embeddings: torch.Tensor) -> int:
        old = self.store.get(identity, embeddings[:0])
        self.store[identity] = torch.cat([old, embeddings])
        return len(self.store[identity])

    def identify(self, embeddings: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        names = sorted(self.store)
        if not names:
            return [[] for _ in embeddings]
        protos = F.normalize(torch.stack([self.store[n].mean(0) for n in names]), dim=1)
        sims = F.normalize(embeddings, dim=1) @ protos.T
        top = sims.topk(min(k, len(names)), dim=1)
        return [[(names[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(*top)]

    def remove(self, identity: str) -> int:
        return len(self.store.pop(identity, []))

    def identities(self) -> list[str]:
        return sorted(self.store)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[FaceModel, list[Path]]:
    tmp = tmp_path_factory.mktemp("serve")
    model = load(make_tiny_checkpoint(tmp / "best.pt", image_size=32))
    return model, photos(tmp / "img", 4)


@pytest.fixture(scope="module")
def client(setup):
    with TestClient(create_app(setup[0], limits=Limits(max_bytes=50_000, max_pixels=1_000_000))) as c:
        yield c


def upload(path: Path, name: str = "x.jpg", ctype: str = "image/jpeg") -> tuple[str, bytes, str]:
    return name, path.read_bytes(), ctype


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_verify_score_equals_face_model(setup, client):
    model, files = setup
    r = client.post(
        "/api/verify", files={"image_a": upload(files[0]), "image_b": upload(files[1])}, data={"crops": "true"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score"] == pytest.approx(model.score(files[0], files[1]), abs=1e-6)
    assert body["threshold"] == 0.3 and body["same"] == (body["score"] >= 0.3) and body["scoring"] == "cosine"
    crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["crops"]["image_a"].split(",", 1)[1]))))
    np.testing.assert_array_equal(crop, load_image(files[0], 32))  # the crop is exactly what the model saw
    same = client.post(
        "/api/verify", files={"image_a": upload(files[2]), "image_b": upload(files[2])}, data={"threshold": "0.99"}
    ).json()
    assert same["score"] == pytest.approx(1.0, abs=1e-5) and same["same"] is True and "crops" not in same


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="compare"' in page.text and "text/html" in page.headers["content-type"]
    info = client.get("/api/info").json()
    assert info["image_size"] == 32 and info["gallery"] == "off" and info["limits"]["max_bytes"] == 50_000
    assert info["model"]["backbone"] == "tiny_cnn"


def test_embed_returns_the_model_embedding(setup, client):
    model, files = setup
    r = client.post("/api/embed", files={"image": upload(files[3])})
    assert r.status_code == 200
    torch.testing.assert_close(torch.tensor(r.json()["embedding"]), model.embed([files[3]])[0], atol=1e-5, rtol=0)


def test_too_many_bytes_is_413(setup, client):
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB as PNG
    files = {"image_a": ("a.png", png_bytes(big), "image/png"), "image_b": upload(setup[1][0])}
    r = client.post("/api/verify", files=files)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    body = b"x" * (Limits(max_bytes=50_000).max_request_bytes + 1)  # refused from Content-Length, unparsed
    r = client.post("/api/verify", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


def test_chunked_body_over_limit_is_413(client):
    def chunks():
        for _ in range(30):  # 300 kB, no Content-Length: counted as it arrives
            yield b"y" * 10_000

    r = client.post("/api/verify", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413


def test_decompression_bomb_is_413(setup, client):
    bomb = png_bytes(np.zeros((1500, 1500, 3), dtype=np.uint8))  # 2.25 Mpx in a few kB
    assert len(bomb) < 50_000
    r = client.post("/api/verify", files={"image_a": ("a.png", bomb, "image/png"), "image_b": upload(setup[1][0])})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]


@pytest.mark.parametrize("ctype", ["text/plain", "application/pdf", "image/svg+xml", ""])
def test_wrong_content_type_is_415(setup, client, ctype):
    r = client.post(
        "/api/verify",
        files={"image_a": ("a.jpg", setup[1][0].read_bytes(), ctype), "image_b": upload(setup[1][1])},
    )
    assert r.status_code == 415 and "image/jpeg" in r.json()["detail"]


def test_unaccepted_image_format_is_415(setup, client):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    r = client.post(
        "/api/verify", files={"image_a": ("a.png", buf.getvalue(), "image/png"), "image_b": upload(setup[1][1])}
    )
    assert r.status_code == 415 and "GIF" in r.json()["detail"]


@pytest.mark.parametrize("data", [b"\x00garbage" * 50, b"", b"\xff\xd8\xff\xe0" + b"\x00" * 40, "truncated"])
def test_garbage_bytes_are_400(setup, client, data):
    if data == "truncated":
        data = setup[1][0].read_bytes()[:300]
    files = {"image_a": ("a.jpg", data, "image/jpeg"), "image_b": upload(setup[1][1])}
    r = client.post("/api/verify", files=files)
    assert r.status_code == 400, r.text
    assert "image_a" in r.json()["detail"]


def test_missing_field_and_bad_threshold_are_422(setup, client):
    assert client.post("/api/verify", files={"image_a": upload(setup[1][0])}).status_code == 422
    r = client.post(
        "/api/verify",
        files={"image_a": upload(setup[1][0]), "image_b": upload(setup[1][1])},
        data={"threshold": "high"},
    )
    assert r.status_code == 422


def test_concurrent_requests_agree(setup, client):
    files = setup[1]

    def one(i: int) -> float:
        r = client.post("/api/verify", files={"image_a": upload(files[i % 2]), "image_b": upload(files[2])})
        assert r.status_code == 200, r.text
        return r.json()["score"]

    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(one, range(20)))
    assert scores[0::2] == [scores[0]] * 10 and scores[1::2] == [scores[1]] * 10


def test_gallery_endpoints_answer_501_without_a_gallery(setup, client):
    r = client.post("/api/identify", files={"image": upload(setup[1][0])})
    assert r.status_code == 501 and "gallery" in r.json()["detail"]
    app = create_app(setup[0], gallery=Unavailable("facerec.photos.gallery is not installed"))
    with TestClient(app) as c:
        assert c.get("/api/identities").status_code == 501
        assert c.delete("/api/identities/bob").json()["detail"] == "facerec.photos.gallery is not installed"


def test_enroll_identify_delete(setup):
    model, files = setup
    with TestClient(create_app(model, gallery=FakeGallery())) as c:
        r = c.post(
            "/api/enroll",
            data={"identity": "alice"},
            files=[("images", upload(files[0])), ("images", upload(files[1]))],
        )
        assert r.status_code == 200 and r.json() == {"identity": "alice", "enrolled": 2, "total": 2}
        r = c.post("/api/enroll", data={"identity": "bob"}, files={"images": upload(files[2])})
        assert r.status_code == 200
        assert c.get("/api/identities").json() == {"identities": ["alice", "bob"]}
        assert c.get("/api/info").json()["gallery"] == "on"
        r = c.post("/api/identify", files={"image": upload(files[2])}, data={"k": "5"})
        matches = r.json()["matches"]
        assert [m["identity"] for m in matches][0] == "bob" and matches[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert c.delete("/api/identities/bob").json() == {"identity": "bob", "removed": 1}
        assert c.delete("/api/identities/bob").status_code == 404
        assert c.post("/api/enroll", data={"identity": ""}, files={"images": upload(files[0])}).status_code == 422


class CentreAligner:
    """Stands in for facerec.photos.align.FaceAligner: the centre half of the photo, or no face on dark photos."""

    def align(self, image: Image.Image):
        if np.asarray(image).mean() < 20:
            return None
        w, h = image.size
        return image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))


def test_aligner_crop_is_used_and_no_face_is_422(setup):
    model, files = setup
    with TestClient(create_app(model, aligner=CentreAligner())) as c:
        r = c.post(
            "/api/verify", files={"image_a": upload(files[0]), "image_b": upload(files[1])}, data={"crops": "1"}
        )
        assert r.status_code == 200
        expected = Image.open(files[0]).convert("RGB").crop((12, 12, 36, 36)).resize((32, 32), Image.BILINEAR)
        assert r.json()["score"] == pytest.approx(
            model.score(expected, Image.open(files[1]).convert("RGB").crop((12, 12, 36, 36))), abs=1e-5
        )
        dark = png_bytes(np.zeros((40, 40, 3), dtype=np.uint8))
        r = c.post("/api/verify", files={"image_a": ("d.png", dark, "image/png"), "image_b": upload(files[1])})
        assert r.status_code == 422 and "no face" in r.json()["detail"]


def test_onnx_model_is_served_the_same(setup, tmp_path):
    pytest.importorskip("onnxruntime")
    from facerec.inference.export import export_onnx
    from facerec.inference.onnx import OnnxFaceModel

    model, files = setup
    onnx_path, _ = export_onnx(make_tiny_checkpoint(tmp_path / "best.pt", image_size=32), tmp_path / "m.onnx")
    with TestClient(create_app(OnnxFaceModel(onnx_path))) as c:
        r = c.post("/api/verify", files={"image_a": upload(files[0]), "image_b": upload(files[1])})
    assert r.status_code == 200 and r.json()["score"] == pytest.approx(model.score(files[0], files[1]), abs=1e-5)


def test_facerec_gallery_behind_the_endpoints(setup, tmp_path):
    pytest.importorskip("faiss")
    from facerec.serve.ports import load_gallery

    model, files = setup
    assert isinstance(load_gallery(model, None), Unavailable)
    gallery = load_gallery(model, tmp_path / "gallery")
    assert not isinstance(gallery, Unavailable), getattr(gallery, "reason", "")
    with TestClient(create_app(model, gallery=gallery)) as c:
        assert c.post("/api/identify", files={"image": upload(files[0])}).json()["matches"] == []
        for name, f in (("ann", files[0]), ("ben", files[1])):
            assert c.post("/api/enroll", data={"identity": name}, files={"images": upload(f)}).status_code == 200
        r = c.post("/api/identify", files={"image": upload(files[1])}).json()
        assert r["identity"] == "ben" and r["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert c.delete("/api/identities/ann").json()["removed"] == 1
        assert c.delete("/api/identities/ann").status_code == 404
        assert c.get("/api/identities").json() == {"identities": ["ben"]}
    assert (tmp_path / "gallery" / "gallery.db").is_file()  # committed after each change


def test_real_aligner_on_real_faces(setup, facehw):
    pytest.importorskip("facenet_pytorch")
    from facerec.serve.ports import load_aligner

    aligner = load_aligner(32)
    assert not isinstance(aligner, Unavailable), getattr(aligner, "reason", "")
    a, b = sorted((facehw / "verification_data").glob("*.jpg"))[:2]
    with TestClient(create_app(setup[0], aligner=aligner)) as c:
        r = c.post("/api/verify", files={"image_a": upload(a), "image_b": upload(b)}, data={"crops": "1"})
        assert r.status_code == 200, r.text
        assert c.get("/api/info").json()["align"] is True
    crop = Image.open(io.BytesIO(base64.b64decode(r.json()["crops"]["image_a"].split(",", 1)[1])))
    assert crop.size == (32, 32)


def test_cli_serve_builds_the_app_from_its_flags(tmp_path, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from test_export import run_cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app, host=host, port=port))
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", image_size=32)
    argv = ["serve", "--checkpoint", str(ckpt), "--port", "8123", "--max-upload-mb", "0.01", "--no-align"]
    assert run_cli(argv) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    with TestClient(served["app"]) as c:
        info = c.get("/api/info").json()
        assert info["limits"]["max_bytes"] == 10485 and "--gallery" in info["gallery"] and info["align"] is False
        assert c.post("/api/identify", files={"image": ("a.jpg", b"x", "image/jpeg")}).status_code == 501


def test_cli_serve_aligns_by_default_or_says_how_to_install(tmp_path, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    import sys

    from test_export import run_cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.update(app=app))
    ckpt = str(make_tiny_checkpoint(tmp_path / "best.pt", image_size=32))
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "facenet_pytorch", None)  # the photos extra is missing: no start, the way out
        assert run_cli(["serve", "--checkpoint", ckpt]) == 1 and not served
        err = capsys.readouterr().err
        assert "pip install --no-deps facenet-pytorch==2.6.0" in err and "--no-align" in err
    pytest.importorskip("facenet_pytorch")
    assert run_cli(["serve", "--checkpoint", ckpt, "--align"]) == 0  # --align: the default, still accepted
    assert "faces aligned" in capsys.readouterr().out
    with TestClient(served["app"]) as c:
        assert c.get("/api/info").json()["align"] is True


class NoDetector:
    """Stands in for photos.align.FaceAligner's detection: records what it is shown and finds no face."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def __call__(self, img: Image.Image) -> list:
        self.seen.append(img.size)
        return []


def test_facerec_aligner_takes_an_upload_of_the_model_size_as_a_crop(setup, monkeypatch):
    """The service's aligner follows FaceAligner.crop: a 32x32 upload for a 32x32 model is not re-detected
    (embedded exactly like the file), a bigger photo is, and no face there is a 422."""
    from facerec.photos.align import FaceAligner
    from facerec.serve.ports import FacerecAligner

    model, files = setup
    impl, spy = FaceAligner(size=32), NoDetector()
    monkeypatch.setattr(impl, "detect", spy)
    crop = photos(files[0].parent.parent / "crops32", 1, size=32)[0]
    with TestClient(create_app(model, aligner=FacerecAligner(impl))) as c:
        r = c.post("/api/embed", files={"image": upload(crop)})
        assert r.status_code == 200 and spy.seen == []
        torch.testing.assert_close(torch.tensor(r.json()["embedding"]), model.embed([crop])[0], atol=1e-5, rtol=0)
        r = c.post("/api/embed", files={"image": upload(files[0])})  # 48x48: detection runs, finds nothing
        assert r.status_code == 422 and spy.seen == [(48, 48)]


def test_an_ensemble_serves_like_a_model(tmp_path):
    from facerec.evaluation.ensemble import build_ensemble

    members = [make_tiny_checkpoint(tmp_path / f"m{i}.pt", image_size=32, seed=i) for i in range(2)]
    build_ensemble(members, tmp_path / "ens.pt", log=lambda m: None)
    model, files = load(tmp_path / "ens.pt"), photos(tmp_path / "img", 2)
    with TestClient(create_app(model)) as c:
        info = c.get("/api/info").json()
        assert info["model"]["backbone"] == "ensemble: tiny_cnn + tiny_cnn"
        assert info["model"]["embedding_dim"] == 32
        r = c.post("/api/verify", files={"image_a": upload(files[0]), "image_b": upload(files[1])}).json()
        assert r["score"] == pytest.approx(model.score(files[0], files[1]), abs=1e-6)
        assert r["threshold"] == pytest.approx(0.3)
