"""A small RTSP server on loopback for the tests: Motion-JPEG over RTP (RFC 2435), interleaved on TCP.

    server = RtspServer(frames, fps=10).start()        # frames: a list of RGB uint8 arrays, looped
    url = server.url                                    # rtsp://127.0.0.1:PORT/live
    server.drop(pause=1.0)                              # cut every client, refuse connections for 1 s
    server.stop()

It speaks the RTSP/1.0 methods a player needs (OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER,
TEARDOWN) and streams in real time at `fps`. Each frame is a baseline JPEG from Pillow (4:2:0,
the standard Huffman tables, no restart markers, sides a multiple of 8) whose quantisation
tables travel in-band (Q = 255) and whose entropy-coded scan is split over RTP packets, which is
what RFC 2435 receivers such as FFmpeg's (and so OpenCV's) rebuild a JPEG from.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time

import numpy as np
from PIL import Image

PAYLOAD = 1400  # bytes of scan data per RTP packet


def jpeg_parts(image: np.ndarray, quality: int = 90) -> tuple[bytes, bytes, int, int]:
    """(quantisation tables luma + chroma, scan data, width, height) of a baseline 4:2:0 JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False)
    data = buffer.getvalue()
    tables: dict[int, bytes] = {}
    i = 2
    while True:
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        body = data[i + 4:i + 2 + length]
        if marker == 0xDB:  # DQT: one or more (precision/id, 64 bytes) tables
            j = 0
            while j < len(body):
                tables[body[j] & 0x0F] = body[j + 1:j + 65]
                j += 65
        elif marker == 0xDA:  # SOS: the scan runs to the EOI marker
            scan = data[i + 2 + length:-2]
            break
        i += 2 + length
    height, width = image.shape[:2]
    return tables[0] + tables[1], scan, width, height


def rtp_packets(image: np.ndarray, seq: int, timestamp: int, ssrc: int = 0x5EED) -> list[bytes]:
    tables, scan, width, height = jpeg_parts(image)
    packets = []
    for offset in range(0, len(scan), PAYLOAD):
        chunk = scan[offset:offset + PAYLOAD]
        last = offset + PAYLOAD >= len(scan)
        header = struct.pack(">BBHII", 0x80, (0x80 if last else 0) | 26, (seq + len(packets)) & 0xFFFF, timestamp, ssrc)
        # type-specific 0, fragment offset (24 bits), type 1 (4:2:0), Q 255 (tables in-band), width/8, height/8
        jpeg = struct.pack(">I", offset) + bytes([1, 255, width // 8, height // 8])
        if offset == 0:
            jpeg += struct.pack(">BBH", 0, 0, len(tables)) + tables
        packets.append(header + jpeg + chunk)
    return packets


class RtspServer:
    def __init__(self, frames: list[np.ndarray], fps: float = 10.0, host: str = "127.0.0.1", port: int = 0):
        self.frames, self.fps = frames, fps
        self.sock = socket.create_server((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"rtsp://{self.host}:{self.port}/live"
        self.stopped = threading.Event()
        self.refuse_until = 0.0
        self.clients: list[socket.socket] = []
        self.lock = threading.Lock()
        self.frames_sent = 0
        self.sessions = 0  # PLAY requests answered: 2 after one reconnect

    def start(self) -> "RtspServer":
        threading.Thread(target=self._accept, daemon=True, name="rtsp-accept").start()
        return self

    def drop(self, pause: float = 0.0) -> None:
        """Cut every connection (a network drop); refuse new ones for `pause` seconds."""
        self.refuse_until = time.monotonic() + pause
        with self.lock:
            for conn in self.clients:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self.clients.clear()

    def stop(self) -> None:
        self.stopped.set()
        self.drop()
        self.sock.close()

    # ---- connections ------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                conn.close()
                continue
            with self.lock:
                self.clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="rtsp-client").start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        playing = threading.Event()
        send = threading.Lock()  # replies and RTP packets share the connection
        try:
            while not self.stopped.is_set():
                first = reader.read(1)
                if not first:
                    return
                if first == b"$":  # the client's interleaved RTCP: read and ignore
                    _channel, length = struct.unpack(">BH", reader.read(3))
                    reader.read(length)
                    continue
                lines = [first + reader.readline()]
                while lines[-1].strip():
                    lines.append(reader.readline())
                method, url = lines[0].decode().split()[:2]
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.decode().split(":", 1) for line in lines[1:] if b":" in line)}
                if int(headers.get("content-length", 0)):
                    reader.read(int(headers["content-length"]))
                self._answer(conn, send, method, url, headers, playing)
        except (OSError, ValueError):
            return
        finally:
            playing.clear()
            conn.close()

    def _answer(self, conn, send: threading.Lock, method: str, url: str, headers: dict,
                playing: threading.Event) -> None:
        cseq = headers.get("cseq", "0")
        extra, body, status = {}, b"", "200 OK"
        if method == "OPTIONS":
            extra["Public"] = "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN"
        elif method == "DESCRIBE":
            body = (f"v=0\r\no=- 0 0 IN IP4 {self.host}\r\ns=vlm-edge test stream\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
                    f"m=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\na=control:track1\r\n"
                    f"a=framerate:{self.fps:g}\r\n").encode()
            extra.update({"Content-Type": "application/sdp", "Content-Base": url.rstrip("/") + "/"})
        elif method == "SETUP":
            if "TCP" not in headers.get("transport", "").upper():
                status = "461 Unsupported Transport"
            else:
                extra.update({"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", "Session": "5EED;timeout=60"})
        elif method == "PLAY":
            extra.update({"Session": "5EED", "Range": "npt=0.000-"})
            self.sessions += 1
            playing.set()
        elif method == "TEARDOWN":
            playing.clear()
            extra["Session"] = "5EED"
        elif method != "GET_PARAMETER":
            status = "405 Method Not Allowed"
        head = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        head += f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
        with send:
            conn.sendall(head.encode() + body)
        if method == "PLAY":
            threading.Thread(target=self._stream, args=(conn, send, playing), daemon=True, name="rtsp-stream").start()

    def _stream(self, conn: socket.socket, send: threading.Lock, playing: threading.Event) -> None:
        seq, start, n = 0, time.monotonic(), 0
        while playing.is_set() and not self.stopped.is_set():
            image = self.frames[n % len(self.frames)]
            packets = rtp_packets(image, seq, int(n * 90000 / self.fps))
            seq += len(packets)
            try:
                with send:
                    conn.sendall(b"".join(b"$\x00" + struct.pack(">H", len(p)) + p for p in packets))
            except OSError:
                return
            self.frames_sent += 1
            n += 1
            delay = start + n / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
