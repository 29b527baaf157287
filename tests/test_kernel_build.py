"""The CUDA code builds: the kernel for Orin (sm_87) and Hopper (sm_90), the TensorRT plugin library.

The kernel compiles wherever nvcc is (CI's machines have it: CUDA 13); the fatbin must hold SASS
for both archs. The plugin compiles where TensorRT's headers are (TENSORRT_ROOT, or /usr on a
Jetson); it then must load with dlopen and hand out its one creator through getCreators, as
TensorRT's IPluginRegistry::loadLibrary and trtexec --dynamicPlugins call it, and pass
tests/native/trt_plugin_check.cpp: the builder's calls up to enqueue, with no libnvinfer or GPU.
And the kernels' own source runs on the CPU (tests/native/cuda_emulation.h: a thread per CUDA
thread, barriers and shuffles emulated) against the numpy reference, every variant. Each skips with the
reason where its tool is absent. Running the kernel needs a GPU: tests/test_kernel_gpu.py.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vlm_edge.kernels import build
from vlm_edge.kernels.loader import kernel_name

NATIVE = Path(__file__).parent / "native"
nvcc = pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not found (install the CUDA toolkit or set CUDA_HOME)")


@nvcc
def test_kernel_compiles_for_orin_and_hopper(tmp_path):
    fatbin = build.build_fatbin(tmp_path / "downsample.fatbin", ("87", "90"))
    images = build.fatbin_images(fatbin.read_bytes())
    assert {(i.kind, i.sm) for i in images} >= {("elf", 87), ("elf", 90), ("ptx", 90)}, images
    assert not list(tmp_path.glob("*.partial"))
    if shutil.which("cuobjdump"):  # NVIDIA's own reading of the file, where the tool is installed
        listed = subprocess.run(["cuobjdump", "--list-elf", str(fatbin)], capture_output=True, text=True).stdout
        assert "sm_87" in listed and "sm_90" in listed, listed
    for dtype, channels in ((np.float32, 1152), (np.float16, 1152), ("bfloat16", 48), (np.float32, 6)):
        name = kernel_name(np.dtype(dtype) if dtype != "bfloat16" else _bfloat16(), channels)
        assert name.encode() in fatbin.read_bytes(), name


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def test_kernel_names_follow_the_channels():
    assert kernel_name(np.dtype(np.float16), 1152) == "vlm_downsample_ln_f16_v8"
    assert kernel_name(np.dtype(np.float32), 1152) == "vlm_downsample_ln_f32_v4"
    assert kernel_name(np.dtype(np.float32), 6) == "vlm_downsample_ln_f32_v1"  # 6 channels: no 16-byte loads
    assert kernel_name(_bfloat16(), 48) == "vlm_downsample_ln_bf16_v8"
    assert kernel_name(np.dtype(np.float16), 48, aligned=False) == "vlm_downsample_ln_f16_v1"
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        kernel_name(np.dtype(np.int8), 48)


def test_fatbin_reader_refuses_other_files():
    with pytest.raises(build.KernelBuildError, match="not a CUDA fatbin"):
        build.fatbin_images(b"\x7fELF" + bytes(60))


@nvcc
@pytest.mark.skipif(build.find_tensorrt_include() is None,
                    reason="TensorRT headers not found (set TENSORRT_ROOT to a TensorRT 10 prefix)")
def test_plugin_library_builds_loads_and_hands_out_its_creator(tmp_path):
    include = build.find_tensorrt_include()
    print(f"TensorRT headers {build.tensorrt_header_version(include)} in {include}")
    library = build.build_plugin(tmp_path, archs=("87", "90"))
    assert library.name == build.PLUGIN_LIBRARY and not list(tmp_path.glob("*.partial"))
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert exported == {"getCreators", "setLoggerFinder"}, exported  # everything else is hidden
    lib = ctypes.CDLL(str(library))
    lib.getCreators.restype = ctypes.POINTER(ctypes.c_void_p)
    lib.getCreators.argtypes = [ctypes.POINTER(ctypes.c_int32)]
    count = ctypes.c_int32(0)
    creators = lib.getCreators(ctypes.byref(count))
    assert count.value == 1 and creators[0]

    # the builder's side of the plugin, up to enqueue: tests/native/trt_plugin_check.cpp
    check = tmp_path / "trt_plugin_check"
    compiler = shutil.which("g++") or shutil.which("c++")
    cuda_include = build.find_cuda_include()
    assert cuda_include is not None, "nvcc is here but not cuda_runtime.h"
    compiled = subprocess.run([compiler, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(include),
                               "-isystem", str(cuda_include), str(NATIVE / "trt_plugin_check.cpp"), "-ldl", "-o",
                               str(check)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    result = subprocess.run([str(check), str(library)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout


def test_loader_without_a_gpu_says_what_it_needs():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    from vlm_edge.common.errors import UnsupportedFeatureError
    from vlm_edge.kernels.loader import DownsampleKernel

    try:
        DownsampleKernel()
    except UnsupportedFeatureError as e:
        assert "NVIDIA GPU" in str(e)
    else:
        pytest.skip("a GPU is here: tests/test_kernel_gpu.py runs the kernel")


# ---- the kernels' own source, run on the CPU (tests/native/cuda_emulation.h) ---------------------------
@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    compiler = shutil.which("g++")
    include = build.find_cuda_include()
    if compiler is None or include is None:
        pytest.skip("needs g++ and the CUDA toolkit's headers (cuda_runtime.h, cuda_fp16.h)")
    program = tmp_path_factory.mktemp("emulated") / "downsample_emulated"
    compiled = subprocess.run([compiler, "-std=c++20", "-O1", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Werror",
                               "-pthread", "-isystem", str(include), str(NATIVE / "downsample_emulated.cpp"), "-o",
                               str(program)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    return program


# (kernel, dtype, B, S, C, r): every variant; odd and even grids; r = 2 and 3; C = 1152 gives each
# thread several 16-byte packs, C = 6 and 12 force the narrow kernels
EMULATED = [
    ("vlm_downsample_ln_f32_v4", "float32", 2, 7, 8, 2), ("vlm_downsample_ln_f32_v4", "float32", 1, 5, 1152, 2),
    ("vlm_downsample_ln_f32_v1", "float32", 2, 6, 6, 3), ("vlm_downsample_ln_f16_v8", "float16", 1, 9, 16, 3),
    ("vlm_downsample_ln_f16_v8", "float16", 1, 4, 1152, 2), ("vlm_downsample_ln_f16_v1", "float16", 2, 7, 12, 2),
    ("vlm_downsample_ln_bf16_v8", "bfloat16", 2, 8, 48, 2), ("vlm_downsample_ln_bf16_v1", "bfloat16", 1, 7, 6, 3),
]


@pytest.mark.parametrize("order", ["column_major", "row_major"])
@pytest.mark.parametrize("name,dtype,batch,side,channels,ratio", EMULATED)
def test_kernel_source_run_on_the_cpu_matches_the_reference(emulated, tmp_path, order, name, dtype, batch, side,
                                                            channels, ratio):
    """The same source nvcc compiles, with its barriers and shuffles emulated: the GPU tests' tolerances."""
    from vlm_edge.kernels.reference import ORDERS, downsample_layernorm

    t = _bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(side * 100 + channels + ratio)
    width = ratio * ratio * channels
    x = (rng.standard_normal((batch, side, side, channels)) * 1.5 + 0.3).astype(t)
    weight, bias = rng.uniform(0.5, 1.5, width).astype(t), (rng.standard_normal(width) * 0.1).astype(t)
    paths = [tmp_path / n for n in ("x", "w", "b", "y")]
    for path, array in zip(paths, (x, weight, bias)):
        path.write_bytes(array.tobytes())
    result = subprocess.run([str(emulated), name, str(batch), str(side), str(channels), str(ratio),
                             str(ORDERS.index(order)), "1e-5", *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    half = -(-side // ratio)
    got = np.frombuffer(paths[3].read_bytes(), t).reshape(batch, half * half, width)
    want = downsample_layernorm(x.reshape(batch, side * side, channels).astype(np.float32), weight.astype(np.float32),
                                bias.astype(np.float32), ratio=ratio, order=order, eps=1e-5)
    err = np.abs(got.astype(np.float32) - want).max()
    assert err <= (1e-5 if dtype == "float32" else 2e-2), err
