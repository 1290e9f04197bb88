"""Fuzz target for the HTTP service: whole multipart request bodies (the uploaded images and the framing around
them) posted to every upload endpoint of `create_app` through FastAPI's TestClient."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

import facerec
from facerec.serve.app import create_app
from facerec.serve.uploads import Limits
from fuzzing.base import Seed, Target
from fuzzing.files import image_corpus
from fuzzing.models import tiny_checkpoint
from fuzzing.mutate import text_op

BOUNDARY = "fuzzboundary7MA4YWxk"
ANSWER_KEYS = {  # what a 200 answer of each endpoint must hold
    "/api/verify": {"score", "same", "threshold"},
    "/api/embed": {"embedding", "dim"},
    "/api/identify": {"identity", "matches"},
    "/api/enroll": {"identity", "enrolled", "total"},
}


class MemoryGallery:
    """serve.ports.Gallery over a dict (the gallery files have their own target)."""

    def __init__(self) -> None:
        self.store: dict[str, torch.Tensor] = {}

    def enroll(self, identity: str, embeddings: torch.Tensor) -> int:
        self.store[identity] = torch.cat([self.store.get(identity, embeddings[:0]), embeddings])
        return len(self.store[identity])

    def identify(self, embeddings: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        names = sorted(self.store)
        if not names:
            return [[] for _ in embeddings]
        protos = F.normalize(torch.stack([self.store[n].mean(0) for n in names]), dim=1)
        top = (F.normalize(embeddings, dim=1) @ protos.T).topk(min(k, len(names)), dim=1)
        return [[(names[i], float(v)) for v, i in zip(vs, ix)] for vs, ix in zip(*top)]

    def remove(self, identity: str) -> int:
        return len(self.store.pop(identity, []))

    def identities(self) -> list[str]:
        return sorted(self.store)


def multipart(fields: list[tuple[str, str | tuple[str, bytes, str]]]) -> bytes:
    """A multipart/form-data body: (name, value) form fields and (name, (filename, bytes, content type)) files."""
    out = b""
    for name, value in fields:
        out += f"--{BOUNDARY}\r\n".encode()
        if isinstance(value, str):
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        else:
            filename, data, ctype = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {ctype}'
            out += head.encode() + b"\r\n\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def http_corpus(folder: Path) -> list[Seed]:
    """A request to each upload endpoint (verify, embed, identify, enroll) with JPEG, PNG and WebP photos; the
    whole body is mutated. Also writes serve.pt, the model served."""
    tiny_checkpoint(folder / "serve.pt")
    images = {seed.name: seed.files[seed.name] for seed in image_corpus(folder)}
    jpg, png = ("exif.jpg", images["exif.jpg"], "image/jpeg"), ("a.png", images["rgb.png"], "image/png")
    webp = ("c.webp", images["photo.webp"], "image/webp")
    requests = {
        "/api/verify": [("image_a", jpg), ("image_b", png), ("threshold", "0.5"), ("crops", "true")],
        "/api/embed": [("image", png)],
        "/api/identify": [("image", webp), ("k", "3")],
        "/api/enroll": [("identity", "ann"), ("images", jpg), ("images", png)],
    }
    seeds = []
    for url, fields in requests.items():
        meta = json.dumps({"url": url, "content_type": f"multipart/form-data; boundary={BOUNDARY}"}).encode()
        seeds.append(Seed(url, {"request.json": meta, "body": multipart(fields)}, "body", (text_op,)))
    return seeds


def prepare_http(folder: Path) -> TestClient:
    app = create_app(facerec.load(folder / "serve.pt"), gallery=MemoryGallery(), limits=Limits(100_000, 1_000_000))
    return TestClient(app)


def run_http(case: Path, client: TestClient) -> tuple[str, str]:
    """POST the body; a 200 answer must be JSON with the endpoint's keys, any other one a 4xx JSON `detail`."""
    request = json.loads((case / "request.json").read_text())
    answer = client.post(
        request["url"], content=(case / "body").read_bytes(), headers={"content-type": request["content_type"]}
    )
    status = answer.status_code
    assert status == 200 or 400 <= status < 500, f"status {status}: {answer.text[:300]}"
    body = answer.json()
    if status == 200:
        assert ANSWER_KEYS[request["url"]] <= set(body), body
        return "ok", request["url"]
    assert isinstance(body, dict) and body.get("detail"), f"{status} without a detail: {answer.text[:300]}"
    return "clear", f"{status} {str(body['detail'])[:200]}"


SERVICE_TARGETS = [
    Target("http", "multipart uploads -> serve.app create_app (TestClient)", http_corpus, run_http, prepare_http),
]
