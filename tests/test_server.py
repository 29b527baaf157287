"""server: a real uvicorn server on loopback over the micro engine, driven by the official openai client.

Some tests need a request to stay in flight (the queue limit, a client going away, timeouts,
shutdown): they wrap the real pipeline so that its answers wait at a gate or come slowly and
never stop early. The pipeline underneath is the real one.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from PIL import Image

from vlm_edge.edge import SamplingConfig, load
from vlm_edge.server import ServerConfig, create_app
from vlm_edge.server.images import ImageLimits

openai = pytest.importorskip("openai")


class Served:
    """An app served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while httpx.get(f"{self.url}/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine did not load"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the server did not stop"

    def client(self, **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, **kw)


class SlowPipeline:
    """The real pipeline, whose answers wait for `gate`, then take `delay` seconds per token and
    run to max_tokens (end-of-sequence ignored)."""

    def __init__(self, pipe, gate: threading.Event | None = None, delay: float = 0.0):
        self.pipe, self.gate, self.delay = pipe, gate, delay

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def stream(self, messages, images, config, *, should_stop=None, **kw):
        if self.gate is not None:
            self.gate.wait()
        config.ignore_eos = True

        def slow_stop():  # asked once per token
            time.sleep(self.delay)
            return should_stop is not None and should_stop()

        yield from self.pipe.stream(messages, images, config, should_stop=slow_stop, **kw)


def serve_slow(engine, *, gate: threading.Event | None = None, delay: float = 0.0, **options) -> Served:
    """A server over the micro engine whose pipeline is a SlowPipeline."""
    return Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", **options),
                             load=lambda: SlowPipeline(load(engine, "ort-cpu"), gate, delay)))


def data_url(image: Image.Image | bytes, fmt: str = "PNG") -> str:
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        image = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode()


@pytest.fixture(scope="module")
def engine(micro_engine):
    return micro_engine / "engine"


@pytest.fixture(scope="module")
def picture(micro_engine):
    return Image.open(next((micro_engine / "awq" / "calibration" / "images").iterdir())).convert("RGB")


@pytest.fixture(scope="module")
def served(engine):
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro")))
    s.wait_ready()
    yield s
    s.stop()


def expected(engine, messages, images, max_tokens):
    return load(engine, "ort-cpu").generate(messages, images, SamplingConfig(max_new_tokens=max_tokens))


