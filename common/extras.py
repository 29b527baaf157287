"""Optional dependencies: which `pip install` extra brings a module, and the one-line error
a command prints when it is missing (instead of a ModuleNotFoundError traceback).

    pip install vlm-edge            the runtime: numpy, onnxruntime, tokenizers, Pillow
    pip install "vlm-edge[torch]"   + the toolkit (vlm-train, vlm-quant, vlm-export, vlm-model)
    pip install "vlm-edge[serve]"   + vlm-serve
    pip install "vlm-edge[jetson]"  + camera sources
    pip install "vlm-edge[gpu]"     + TensorRT (from NVIDIA's package index)
"""

from __future__ import annotations

from .errors import VlmEdgeError

# top-level module -> the extra that installs it
EXTRA_OF = {
    "torch": "torch",
    "transformers": "torch",
    "safetensors": "torch",
    "sentencepiece": "torch",
    "onnx": "torch",
    "datasets": "calib",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "starlette": "serve",
    "cv2": "jetson",
    "tensorrt": "gpu",
    "cuda": "gpu",
}


class MissingExtraError(VlmEdgeError):
    """A command needs a module that an optional extra installs."""


def missing_extra(error: ModuleNotFoundError, what: str) -> MissingExtraError | None:
    """The user-facing error for `error`, when the missing module belongs to one of our extras."""
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return MissingExtraError(f"{what} needs the Python module {module!r}, which the {extra!r} extra installs: "
                             f"pip install \"vlm-edge[{extra}]\" (in a clone of the repository: "
                             f"pip install -e \".[{extra}]\")")


def require(module: str, what: str) -> None:
    """Import `module` now, or raise MissingExtraError naming the extra that installs it."""
    try:
        __import__(module)
    except ModuleNotFoundError as e:
        err = missing_extra(e, what)
        if err is None:
            raise
        raise err from None


def require_installed(module: str, what: str) -> None:
    """`require` without importing `module` (torch takes seconds): a command that checks its input
    before loading it still says first which extra it lacks."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        err = missing_extra(ModuleNotFoundError(f"No module named {module!r}", name=module), what)
        if err is not None:
            raise err
