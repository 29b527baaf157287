"""Where a prefill's time goes: ONNX Runtime's own profiler over the engine's decoder graph.

    python benchmarks/prefill_profile.py engine/ [--positions 256] [--threads 1] [--runs 3]
                                                 [--set session.intra_op.allow_spinning=0 ...]

Runs the decoder graph the runtime runs (edge.decoder's shared KV cache, the runtime's session
options) on `--positions` random embeddings from an empty cache, `--runs` times after a warm-up,
with ONNX Runtime's profiling on, and prints per operator type: total milliseconds, the share of
the prefill, nodes and calls; then prefill tokens/s without the profiler (median of --runs). The
first row is what to attack: MatMulNBits at M = positions is the 4-bit linears (their accuracy
level decides int8 or float compute), GroupQueryAttention the attention over the prompt.

`--set KEY=VALUE` adds a session config entry (repeatable), to measure a setting's effect in one
run: for example `--set session.intra_op.allow_spinning=0`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vlm_edge.common.manifest import Manifest
from vlm_edge.edge.backends import session_options
from vlm_edge.edge.decoder import open_decoder


def prefill_rate(session: ort.InferenceSession, model: dict, positions: int, runs: int) -> float:
    """Prefill tokens/s, median of `runs` after one warm-up."""
    decoder = open_decoder(session, model, positions + 1)
    rng = np.random.default_rng(0)
    embeds = (rng.standard_normal((positions, model["hidden_size"])) * 0.02).astype(np.float32)
    rates = []
    for i in range(runs + 1):
        decoder.truncate(0)
        t0 = time.perf_counter()
        decoder(embeds)
        if i:
            rates.append(positions / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine")
    p.add_argument("--positions", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a session config entry")
    args = p.parse_args()
    engine = Path(args.engine)
    manifest = Manifest.read(engine)
    graph = engine / manifest.components["decoder.ort"].path
    model = manifest.model
    info = manifest.components["decoder.ort"].info

    def options(profile: str | None) -> ort.SessionOptions:
        o = session_options(args.threads)
        for entry in args.set:
            key, _, value = entry.partition("=")
            o.add_session_config_entry(key, value)
        if profile:
            o.enable_profiling = True
            o.profile_file_prefix = profile
        return o

    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(str(graph), options(os.path.join(tmp, "prefill")),
                                       providers=["CPUExecutionProvider"])
        prefill_rate(session, model, args.positions, args.runs)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, list] = defaultdict(lambda: [0.0, set(), 0])
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            row = per_op[e["args"]["op_name"]]
            row[0] += e["dur"] / 1e3
            row[1].add(e["name"])
            row[2] += 1
    run_ms = sum(e["dur"] for e in runs[1:]) / 1e3  # the warm-up run is not counted
    scale = (len(runs) - 1) / len(runs) if runs else 1.0  # node times include the warm-up: share by run
    total = sum(r[0] for r in per_op.values())
    print(f"{graph} ({info.get('lm_head', '?')} head, accuracy level {info.get('accuracy_level', '?')}), "
          f"{args.positions} positions, {args.threads} thread(s), {args.runs} runs + 1 warm-up"
          + (f", {' '.join(args.set)}" if args.set else ""))
    print(f"{'operator':<36}{'ms/run':>10}{'share':>8}{'nodes':>7}")
    for op, (ms, nodes, calls) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        print(f"{op:<36}{ms * scale / max(args.runs, 1):>10.1f}{100 * ms / total:>7.1f}%{len(nodes):>7}")
    print(f"graph time per run {run_ms / max(args.runs, 1):.1f} ms (kernels {total * scale / max(args.runs, 1):.1f} ms)")
    plain = ort.InferenceSession(str(graph), options(None), providers=["CPUExecutionProvider"])
    print(f"prefill without the profiler: {prefill_rate(plain, model, args.positions, args.runs):.0f} tokens/s")


if __name__ == "__main__":
    main()
