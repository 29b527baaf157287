"""The camera app's live web page: the video with the latest answer drawn on it, answers as they come,
and the prompt, editable while it runs. Standard library only (http.server, one thread per client).

    GET  /            the page
    GET  /frame.jpg   the newest frame, the latest answer drawn on it (the page polls it)
    GET  /video.mjpg  the same as an MJPEG stream (multipart/x-mixed-replace), for players
    GET  /events      server-sent events: "answer" (an AnswerRecord as JSON) and "prompt"
    GET  /state       JSON: the prompt, the latest answer, the app's counters
    POST /prompt      {"prompt": "..."}: ask this from the next frame on

It listens on 127.0.0.1 unless told otherwise: the page can change what the camera is asked,
so exposing it to a network is the user's explicit choice (--web 0.0.0.0:8080).
"""

from __future__ import annotations

import io
import json
import queue
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_edge.common.errors import InputError

from .camera import AnswerRecord, CameraApp

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlm-camera</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 60rem; color: #222; }
 #video { width: 100%; max-width: 40rem; image-rendering: pixelated; background: #111; display: block; }
 form { margin: 1rem 0; display: flex; gap: .5rem; } #prompt { flex: 1; font-size: 1rem; padding: .3rem; }
 #answers { font-family: ui-monospace, monospace; } .meta { color: #777; }
</style></head>
<body>
<h1>vlm-camera</h1>
<img id="video" alt="live video" src="/frame.jpg">
<p class="meta"><span id="frames">0</span> frames shown, <span id="count">0</span> answers</p>
<form id="ask"><input id="prompt" aria-label="prompt" value=""><button type="submit">Ask</button></form>
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
                    body: JSON.stringify({prompt: document.getElementById('prompt').value})});
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
    def __init__(self, app: CameraApp, host: str = "127.0.0.1", port: int = 8080):
        self.app = app
        self.latest_frame: np.ndarray | None = None
        self.latest_answer: AnswerRecord | None = None
        self.frame_number = 0
        self.changed = threading.Condition()
        self.subscribers: list[queue.Queue] = []
        self.lock = threading.Lock()
        view = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the app prints answers
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/":
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif path == "/frame.jpg":
                    jpeg = view.jpeg()
                    self._send(200, "image/jpeg", jpeg) if jpeg else self._send(503, "text/plain", b"no frame yet")
                elif path == "/video.mjpg":
                    view.serve_mjpeg(self)
                elif path == "/events":
                    view.serve_events(self)
                elif path == "/state":
                    self._send(200, "application/json", json.dumps(view.state()).encode())
                else:
                    self._send(404, "text/plain", b"not found")

            def do_POST(self) -> None:
                if self.path != "/prompt":
                    return self._send(404, "text/plain", b"not found")
                try:
                    length = int(self.headers.get("Content-Length", 0))
                    prompt = json.loads(self.rfile.read(min(length, 1 << 16)) or b"{}").get("prompt", "")
                    if not isinstance(prompt, str):
                        raise InputError("prompt must be a string")
                    view.app.set_prompt(prompt)
                except (ValueError, AttributeError, InputError) as e:
                    return self._send(400, "application/json", json.dumps({"error": str(e)}).encode())
                view.publish("prompt", {"prompt": prompt})
                self._send(200, "application/json", json.dumps({"prompt": prompt}).encode())

            def _send(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}/"
        app.listeners.append(self.on_event)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="vlm-camera-web")

    def start(self) -> "WebView":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
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
                "frames_shown": self.frame_number, "stats": self.app.stats.summary()}

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
            while True:
                try:
                    message = q.get(timeout=15)
                except queue.Empty:
                    message = b": keep-alive\n\n"
                if message is None:
                    return
                handler.wfile.write(message)
                handler.wfile.flush()
        except OSError:  # the browser went away
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
            while True:
                with self.changed:
                    self.changed.wait_for(lambda: self.frame_number != seen, timeout=5)
                    seen = self.frame_number
                jpeg = self.jpeg()
                if jpeg:
                    handler.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                        + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                    handler.wfile.flush()
        except OSError:
            return
