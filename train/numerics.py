"""Portable CPU numerics: the same kernels, so the same trained weights, on more hosts.

Which kernels a CPU runs depends on its instruction set, and each kernel sums in its own order:
PyTorch's own kernels come in AVX2 and AVX-512 builds, MKL's sgemm takes an AVX-512 path on Intel
CPUs, and oneDNN's convolutions pick a kernel by ISA and cache size. Floating-point sums in another
order round differently, and a model trained from scratch amplifies the difference: for the tiny
model it decides whether a question is answered right or wrong.

Portable mode pins what can be pinned without giving up speed:

    ATEN_CPU_CAPABILITY=avx2        PyTorch's vectorized kernels: the AVX2 build on every x86-64 CPU
    MKL_CBWR=AVX2,STRICT            MKL's conditional numerical reproducibility: on Intel CPUs its
                                    AVX2 code path, the same result at any thread count. MKL applies
                                    it on Intel CPUs only; AMD CPUs run MKL's own branch for them,
                                    which MKL does not promise to equal Intel's. (COMPATIBLE would,
                                    at half the training speed, so it is not used.)
    torch.backends.mkldnn off       convolutions through PyTorch's own kernels + MKL
    2 threads                       PyTorch's parallel reductions split work by thread count

So portable runs should agree on every Intel CPU with AVX2, and AMD CPUs among themselves where
MKL runs one branch for them; native runs differ between AVX2 and AVX-512 hosts of either vendor.
Which hosts agree is measured, not assumed: `benchmarks/train_repro.py` prints a weight digest to
compare, and docs/training.md lists the hosts compared. The first two are read once
when torch starts, so `request()` must run before torch is imported (`vlm-train` does it first
thing); `apply()` does the rest inside the trainer and reports what is in effect. On a 2-core AMD
EPYC it costs nothing measurable (tokens/s within run-to-run noise). `--numerics native` gives each
host's fastest kernels instead.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

MODES = ("portable", "native")
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
PORTABLE_THREADS = 2


def cpu_supports_portable(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """x86-64 with AVX2 and FMA (what the pinned kernels need)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return {"avx2", "fma"} <= flags
    return False


def request(mode: str) -> bool:
    """Set the environment portable mode needs; True if it will take effect (torch not yet loaded)."""
    if mode != "portable" or not cpu_supports_portable():
        return False
    if "torch" in sys.modules:
        return False
    for name, value in PORTABLE_ENV.items():
        os.environ.setdefault(name, value)
    return True


def apply(mode: str, threads: int | None, device_type: str, world: int) -> dict[str, object]:
    """Inside the trainer: finish portable mode (or not) and say what is in effect, for the log and
    the checkpoint's train_config. `threads` None: 2 in portable mode on one process, else torch's."""
    import torch

    if threads is None and mode == "portable" and world == 1:
        threads = PORTABLE_THREADS
    if threads is not None:
        torch.set_num_threads(threads)
    if device_type != "cpu":
        return {"mode": "native", "why": f"training on {device_type}; portable mode is for CPUs"}
    effect: dict[str, object] = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", ""),
        "threads": torch.get_num_threads(),
    }
    if mode != "portable":
        return {"mode": "native", **effect}
    if not cpu_supports_portable():
        return {"mode": "native", "why": "this CPU is not x86-64 with AVX2 and FMA", **effect}
    missing = []  # torch was imported before request() ran, or the environment says otherwise
    if effect["capability"] != "AVX2":
        missing.append(f"PyTorch's kernels are {effect['capability']}, not AVX2")
    if effect["mkl_cbwr"] != PORTABLE_ENV["MKL_CBWR"]:
        missing.append(f"MKL_CBWR is {effect['mkl_cbwr']!r}, not {PORTABLE_ENV['MKL_CBWR']!r}")
    if missing:
        return {"mode": "native", "why": "; ".join(missing), **effect}
    torch.backends.mkldnn.enabled = False
    return {"mode": "portable", **effect}


def saved_settings(output: str | Path) -> tuple[str, int | None] | None:
    """(numerics, threads) of the run saved in `output` (for --resume), None when there is none.
    Runs saved before the setting existed used each host's own kernels."""
    from vlm_edge.common.errors import VlmEdgeError
    from vlm_edge.common.fsutil import read_json

    try:
        saved = read_json(Path(output) / "training" / "train_config.json", what="training config")
    except VlmEdgeError:  # missing, malformed or over-nested: as if there were none
        return None
    return saved.get("numerics", "native"), saved.get("threads")
