"""Peak memory of `vlm-export --awq4` on a checkpoint with VILA1.5-3b dimensions (random weights).

    python benchmarks/export_memory.py --work /tmp/vila3b [--method rtn] [--prompts 2]

Writes the checkpoint once (`vlm-model init --preset vila1.5-3b`, float32, ~11 GB), then runs the
export in a child process and samples its peak resident set (VmHWM from /proc) and wall time.
Prints a table: the float32 model size, the peak RSS, the ratio, and the times. The target: the
export fits in 24 GB of RAM, holding at most one float32 copy of the model.
RTN is the default method here because AWQ's calibration pass over a 3B model takes hours on 2
CPU cores; the export path after quantization is the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def peak_rss(pid: int) -> int:
    """VmHWM of a live process, in bytes (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run(cmd: list[str]) -> tuple[float, int]:
    start = time.time()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, peak_rss(proc.pid))
        time.sleep(0.5)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.time() - start, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch directory (needs ~25 GB of disk)")
    p.add_argument("--method", choices=("rtn", "awq"), default="rtn")
    p.add_argument("--prompts", type=int, default=2, help="validation prompts (each runs 32 greedy steps twice)")
    p.add_argument("--json", help="also save the figures here")
    args = p.parse_args()
    work = Path(args.work)
    ckpt, engine = work / "ckpt", work / "engine"
    init_s = 0.0
    if not (ckpt / "config.json").is_file():
        init_s, _ = run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "vila1.5-3b", "-o", str(ckpt),
                         "--force"])
    model_bytes = sum(f.stat().st_size for f in ckpt.rglob("*.safetensors"))
    export_s, peak = run([sys.executable, "-m", "vlm_edge.export.cli", "--awq4", "--method", args.method,
                          "--group-size", "128", "--prompts", str(args.prompts), str(ckpt), "-o", str(engine),
                          "--force"])
    engine_bytes = sum(f.stat().st_size for f in engine.rglob("*") if f.is_file())
    gib = 1024 ** 3
    rows = [("float32 checkpoint", f"{model_bytes / gib:.2f} GiB"), ("engine directory", f"{engine_bytes / gib:.2f} GiB"),
            ("export peak RSS", f"{peak / gib:.2f} GiB"), ("peak / float32 model", f"{peak / model_bytes:.2f}x"),
            ("export wall time", f"{export_s:.0f} s"), ("checkpoint init", f"{init_s:.0f} s" if init_s else "reused")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model_bytes": model_bytes, "engine_bytes": engine_bytes,
                                               "peak_rss_bytes": peak, "export_seconds": export_s,
                                               "method": args.method, "prompts": args.prompts}, indent=2) + "\n")


if __name__ == "__main__":
    main()
