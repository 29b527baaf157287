"""The CUDA kernel loaded the way the runtime loads code: a fatbin through cuda-python's driver API.

    kernel = DownsampleKernel()                  # device 0: builds (or finds) the fatbin for its sm
    y = kernel.run(x, weight, bias, ratio=2, order="column_major")        # numpy in, numpy out
    kernel.launch(x_ptr, w_ptr, b_ptr, y_ptr, batch=..., side=..., ...)   # device pointers, a stream

`cuda.bindings` is imported when a DownsampleKernel is made, never at import time, so the
runtime imports this module on machines without CUDA. Arrays are float32, float16 or
bfloat16 (ml_dtypes); x is [B, S*S, C] or [B, S, S, C].
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from vlm_edge.common.errors import UnsupportedFeatureError, VlmEdgeError

from .build import ARCHS, cached_fatbin
from .reference import ORDERS

THREADS = 256  # kThreads in cuda/downsample.cu
DEFAULT_SHARED_LIMIT = 48 * 1024


def _dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    names = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
    if name not in names:
        raise ValueError(f"the kernel takes float32, float16 or bfloat16, not {name}")
    return names[name]


def kernel_name(dtype: np.dtype, channels: int, aligned: bool = True) -> str:
    """The extern "C" kernel for this dtype: 16-byte loads when the channels allow."""
    short = _dtype_name(dtype)
    vector = 16 // np.dtype(dtype).itemsize
    wide = aligned and channels % vector == 0
    return f"vlm_downsample_ln_{short}_v{vector if wide else 1}"


def shared_bytes(channels: int, ratio: int) -> int:
    return (ratio * ratio * channels + 32) * 4  # downsampleSharedBytes in cuda/downsample.cuh


class DownsampleKernel:
    """The fused downsample + LayerNorm kernels of one fatbin, in device `device`'s primary context."""

    def __init__(self, device: int = 0, fatbin: str | None = None):
        try:
            from cuda.bindings import driver  # noqa: PLC0415  (lazy: only where CUDA is)
        except ImportError:
            raise UnsupportedFeatureError("the CUDA kernel needs cuda-python: pip install cuda-python") from None
        self.cu = driver
        try:
            err, = driver.cuInit(0)
        except Exception as e:  # cuda-bindings raises when libcuda (the driver) is not on this machine
            raise UnsupportedFeatureError(f"the CUDA kernel needs an NVIDIA GPU and its driver ({e})") from None
        if int(err) != 0:
            raise UnsupportedFeatureError(f"the CUDA kernel needs an NVIDIA GPU and its driver (cuInit: {err})")
        self.device = self._check(driver.cuDeviceGet(device), "cuDeviceGet")
        attr = driver.CUdevice_attribute
        major = self._check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device),
                            "compute capability")
        minor = self._check(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device),
                            "compute capability")
        self.sm = f"{major}{minor}"
        self.context = self._check(driver.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")
        self._check(driver.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        path = fatbin or cached_fatbin(ARCHS if self.sm in ARCHS else (self.sm,))
        with open(path, "rb") as f:
            self._image = f.read()
        self.module = self._check(driver.cuModuleLoadData(self._image), f"loading {path}")
        self._functions: dict[str, Any] = {}

    def close(self) -> None:
        """Unload the module and release the primary context."""
        if getattr(self, "module", None) is not None:
            self.cu.cuModuleUnload(self.module)
            self.module = None
            self.cu.cuDevicePrimaryCtxRelease(self.device)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise VlmEdgeError(f"CUDA: {what} failed ({err})")
        return values[0] if len(values) == 1 else tuple(values) or None

    def function(self, name: str):
        if name not in self._functions:
            self._functions[name] = self._check(self.cu.cuModuleGetFunction(self.module, name.encode()), name)
        return self._functions[name]

    def launch(self, x: int, weight: int, bias: int, y: int, *, batch: int, side: int, channels: int, dtype,
               ratio: int = 2, order: str = "column_major", eps: float = 1e-5, stream: int = 0) -> None:
        """Enqueue one call on `stream`; the pointers are device addresses (ints)."""
        if ratio not in (2, 3) or order not in ORDERS or not 1 <= batch <= 65535 or side < 1 or channels < 1:
            raise ValueError(f"ratio {ratio} (2 or 3), order {order!r}, batch {batch} (1..65535), side {side}, "
                             f"channels {channels}")
        aligned = all(int(p) % 16 == 0 for p in (x, weight, bias, y))
        func = self.function(kernel_name(dtype, channels, aligned))
        smem = shared_bytes(channels, ratio)
        if smem > DEFAULT_SHARED_LIMIT:
            attr = self.cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            self._check(self.cu.cuFuncSetAttribute(func, attr, smem), f"{smem} bytes of shared memory")
        half = -(-side // ratio)
        # kernelParams: an array of pointers to each argument's value, as the driver API takes it
        values = [ctypes.c_void_p(int(x)), ctypes.c_void_p(int(weight)), ctypes.c_void_p(int(bias)),
                  ctypes.c_void_p(int(y)), ctypes.c_int(side), ctypes.c_int(channels), ctypes.c_int(ratio),
                  ctypes.c_int(ORDERS.index(order)), ctypes.c_float(eps)]
        pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        self._check(self.cu.cuLaunchKernel(func, half * half, batch, 1, THREADS, 1, 1, smem, stream,
                                           ctypes.addressof(pointers), 0), "cuLaunchKernel")

    def run(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, ratio: int = 2,
            order: str = "column_major", eps: float = 1e-5) -> np.ndarray:
        """x [B, S*S, C] or [B, S, S, C] -> [B, ceil(S/r)^2, r*r*C], through device memory."""
        if x.ndim == 4:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        batch, tokens, channels = x.shape
        side = int(round(tokens ** 0.5))
        if side * side != tokens:
            raise ValueError(f"{tokens} tokens are not a square grid")
        if weight.shape != (ratio * ratio * channels,) or bias.shape != weight.shape:
            raise ValueError(f"weight and bias must be [{ratio * ratio * channels}] (ratio^2 * C), got "
                             f"{list(weight.shape)} and {list(bias.shape)}")
        half = -(-side // ratio)
        out = np.empty((batch, half * half, ratio * ratio * channels), x.dtype)
        arrays = [np.ascontiguousarray(a, x.dtype) for a in (x, weight, bias)]
        buffers = [self._check(self.cu.cuMemAlloc(max(a.nbytes, 1)), "cuMemAlloc") for a in arrays + [out]]
        try:
            for buf, a in zip(buffers, arrays):
                self._check(self.cu.cuMemcpyHtoD(buf, a.ctypes.data, a.nbytes), "cuMemcpyHtoD")
            self.launch(*(int(b) for b in buffers), batch=batch, side=side, channels=channels, dtype=x.dtype,
                        ratio=ratio, order=order, eps=eps)
            self._check(self.cu.cuCtxSynchronize(), "the kernel")
            self._check(self.cu.cuMemcpyDtoH(out.ctypes.data, buffers[-1], out.nbytes), "cuMemcpyDtoH")
        finally:
            for buf in buffers:
                self.cu.cuMemFree(buf)
        return out