# ---- the OpenAI client, unchanged ---------------------------------------------------------------
def test_openai_client_plain_streaming_and_an_image(served, engine, picture):
    client = served.client()
    assert [m.id for m in client.models.list().data] == ["micro"]
    content = [{"type": "image_url", "image_url": {"url": data_url(picture)}},
               {"type": "text", "text": "Describe the image."}]
    plain = client.chat.completions.create(model="micro", messages=[{"role": "user", "content": content}],
                                           max_tokens=16)
    ref = expected(engine, [{"role": "user", "content": "<image>\nDescribe the image."}], [picture], 16)
    assert plain.choices[0].message.content == ref.text and plain.choices[0].finish_reason == ref.finish_reason
    assert plain.usage.prompt_tokens == ref.prompt_tokens
    assert plain.usage.completion_tokens == len(ref.token_ids)
    assert plain.usage.total_tokens == ref.prompt_tokens + len(ref.token_ids)

    chunks = list(client.chat.completions.create(model="micro", messages=[{"role": "user", "content": content}],
                                                 max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason

    system = client.chat.completions.create(
        model="micro", max_completion_tokens=8, temperature=0.8, top_p=0.9, seed=3, stop=["zz"],
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat after me: a b"}])
    assert system.usage.completion_tokens <= 8


def test_openai_client_sends_a_video_url_part(served, engine, tmp_path):
    """vLLM's video_url content part, as a data URL: the answer is the runtime's about the same clip."""
    pytest.importorskip("cv2", reason="video decoding needs OpenCV")
    from fixtures import scene_frames, write_video

    frames, _ = scene_frames(seconds=1.0, fps=10, size=64)
    clip = write_video(tmp_path / "scene.mp4", frames)
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What colour is the shape?"}]
    got = served.client().chat.completions.create(model="micro", messages=[{"role": "user", "content": content}],
                                                  max_tokens=8)
    ref = load(engine, "ort-cpu").generate("What colour is the shape?", config=SamplingConfig(max_new_tokens=8),
                                           video=clip)
    assert got.choices[0].message.content == ref.text and got.usage.prompt_tokens == ref.prompt_tokens


def test_sixteen_concurrent_streams_all_get_their_whole_answer(served, engine, picture):
    prompts = [f"Repeat after me: {' '.join(['cat', 'dog', 'red', 'blue'][: 1 + i % 4])} {i}" for i in range(16)]
    refs = {p: expected(engine, p, [], 12).text for p in prompts}

    def ask(prompt):
        stream = served.client().chat.completions.create(
            model="micro", messages=[{"role": "user", "content": prompt}], max_tokens=12, stream=True)
        return prompt, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        answers = dict(pool.map(ask, prompts))
    assert answers == refs
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_a_full_queue_answers_429_and_the_server_stays_healthy(engine):
    gate = threading.Event()
    s = serve_slow(engine, gate=gate, queue_size=4)
    try:
        s.wait_ready()
        body = {"model": "micro", "messages": [{"role": "user", "content": "Repeat after me: a"}], "max_tokens": 4}
        with ThreadPoolExecutor(4) as pool:
            admitted = [pool.submit(httpx.post, f"{s.url}/v1/chat/completions", json=body, timeout=60) for _ in range(4)]
            deadline = time.monotonic() + 10
            while s.server.config.app.state.worker.admitted < 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            extra = [httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=10) for _ in range(3)]
            assert [r.status_code for r in extra] == [429] * 3
            assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "queue_full" for r in extra)
            assert httpx.get(f"{s.url}/health").status_code == 200
            with pytest.raises(openai.RateLimitError):
                s.client().chat.completions.create(**body)
            gate.set()
            assert [f.result().status_code for f in admitted] == [200] * 4
        assert httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        metrics = httpx.get(f"{s.url}/metrics").text
        assert 'vlm_edge_requests_total{status="rejected"} 4.0' in metrics
        assert 'vlm_edge_requests_total{status="ok"} 5.0' in metrics
        assert "vlm_edge_time_to_first_token_seconds_bucket" in metrics and "vlm_edge_queue_depth 0.0" in metrics
    finally:
        gate.set()
        s.stop()


def test_a_client_that_goes_away_cancels_its_generation(engine):
    s = serve_slow(engine, delay=0.05)
    try:
        s.wait_ready()
        body = {"model": "micro", "messages": [{"role": "user", "content": "Repeat after me: a"}], "max_tokens": 400,
                "stream": True}
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        worker = s.server.config.app.state.worker
        deadline = time.monotonic() + 5  # 400 tokens would take 20 s
        while worker.admitted:
            assert time.monotonic() < deadline, "the generation went on after the client left"
            time.sleep(0.05)
        assert 'vlm_edge_requests_total{status="disconnect"} 1.0' in httpx.get(f"{s.url}/metrics").text
        small = {**body, "max_tokens": 2, "stream": False}
        assert httpx.post(f"{s.url}/v1/chat/completions", json=small, timeout=30).status_code == 200
    finally:
        s.stop()


def test_health_is_503_while_loading_and_timeouts_are_504(engine):
    gate = threading.Event()

    def slow_load():
        gate.wait()
        return SlowPipeline(load(engine, "ort-cpu"), delay=0.05)

    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", timeout=0.5), load=slow_load))
    try:
        r = httpx.get(f"{s.url}/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        body = {"model": "micro", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
        assert httpx.post(f"{s.url}/v1/chat/completions", json=body).status_code == 503
        gate.set()
        s.wait_ready()
        r = httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json={**body, "stream": True}, timeout=30) as resp:
            events = [line for line in resp.iter_lines() if line]
        assert "timeout" in events[-2] and events[-1] == "data: [DONE]"
    finally:
        gate.set()
        s.stop()


def test_shutdown_lets_the_running_answer_finish(engine):
    s = serve_slow(engine, delay=0.02)
    s.wait_ready()
    body = {"model": "micro", "messages": [{"role": "user", "content": "Repeat after me: a"}], "max_tokens": 40,
            "stream": True}
    events, errors = [], []

    def read():
        try:
            with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=30) as response:
                events.extend(line for line in response.iter_lines() if line)
        except Exception as e:  # an unfinished body (no final chunk) shows up here
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    s.stop()
    reader.join(timeout=30)
    assert not errors and events[-1] == "data: [DONE]" and '"finish_reason": "length"' in events[-2]


def test_api_key(engine):
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", api_key="k3y")))
    try:
        s.wait_ready()
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert s.client(api_key="k3y").models.list().data[0].id == "micro"
        assert httpx.get(f"{s.url}/health").status_code == 200  # health and metrics need no key
    finally:
        s.stop()


