"""The TensorRT backend: the plans vlm-build-engine wrote, run with cuda-python buffers and a stream.

    pipe = vlm_edge.edge.load("engine/", "tensorrt")   # needs tensorrt 10+, cuda-python, an NVIDIA GPU

`tensorrt` and `cuda.bindings` are imported only when this backend is opened. Plans are chosen
from the manifest's `targets` by TensorRT version and GPU compute capability (a plan runs only
where it was built). Two objects stand in for what ONNX Runtime gives the other backends:

    TrtSession   vision: `run(None, feeds)` like an InferenceSession; device buffers sized on
                 first use and kept, inputs copied in and outputs out on one stream.
    TrtDecoder   the `trt` decoder graph (plain attention, the cache grows by concatenation inside
                 the graph): two device buffers per layer and K/V at the full context, bound as
                 past (the first `length` positions) and present (length + new), swapped after
                 each step. The cache never leaves the GPU; only embeddings in and logits out
                 cross the bus. CUDA graphs are not used: the graph's KV shapes change every step.

It cannot run on this project's machines (no TensorRT, no GPU); `select_plans` and the error
paths are tested there, the rest runs where TensorRT exists (tests marked `tensorrt`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlm_edge.common.errors import CheckpointError, UnsupportedFeatureError

INSTALL_HINT = ("the tensorrt backend needs the `tensorrt` (10+) and `cuda-python` packages and an NVIDIA GPU; "
                "use --backend ort-cuda or ort-cpu here")


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime), or UnsupportedFeatureError naming what is missing."""
    try:
        import tensorrt as trt  # noqa: PLC0415  (lazy: only on GPU machines)
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except ImportError as e:
        raise UnsupportedFeatureError(f"{INSTALL_HINT} ({e.name} is not installed)") from None
    return trt, cudart


def device_sm(cudart) -> str:
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise UnsupportedFeatureError(f"{INSTALL_HINT} (no CUDA device: {err})")
    return f"{props.major}{props.minor}"


def select_plans(targets: list[dict], trt_version: str, sm: str, components: tuple[str, ...]) -> dict[str, str]:
    """component -> plan file (relative to the engine directory) built by this TensorRT for this GPU."""
    fitting = {t["component"]: t["file"] for t in targets if t.get("tensorrt") == trt_version and str(t.get("sm")) == sm}
    missing = [c for c in components if c not in fitting]
    if missing:
        built = sorted({f"TensorRT {t.get('tensorrt')} sm{t.get('sm')}" for t in targets}) or ["none"]
        raise CheckpointError(f"no TensorRT plan for {', '.join(missing)} built with TensorRT {trt_version} for sm{sm} "
                              f"(built: {', '.join(built)}); run `vlm-build-engine ENGINE_DIR` on this machine")
    return {c: fitting[c] for c in components}


def _check(result) -> Any:
    """cuda-python returns (error, *values); raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


class _Device:
    """A TensorRT runtime, a CUDA stream and device allocations, freed together."""

    def __init__(self):
        self.trt, self.cudart = import_tensorrt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._allocations: list[int] = []

    def engine(self, path: Path):
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise CheckpointError(f"TensorRT could not load {path}; rebuild it with vlm-build-engine")
        return engine

    def malloc(self, nbytes: int) -> int:
        ptr = _check(self.cudart.cudaMalloc(max(int(nbytes), 1)))
        self._allocations.append(ptr)
        return ptr

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        _check(self.cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        _check(self.cudart.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def sync(self) -> None:
        _check(self.cudart.cudaStreamSynchronize(self.stream))

    def __del__(self):
        for ptr in getattr(self, "_allocations", []):
            self.cudart.cudaFree(ptr)


class TrtSession:
    """One plan with an InferenceSession-like `run`, for graphs without state (vision)."""

    def __init__(self, device: _Device, path: Path):
        self.device = device
        self.engine = device.engine(path)
        self.context = self.engine.create_execution_context()
        trt = device.trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if nbytes > cap:
            ptr = self.device.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name])
            self.context.set_input_shape(name, array.shape)
            ptr = self._buffer(name, array.nbytes)
            self.device.to_device(ptr, array)
            self.context.set_tensor_address(name, ptr)
        results = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, np.float32)
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            results.append(out)
        if not self.context.execute_async_v3(self.device.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, out in zip(self.outputs, results):
            self.device.to_host(out, self._buffers[name][0])
        self.device.sync()
        return results


class TrtDecoder:
    """The trt decoder plan with its KV cache on the GPU (see the module docstring)."""

    def __init__(self, device: _Device, path: Path, model: dict, capacity: int):
        self.device, self.capacity = device, capacity
        self.engine = device.engine(path)
        self.context = self.engine.create_execution_context()
        self.layers, kv, hd = model["layers"], model["kv_heads"], model["head_dim"]
        self.kv, self.hd = kv, hd
        nbytes = kv * capacity * hd * 4
        self.buffers = [[device.malloc(nbytes), device.malloc(nbytes)] for _ in range(2 * self.layers)]
        self.current = 0  # which of each pair holds the valid cache
        self.embeds = device.malloc(capacity * model["hidden_size"] * 4)
        self.mask = device.malloc(capacity * 8)
        self.positions = device.malloc(capacity * 8)
        self.logits_dev = device.malloc(model["vocab_size"] * 4)
        self._logits = np.zeros((1, model["vocab_size"]), np.float32)
        self._ones = np.ones((1, capacity), np.int64)
        self.length = 0
        self.run_seconds = 0.0

    def truncate(self, length: int) -> None:
        """Keep the first `length` positions: a [kv, length, hd] tensor has another head stride than
        [kv, self.length, hd], so each head's rows are repacked into the other buffer of the pair."""
        if length >= self.length:
            return
        cudart, row = self.device.cudart, self.hd * 4
        for pair in self.buffers:
            _check(cudart.cudaMemcpy2DAsync(pair[1 - self.current], length * row, pair[self.current],
                                            self.length * row, length * row, self.kv,
                                            cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.device.stream))
        self.current = 1 - self.current
        self.length = length

    def __call__(self, embeds: np.ndarray) -> np.ndarray:
        import time

        seq, past = embeds.shape[0], self.length
        total = past + seq
        if total > self.capacity:
            raise CheckpointError(f"{total} positions exceed the KV cache of {self.capacity}")
        t0 = time.perf_counter()
        ctx, dev = self.context, self.device
        x = np.ascontiguousarray(embeds, np.float32)[None]
        dev.to_device(self.embeds, x)
        dev.to_device(self.mask, self._ones[:, :total])
        dev.to_device(self.positions, np.arange(past, total, dtype=np.int64)[None])
        for name, shape, ptr in (("inputs_embeds", x.shape, self.embeds), ("attention_mask", (1, total), self.mask),
                                 ("position_ids", (1, seq), self.positions)):
            ctx.set_input_shape(name, shape)
            ctx.set_tensor_address(name, ptr)
        for i in range(self.layers):
            for j, kv in enumerate(("key", "value")):
                pair = self.buffers[2 * i + j]
                ctx.set_input_shape(f"past_key_values.{i}.{kv}", (1, self.kv, past, self.hd))
                ctx.set_tensor_address(f"past_key_values.{i}.{kv}", pair[self.current])
                ctx.set_tensor_address(f"present.{i}.{kv}", pair[1 - self.current])
        ctx.set_tensor_address("logits", self.logits_dev)
        if not ctx.execute_async_v3(dev.stream):
            raise RuntimeError("TensorRT execution failed")
        dev.to_host(self._logits, self.logits_dev)
        dev.sync()
        self.current = 1 - self.current
        self.length = total
        self.run_seconds += time.perf_counter() - t0
        return self._logits[0]


