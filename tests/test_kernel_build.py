"""The CUDA code builds: the kernel for Orin (sm_87) and Hopper (sm_90), the TensorRT plugin library.

The kernel compiles wherever nvcc is (CI's machines have it: CUDA 13); the fatbin must hold SASS
for both archs. The plugin compiles where TensorRT's headers are (TENSORRT_ROOT, or /usr on a
Jetson); it then must load with dlopen and hand out its one creator through getCreators, as
TensorRT's IPluginRegistry::loadLibrary and trtexec --dynamicPlugins call it, and pass
tests/native/trt_plugin_check.cpp: the builder's calls up to enqueue, with no libnvinfer or GPU. Each skips with the
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
