"""The LM head alone, as vlm-export writes it: one decode step's head MatMul per storage and compute.

    python benchmarks/lm_head.py [--hidden 896] [--vocab 151936] [--group 128] [--runs 30]

Defaults are Qwen2.5-0.5B's head (896 x 151936, tied), the runtime benchmark's model. Each row is
a one-node ONNX graph built with export/linear.py from the same random weights, timed in ONNX
Runtime on the CPU with all cores (median of --runs after 3 warm-ups, batch 1, one position).
The "accuracy level 0" row for 8 bits is why the exported int8 head always uses level 4. The
"rescored" row is `--lm-head int4-rescore`: the int4 head, then its 64 highest logits recomputed
from int8 rows (the weight column counts both copies; a step reads the int4 head and 64 rows).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vlm_edge.export.decoder import RESCORE_TOP, _rescored, int8_rows
from vlm_edge.export.graph import GraphBuilder
from vlm_edge.export.linear import emit_linear, rtn_quantize


def time_graph(path: Path, x: np.ndarray, runs: int) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--group", type=int, default=128, help="group size (vlm-export picks 128 for this width)")
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    w_t = (rng.standard_normal((args.hidden, args.vocab)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, args.hidden)).astype(np.float32)
    rows = [("float32", None, 0), ("int8", 8, 4), ("int8, accuracy level 0", 8, 0), ("int4", 4, 4),
            ("int4, accuracy level 0", 4, 0), ("int4, rescored top 64", 4, 4)]
    print(f"LM head {args.hidden} x {args.vocab}, group {args.group}, ONNX Runtime {ort.__version__} (CPU)\n")
    print(f"{'head':<26}{'weight MiB':>11}{'ms/step':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, bits, level in rows:
            path = Path(tmp) / f"{label.replace(',', '').replace(' ', '-')}.onnx"
            g = GraphBuilder("head", path, ms_domain=True)
            g.input("x", np.dtype("float32"), [1, args.hidden])
            quant = rtn_quantize(w_t, args.group, symmetric=False, bits=bits) if bits else None
            y = emit_linear(g, "x", "lm_head", "ort", weight_t=w_t if quant is None else None, quant=quant,
                            accuracy_level=level)
            if label.endswith("rescored top 64"):
                y = _rescored(g, "x", y, *int8_rows(w_t.T), RESCORE_TOP)
            if bits == 8 and level == 0:  # emit_linear pins 8-bit heads to level 4; undo it for this row
                g.nodes[-1].attribute[[a.name for a in g.nodes[-1].attribute].index("accuracy_level")].i = 0
            g.output(y, "y", np.float32, [1, args.vocab])
            g.save()
            size = sum(f.stat().st_size for f in Path(tmp).glob(f"{path.name}*")) / (1 << 20)
            print(f"{label:<26}{size:>11.0f}{time_graph(path, x, args.runs):>10.1f}")


if __name__ == "__main__":
    main()