def load_plugins(trt, targets: list[dict], plans: dict[str, str]) -> None:
    """Register the plugin library a chosen plan was built with (vision.trt.onnx's downsample) before loading it."""
    from vlm_edge.kernels.build import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION  # noqa: PLC0415

    libraries = {t["plugin_library"] for t in targets if t.get("file") in plans.values() and t.get("plugin_library")}
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return  # registered already (this process built the plans)
    for library in sorted(libraries):
        check_plugin_library(library)
        if not Path(library).is_file():
            raise CheckpointError(f"the TensorRT plans need the plugin library {library}, which is gone; run "
                                  "vlm-build-engine ENGINE_DIR again (it rebuilds the library)")
        if registry.load_library(library) is None:
            raise CheckpointError(f"TensorRT could not load the plugin library {library}; run vlm-build-engine "
                                  "ENGINE_DIR again")


def check_plugin_library(library: str) -> None:
    """Loading a shared library runs its code, and the manifest that names it may come from anyone:
    only vlm-edge's own plugin builds are loaded (under the kernel cache, or $VLM_EDGE_PLUGIN_LIBRARY
    where the user set one), never a path an engine directory brought along."""
    from vlm_edge.kernels.build import cache_dir  # noqa: PLC0415

    allowed = [cache_dir().resolve()]
    given = os.environ.get("VLM_EDGE_PLUGIN_LIBRARY")
    path = Path(library).resolve()
    if (given and path == Path(given).resolve()) or any(path.is_relative_to(a) for a in allowed):
        return
    raise CheckpointError(f"the manifest names the plugin library {library}, which is not one vlm-edge built (under "
                          f"{allowed[0]}) nor $VLM_EDGE_PLUGIN_LIBRARY; refused: run vlm-build-engine ENGINE_DIR here")


def check_plan_files(engine_dir: Path, plans: dict[str, str]) -> None:
    """Each plan the manifest names lies inside the engine directory (symlinks resolved)."""
    root = engine_dir.resolve()
    for rel in plans.values():
        if Path(rel).is_absolute() or not (root / rel).resolve().is_relative_to(root):
            raise CheckpointError(f"{engine_dir / 'manifest.json'} names the TensorRT plan {rel} outside the engine "
                                  "directory; refused")


def open_tensorrt(engine_dir: Path, manifest, capacity: int) -> tuple[TrtSession, TrtDecoder]:
    """The vision session and the decoder for an engine directory's plans on this GPU."""
    device = _Device()
    plans = select_plans(manifest.targets, device.trt.__version__, device_sm(device.cudart), ("vision", "decoder.trt"))
    check_plan_files(engine_dir, plans)
    load_plugins(device.trt, manifest.targets, plans)
    for rel in plans.values():
        if not (engine_dir / rel).is_file():
            raise CheckpointError(f"{engine_dir / rel} is listed in the manifest but missing; run vlm-build-engine again")
    return (TrtSession(device, engine_dir / plans["vision"]),
            TrtDecoder(device, engine_dir / plans["decoder.trt"], manifest.model, capacity))
