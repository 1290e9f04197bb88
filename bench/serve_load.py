"""Bounded load test of `facerec serve`: N concurrent clients POST /api/verify for T seconds, on 127.0.0.1 only.

Starts the server in a subprocess on a free localhost port (the same create_app as `facerec serve`), fires
--concurrency clients in a loop until --duration seconds or --max-requests requests, whichever comes first,
then stops the server. Reports requests/s, latency percentiles and errors by status.

    python bench/serve_load.py [--checkpoint C | (random facenet_s weights)] [--onnx] [--concurrency 8]
                               [--duration 10] [--max-requests 2000] [--images a.jpg b.jpg]
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # never anything but this machine
MAX_DURATION = 120.0


def serve(model_path: str, port: int) -> None:
    """The server side (run in the subprocess): a .pt with PyTorch, a .onnx with ONNX Runtime."""
    import uvicorn

    from facerec.inference.load import load as load_model
    from facerec.serve.app import create_app

    uvicorn.run(create_app(load_model(model_path)), host=HOST, port=port, log_level="warning")


def random_checkpoint(folder: Path) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from inference_onnx import checkpoint

    return str(checkpoint(folder, "facenet_s", 64))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_images(paths: list[str] | None, folder: Path) -> list[tuple[str, bytes]]:
    if paths:
        return [(Path(p).name, Path(p).read_bytes()) for p in paths]
    data = Path(os.environ.get("FACEREC_DATA", Path(__file__).resolve().parents[2] / "shared/data/facehw"))
    real = sorted((data / "verification_data").glob("*.jpg"))[:2]
    if len(real) == 2:
        return [(p.name, p.read_bytes()) for p in real]
    rng = np.random.default_rng(0)
    out = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        out.append((f"{i}.jpg", (folder / f"{i}.jpg").read_bytes()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(client, url: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if client.get(url + "/api/info", timeout=2).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def load(url: str, images: list[tuple[str, bytes]], concurrency: int, duration: float, max_requests: int):
    import httpx

    files = {
        "image_a": (images[0][0], images[0][1], "image/jpeg"),
        "image_b": (images[1][0], images[1][1], "image/jpeg"),
    }
    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    budget = [max_requests]
    deadline = time.monotonic() + min(duration, MAX_DURATION)

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                t0 = time.perf_counter()
                try:
                    status = client.post(url + "/api/verify", files=files).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                with lock:
                    statuses[status] += 1
                    latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return statuses, latencies, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model to serve (default: random facenet_s weights, 64x64)")
    ap.add_argument("--onnx", action="store_true", help="serve through ONNX Runtime (exported on the fly)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help=f"seconds (at most {MAX_DURATION:.0f})")
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--images", nargs=2, help="the two photos to verify (default: two facehw images)")
    ap.add_argument("--serve", nargs=2, metavar=("CKPT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    import httpx
    import torch
    from _common import hardware

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp))
        model_path = ckpt
        if args.onnx:
            from facerec.inference.export import export_onnx

            model_path = str(export_onnx(ckpt, Path(tmp) / "model.onnx")[0])
        images = test_images(args.images, Path(tmp))
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", model_path, str(port)])
        try:
            url = f"http://{HOST}:{port}"
            with httpx.Client() as c:
                wait_ready(c, url, proc)
            load(url, images, 1, 30.0, 3)  # warm-up
            cpu0 = cpu_seconds(proc.pid)
            statuses, lat, wall = load(url, images, args.concurrency, args.duration, args.max_requests)
            server_cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            proc.wait(30)
    ok = statuses.get(200, 0)
    errors = {k: v for k, v in statuses.items() if k != 200}
    ms = np.percentile(np.array(lat) * 1000, [50, 95, 99]) if lat else [float("nan")] * 3
    print(f"cpu: {hardware(torch.device('cpu'))}")
    what = args.checkpoint or "facenet_s (random weights)"
    print(
        f"served {what} with {'ONNX Runtime' if args.onnx else 'PyTorch'}"
        f"; {args.concurrency} concurrent clients for {wall:.1f}s; each request uploads two JPEGs "
        f"({len(images[0][1])} + {len(images[1][1])} bytes)"
    )
    print(f"requests {sum(statuses.values())}, ok {ok}, errors {sum(errors.values())} {dict(errors) or ''}")
    print(f"latency ms p50 {ms[0]:.1f} p95 {ms[1]:.1f} p99 {ms[2]:.1f}")
    print(
        f"server CPU {server_cpu:.1f}s over {wall:.1f}s wall: {ok / max(server_cpu, 1e-9):.1f} requests per "
        "server CPU-second (less distorted by other load on the machine than requests/s)"
    )
    print(f"throughput {ok / wall:.1f} verify requests/s ({2 * ok / wall:.1f} images/s)")


if __name__ == "__main__":
    main()
