"""The VILA-class PyTorch reference model and checkpoint I/O (VILA1.5 on-disk layout).

    from vlm_edge.model import load_checkpoint, chat
    ckpt = load_checkpoint("ckpt/")
    print(chat(ckpt, [{"role": "user", "content": "<image>\\nWhat is this?"}], ["photo.jpg"]))

Modules, in data-flow order: architectures (transformers classes per family, as a table),
projector, vila (VilaModel: vision -> projector -> splice -> LLM), checkpoint (load/save),
generate (reference decoding), presets (new model shapes), cli (`vlm-model`).
"""

try:
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .generate import GenerationConfig, GenerationResult, chat, generate
    from .vila import VilaModel
except ModuleNotFoundError as _missing:  # no torch: `vlm-model --help` and its one-line error still work
    from vlm_edge.common.extras import missing_extra

    _error = missing_extra(_missing, "vlm_edge.model")
    if _error is None:
        raise

    def __getattr__(name: str):
        if name in __all__:
            raise _error
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Checkpoint",
    "GenerationConfig",
    "GenerationResult",
    "VilaModel",
    "chat",
    "generate",
    "load_checkpoint",
    "save_checkpoint",
]
