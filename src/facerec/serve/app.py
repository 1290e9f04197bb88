"""The HTTP service: `create_app(model, ...)` -> a FastAPI app (no global state; build as many as you like).

    GET  /                       the web page (upload two photos, see the crops, the score and the decision)
    GET  /api/info               model, threshold, limits, and which optional parts (gallery, aligner) are on
    POST /api/verify             image_a, image_b [, threshold] -> score, same, threshold, crops (base64 PNG)
    POST /api/embed              image -> embedding
    POST /api/identify           image [, k] -> top-k enrolled identities          (501 without a gallery)
    POST /api/enroll             identity, images (1..max_files) -> count          (501 without a gallery)
    GET  /api/identities         enrolled identities                               (501 without a gallery)
    DELETE /api/identities/{id}  remove one identity                               (501 without a gallery)

Model calls run in the threadpool, one at a time behind a lock (torch on CPU already uses every core for one
batch), so concurrent requests are safe. Uploads are checked by serve/uploads.py; bad input is always a 4xx.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from facerec.metrics.scoring import Scoring
from facerec.serve.limit import BodyLimit
from facerec.serve.ports import Aligner, Gallery, Model, Unavailable
from facerec.serve.uploads import Limits, UploadError, check_content_type, decode_face, png_base64


class Service:
    """The state behind one app: the model and its lock, the optional gallery and aligner, the limits."""

    def __init__(
        self, model: Model, gallery: Gallery | Unavailable | None, aligner: Aligner | None, limits: Limits
    ) -> None:
        self.model, self.gallery, self.aligner, self.limits = model, gallery, aligner, limits
        self.lock = threading.Lock()

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """uint8 crops -> (N, D) embeddings with flip TTA, the same path as FaceModel.embed."""
        with self.lock, torch.inference_mode():
            return self.model.embed(torch.from_numpy(np.stack(crops)))

    def info(self) -> dict[str, Any]:
        gallery = (
            "off"
            if self.gallery is None
            else self.gallery.reason
            if isinstance(self.gallery, Unavailable)
            else "on"
        )
        lim = self.limits
        return {
            "model": self.model.info(),
            "image_size": self.model.image_size,
            "scoring": self.model.scoring,
            "threshold": self.model.threshold,
            "gallery": gallery,
            "align": self.aligner is not None,
            "limits": {
                "max_bytes": lim.max_bytes,
                "max_pixels": lim.max_pixels,
                "content_types": sorted(lim.content_types),
                "max_files": lim.max_files,
            },
        }

    def gallery_or_501(self) -> Gallery:
        if self.gallery is None:
            raise HTTPException(501, "no gallery: identify/enroll/delete are not enabled on this server")
        if isinstance(self.gallery, Unavailable):
            raise HTTPException(501, self.gallery.reason)
        return self.gallery

    async def crops(self, files: list[tuple[str, UploadFile]]) -> list[np.ndarray]:
        """Read (bounded) and decode each upload in the threadpool; any problem -> UploadError (4xx)."""
        out = []
        for name, upload in files:
            check_content_type(upload.content_type, self.limits, name)
            data = await upload.read(self.limits.max_bytes + 1)
            out.append(
                await run_in_threadpool(decode_face, data, self.model.image_size, self.limits, name, self.aligner)
            )
        return out


def _page() -> str:
    return resources.files("facerec.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    model: Model,
    *,
    gallery: Gallery | Unavailable | None = None,
    aligner: Aligner | None = None,
    limits: Limits | None = None,
    max_k: int = 20,
) -> FastAPI:
    """A FastAPI app serving `model` (api.FaceModel or onnx_backend.OnnxFaceModel).

    `gallery`: None (identify/enroll/delete answer 501), Unavailable(reason) (501 with that reason), or a
    ports.Gallery. `aligner`: None (each photo resized whole: `facerec serve --no-align`) or a ports.Aligner
    (`ports.load_aligner`: what `facerec serve` uses by default). `max_k`: cap on identify's k.
    """
    svc = Service(model, gallery, aligner, limits or Limits())
    app = FastAPI(title="facerec", description="Face verification and identification", version="1")
    app.state.service = svc
    app.add_middleware(BodyLimit, max_bytes=svc.limits.max_request_bytes)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    app.include_router(_core_routes(svc))
    app.include_router(_gallery_routes(svc, max_k))
    return app


def _core_routes(svc: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _page()

    @router.get("/api/info")
    async def info() -> dict[str, Any]:
        return svc.info()

    @router.post("/api/verify")
    async def verify(
        image_a: Annotated[UploadFile, File()],
        image_b: Annotated[UploadFile, File()],
        threshold: Annotated[float | None, Form()] = None,
        crops: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        a, b = await svc.crops([("image_a", image_a), ("image_b", image_b)])
        e = await run_in_threadpool(svc.embed, [a, b])
        score = float(Scoring.of(svc.model.scoring).pairs(e[:1], e[1:])[0])
        thr = threshold if threshold is not None else svc.model.threshold
        out: dict[str, Any] = {
            "score": score,
            "scoring": svc.model.scoring,
            "threshold": thr,
            "same": None if thr is None else Scoring.accept(score, thr),
        }
        if crops:
            out["crops"] = {"image_a": png_base64(a), "image_b": png_base64(b)}
        return out

    @router.post("/api/embed")
    async def embed(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        (crop,) = await svc.crops([("image", image)])
        e = await run_in_threadpool(svc.embed, [crop])
        return {"embedding": e[0].tolist(), "dim": int(e.shape[1])}

    return router


def _gallery_routes(svc: Service, max_k: int) -> APIRouter:
    router = APIRouter()

    @router.post("/api/identify")
    async def identify(
        image: Annotated[UploadFile, File()],
        k: Annotated[int, Form(ge=1)] = 5,
        crops: Annotated[bool, Form()] = False,
    ) -> dict[str, Any]:
        gallery = svc.gallery_or_501()
        (crop,) = await svc.crops([("image", image)])
        e = await run_in_threadpool(svc.embed, [crop])
        (matches,) = await run_in_threadpool(gallery.identify, e, min(k, max_k))
        thr = svc.model.threshold
        best = matches[0][0] if matches and (thr is None or Scoring.accept(matches[0][1], thr)) else "unknown"
        out: dict[str, Any] = {
            "identity": best if matches else None,
            "threshold": thr,
            "matches": [{"identity": n, "score": s} for n, s in matches],
        }
        if crops:
            out["crop"] = png_base64(crop)
        return out

    @router.post("/api/enroll")
    async def enroll(
        identity: Annotated[str, Form(min_length=1, max_length=200)], images: Annotated[list[UploadFile], File()]
    ) -> dict[str, Any]:
        gallery = svc.gallery_or_501()
        name = identity.strip()
        if not name:
            raise HTTPException(422, "identity: give a non-empty name")
        if len(images) > svc.limits.max_files:
            raise HTTPException(413, f"{len(images)} images in one request; at most {svc.limits.max_files}")
        faces = await svc.crops([(f"images[{i}]", f) for i, f in enumerate(images)])
        e = await run_in_threadpool(svc.embed, faces)
        try:
            total = await run_in_threadpool(gallery.enroll, name, e)
        except ValueError as err:  # e.g. a name the gallery refuses
            raise HTTPException(422, f"identity: {err}") from None
        return {"identity": name, "enrolled": len(faces), "total": total}

    @router.get("/api/identities")
    async def identities() -> dict[str, Any]:
        return {"identities": await run_in_threadpool(svc.gallery_or_501().identities)}

    @router.delete("/api/identities/{identity:path}")
    async def delete(identity: str) -> dict[str, Any]:
        gallery = svc.gallery_or_501()
        removed = await run_in_threadpool(gallery.remove, identity)
        if not removed:
            raise HTTPException(404, f"identity {identity!r} is not enrolled")
        return {"identity": identity, "removed": removed}

    return router
