"""Who may use the camera's page, and how much of the machine a client may hold (jetson/web.py
serves the page; this is the part that says no).

    guard = Guard("0.0.0.0", key="...", host_names=("camera.local",))
    guard.host_allowed("camera.local:8080", "192.168.1.20")   # the Host header names us
    guard.origin_allowed("http://evil.example", "camera.local:8080")  # False: another site's page
    guard.key_matches(bearer="...", cookie=None)

- Host: the address the client connected to (any loopback address on loopback), localhost, the
  name the page was bound to, or a name given in `host_names`. Another name is a page whose name
  was made to resolve to this address (DNS rebinding): refused.
- Origin, when a browser sends one, must be the page's own (the Host it asked for).
- The key (required beyond loopback, `read_key`): `Authorization: Bearer KEY`, or the cookie the
  page's `/?key=KEY` sets, which holds the key's SHA-256, never the key itself. Compared in
  constant time.
- `Server`: one thread per connection, at most `WebLimits.max_connections` of them; one more is
  answered 503 and closed on the accepting thread, without a thread of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import socketserver
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from vlm_edge.common.errors import InputError
from vlm_edge.common.log import get_logger

log = get_logger(__name__)

KEY_ENV = "VLM_CAMERA_WEB_KEY"
KEY_MIN_CHARS = 16
COOKIE = "vlm_camera_key"


@dataclass(frozen=True)
class WebLimits:
    max_body: int = 64 << 10  # bytes of a POST body
    request_seconds: float = 10.0  # to send the request line, headers and body; also each read and write
    stream_seconds: float = 30.0  # a stream's write waits this long for a reader that stopped reading
    max_connections: int = 32  # open at once, streams included


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: only this machine can reach them."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, port: int, key: str | None) -> None:
    """InputError when the page would listen beyond loopback without a key."""
    if key is None and not is_loopback(host):
        raise InputError(f"--web {host}:{port} is reachable from the network: give the page a key (--web-key-file "
                         f"FILE or ${KEY_ENV}), or listen on 127.0.0.1")


def read_key(path: str | None, environ=os.environ) -> str | None:
    """The page's key: the first line of `path` (--web-key-file), else $VLM_CAMERA_WEB_KEY; None: no key."""
    key = None
    if path is not None:
        try:
            key = Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, UnicodeDecodeError, IndexError):
            raise InputError(f"--web-key-file {path}: cannot read a key from it (one line of text)") from None
    if key is None:
        key = environ.get(KEY_ENV) or None
    if key is None:
        return None
    where = f"--web-key-file {path}" if path is not None else f"${KEY_ENV}"
    if len(key) < KEY_MIN_CHARS or not re.fullmatch(r"[\x21-\x7e]+", key):
        raise InputError(f"{where}: the key must be at least {KEY_MIN_CHARS} printable ASCII characters without "
                         "spaces (e.g. the output of `openssl rand -hex 16`)")
    return key


def host_name(header: str) -> str | None:
    """The name in a Host header: '[::1]:8080' -> '::1', 'Cam.local.:80' -> 'cam.local'; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, port = header[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":[0-9]{1,5}", port)):
            return None
        return name or None
    name, _, port = header.partition(":")
    if port and not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    return name.rstrip(".") or None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Guard:
    """The checks of the module docstring for one page: bound to `host`, with `key` (or None)."""

    def __init__(self, host: str, key: str | None = None, host_names: tuple[str, ...] = ()):
        self.key = key
        self.cookie = hashlib.sha256(key.encode()).hexdigest() if key is not None else None
        named = set() if _address(host) is not None else {host.lower().rstrip(".")}
        self.host_names = {"localhost", *named, *(n.lower().rstrip(".") for n in host_names)}

    def host_allowed(self, header: str | None, local_address: str) -> bool:
        """A Host header naming this camera: the address the client connected to (any loopback one on
        loopback), or one of host_names. Another name is a page that rebinds its name to us."""
        name = host_name(header) if header else None
        if name is None:
            return False
        if name in self.host_names:
            return True
        ip, local = _address(name), _address(local_address)
        return ip is not None and local is not None and (ip == local or (ip.is_loopback and local.is_loopback))

    def key_matches(self, bearer: str | None, cookie: str | None) -> bool:
        if self.key is None:
            return True
        return ((bearer is not None and hmac.compare_digest(bearer.encode(), self.key.encode()))
                or (cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie.encode())))

    @staticmethod
    def origin_allowed(origin: str | None, host_header: str | None) -> bool:
        """No Origin (not a browser's cross-site request), or the page's own: the Host it asked for."""
        if origin is None:
            return True
        try:
            netloc = urllib.parse.urlsplit(origin).netloc
        except ValueError:  # "http://[::1" and the like
            return False
        return host_header is not None and netloc.lower() == host_header.strip().lower()


def response(status: int, reason: str, body: dict) -> bytes:
    """A whole HTTP/1.0 response, for answers written outside a handler (503 at the cap, 408)."""
    data = json.dumps(body).encode()
    return (f"HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode() + data


def drain(sock: socket.socket, wait: float, limit: int = 256 << 10) -> None:
    """Read and drop what the client sent, up to `limit` bytes, waiting at most `wait` seconds for
    more, after an answer was sent in full: a socket closed with unread bytes sends a reset, and
    the client may lose the answer to it."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(wait) if wait > 0 else sock.setblocking(False)
        while limit > 0:
            chunk = sock.recv(min(limit, 1 << 16))
            if not chunk:
                return
            limit -= len(chunk)
    except OSError:  # nothing more waiting (or the client is gone)
        pass


class Server(ThreadingHTTPServer):
    """One thread per connection, at most `limits.max_connections` of them: one more is answered 503
    and closed on the accepting thread, so a crowd of slow clients cannot pile up threads."""

    daemon_threads = True
    request_queue_size = 64  # a burst waits in the backlog to be answered (maybe 503), not dropped

    def __init__(self, address: tuple[str, int], handler, limits: WebLimits):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.limits = limits
        self.active = 0
        self.active_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:  # HTTPServer's looks the host's name up in DNS; we never use it
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self.active_lock:
            full = self.active >= self.limits.max_connections
            if not full:
                self.active += 1
        if full:
            try:
                request.settimeout(1.0)
                request.sendall(response(503, "Service Unavailable", {
                    "error": f"the camera page has {self.limits.max_connections} connections open; try again"}))
                drain(request, wait=0.0)  # what already came: closing on unread bytes resets, losing the 503
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self.active_lock:
            self.active -= 1

    def handle_error(self, request, client_address) -> None:  # a client's error must not print a traceback
        log.debug("web request from %s failed", client_address, exc_info=True)
