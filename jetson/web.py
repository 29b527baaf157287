"""The camera app's live web page: the video with the latest answer drawn on it, answers as they come,
and the prompt, editable while it runs. Standard library only (http.server, one thread per client).

    GET  /            the page (with a key: /?key=KEY once sets a cookie, then /)
    GET  /frame.jpg   the newest frame, the latest answer drawn on it (the page polls it)
    GET  /video.mjpg  the same as an MJPEG stream (multipart/x-mixed-replace), for players
    GET  /events      server-sent events: "answer" (an AnswerRecord as JSON) and "prompt"
    GET  /state       JSON: the prompt, the latest answer, the app's counters
    POST /prompt      {"prompt": "..."} (application/json): ask this from the next frame on

The page can change what the camera is asked, so every request passes webguard.py's checks
first: the Host header names this camera (else 403: DNS rebinding), a browser's Origin is the
page's own (else 403), and the key, when there is one (required beyond loopback), is sent
(else 401). POST takes application/json only (415; a plain form cannot send it) and a body of
at most WebLimits.max_body bytes with a Content-Length (413, 411, 400). A client has
WebLimits.request_seconds to send its whole request (then 408 and closed; /events and
/video.mjpg run on once asked), and WebLimits.max_connections are served at once (one more:
503). It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import json
import queue
import re
import socket
import threading
import urllib.parse
from dataclasses import asdict
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_edge.common.errors import InputError

from .camera import AnswerRecord, CameraApp
from .webguard import COOKIE, Guard, Server, WebLimits, check_exposure, drain, response

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlm-camera</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 60rem; color: #222; }
 #video { width: 100%; max-width: 40rem; image-rendering: pixelated; background: #111; display: block; }
 form { margin: 1rem 0; display: flex; gap: .5rem; } #prompt { flex: 1; font-size: 1rem; padding: .3rem; }
 #answers { font-family: ui-monospace, monospace; } .meta { color: #777; } .error { color: #b00; }
</style></head>
<body>
<h1>vlm-camera</h1>
<img id="video" alt="live video" src="/frame.jpg">
<p class="meta"><span id="frames">0</span> frames shown, <span id="count">0</span> answers</p>
<form id="ask"><input id="prompt" aria-label="prompt" value=""><button type="submit">Ask</button></form>
<p id="error" class="error" role="alert"></p>
<ol id="answers" reversed></ol>
<script>
const video = document.getElementById('video'), answers = document.getElementById('answers');
let frames = 0, count = 0;
function next() { video.src = '/frame.jpg?t=' + Date.now(); }
video.onload = () => { document.getElementById('frames').textContent = ++frames; setTimeout(next, 80); };
video.onerror = () => setTimeout(next, 500);
const events = new EventSource('/events');
events.addEventListener('answer', e => {
  const r = JSON.parse(e.data), li = document.createElement('li');
  li.className = 'answer'; li.dataset.prompt = r.prompt; li.dataset.answer = r.answer;
  li.textContent = new Date(r.captured * 1000).toLocaleTimeString() + '  frame ' + r.frame + ': ' + r.answer
    + '  (' + Math.round(r.latency * 1000) + ' ms; ' + r.prompt + ')';
  answers.prepend(li); while (answers.children.length > 100) answers.lastChild.remove();
  document.getElementById('count').textContent = ++count;
});
events.addEventListener('prompt', e => {
  const p = document.getElementById('prompt'); if (document.activeElement !== p) p.value = JSON.parse(e.data).prompt;
});
document.getElementById('ask').addEventListener('submit', ev => {
  ev.preventDefault();
  fetch('/prompt', {method: 'POST', headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({prompt: document.getElementById('prompt').value})})
    .then(r => r.ok ? '' : r.json().then(j => j.error, () => 'HTTP ' + r.status), () => 'the camera did not answer')
    .then(text => { document.getElementById('error').textContent = text; });
});
</script>
</body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); the host defaults to loopback."""
    host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--web {text!r}: give HOST:PORT, :PORT or PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "127.0.0.1", int(port)


def annotate(image: np.ndarray, text: str) -> Image.Image:
    """The frame with `text` on a dark band along its bottom edge."""
    picture = Image.fromarray(image)
    if not text:
        return picture
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, picture.width // 20))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    band = bottom - top + 10
    draw.rectangle((0, picture.height - band, picture.width, picture.height), fill=(0, 0, 0))
    draw.text((6, picture.height - band + 5 - top), text, fill=(255, 255, 255), font=font)
    return picture


