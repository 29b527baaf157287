"""server: input made to hurt it. Video bombs (huge frames, pictures labelled as video, endless
clips), mutated media parts, deeply nested bodies, degenerate sampling values and a remote host
that drips its answer. The server must answer each with a 4xx, stay up, and keep its memory
inside its budget. Real vlm-serve processes and a real uvicorn server on loopback; the clips are
real files written by OpenCV.
"""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from test_server import TEXT, Served, _image, _png, _user, _video, serve_slow
from vlm_edge.server import ServerConfig, create_app
from vlm_edge.server.images import ImageLimits

cv2 = pytest.importorskip("cv2", reason="video decoding needs OpenCV")


@pytest.fixture(scope="module")
def engine(micro_engine):
    return micro_engine / "engine"


def _clip(path, size: tuple[int, int], frames: int, fourcc: str = "mp4v", noise: bool = False) -> bytes:
    """A real clip written by OpenCV: `frames` frames of `size` (width, height)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30, size)
    rng = np.random.default_rng(0)
    base = (rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) if noise
            else np.zeros((size[1], size[0], 3), np.uint8))
    for i in range(frames):
        frame = np.roll(base, i, axis=1) if noise else base
        if not noise:
            frame[:, : (i % size[0]) + 1] = 90  # a bar that grows: each frame differs a little
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def _video_url(data: bytes, kind: str = "mp4") -> str:
    return f"data:video/{kind};base64," + base64.b64encode(data).decode()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


class _Peak:
    """The highest RSS of a process, sampled every 10 ms on a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib(self.pid))
            time.sleep(0.01)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """Files made to be large when decoded, small when sent."""
    root = tmp_path_factory.mktemp("bombs")
    big = _clip(root / "big.avi", (8192, 8192), 8, "MJPG")  # 8 frames of 8192 x 8192
    buf = io.BytesIO()
    Image.new("1", (16000, 16000)).save(buf, format="PNG")  # a 16000 x 16000 picture, tens of KB
    png = buf.getvalue()
    frame = Image.new("P", (4000, 4000))
    buf = io.BytesIO()
    frame.save(buf, format="GIF", save_all=True, append_images=[frame.copy() for _ in range(3)], duration=40)
    gif = buf.getvalue()
    fair = _clip(root / "fair.avi", (2048, 2048), 8, "MJPG")  # within the pixel limit: answered, within the budget
    return {"big": big, "png": png, "gif": gif, "fair": fair}


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc for the server's RSS")
def test_video_bombs_get_4xx_and_the_server_stays_inside_its_memory(engine, bombs):
    """`vlm-serve --max-memory 128`: two 8192 x 8192 clips at once, a 16000 x 16000 PNG labelled
    video/mp4 and a 4000 x 4000 GIF as a video are refused, four 2048 x 2048 clips at once are
    answered; the server lives and its RSS stays within --max-memory + 200 MiB of what it was
    before."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([shutil.which("vlm-serve"), str(engine), "--port", str(port), "--max-memory", "128",
                             "--model-name", "micro"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        before = _rss_mib(proc.pid)
        peak = _Peak(proc.pid)

        def post(data, kind="mp4"):
            return httpx.post(f"{url}/v1/chat/completions", json=_user(_video(_video_url(data, kind)), TEXT), timeout=120)

        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(post, [bombs["big"], bombs["big"]]))
        for r in both:
            assert r.status_code == 413 and "8192x8192" in r.json()["error"]["message"], r.text
        r = post(bombs["png"])
        assert r.status_code == 400 and "is not an MP4" in r.json()["error"]["message"], r.text
        r = post(bombs["gif"])
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video", r.text
        with ThreadPoolExecutor(4) as pool:  # 4 x 96 MiB of decoding asked at once: they take turns
            fair = list(pool.map(post, [bombs["fair"]] * 4))
        assert [r.status_code for r in fair] == [200] * 4, [r.text for r in fair]
        assert httpx.get(f"{url}/health").status_code == 200 and proc.poll() is None
        grown = peak.stop() - before
        assert grown < 128 + 200, f"the server's RSS grew by {grown:.0f} MiB"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_clip_over_the_frame_limit_is_refused_before_it_is_decoded(engine, tmp_path):
    clip = _clip(tmp_path / "long.mp4", (64, 64), 300)
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro",
                                       limits=ImageLimits(max_video_frames=100))))
    try:
        s.wait_ready()
        r = httpx.post(f"{s.url}/v1/chat/completions", json=_user(_video(_video_url(clip)), TEXT), timeout=60)
        assert r.status_code == 413 and "300 frames, more than the 100" in r.json()["error"]["message"], r.text
        small = _clip(tmp_path / "short.mp4", (64, 64), 12)
        r = httpx.post(f"{s.url}/v1/chat/completions", json=_user(_video(_video_url(small)), TEXT), timeout=60)
        assert r.status_code == 200, r.text
    finally:
        s.stop()


def test_a_video_waits_for_admission_before_it_is_decoded(engine, tmp_path):
    """With the queue full of requests held in generation, a video request is 429 at once: it
    never reached decoding (a bomb would have)."""
    gate = threading.Event()
    s = serve_slow(engine, gate=gate, queue_size=2)
    clip = _clip(tmp_path / "c.mp4", (64, 64), 12)
    try:
        s.wait_ready()
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, f"{s.url}/v1/chat/completions", json={**_user(TEXT), "max_tokens": 2},
                                timeout=60) for _ in range(2)]
            deadline = time.monotonic() + 30
            while s.server.config.app.state.worker.admitted < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = httpx.post(f"{s.url}/v1/chat/completions", json=_user(_video(_video_url(clip)), TEXT), timeout=60)
            assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
            gate.set()
            assert [f.result().status_code for f in held] == [200, 200]
    finally:
        gate.set()
        s.stop()


def test_video_decoding_obeys_the_timeout_and_stops_when_the_client_leaves(engine, tmp_path):
    """A clip that takes about a second to decode here (4,000 frames of 640 x 360): a 0.05 s timeout
    ends its decoding with 504; a client that gives up after 0.2 s frees its place in the queue
    while generation is held shut, so the decoding itself stopped (had it finished, the request
    would wait at the gate, still admitted)."""
    clip = _clip(tmp_path / "long.mp4", (640, 360), 4000)
    body = _user(_video(_video_url(clip)), TEXT)
    quick = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", timeout=0.05)))
    gate = threading.Event()
    s = serve_slow(engine, gate=gate)
    try:
        quick.wait_ready()
        s.wait_ready()
        r = httpx.post(f"{quick.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and "decoding the video took longer" in r.json()["error"]["message"], r.text

        worker = s.server.config.app.state.worker
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the clip is decoded
            httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=0.2)
        deadline = time.monotonic() + 30
        while worker.admitted:
            assert time.monotonic() < deadline, "the request stayed admitted: its decoding was not stopped"
            time.sleep(0.01)
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'status="disconnect"} 1.0' in metrics, [m for m in metrics.splitlines() if "status=" in m]
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        gate.set()
        quick.stop()
        s.stop()


# ---- mutated media parts and other near-valid bodies ------------------------------------------------
def _mutations(rng: random.Random, media: list[tuple[str, bytes]], count: int):
    """Near-valid requests: a real media part with its bytes flipped, cut, spliced or relabelled."""
    labels = ["image/png", "image/jpeg", "image/gif", "image/webp", "video/mp4", "video/x-msvideo", "video/webm",
              "video/quicktime", "image/bmp", "text/plain"]
    for _ in range(count):
        label, data = rng.choice(media)
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            how = rng.randrange(5)
            if how == 0 and data:  # flip bytes
                for _ in range(rng.randint(1, 16)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif how == 1 and len(data) > 1:  # cut
                data = data[: rng.randrange(1, len(data))]
            elif how == 2:  # splice another file's bytes in
                other = rng.choice(media)[1]
                at = rng.randrange(len(data) + 1)
                data[at:at] = other[: rng.randrange(1, len(other) + 1)]
            elif how == 3:  # relabel
                label = rng.choice(labels)
            elif data:  # repeat a stretch
                a = rng.randrange(len(data))
                data[a:a] = data[a: a + rng.randint(1, 64)] * rng.randint(1, 8)
        url = f"data:{label};base64," + base64.b64encode(bytes(data)).decode()
        part = _video(url) if label.startswith("video/") and rng.random() < 0.8 else _image(url)
        yield _user(part, TEXT)


def test_mutated_media_parts_never_get_a_5xx(engine, tmp_path):
    rng = random.Random(7)
    media = [("image/png", _png((16, 16))), ("video/mp4", _clip(tmp_path / "m.mp4", (32, 32), 6)),
             ("video/x-msvideo", _clip(tmp_path / "m.avi", (32, 32), 6, "MJPG"))]
    for fmt, label in (("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, format=fmt)
        media.append((label, buf.getvalue()))
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro")))
    statuses: dict[int, int] = {}
    try:
        s.wait_ready()
        with httpx.Client(timeout=60) as client:
            for body in _mutations(rng, media, 300):
                body["max_tokens"] = 1
                r = client.post(f"{s.url}/v1/chat/completions", json=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert r.status_code < 500, (r.status_code, r.text[:300])
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        s.stop()
    print("mutated media statuses:", dict(sorted(statuses.items())))
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0


def test_degenerate_bodies_are_answered_not_crashed_on(engine):
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro")))
    try:
        s.wait_ready()
        nested = b'{"model": "micro", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = httpx.post(f"{s.url}/v1/chat/completions", content=nested, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"], r.text
        value: object = 1
        for _ in range(18):  # past the 16 levels a chat request may nest, far below Python's limit
            value = [value]
        deep = json.dumps({"model": "micro", "messages": [{"role": "user", "content": "hi", "x": value}]})
        assert httpx.post(f"{s.url}/v1/chat/completions", content=deep).status_code == 400
        for temperature in (2.2e-308, 5e-324, 1e-300, 2.0):
            r = httpx.post(f"{s.url}/v1/chat/completions", timeout=60, json={
                "model": "micro", "messages": [{"role": "user", "content": "hi"}], "temperature": temperature,
                "max_tokens": 3, "seed": 1})
            assert r.status_code == 200, (temperature, r.text)
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        s.stop()


# ---- a remote host that drips its answer ------------------------------------------------------------
class _Dripper:
    """A real HTTP server on loopback that sends its answer one byte every `every` seconds."""

    def __init__(self, body: bytes, every: float):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow.png"
        self.stopped = threading.Event()
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body

        def serve():
            while not self.stopped.is_set():
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                conn.recv(65536)
                for byte in answer:
                    if self.stopped.wait(every):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break
                conn.close()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.stopped.set()
        self.sock.close()


def test_a_remote_image_that_drips_is_cut_at_the_total_deadline(engine):
    dripper = _Dripper(_png(), every=0.2)  # one byte every 0.2 s: each read is quick, the whole is ~25 s
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", limits=ImageLimits(
        allow_remote=True, allow_private_hosts=True, remote_timeout=1.0))))
    try:
        s.wait_ready()
        t0 = time.perf_counter()
        r = httpx.post(f"{s.url}/v1/chat/completions", json=_user(_image(dripper.url), TEXT), timeout=60)
        took = time.perf_counter() - t0
        assert r.status_code == 400 and "timed out after 1 s" in r.json()["error"]["message"], r.text
        assert took < 10, f"the fetch took {took:.1f} s"  # 25 s if the deadline were per read
    finally:
        s.stop()
        dripper.close()
