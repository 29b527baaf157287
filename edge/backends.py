"""Which backend runs the graphs, and ONNX Runtime sessions for it.

    ort-cpu    ONNX Runtime, CPUExecutionProvider (runs everywhere; the embedded default)
    ort-cuda   ONNX Runtime, CUDAExecutionProvider (onnxruntime-gpu and a working GPU)
    tensorrt   the plans vlm-build-engine built for this TensorRT and GPU (edge/tensorrt.py)
    auto       tensorrt when TensorRT imports and the manifest has plans for this GPU; else ort-cuda
               when a CUDA session really comes up; else ort-cpu

onnxruntime-gpu lists CUDAExecutionProvider even on machines without a GPU or driver; a session
then silently falls back to the CPU. So "auto" opens a real session and checks the providers it
actually got.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from vlm_edge.common.errors import CheckpointError, InputError, UnsupportedFeatureError
from vlm_edge.common.log import get_logger

log = get_logger(__name__)

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt")
_PROVIDERS = {"ort-cpu": ["CPUExecutionProvider"], "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initializers are noise for users
    return options


def ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises when a graph does not load: the classes of its binding module
    (InvalidProtobuf, InvalidGraph, Fail, NoSuchFile, ...; the set differs between versions) and
    RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (RuntimeError, *(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception)))


def open_session(path: Path, backend: str, threads: int | None = None) -> ort.InferenceSession:
    if backend not in _PROVIDERS:
        raise UnsupportedFeatureError(f"backend {backend!r} does not run ONNX graphs")
    try:
        sess = ort.InferenceSession(str(path), session_options(threads), providers=_PROVIDERS[backend])
    except ort_errors() as e:
        reason = next(iter(str(e).strip().splitlines()), "") or type(e).__name__
        raise CheckpointError(f"{path}: ONNX Runtime {ort.__version__} cannot load this graph ({reason[:300]}); the file "
                              "is damaged or not a graph vlm-export wrote: re-export the engine (or copy it again)"
                              ) from None
    if backend == "ort-cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise InputError(f"backend ort-cuda was asked for, but ONNX Runtime could not start CUDA for {path.name} "
                         "(no GPU, driver or onnxruntime-gpu); use --backend ort-cpu or auto")
    return sess


def resolve_backend(name: str, probe: Path, targets: list[dict] = ()) -> str:
    """The concrete backend for `name`; `probe` is a small graph used to test CUDA for real;
    `targets` are the manifest's TensorRT builds."""
    if name not in BACKENDS:
        raise InputError(f"backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "tensorrt":
        from .tensorrt import import_tensorrt

        import_tensorrt()  # a clear error when the packages are missing
        return name
    if name != "auto":
        return name
    if targets and not os.environ.get("VLM_EDGE_NO_CUDA"):
        from .tensorrt import device_sm, import_tensorrt, select_plans

        try:
            trt, cudart = import_tensorrt()
            select_plans(list(targets), trt.__version__, device_sm(cudart), ("vision", "decoder.trt"))
            return "tensorrt"
        except (UnsupportedFeatureError, CheckpointError) as e:
            log.info("not using TensorRT: %s", e)
    if "CUDAExecutionProvider" in ort.get_available_providers() and not os.environ.get("VLM_EDGE_NO_CUDA"):
        try:
            sess = ort.InferenceSession(str(probe), session_options(), providers=_PROVIDERS["ort-cuda"])
            if "CUDAExecutionProvider" in sess.get_providers():
                return "ort-cuda"
        except Exception as e:  # a broken CUDA install: fall back, say why
            log.info("CUDA session failed (%s); using ort-cpu", e)
    return "ort-cpu"