class WebView:
    """Serves the live page for `app` on host:port; `key` (required beyond loopback) guards every
    request, `host_names` are the names the page may be reached by besides its address and localhost."""

    def __init__(self, app: CameraApp, host: str = "127.0.0.1", port: int = 8080, *, key: str | None = None,
                 host_names: tuple[str, ...] = (), limits: WebLimits = WebLimits()):
        check_exposure(host, port, key)
        self.app, self.limits = app, limits
        self.guard = Guard(host, key, host_names)
        self.latest_frame: np.ndarray | None = None
        self.latest_answer: AnswerRecord | None = None
        self.frame_number = 0
        self.changed = threading.Condition()
        self.subscribers: list[queue.Queue] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        try:
            self.server = Server((host, port), _handler(self), limits)
        except OSError as e:
            raise InputError(f"--web {host}:{port}: cannot listen there ({e.strerror or e})") from None
        self.host, self.port = self.server.server_address[:2]
        self.url = f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}/"
        app.listeners.append(self.on_event)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="vlm-camera-web")

    def start(self) -> "WebView":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        if self.on_event in self.app.listeners:
            self.app.listeners.remove(self.on_event)
        self.server.shutdown()
        self.server.server_close()
        with self.changed:
            self.changed.notify_all()
        for q in list(self.subscribers):
            q.put(None)

    # ---- what the app tells us ---------------------------------------------------------------------
    def on_event(self, kind: str, value) -> None:
        if kind == "frame":
            with self.changed:
                self.latest_frame = value.image
                self.frame_number += 1
                self.changed.notify_all()
        elif kind == "answer":
            self.latest_answer = value
            self.publish("answer", asdict(value))
        elif kind == "prompt":  # the app went back to an earlier prompt
            self.publish("prompt", {"prompt": value})

    def publish(self, event: str, data: dict) -> None:
        message = f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
        with self.lock:
            for q in self.subscribers:
                q.put(message)

    def jpeg(self) -> bytes | None:
        frame, answer = self.latest_frame, self.latest_answer
        if frame is None:
            return None
        buffer = io.BytesIO()
        annotate(frame, answer.answer if answer else "").save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    def state(self) -> dict:
        answer = self.latest_answer
        return {"prompt": self.app.prompt, "answer": asdict(answer) if answer else None,
                "frames_shown": self.frame_number, "alerts_running": self.app.alerts_running,
                "stats": self.app.stats.summary()}

    # ---- long-lived responses ----------------------------------------------------------------------
    def serve_events(self, handler: BaseHTTPRequestHandler) -> None:
        q: queue.Queue = queue.Queue()
        with self.lock:
            self.subscribers.append(q)
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-store")
            handler.end_headers()
            handler.wfile.write(f"event: prompt\ndata: {json.dumps({'prompt': self.app.prompt})}\n\n".encode())
            handler.wfile.flush()
            while not self.closing.is_set():
                try:
                    message = q.get(timeout=15)
                except queue.Empty:
                    message = b": keep-alive\n\n"
                if message is None:
                    return
                handler.wfile.write(message)
                handler.wfile.flush()
        except OSError:  # the browser went away, or stopped reading for stream_seconds
            return
        finally:
            with self.lock:
                self.subscribers.remove(q)

    def serve_mjpeg(self, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        handler.end_headers()
        seen = -1
        try:
            while not self.closing.is_set():
                with self.changed:
                    self.changed.wait_for(lambda: self.frame_number != seen or self.closing.is_set(), timeout=5)
                    seen = self.frame_number
                jpeg = self.jpeg()
                if jpeg:
                    handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                        + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    handler.wfile.flush()
        except OSError:
            return


KEY_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlm-camera: key needed</title></head>
<body><h1>This camera page needs its key</h1>
<p>Open <code>/?key=YOUR_KEY</code> once (the key vlm-camera was started with, from <code>--web-key-file</code>
or <code>VLM_CAMERA_WEB_KEY</code>); this browser then keeps it in a cookie until it closes.</p></body></html>
"""


def _handler(view: WebView) -> type[BaseHTTPRequestHandler]:
    """The request handler class for `view` (the module docstring says what each request must pass)."""
    limits = view.limits

    class Handler(BaseHTTPRequestHandler):
        # each read and write: a little over the request's deadline (below), so that while the request
        # is read the deadline comes first and answers 408; after it, this bounds a write to a client
        # that stopped reading
        timeout = limits.request_seconds + 1.0

        def log_message(self, *args) -> None:  # quiet: the app prints answers
            pass

        # ---- the request's deadline ----------------------------------------------------------------
        def setup(self) -> None:
            super().setup()
            self.phase = threading.Lock()
            self.reading, self.expired = True, False
            self.unread = False  # a POST answered before its body was read: linger at the close
            self.deadline = threading.Timer(limits.request_seconds, self._expire)
            self.deadline.daemon = True
            self.deadline.start()

        def _expire(self) -> None:
            with self.phase:
                if not self.reading:
                    return
                self.reading, self.expired = False, True
            try:  # nothing was written yet: the handler is still waiting for the request
                self.connection.sendall(response(408, "Request Timeout", {
                    "error": f"the request took over {limits.request_seconds:g} s to arrive"}))
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _request_in(self) -> bool:
            """The request is read: its deadline stops. False when the deadline came first (answered 408)."""
            with self.phase:
                if self.expired:
                    return False
                self.reading = False
            self.deadline.cancel()
            return True

        def finish(self) -> None:
            self.deadline.cancel()
            super().finish()
            if self.unread and not self.expired:
                drain(self.connection, wait=1.0)

        # ---- the checks every request passes -------------------------------------------------------
        def _allowed(self, path: str, query: dict) -> bool:
            """True: serve it. False: refused, or (/?key=KEY) answered with the cookie."""
            host = self.headers.get("Host")
            guard = view.guard
            if not guard.host_allowed(host, self.connection.getsockname()[0]):
                self._error(403, f"the Host header {host!r} does not name this camera; open it by its address or "
                                 "localhost (a name of your own: --web-host NAME)")
                return False
            origin = self.headers.get("Origin")
            if not guard.origin_allowed(origin, host):
                self._error(403, f"a page from {origin} may not use this camera (its own page only)")
                return False
            if guard.key is None:
                return True
            given = query.get("key", [None])[0] if path == "/" else None
            if given is not None:  # the browser's first visit: trade the key for a cookie
                if not guard.key_matches(given, None):
                    self._error(401, "the key is wrong")
                    return False
                self.send_response(303)
                self.send_header("Location", "/")
                self.send_header("Set-Cookie", f"{COOKIE}={guard.cookie}; Path=/; HttpOnly; SameSite=Strict")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            scheme, _, bearer = (self.headers.get("Authorization") or "").partition(" ")
            if guard.key_matches(bearer.strip() if scheme.lower() == "bearer" else None, self._cookie()):
                return True
            if path == "/":
                self._send(401, "text/html; charset=utf-8", KEY_PAGE.encode(), ("WWW-Authenticate", "Bearer"))
            else:
                self._error(401, "this camera needs its key: send Authorization: Bearer KEY (or open /?key=KEY once "
                                 "in a browser)", ("WWW-Authenticate", "Bearer"))
            return False

        def _cookie(self) -> str | None:
            try:
                morsel = SimpleCookie(self.headers.get("Cookie") or "").get(COOKIE)
            except CookieError:
                return None
            return morsel.value if morsel is not None else None

        def _body(self) -> bytes | None:
            """The POST body within the limits, or None (answered: 411, 400, 413 or 408)."""
            lengths = self.headers.get_all("Content-Length") or []
            if self.headers.get("Transfer-Encoding") is not None or not lengths:
                self._error(411, "send the body with a Content-Length (chunked bodies are not taken)")
                return None
            if len(lengths) > 1 or not re.fullmatch(r"[0-9]{1,20}", lengths[0].strip()):
                self._error(400, f"Content-Length {', '.join(lengths)!r} is not one whole number of bytes")
                return None
            length = int(lengths[0])
            if length > limits.max_body:
                self._error(413, f"the body is {length} bytes, over the limit of {limits.max_body}")
                return None
            body = self.rfile.read(length)
            self.unread = False
            if not self._request_in():
                return None
            if len(body) < length:
                self._error(400, f"the body ended after {len(body)} of its {length} bytes")
                return None
            return body

        # ---- requests ------------------------------------------------------------------------------
        def do_GET(self) -> None:
            if not self._request_in():
                return
            parts = urllib.parse.urlsplit(self.path)
            if not self._allowed(parts.path, urllib.parse.parse_qs(parts.query)):
                return
            if parts.path == "/":
                self._send(200, "text/html; charset=utf-8", PAGE.encode())
            elif parts.path == "/frame.jpg":
                jpeg = view.jpeg()
                self._send(200, "image/jpeg", jpeg) if jpeg else self._error(503, "no frame yet")
            elif parts.path in ("/video.mjpg", "/events"):
                self.connection.settimeout(limits.stream_seconds)
                (view.serve_mjpeg if parts.path == "/video.mjpg" else view.serve_events)(self)
            elif parts.path == "/state":
                self._send(200, "application/json", json.dumps(view.state()).encode())
            else:
                self._error(404, f"{parts.path} is not here")

        def do_POST(self) -> None:
            self.unread = True
            path = urllib.parse.urlsplit(self.path).path
            if not self._allowed(path, {}):
                return
            if path != "/prompt":
                return self._error(404, f"{path} is not here; POST /prompt")
            if self.headers.get_content_type() != "application/json":
                return self._error(415, 'send the prompt as Content-Type: application/json, {"prompt": "..."}')
            body = self._body()
            if body is None:
                return
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):
                return self._error(400, 'the body is not JSON text; send {"prompt": "..."}')
            if not isinstance(data, dict) or "prompt" not in data:
                return self._error(400, 'send a JSON object with the new prompt: {"prompt": "..."}')
            try:
                view.app.set_prompt(data["prompt"])
            except InputError as e:
                return self._error(400, str(e))
            view.publish("prompt", {"prompt": data["prompt"]})
            self._send(200, "application/json", json.dumps({"prompt": data["prompt"]}).encode())

        def _error(self, status: int, message: str, *headers: tuple[str, str]) -> None:
            self._send(status, "application/json", json.dumps({"error": message}).encode(), *headers)

        def _send(self, status: int, kind: str, body: bytes, *headers: tuple[str, str]) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client went away
                pass

    return Handler
