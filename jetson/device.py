"""Device probes for `vlm-jetson info`: what this Jetson is, what it runs, and whether an engine fits it.

Every probe reads files under `root` ("/" on a device; a recorded tree in the tests) or asks an
installed package, and answers None where the fact is not there (a desktop, a container without
/proc/device-tree, a module without nvpmodel): nothing here assumes a Jetson.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Jetson Linux release -> JetPack, for the releases NVIDIA's notes pair one to one; other releases of
# a line read "6.x". The installed nvidia-jetpack package, where there is one, has the last word.
JETPACK = {"R36.4.4": "6.2.1", "R36.4.3": "6.2", "R36.4.0": "6.1", "R36.3.0": "6.0", "R36.2.0": "6.0 DP",
           "R35.6.0": "5.1.4", "R35.5.0": "5.1.3", "R35.4.1": "5.1.2", "R35.3.1": "5.1.1", "R35.2.1": "5.1"}
JETPACK_LINES = {"R38": "7.x", "R36": "6.x", "R35": "5.x", "R34": "5.0 DP", "R32": "4.x"}
ORIN_SM = "87"


@dataclass
class DeviceInfo:
    model: str | None = None  # /proc/device-tree/model
    l4t: str | None = None  # "R36.4.3"
    jetpack: str | None = None  # from L4T, or the nvidia-jetpack package's version
    power_mode: str | None = None  # nvpmodel: "25W (mode 1)"
    cuda: str | None = None
    tensorrt: str | None = None
    onnxruntime: str | None = None
    providers: list[str] = field(default_factory=list)
    memory_total_mb: int | None = None
    memory_available_mb: int | None = None
    sm: str | None = None  # "87" on Orin

    def to_dict(self) -> dict:
        return asdict(self)


def _text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode(errors="replace").rstrip("\x00\n ")
    except OSError:
        return None


def parse_l4t(text: str | None) -> str | None:
    """'# R36 (release), REVISION: 4.3, GCID: ...' -> 'R36.4.3'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"R{m.group(1)}.{m.group(2)}" if m else None


def jetpack_for(l4t: str | None) -> str | None:
    if not l4t:
        return None
    return JETPACK.get(l4t) or JETPACK_LINES.get(l4t.split(".")[0])


def parse_nvpmodel(output: str | None) -> str | None:
    """`nvpmodel -q` ('NV Power Mode: 25W' then '1') -> '25W (mode 1)'."""
    m = re.search(r"NV Power Mode:\s*(\S+)", output or "")
    if not m:
        return None
    mode = re.search(r"^\s*(\d+)\s*$", output[m.end():], re.M)
    return f"{m.group(1)} (mode {mode.group(1)})" if mode else m.group(1)


def parse_meminfo(text: str | None) -> tuple[int | None, int | None]:
    values = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text or "", re.M)}
    mb = lambda key: values[key] // 1024 if key in values else None  # noqa: E731
    return mb("MemTotal"), mb("MemAvailable")


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def probe(root: str | Path = "/", *, commands: bool = True) -> DeviceInfo:
    """What this machine is (files under `root`; `commands` also asks nvpmodel and dpkg-query)."""
    root = Path(root)
    info = DeviceInfo()
    info.model = _text(root / "proc/device-tree/model")
    info.l4t = parse_l4t(_text(root / "etc/nv_tegra_release"))
    info.jetpack = jetpack_for(info.l4t)
    recorded = root / "var/lib/vlm-edge/nvpmodel-q.txt"  # a recorded `nvpmodel -q` (tests replay one)
    nvpmodel = _text(recorded) if recorded.is_file() else (_run(["nvpmodel", "-q"]) if commands else None)
    info.power_mode = parse_nvpmodel(nvpmodel)
    recorded = root / "var/lib/vlm-edge/dpkg-query-nvidia-jetpack.txt"
    dpkg = _text(recorded) if recorded.is_file() else (
        _run(["dpkg-query", "-W", "nvidia-jetpack"]) if commands and info.l4t else None)
    if dpkg and (m := re.search(r"nvidia-jetpack\s+(\d[\w.]*)", dpkg)):
        info.jetpack = m.group(1).split("+")[0]
    version = _text(root / "usr/local/cuda/version.json")
    if version:
        try:
            info.cuda = json.loads(version)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    if info.cuda is None and commands and (nvcc := _run(["nvcc", "--version"])):
        m = re.search(r"release (\d+\.\d+)", nvcc)
        info.cuda = m.group(1) if m else None
    info.memory_total_mb, info.memory_available_mb = parse_meminfo(_text(root / "proc/meminfo"))
    if info.model and "Orin" in info.model:
        info.sm = ORIN_SM
    try:
        import tensorrt  # noqa: PLC0415  (optional: only on GPU machines)

        info.tensorrt = tensorrt.__version__
    except ImportError:
        pass
    try:
        import onnxruntime  # noqa: PLC0415

        info.onnxruntime = onnxruntime.__version__
        info.providers = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def engine_fit(engine_dir: str | Path, info: DeviceInfo) -> list[str]:
    """Lines saying whether the engine's TensorRT plans and its weights fit this device."""
    from vlm_edge.common.manifest import Manifest  # noqa: PLC0415

    engine_dir = Path(engine_dir)
    manifest = Manifest.read(engine_dir)
    lines = []
    weights = sum(rec["bytes"] for c in manifest.components.values() for rel, rec in c.files.items()
                  if rel.endswith((".data", ".onnx", ".npy")))
    weights_mb = weights // (1 << 20)
    if info.memory_available_mb is not None:
        verdict = "fits" if weights_mb < info.memory_available_mb else "does NOT fit"
        lines.append(f"weights {weights_mb} MB {verdict} in {info.memory_available_mb} MB available memory")
    else:
        lines.append(f"weights {weights_mb} MB (available memory unknown here)")
    plans = manifest.targets
    if not plans:
        lines.append("no TensorRT plans: build them here with vlm-build-engine " + str(engine_dir))
    for t in plans:
        problems = []
        if info.tensorrt and t.get("tensorrt") != info.tensorrt:
            problems.append(f"built with TensorRT {t.get('tensorrt')}, this device has {info.tensorrt}")
        if info.sm and str(t.get("sm")) != info.sm:
            problems.append(f"built for sm{t.get('sm')}, this GPU is sm{info.sm}")
        if info.l4t and t.get("l4t") and t.get("l4t") != info.l4t.lstrip("R"):
            problems.append(f"built on L4T {t.get('l4t')}, this is {info.l4t}")
        state = "runs here" if not problems else "; ".join(problems) + " (rebuild with vlm-build-engine)"
        lines.append(f"plan {t.get('component')} ({t.get('cache_key')}): {state}")
    return lines


def report(info: DeviceInfo) -> str:
    unknown = "unknown"
    rows = [("module", info.model or "not a Jetson (no /proc/device-tree/model)"),
            ("L4T", info.l4t or unknown), ("JetPack", info.jetpack or unknown),
            ("power mode", info.power_mode or unknown), ("CUDA", info.cuda or unknown),
            ("TensorRT", info.tensorrt or "not installed"),
            ("onnxruntime", f"{info.onnxruntime} ({', '.join(info.providers)})" if info.onnxruntime else "not installed"),
            ("memory", f"{info.memory_available_mb} MB available of {info.memory_total_mb} MB"
             if info.memory_total_mb else unknown)]
    return "\n".join(f"{name:<12} {value}" for name, value in rows)
