"""Is training bit-identical across hosts? Weight digests of short tiny-preset runs, to compare.

    python benchmarks/train_repro.py [--work /tmp/repro] [--steps vision=3,align=3,pretrain=4,sft=6]
    python benchmarks/train_repro.py --checkpoint ckpt/       # the digest of a checkpoint you have

Trains the tiny preset for a few steps with `--numerics portable` and `--numerics native`, each in
its own process, and prints the host, each run's kernels and its weight digest (SHA-256 over every
tensor of the checkpoint's safetensors files and the tokenizer). Portable runs of the same command
should print the same digest on every x86-64 host with AVX2 at the same thread count; native runs
print the host's own. docs/training.md lists the hosts compared so far.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from safetensors.numpy import load_file


def digest(checkpoint: Path) -> str:
    h = hashlib.sha256()
    files = sorted(checkpoint.rglob("*.safetensors")) + sorted(checkpoint.rglob("tokenizer.json"))
    if not files:
        raise SystemExit(f"{checkpoint} holds no .safetensors files: not a checkpoint")
    for path in files:
        h.update(str(path.relative_to(checkpoint)).encode())
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
            for name in sorted(tensors):
                h.update(name.encode())
                h.update(tensors[name].tobytes())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/vlm-train-repro", help="folder for the runs' checkpoints")
    p.add_argument("--steps", default="vision=3,align=3,pretrain=4,sft=6")
    p.add_argument("--checkpoint", help="only print this checkpoint's digest and the kernels it was trained with")
    args = p.parse_args()
    print(f"host: {cpu_name()}, {platform.machine()}")
    if args.checkpoint:
        path = Path(args.checkpoint)
        config = path / "training" / "train_config.json"
        effect = json.loads(config.read_text()).get("numerics_in_effect", "not recorded") if config.is_file() else "not recorded"
        print(f"checkpoint {path}: digest {digest(path)}, numerics {effect}")
        return
    print("| numerics | kernels in effect | seconds | weight digest |\n|---|---|---|---|")
    for mode in ("portable", "native"):
        out = Path(args.work) / mode
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", "--preset", "tiny", "--steps", args.steps,
                              "--eval-per-type", "0", "--device", "cpu", "--numerics", mode, "-o", str(out), "--force"],
                             capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(f"the {mode} run failed:\n{run.stderr[-2000:]}")
        seconds = time.perf_counter() - start
        effect = json.loads((out / "training" / "train_config.json").read_text())["numerics_in_effect"]
        kernels = ", ".join(f"{k} {v}" for k, v in effect.items() if k != "mode")
        print(f"| {mode} ({effect['mode']}) | {kernels} | {seconds:.0f} | {digest(out)} |")


if __name__ == "__main__":
    main()
