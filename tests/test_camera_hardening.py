"""vlm-camera against what an outside probe sent it: each reproduction, on the real thing.

The app runs the micro engine (tests/conftest.py) on a video played as a live camera; its page
is served on loopback and spoken to over real sockets: a page on another address without a key,
another site's POST, a rebound host name, prompts the model cannot take, bodies without a sane
length, a crowd of slow clients, a full log disk, webhooks that point inward or redirect, and
an alert storm. After each, the app must still be answering.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fixtures import scene_frames, write_video

from vlm_edge.common.errors import InputError
from vlm_edge.jetson.camera import AnswerRecord, CameraApp, CameraConfig
from vlm_edge.jetson.sources import open_source
from vlm_edge.jetson.web import WebView
from vlm_edge.jetson.webguard import WebLimits

cv2 = pytest.importorskip("cv2", reason='needs OpenCV: pip install "vlm-edge[jetson]"')

PROMPT = "What colour is the shape?"
KEY = "0123456789abcdef-camera-key"


# ---- the app, running -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(micro_engine) -> Path:
    return micro_engine / "engine"


@pytest.fixture(scope="module")
def pipe(engine):
    import vlm_edge.edge as edge

    return edge.load(str(engine))


@pytest.fixture(scope="module")
def frames():
    return scene_frames(size=64)[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, frames) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames * 20)  # 120 s


@pytest.fixture(scope="module")
def folder(tmp_path_factory, frames) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    for i in range(6):
        Image.fromarray(frames[i * 10]).save(root / f"frame_{i}.png")
    return root


class Running:
    """CameraApp.run() on a thread, its records and any error it ended with."""

    def __init__(self, app: CameraApp):
        self.app, self.records, self.error = app, [], None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for record in self.app.run():
                self.records.append(record)
        except BaseException as e:  # noqa: BLE001  (the test asserts there was none)
            self.error = e

    def answers_on(self, count: int = 2, prompt: str | None = None) -> None:
        """Wait for `count` more answers (to `prompt`, when given): the app did not stop."""
        start = len(self.records)
        wait_for(lambda: sum(prompt is None or r.prompt == prompt for r in self.records[start:]) >= count,
                 f"{count} more answers" + (f" to {prompt!r}" if prompt else ""))
        assert self.error is None and self.thread.is_alive()


@pytest.fixture(scope="module")
def running(pipe, clip):
    app = CameraApp(pipe, open_source(str(clip), realtime=True, fps=4), CameraConfig(PROMPT, max_new_tokens=4))
    run = Running(app)
    run.answers_on(1)
    yield run
    app.stop()
    run.thread.join(timeout=30)


@contextlib.contextmanager
def page(app: CameraApp, host: str = "127.0.0.1", **kwargs):
    web = WebView(app, host, 0, **kwargs).start()
    try:
        yield web
    finally:
        web.stop()


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:g} s for {what}"
        time.sleep(0.05)


# ---- HTTP, by hand ----------------------------------------------------------------------------------------
def ask(port: int, method: str, path: str, body: bytes | None = None, **headers: str):
    """(status, response, body); Host is 127.0.0.1:port unless given. Header names: Content_Type -> Content-Type."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Host": f"127.0.0.1:{port}", **{k.replace("_", "-"): v for k, v in headers.items()}}
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response, data


def post_prompt(port: int, body: bytes | str, **headers: str):
    body = body.encode() if isinstance(body, str) else body
    return ask(port, "POST", "/prompt", body, Content_Type="application/json", **headers)


