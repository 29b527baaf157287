"""What the server benchmarks share: `vlm-serve` on a free loopback port, and a plain HTTP POST.

    from served import post, served
    with served("engine/", "--queue-size", "20") as (base, server):   # base: http://127.0.0.1:PORT
        post(f"{base}/v1/chat/completions", body_bytes)                # -> the HTTP status
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator


def post(url: str, data: bytes, *, stream: bool = False, timeout: float = 600) -> int:
    """POST a JSON body, read the whole answer (a stream to its end), return the status."""
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if stream:
                while response.read(65536):
                    pass
            else:
                response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@contextlib.contextmanager
def served(engine: str, *serve_args: str, ready_timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """`vlm-serve ENGINE` (as a user starts it) until /health says 200; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["vlm-serve", engine, "--port", str(port), *serve_args], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit("the server did not become healthy")
            time.sleep(0.2)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=30)
