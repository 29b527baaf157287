"""How fast /health answers while the server is busy: streaming clients plus huge bodies.

    python benchmarks/server_health.py ENGINE [--streams 16] [--big 2] [--big-mb 10] [--seconds 20]

Starts `vlm-serve ENGINE` on a free loopback port, then at once: `--streams` clients that stream
answers in a loop, and `--big` clients that each send a `--big-mb` MB text body in a loop (each
refused with 400: its text cannot fit the context). Meanwhile it asks /health every 20 ms and
prints the latency percentiles, and the statuses the other clients got.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from served import post, served  # benchmarks/served.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--big", type=int, default=2)
    p.add_argument("--big-mb", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()

    model = Path(args.engine).resolve().name
    with served(args.engine, "--queue-size", str(args.streams + 4)) as (base, server):
        stream_body = json.dumps({"model": model, "stream": True, "max_tokens": 32, "messages": [
            {"role": "user", "content": "Repeat after me: red cat"}]}).encode()
        big_body = json.dumps({"model": model, "messages": [
            {"role": "user", "content": "word " * int(args.big_mb * (1 << 20) / 5)}]}).encode()
        statuses: dict[str, Counter] = {"stream": Counter(), "big": Counter()}
        stop = threading.Event()

        def loop(kind: str, body: bytes):
            while not stop.is_set():
                statuses[kind][post(f"{base}/v1/chat/completions", body, stream=kind == "stream", timeout=300)] += 1

        threads = [threading.Thread(target=loop, args=("stream", stream_body)) for _ in range(args.streams)]
        threads += [threading.Thread(target=loop, args=("big", big_body)) for _ in range(args.big)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        latencies = []
        end = time.time() + args.seconds
        while time.time() < end:
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{base}/health", timeout=60) as r:
                r.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print(f"{args.streams} streaming clients + {args.big} clients sending {args.big_mb:g} MB bodies, "
          f"{args.seconds:g} s, {len(latencies)} /health requests")
    print(f"{'/health p50':<16}{pct(0.5):>9.1f} ms")
    print(f"{'/health p99':<16}{pct(0.99):>9.1f} ms")
    print(f"{'/health max':<16}{latencies[-1]:>9.1f} ms")
    for kind, counts in statuses.items():
        print(f"{kind + ' statuses':<16}  {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
