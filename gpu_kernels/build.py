"""Building the CUDA code: the kernel as a fatbin (for gpu_kernels/loader.py) and the TensorRT plugin library.

    build_fatbin(out, archs)          nvcc -fatbin: SASS for each arch + PTX of the newest
    plugin_library()                  libvlm_edge_plugins.so, built once per source/arch/TensorRT, cached
    fatbin_images(data)               which (kind, sm) images a fatbin holds

Both are cached under $VLM_EDGE_CACHE (default ~/.cache/vlm-edge), keyed by the sources' hash,
so a pip-installed copy builds on the device it runs on (JetPack ships nvcc and TensorRT's headers).
Outputs are written to a temporary name and renamed: a killed build leaves no library that looks
complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vlm_edge.common.errors import UnsupportedFeatureError, VlmEdgeError

SOURCE_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = SOURCE_DIR / "cuda" / "downsample.cu"
SOURCES = ("cuda/downsample.cu", "cuda/downsample.cuh", "trt/downsample_plugin.cpp", "CMakeLists.txt")
ARCHS = ("87", "90")  # Jetson Orin; H100 / H200
NVCC_FLAGS = ("-O3", "-std=c++17")
# what gpu_kernels/trt/downsample_plugin.cpp registers, and the file CMake writes
PLUGIN_NAME = "VlmEdgeDownsampleLayerNorm"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
PLUGIN_LIBRARY = "libvlm_edge_plugins.so"


class KernelBuildError(VlmEdgeError):
    """nvcc, CMake or the TensorRT headers are missing, or a build failed."""


def find_nvcc() -> str | None:
    """nvcc on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin (JetPack's place)."""
    for candidate in (shutil.which("nvcc"), os.environ.get("CUDA_HOME") and Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc",
                      Path("/usr/local/cuda/bin/nvcc")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def find_cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (cuda_runtime.h), beside nvcc or in the usual places."""
    nvcc = find_nvcc()
    candidates = ([Path(nvcc).resolve().parents[1] / "include"] if nvcc else []) + [
        Path(p) / "include" for p in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if p]
    return next((c for c in candidates if (c / "cuda_runtime.h").is_file()), None)


def require_nvcc() -> str:
    nvcc = find_nvcc()
    if nvcc is None:
        raise UnsupportedFeatureError("building the CUDA kernel needs nvcc: install the CUDA toolkit (JetPack ships it "
                                      "in /usr/local/cuda) or set CUDA_HOME")
    return nvcc


def source_digest(archs: tuple[str, ...] = ARCHS, extra: str = "") -> str:
    digest = hashlib.sha256()
    for rel in SOURCES:
        digest.update(rel.encode() + b"\0" + (SOURCE_DIR / rel).read_bytes())
    digest.update(f"{','.join(archs)}|{extra}".encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("VLM_EDGE_CACHE") or Path.home() / ".cache" / "vlm-edge") / "kernels"


def _gencode(archs: tuple[str, ...]) -> list[str]:
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    newest = max(archs, key=int)
    return flags + ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]  # PTX: newer GPUs JIT it


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise KernelBuildError(f"{what} failed ({' '.join(cmd[:2])} ...): {' | '.join(tail)}")


def build_fatbin(out: str | Path, archs: tuple[str, ...] = ARCHS, nvcc: str | None = None) -> Path:
    """Compile cuda/downsample.cu into a fatbin holding SASS for every arch in `archs`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    _run([nvcc or require_nvcc(), *NVCC_FLAGS, "-fatbin", *_gencode(archs), "-o", str(tmp), str(KERNEL_SOURCE)],
         "compiling the downsample kernel")
    tmp.replace(out)
    return out


def cached_fatbin(archs: tuple[str, ...]) -> Path:
    """The kernel's fatbin for `archs`, built on first use."""
    path = cache_dir() / f"downsample-{source_digest(archs)}.fatbin"
    return path if path.is_file() else build_fatbin(path, archs)


@dataclass(frozen=True)
class FatbinImage:
    kind: str  # "elf" (SASS for one sm) or "ptx"
    sm: int  # 87, 90, ...


def fatbin_images(data: bytes) -> list[FatbinImage]:
    """The images in a fatbin, read from its container headers.

    Layout (as nvcc 12-13 write it): a 16-byte header (magic 0xBA55ED50, u16 version, u16 header
    size, u64 payload size), then entries, each a header (u16 kind: 1 PTX, 2 ELF; u16 version;
    u32 header size; u64 payload size; ...; u32 sm at byte 28) followed by its payload.
    """
    magic, _version, header, size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise KernelBuildError("not a CUDA fatbin (bad magic)")
    images, offset, end = [], header, header + size
    while offset + 32 <= end:
        kind, _v, entry_header, payload = struct.unpack_from("<HHIQ", data, offset)
        sm = struct.unpack_from("<I", data, offset + 28)[0]
        images.append(FatbinImage({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
        offset += entry_header + payload
    return images


# ---- the TensorRT plugin library -------------------------------------------------------------------------
TENSORRT_INCLUDE_HINTS = ("include", "include/aarch64-linux-gnu", "include/x86_64-linux-gnu")


def find_tensorrt_include(root: str | Path | None = None) -> Path | None:
    """The folder holding NvInferRuntime.h: under `root`, $TENSORRT_ROOT, /usr (JetPack) or /usr/local/tensorrt."""
    roots = [Path(r) for r in (root, os.environ.get("TENSORRT_ROOT")) if r] + [Path("/usr"), Path("/usr/local/tensorrt")]
    for base in roots:
        for hint in TENSORRT_INCLUDE_HINTS:
            if (base / hint / "NvInferRuntime.h").is_file():
                return base / hint
    return None


def tensorrt_header_version(include: Path) -> str:
    """'10.3.0' from NvInferVersion.h (TensorRT 10's TRT_*_ENTERPRISE or older NV_TENSORRT_* macros)."""
    text = (include / "NvInferVersion.h").read_text(errors="replace")
    parts = []
    for field in ("MAJOR", "MINOR", "PATCH"):
        for macro in (f"TRT_{field}_ENTERPRISE", f"NV_TENSORRT_{field}"):
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "#define" and words[1] == macro and words[2].isdigit():
                    parts.append(words[2])
                    break
            else:
                continue
            break
    return ".".join(parts) if len(parts) == 3 else "unknown"


def build_plugin(out_dir: str | Path, tensorrt_root: str | Path | None = None, archs: tuple[str, ...] = ARCHS) -> Path:
    """CMake-build libvlm_edge_plugins.so into `out_dir` (the build tree lives in a temporary folder)."""
    include = find_tensorrt_include(tensorrt_root)
    if include is None:
        raise UnsupportedFeatureError("building the TensorRT plugin needs TensorRT's headers (NvInferRuntime.h): set "
                                      "TENSORRT_ROOT to the TensorRT prefix (JetPack: /usr)")
    nvcc = require_nvcc()
    cmake = shutil.which("cmake")
    if cmake is None:
        raise UnsupportedFeatureError("building the TensorRT plugin needs CMake 3.18+: install cmake (apt or pip)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vlm-edge-plugin-") as build:
        _run([cmake, "-S", str(SOURCE_DIR), "-B", build, "-DCMAKE_BUILD_TYPE=Release",
              f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DTENSORRT_ROOT={include.parent}",
              f"-DTENSORRT_INCLUDE_DIR={include}", f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}"],
             "configuring the plugin build")
        _run([cmake, "--build", build, "-j", str(os.cpu_count() or 2)], "building the plugin")
        tmp = out_dir / (PLUGIN_LIBRARY + ".partial")
        shutil.copyfile(Path(build) / PLUGIN_LIBRARY, tmp)
        tmp.replace(out_dir / PLUGIN_LIBRARY)
    return out_dir / PLUGIN_LIBRARY


def plugin_library(tensorrt_root: str | Path | None = None, archs: tuple[str, ...] = ARCHS) -> Path:
    """$VLM_EDGE_PLUGIN_LIBRARY if set, else the cached build for these sources, archs and headers."""
    given = os.environ.get("VLM_EDGE_PLUGIN_LIBRARY")
    if given:
        if not Path(given).is_file():
            raise KernelBuildError(f"VLM_EDGE_PLUGIN_LIBRARY={given} is not a file; unset it to build the plugin")
        return Path(given)
    include = find_tensorrt_include(tensorrt_root)
    version = tensorrt_header_version(include) if include else "none"
    folder = cache_dir() / f"plugin-{source_digest(archs, 'trt' + version)}"
    library = folder / PLUGIN_LIBRARY
    return library if library.is_file() else build_plugin(folder, tensorrt_root, archs)
