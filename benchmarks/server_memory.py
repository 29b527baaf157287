"""The server's memory under image-heavy load: idle, peak, and a minute after.

    python benchmarks/server_memory.py ENGINE [--clients 6] [--images 8] [--side 4096] [--after 60]
    python benchmarks/server_memory.py ENGINE --video --side 8192 --clients 2 --serve-arg=--max-memory --serve-arg=128

Starts `vlm-serve ENGINE` on a free loopback port (as a user would), waits for /health, then
sends `--clients` concurrent requests, each with `--images` PNGs that are about 2 KB on the
wire but decode to side x side pixels (under the default pixel limit: the request is valid).
It samples the server's resident set (VmRSS from /proc) every 20 ms and prints a table: idle,
peak, peak - idle, the statuses, and the RSS `--after` seconds after the last answer.
With `--video`, each client sends one clip instead: `--images` frames of side x side, MJPEG in an
AVI (small on the wire: the frames are flat), as a video_url part (needs OpenCV).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from served import post, served  # benchmarks/served.py


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bomb_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG", optimize=True)  # a flat image compresses to ~KB
    return buf.getvalue()


def bomb_clip(side: int, frames: int) -> bytes:
    import tempfile

    import cv2
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (side, side))
        frame = np.zeros((side, side, 3), np.uint8)
        for _ in range(frames):
            writer.write(frame)
        writer.release()
        return path.read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--side", type=int, default=4096)
    p.add_argument("--after", type=float, default=60.0)
    p.add_argument("--video", action="store_true", help="send one clip of --images frames per client instead")
    p.add_argument("--serve-arg", action="append", default=[], help="extra vlm-serve argument (repeatable)")
    args = p.parse_args()

    with served(args.engine, *args.serve_arg) as (base, server):
        time.sleep(1.0)
        idle = rss_mib(server.pid)
        if args.video:
            png = bomb_clip(args.side, args.images)
            content = [{"type": "video_url", "video_url": {
                "url": "data:video/x-msvideo;base64," + base64.b64encode(png).decode()}}]
        else:
            png = bomb_png(args.side)
            url = "data:image/png;base64," + base64.b64encode(png).decode()
            content = [{"type": "image_url", "image_url": {"url": url}} for _ in range(args.images)]
        content.append({"type": "text", "text": "Describe the image."})
        body = {"model": Path(args.engine).resolve().name, "messages": [{"role": "user", "content": content}],
                "max_tokens": 4}
        peak, stop = [idle], threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(server.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.time()
        with ThreadPoolExecutor(args.clients) as pool:
            data = json.dumps(body).encode()
            statuses = list(pool.map(lambda _: post(f"{base}/v1/chat/completions", data), range(args.clients)))
        seconds = time.time() - start
        stop.set()
        sampler.join()
        time.sleep(args.after)
        after = rss_mib(server.pid)
    what = f"one clip of {args.images} frames, {len(png)} bytes" if args.video else f"{args.images} PNGs of {len(png)} bytes each"
    print(f"{args.clients} clients x {what}, decoding to {args.side}x{args.side}; "
          f"{len(json.dumps(body)) / 1024:.0f} KiB per request")
    print(f"{'idle RSS':<28}{idle:>10.0f} MiB")
    print(f"{'peak RSS':<28}{peak[0]:>10.0f} MiB")
    print(f"{'peak - idle':<28}{peak[0] - idle:>10.0f} MiB")
    print(f"{f'RSS {args.after:g} s after':<28}{after:>10.0f} MiB  ({after - idle:+.0f} MiB against idle)")
    print(f"{'statuses':<28}{' '.join(map(str, statuses)):>10}  in {seconds:.1f} s")


if __name__ == "__main__":
    main()