# ---- bad input: a table ---------------------------------------------------------------------------
def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A small PNG that declares 20000 x 20000 pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


def _png_as(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def _user(*parts):
    return {"model": "micro", "messages": [{"role": "user", "content": list(parts)}], "max_tokens": 4}


def _image(url):
    return {"type": "image_url", "image_url": {"url": url}}


def _video(url):
    return {"type": "video_url", "video_url": {"url": url}}


TEXT = {"type": "text", "text": "What is it?"}
OK = {"model": "micro", "messages": [{"role": "user", "content": "hi"}]}

BAD_INPUTS = [
    # name, body (dict) or raw bytes, status, error code or message fragment
    ("malformed JSON", b'{"model": "micro", "messages": [', 400, "json_invalid"),
    ("not an object", b"[1, 2]", 400, None),
    ("missing messages", {"model": "micro"}, 400, "missing"),
    ("missing model", {"messages": OK["messages"]}, 400, "missing"),
    ("empty messages", {"model": "micro", "messages": []}, 400, None),
    ("wrong type: messages", {"model": "micro", "messages": "hi"}, 400, None),
    ("wrong type: max_tokens", {**OK, "max_tokens": "many"}, 400, None),
    ("negative max_tokens", {**OK, "max_tokens": -1}, 400, None),
    ("temperature out of range", {**OK, "temperature": 7}, 400, None),
    ("unknown role", {"model": "micro", "messages": [{"role": "robot", "content": "hi"}]}, 400, None),
    ("unsupported parameter", {**OK, "tools": [{"type": "function"}]}, 400, "extra_forbidden"),
    ("unsupported value: n", {**OK, "n": 3}, 400, None),
    ("unsupported value: logprobs", {**OK, "logprobs": True}, 400, None),
    ("too many stop strings", {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    ("unknown model", {**OK, "model": "gpt-4o"}, 404, "model_not_found"),
    ("undecodable image", _user(_image(data_url(b"this is not an image")), TEXT), 400, "invalid_image"),
    ("truncated image", _user(_image(data_url(_png((64, 64))[:60])), TEXT), 400, "invalid_image"),
    ("bad base64", _user(_image("data:image/png;base64,@@@@"), TEXT), 400, "invalid_image"),
    ("not an image data URL", _user(_image("data:text/plain;base64,aGk="), TEXT), 400, "invalid_image"),
    ("image too large in bytes", _user(_image(data_url(b"\0" * 300_000)), TEXT), 413, "image_too_large"),
    ("image too large in pixels (bomb)", _user(_image(data_url(_bomb())), TEXT), 413, "image_too_large"),
    ("too many images", _user(*[_image(data_url(_png()))] * 3, TEXT), 400, "too_many_images"),
    ("local path not enabled", _user(_image("/etc/hostname"), TEXT), 400, "invalid_image"),
    ("remote URL not enabled", _user(_image("http://127.0.0.1:9/x.png"), TEXT), 400, "invalid_image"),
    ("image in an assistant turn", {"model": "micro", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [_image(data_url(_png()))]},
        {"role": "user", "content": "and?"}]}, 400, None),
    ("reserved <image> text", {"model": "micro", "messages": [{"role": "user", "content": "<image> hi"}]}, 400, None),
    ("prompt over the context", {"model": "micro", "messages": [{"role": "user", "content": "word " * 3000}]}, 400,
     "context_length_exceeded"),
    ("max_tokens over the context", {**OK, "max_tokens": 100_000}, 400, "context_length_exceeded"),
    ("lone surrogate in a message", {"model": "micro", "messages": [{"role": "user", "content": "hi \ud800"}]},
     400, "invalid_text"),
    ("lone surrogate in a text part", _user({"type": "text", "text": "\udfff"}), 400, "messages.0.content.0.text"),
    ("lone surrogate in stop", {**OK, "stop": ["\ud800"]}, 400, "invalid_text"),
    ("a megabyte of text (refused before tokenizing)", {"model": "micro", "messages": [
        {"role": "user", "content": "word " * 200_000}]}, 400, "bytes of text, more than"),
    ("a GIF (not a format we decode)", _user(_image(data_url(_png_as("GIF"))), TEXT), 400, "PNG, JPEG, WebP or BMP"),
    ("a TIFF", _user(_image(data_url(_png_as("TIFF"))), TEXT), 400, "PNG, JPEG, WebP or BMP"),
    ("video not as a data URL", _user(_video("/tmp/clip.mp4"), TEXT), 400, "invalid_video"),
    ("undecodable video", _user(_video("data:video/mp4;base64," + base64.b64encode(b"not a video").decode()), TEXT),
     400, "invalid_video"),
    ("not a video data URL", _user(_video("data:image/png;base64,aGk="), TEXT), 400, "invalid_video"),
    ("a video with an image", _user(_image(data_url(_png())), _video("data:video/mp4;base64,aGk="), TEXT), 400,
     "too_many_videos"),
    ("reserved <video> text", {"model": "micro", "messages": [{"role": "user", "content": "<video> hi"}]}, 400, None),
    ("two user turns in a row", {"model": "micro", "messages": [{"role": "user", "content": "a"},
                                                                {"role": "user", "content": "b"}]}, 400, None),
]


@pytest.fixture(scope="module")
def strict(engine):
    limits = ImageLimits(max_bytes=200_000, max_pixels=4096 * 4096)
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", max_images=2,
                                       limits=limits)))
    s.wait_ready()
    yield s
    s.stop()