def raw(port: int, data: bytes) -> tuple[int, bytes]:
    """Send bytes as they are; (status, the whole answer) once the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(1 << 16):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def error_of(data: bytes) -> str:
    return json.loads(data)["error"]


# ---- who may use the page -----------------------------------------------------------------------------------
def test_other_hosts_origins_and_content_types_are_refused(running):
    app = running.app
    with page(app) as web:
        port = web.port
        assert ask(port, "GET", "/state")[0] == 200
        assert ask(port, "GET", "/state", Host=f"localhost:{port}")[0] == 200
        # DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1
        status, _, data = ask(port, "GET", "/state", Host="attacker.example")
        assert status == 403 and "--web-host" in error_of(data)
        assert ask(port, "GET", "/", Host=f"attacker.example:{port}")[0] == 403
        assert raw(port, b"GET /state HTTP/1.0\r\n\r\n")[0] == 403  # no Host at all
        # another site's page posting a prompt: the probe's text/plain, then JSON with its Origin
        status, _, data = ask(port, "POST", "/prompt", b'{"prompt": "Say yes."}', Content_Type="text/plain",
                              Origin="http://evil.example")
        assert status == 403 and "http://evil.example" in error_of(data)
        status, _, data = ask(port, "POST", "/prompt", b'{"prompt": "Say yes."}', Content_Type="text/plain")
        assert status == 415 and "application/json" in error_of(data)
        assert post_prompt(port, '{"prompt": "Say yes."}', Origin="http://evil.example")[0] == 403
        assert post_prompt(port, '{"prompt": "Say yes."}', Origin="null")[0] == 403
        assert app.prompt == PROMPT
        status, _, data = post_prompt(port, json.dumps({"prompt": PROMPT}), Origin=f"http://127.0.0.1:{port}")
        assert status == 200 and json.loads(data) == {"prompt": PROMPT}  # the page's own origin
    with page(app, host_names=("Camera.Local",)) as web:
        assert ask(web.port, "GET", "/state", Host=f"camera.local:{web.port}")[0] == 200
        assert ask(web.port, "GET", "/state", Host="camera.local.evil.example")[0] == 403
    running.answers_on()


def test_a_key_guards_every_request_and_the_page_trades_it_for_a_cookie(running):
    app = running.app
    with pytest.raises(InputError, match="--web-key-file"):
        WebView(app, "0.0.0.0", 0)  # beyond loopback, never without a key
    with page(app, key=KEY) as web:
        port = web.port
        status, response, data = ask(port, "GET", "/state")
        assert status == 401 and response.getheader("WWW-Authenticate") == "Bearer" and "Bearer" in error_of(data)
        assert ask(port, "GET", "/state", Authorization="Bearer wrong-key-wrong-key")[0] == 401
        assert ask(port, "GET", "/state", Authorization=f"Bearer {KEY}")[0] == 200
        for path in ("/frame.jpg", "/events", "/video.mjpg"):
            assert ask(port, "GET", path)[0] == 401
        assert post_prompt(port, '{"prompt": "Say yes."}')[0] == 401
        status, _, data = ask(port, "GET", "/")
        assert status == 401 and b"/?key=" in data  # a browser is told how to open it
        assert ask(port, "GET", "/?key=wrong")[0] == 401
        status, response, _ = ask(port, "GET", f"/?key={KEY}")
        cookie = response.getheader("Set-Cookie")
        assert status == 303 and response.getheader("Location") == "/"
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY not in cookie
        jar = cookie.split(";")[0]
        status, _, data = ask(port, "GET", "/", Cookie=jar)
        assert status == 200 and b"<title>vlm-camera</title>" in data
        assert ask(port, "GET", "/state", Cookie=jar)[0] == 200
        assert post_prompt(port, json.dumps({"prompt": PROMPT}), Cookie=jar)[0] == 200
        assert post_prompt(port, json.dumps({"prompt": PROMPT}), Cookie=jar, Origin="http://evil.example")[0] == 403
    running.answers_on()


# ---- prompts the app cannot ask -------------------------------------------------------------------------------
def test_prompts_that_cannot_be_asked_are_400_and_the_app_runs_on(running):
    app = running.app
    with page(app) as web:
        port = web.port
        for body, phrase in ((json.dumps({"prompt": "Is it red? " * 5000}), "too long"),  # 55 KB
                             (json.dumps({"prompt": "<image> or <image>?"}), "2 <image> placeholders"),
                             (json.dumps({"prompt": "<video> What happens?"}), "<video>"),
                             ('{"prompt": "\\ud800"}', "lone surrogate"),  # valid JSON, not valid text
                             ('{"prompt": "yes\\u0000"}', "control character (U+0000)"),
                             (json.dumps({"prompt": "  "}), "empty"),
                             (json.dumps({"prompt": 7}), "must be a string"),
                             (json.dumps({"text": PROMPT}), '{"prompt": "..."}'),
                             (json.dumps([PROMPT]), '{"prompt": "..."}'),
                             ("[" * 20000 + "]" * 20000, "not JSON"),
                             (b'{"prompt": "\xff"}', "not JSON")):
            status, _, data = post_prompt(port, body)
            assert status == 400 and phrase in error_of(data), (body[:40], data)
        assert len(json.dumps({"prompt": "Is it red? " * 5000})) < WebLimits().max_body  # refused for its tokens
        assert app.prompt == PROMPT
        running.answers_on(2, PROMPT)  # the probe's prompts stopped the app on its next frame
        status, _, _ = post_prompt(port, json.dumps({"prompt": "<image>\nDescribe the shape."}))
        assert status == 200
        running.answers_on(2, "<image>\nDescribe the shape.")
        assert post_prompt(port, json.dumps({"prompt": PROMPT}))[0] == 200
        running.answers_on(1, PROMPT)


def test_the_first_prompt_is_checked_too(pipe, folder):
    for prompt, phrase in (("<image><image>", "placeholders"), ("x " * 5000, "too long"), ("\ud800?", "surrogate")):
        with pytest.raises(InputError, match=phrase):
            CameraApp(pipe, open_source(str(folder)), CameraConfig(prompt))


# ---- bodies and connections ------------------------------------------------------------------------------------
def test_bodies_without_a_sane_length_are_refused_unread(running):
    app = running.app
    with page(app) as web:
        port = web.port
        head = f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        for length_header, status in (("Content-Length: -1\r\n", 400), ("Content-Length: abc\r\n", 400),
                                      ("Content-Length: 5\r\nContent-Length: 5\r\n", 400), ("", 411),
                                      ("Transfer-Encoding: chunked\r\n", 411),
                                      (f"Content-Length: {200 << 20}\r\n", 413),  # 200 MB announced, never read
                                      (f"Content-Length: {(64 << 10) + 1}\r\n", 413)):
            got, answer = raw(port, (head + length_header + "\r\n").encode())
            assert got == status, (length_header, answer)
    with page(app, limits=WebLimits(request_seconds=1.0)) as web:
        head = head.replace(f"127.0.0.1:{port}", f"127.0.0.1:{web.port}")
        body = b'{"prompt": "Say yes."}'
        got, answer = raw(web.port, (head + f"Content-Length: {len(body) + 10}\r\n\r\n").encode() + body)
        assert got == 408 and b"over 1 s" in answer  # the body never ended: the request's deadline
    assert app.prompt == PROMPT
    running.answers_on()


def test_slow_clients_are_cut_off_and_a_crowd_gets_503_without_threads(running):
    limits = WebLimits(request_seconds=2.0, max_connections=8)
    with page(running.app, limits=limits) as web:
        port = web.port
        half = (f"POST /prompt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{\"prompt\": ").encode()  # half a body, then nothing
        threads_before = threading.active_count()
        slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(limits.max_connections)]
        for s in slow:
            s.sendall(half)
        wait_for(lambda: web.server.active == limits.max_connections, "the slow clients to be taken")
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(32)]
        # each slow client holds a handler thread and its deadline's timer; the crowd holds none
        assert threading.active_count() <= threads_before + 2 * limits.max_connections + 1

        def status(s: socket.socket) -> int:
            answer = b""
            while chunk := s.recv(1 << 16):
                answer += chunk
            s.close()
            return int(answer.split(b" ", 2)[1])

        assert [status(s) for s in crowd] == [503] * 32
        assert [status(s) for s in slow] == [408] * limits.max_connections  # cut off after 2 s, not held
        wait_for(lambda: web.server.active == 0, "the slow connections to close")
        assert ask(port, "GET", "/state")[0] == 200  # served again
    running.answers_on()


def test_streams_outlive_the_request_deadline(running):
    limits = WebLimits(request_seconds=1.0)
    with page(running.app, limits=limits) as web:
        with socket.create_connection(("127.0.0.1", web.port), timeout=30) as s:
            s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n\r\n".encode())
            got = b""
            start = time.monotonic()
            while b"event: answer" not in got or time.monotonic() - start < 2 * limits.request_seconds:
                chunk = s.recv(1 << 16)
                assert chunk, got  # closed: the request's deadline cut the stream
                got += chunk
            assert got.startswith(b"HTTP/1.0 200") and b"event: prompt" in got


# ---- vlm-camera, the command -------------------------------------------------------------------------------------
def _camera(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlm_edge.jetson.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_vlm_camera_needs_a_key_beyond_loopback_and_warns_with_one(engine, clip, tmp_path):
    no_key = {k: v for k, v in os.environ.items() if k != "VLM_CAMERA_WEB_KEY"}
    short = tmp_path / "short.key"
    short.write_text("1234\n")
    for args, phrase in ((["--web", "0.0.0.0:0"], "--web-key-file"),
                         (["--web", "0.0.0.0:0", "--web-key-file", str(tmp_path / "none")], "cannot read a key"),
                         (["--web", "0.0.0.0:0", "--web-key-file", str(short)], "at least 16"),
                         (["--web-key-file", str(short)], "go with --web")):
        proc = subprocess.run([sys.executable, "-m", "vlm_edge.jetson.cli", str(engine), "--source", str(clip),
                               "--prompt", PROMPT, *args], capture_output=True, text=True, env=no_key, timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and phrase in proc.stderr, \
            proc.stderr
    proc = _camera(str(engine), "--source", str(clip), "--realtime", "--prompt", PROMPT, "--web", "0.0.0.0:0",
                   env={"VLM_CAMERA_WEB_KEY": KEY})
    try:
        line = proc.stdout.readline()
        found = re.match(r"live page: http://0\.0\.0\.0:(\d+)/ \(with the key: open /\?key=KEY once", line)
        assert found and KEY not in line, line
        port = int(found.group(1))
        assert " frame " in proc.stdout.readline()  # answering (and Ctrl-C is the app's now)
        assert ask(port, "GET", "/state")[0] == 401
        assert ask(port, "GET", "/state", Host="attacker.example", Authorization=f"Bearer {KEY}")[0] == 403
        status, _, data = ask(port, "GET", "/state", Authorization=f"Bearer {KEY}")
        assert status == 200 and json.loads(data)["prompt"] == PROMPT
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "warning: --web 0.0.0.0:0 is reachable from the network" in err and "Traceback" not in err


# ---- the log on a full disk -----------------------------------------------------------------------------------------
class Caught(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_full_log_disk_is_reported_once_and_the_app_runs_on(pipe, folder):
    caught, logger = Caught(), logging.getLogger("vlm_edge.jetson.camera")
    logger.addHandler(caught)
    try:
        app = CameraApp(pipe, open_source(str(folder)), CameraConfig(PROMPT, log_path="/dev/full"))  # ENOSPC
        records = list(app.run())
    finally:
        logger.removeHandler(caught)
    assert len(records) == 6 and app.stats.log_errors == 6 and app.stats.summary()["log_errors"] == 6
    assert len(caught.messages) == 1 and "--log /dev/full: cannot write" in caught.messages[0]
    with pytest.raises(InputError, match="--log .*cannot open"):
        list(CameraApp(pipe, open_source(str(folder)), CameraConfig(PROMPT, log_path=str(folder / "no" / "x"))).run())


def test_a_log_that_fills_mid_record_keeps_whole_lines(engine, folder, tmp_path):
    """The file size limit (RLIMIT_FSIZE) stands in for a disk that fills: the write that crosses it is
    short, and the ones after fail (EFBIG). No line may be left cut."""
    log_path = tmp_path / "answers.jsonl"
    limit = 300  # one record fits, the second crosses the limit
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0})); "
            "from vlm_edge.jetson.cli import camera_main; sys.exit(camera_main(sys.argv[1:]))").format(limit)
    proc = subprocess.run([sys.executable, "-c", code, str(engine), "--source", str(folder), "--prompt", PROMPT,
                           "--log", str(log_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.split("summary: ")[1])
    text = log_path.read_text()
    lines = text.splitlines()
    assert summary["answers"] == 6 and summary["log_errors"] >= 1 and len(lines) + summary["log_errors"] == 6
    assert text.endswith("\n") and all(json.loads(line)["prompt"] == PROMPT for line in lines)
    assert [line for line in proc.stderr.splitlines() if "--log" in line] == proc.stderr.strip().splitlines()
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


# ---- alerts ------------------------------------------------------------------------------------------------------------
class Recorder:
    """A loopback HTTP server that records every request: /hook answers 200, /redirect 302 to
    /internal-admin?token=1, anything else 404."""

    def __init__(self):
        self.requests: list[tuple[str, str, bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append((self.command, self.path, body))
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/internal-admin?token=1")
                else:
                    self.send_response(200 if self.path == "/hook" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


def _record(answer: str) -> AnswerRecord:
    now = time.time()
    return AnswerRecord(3, now, now, 0.01, PROMPT, answer, 0, 0.3)


def test_webhooks_that_point_inward_or_elsewhere_are_refused_at_start(engine, folder):
    for url, phrase in (("file:///etc/passwd", "http:// or https://"), ("ftp://127.0.0.1/x", "http:// or https://"),
                        ("gopher://127.0.0.1:70/_x", "http:// or https://"), ("http:///path", "with a host"),
                        ("http://169.254.169.254/latest/meta-data/", "link-local"),
                        ("http://[fe80::1]/", "link-local"), ("http://224.0.0.1/", "multicast"),
                        ("http://0.0.0.0:9/", "unspecified"), ("http://127.0.0.1:99999/", "port"),
                        ("http://127.0.0.1:9/hook", "--alert-webhook-private"),
                        ("http://192.168.1.10/hook", "--alert-webhook-private")):
        with pytest.raises(InputError, match=phrase):
            CameraConfig(PROMPT, alert="yes", alert_webhook=url).validate()
    CameraConfig(PROMPT, alert="yes", alert_webhook="http://127.0.0.1:9/hook", alert_webhook_private=True).validate()
    with pytest.raises(InputError, match="link-local"):  # never, whatever the flag says
        CameraConfig(PROMPT, alert="yes", alert_webhook="http://169.254.169.254/", alert_webhook_private=True).validate()
    with pytest.raises(InputError, match="without a shell"):
        CameraConfig(PROMPT, alert="yes", alert_command="no-such-program-here --now").validate()
    with pytest.raises(InputError, match="quotes"):
        CameraConfig(PROMPT, alert="yes", alert_command="notify-send 'smoke").validate()
    proc = subprocess.run([sys.executable, "-m", "vlm_edge.jetson.cli", str(engine), "--source", str(folder),
                           "--prompt", PROMPT, "--alert", "yes", "--alert-webhook", "http://169.254.169.254/"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "link-local" in proc.stderr


def test_a_webhook_redirect_is_a_failed_alert_not_followed(pipe, folder, recorder):
    config = CameraConfig(PROMPT, alert="yes", alert_webhook=recorder.url + "/redirect", alert_every=0,
                          alert_webhook_private=True)
    app = CameraApp(pipe, open_source(str(folder)), config)
    assert app.alert(_record("yes"))
    wait_for(lambda: app.alerts_running == 0, "the alert to finish")
    assert [(m, p) for m, p, _ in recorder.requests] == [("POST", "/redirect")]  # not /internal-admin?token=1
    assert app.stats.alert_failures == 1 and app.stats.alerts == 1


def test_alerts_are_capped_and_survive_nul_and_a_failing_command(pipe, folder, recorder, tmp_path):
    hold = tmp_path / "hold.py"  # marks that it started, then waits for the go file
    hold.write_text("import os, sys, time\n"
                    "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
                    "while not os.path.exists(sys.argv[2]):\n"
                    "    time.sleep(0.05)\n")
    started, go = tmp_path / "started", tmp_path / "go"
    started.mkdir()
    config = CameraConfig(PROMPT, alert=".", alert_command=f"{sys.executable} {hold} {started} {go}", alert_every=0)
    app = CameraApp(pipe, open_source(str(folder)), config)
    fired = [app.alert(_record("yes")) for _ in range(10)]  # the probe: 101 commands at once after 10 s
    assert fired == [True] * 4 + [False] * 6
    assert app.alerts_running == 4 and app.stats.alerts == 4 and app.stats.alerts_skipped == 6
    assert app.stats.summary()["alerts_skipped"] == 6
    wait_for(lambda: len(list(started.iterdir())) == 4, "four commands to start")
    go.touch()
    wait_for(lambda: app.alerts_running == 0, "the commands to end")
    assert app.alert(_record("yes")) and app.stats.alert_failures == 0  # a slot again
    wait_for(lambda: app.alerts_running == 0, "the last command to end")

    said = tmp_path / "said.txt"  # what the command saw in $VLM_ANSWER, then it fails
    script = tmp_path / "say.py"
    script.write_text(f"import os, sys\nopen({str(said)!r}, 'w').write(os.environ['VLM_ANSWER'])\nsys.exit(3)\n")
    config = CameraConfig(PROMPT, alert="yes", alert_command=f"{sys.executable} {script}",
                          alert_webhook=recorder.url + "/hook", alert_webhook_private=True)
    app = CameraApp(pipe, open_source(str(folder)), config)
    answer = "yes\0 $(touch pwned); rm -rf ~"
    assert app.alert(_record(answer))
    wait_for(lambda: app.alerts_running == 0, "the alert to finish")
    assert said.read_text() == "yes $(touch pwned); rm -rf ~"  # NUL gone, and no shell read it
    (method, path, body), = recorder.requests
    assert (method, path) == ("POST", "/hook") and json.loads(body)["answer"] == answer  # the webhook went out
    assert app.stats.alert_failures == 1  # the command's exit code 3