@pytest.mark.parametrize("name,body,status,code", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(strict, name, body, status, code):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{strict.url}/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert code in (error["code"] or "") + error["message"], error
    assert httpx.get(f"{strict.url}/health").status_code == 200


def test_an_oversized_body_is_refused_before_it_is_read(strict):
    r = httpx.post(f"{strict.url}/v1/chat/completions", content=b" " * (strict.server.config.app.state.config
                                                                        .max_body_bytes + 1),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_a_chunked_body_is_held_to_the_same_limit(strict):
    limit = strict.server.config.app.state.config.max_body_bytes
    sent = []

    def chunks():  # no Content-Length: httpx sends Transfer-Encoding: chunked
        for _ in range(limit // 65536 + 8):
            sent.append(65536)
            yield b" " * 65536

    r = httpx.post(f"{strict.url}/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    body = json.dumps({**OK, "max_tokens": 2}).encode()
    r = httpx.post(f"{strict.url}/v1/chat/completions", content=iter([body[:10], body[10:]]),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 200, r.text  # a small chunked body is served as usual


def test_content_length_with_transfer_encoding_is_not_a_way_around_the_limit(strict):
    limit = strict.server.config.app.state.config.max_body_bytes
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        try:
            for _ in range(limit // len(chunk) + 8):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection: refused before the whole body
            pass
        reply = sock.recv(4096)
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1") else None
    assert status in (400, 413), reply[:200]
    assert httpx.get(f"{strict.url}/health").status_code == 200


# ---- fuzzing from the OpenAPI schema ----------------------------------------------------------------
def test_fuzzing_the_openapi_schema_finds_no_5xx_and_no_hang(served):
    """Schema-valid and schema-violating requests for every operation; valid bodies get the served
    model's name half of the time, so they reach generation instead of stopping at 404."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = list(schemathesis.GenerationMode) if operation.method.upper() == "POST" else [
            schemathesis.GenerationMode.POSITIVE]  # a GET without parameters has no invalid form
        for mode in modes:

            @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), ours=st.booleans())
            def check(case, ours):
                if ours and isinstance(case.body, dict) and "model" in case.body:
                    case.body["model"] = "micro"
                    if isinstance(case.body.get("max_tokens"), int) and case.body["max_tokens"] > 8:
                        case.body["max_tokens"] = 8  # keep generation short; the context check is tested above
                response = case.call(base_url=served.url, timeout=20)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

            check()
    print("fuzz statuses:", dict(sorted(statuses.items())))
    assert sum(statuses.values()) >= 100 and statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0
    assert httpx.get(f"{served.url}/health").status_code == 200


# ---- where images may come from ------------------------------------------------------------------
class _ImageHost:
    """A real HTTP server on loopback: /img.png is a PNG, /to-metadata redirects to 169.254.169.254,
    /missing is a 404."""

    def __init__(self, png: bytes):
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/img.png":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(png)))
                    self.end_headers()
                    self.wfile.write(png)
                elif self.path == "/to-metadata":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                elif self.path == "/to-self":
                    self.send_response(302)
                    self.send_header("Location", "/img.png")
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _post(served, body):
    return httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=30)


def test_remote_images_come_only_from_public_addresses_unless_allowed(engine):
    host = _ImageHost(_png())
    public_only = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro",
                                                 limits=ImageLimits(allow_remote=True))))
    lan = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro",
                                         limits=ImageLimits(allow_remote=True, allow_private_hosts=True))))
    try:
        public_only.wait_ready()
        lan.wait_ready()
        refused = {
            f"{host.url}/img.png": "loopback or private address",
            f"http://localhost:{host.url.rsplit(':', 1)[1]}/img.png": "loopback or private address",  # after DNS
            "http://169.254.169.254/latest/meta-data/": "link-local",
            "http://10.1.2.3/cam.jpg": "loopback or private address",
            "http://[::1]/x.png": "loopback or private address",
        }
        for url, phrase in refused.items():
            r = _post(public_only, _user(_image(url), TEXT))
            assert r.status_code == 400 and phrase in r.json()["error"]["message"], (url, r.text)
        assert _post(lan, _user(_image(f"{host.url}/img.png"), TEXT)).status_code == 200
        assert _post(lan, _user(_image(f"{host.url}/to-self"), TEXT)).status_code == 200
        r = _post(lan, _user(_image(f"{host.url}/to-metadata"), TEXT))  # the redirect is checked too
        assert r.status_code == 400 and "link-local" in r.json()["error"]["message"], r.text
        r = _post(lan, _user(_image(f"{host.url}/missing"), TEXT))
        assert r.status_code == 400 and r.json()["error"]["message"].endswith("(HTTP 404)"), r.text
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        r = _post(lan, _user(_image(f"http://127.0.0.1:{port}/x.png"), TEXT))
        assert r.status_code == 400 and "(the connection failed)" in r.json()["error"]["message"], r.text
    finally:
        public_only.stop()
        lan.stop()
        host.close()


def test_local_images_only_under_the_image_root(engine, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "ok.png").write_bytes(_png())
    (tmp_path / "secret.png").write_bytes(_png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro",
                                       limits=ImageLimits(local_root=str(root)))))
    try:
        s.wait_ready()
        assert _post(s, _user(_image(str(root / "ok.png")), TEXT)).status_code == 200
        assert _post(s, _user(_image("ok.png"), TEXT)).status_code == 200  # relative: under the root
        for url in (str(tmp_path / "secret.png"), "../secret.png", str(root / "link.png"), "/etc/hostname"):
            r = _post(s, _user(_image(url), TEXT))
            assert r.status_code == 400 and "must lie under" in r.json()["error"]["message"], (url, r.text)
    finally:
        s.stop()


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    import argparse

    from vlm_edge.common.errors import InputError
    from vlm_edge.server.cli import api_key_from

    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    ns = lambda **kw: argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})  # noqa: E731
    monkeypatch.delenv("VLM_SERVE_API_KEY", raising=False)
    assert api_key_from(ns()) is None
    assert api_key_from(ns(api_key_file=str(key_file))) == "s3cret"
    monkeypatch.setenv("VLM_SERVE_API_KEY", "from-env")
    assert api_key_from(ns()) == "from-env"
    assert api_key_from(ns(api_key="given")) == "given"
    with pytest.raises(InputError, match="cannot read a key"):
        api_key_from(ns(api_key_file=str(tmp_path / "none")))


def test_an_open_bind_without_a_key_is_warned_about(engine):
    import shutil
    import subprocess

    proc = subprocess.Popen([shutil.which("vlm-serve"), str(engine), "--host", "0.0.0.0", "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**__import__("os").environ,
                                                                    "VLM_SERVE_API_KEY": ""})
    try:
        first = proc.stderr.readline()
        assert "warning: 0.0.0.0 is reachable from the network and no API key is set" in first, first
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_image_memory_is_budgeted_and_reported(engine):
    from vlm_edge.server.images import DecodeBudget

    big = _png((1024, 1024))  # 1 MP: reserves 5 MiB while decoded
    s = Served(create_app(ServerConfig(str(engine), backend="ort-cpu", model_name="micro", max_memory=4 << 20)))
    try:
        s.wait_ready()
        r = _post(s, _user(_image(data_url(big)), TEXT))
        assert r.status_code == 413 and "more than the server's image memory of 4 MiB" in r.json()["error"]["message"]
        assert _post(s, _user(_image(data_url(_png((512, 512)))), TEXT)).status_code == 200
        text = httpx.get(f"{s.url}/metrics").text
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("vlm_")}
        assert values["vlm_edge_image_memory_limit_bytes"] == 4 << 20
        assert values["vlm_edge_image_memory_used_bytes"] == 0
    finally:
        s.stop()
    budget = DecodeBudget(10, wait=0.05)  # a decode that does not fit waits, then is refused with 503
    with budget.reserve(8, "a"):
        with pytest.raises(Exception, match="stayed full"):
            with budget.reserve(4, "b"):
                pass
    assert budget.used == 0
