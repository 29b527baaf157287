"""The VILA-class PyTorch reference model and checkpoint I/O (VILA1.5 on-disk layout).

    from vlm_edge.model import load_checkpoint, chat
    ckpt = load_checkpoint("ckpt/")
    print(chat(ckpt, [{"role": "user", "content": "<image>\\nWhat is this?"}], ["photo.jpg"]))

Modules, in data-flow order: architectures (transformers classes per family, as a table),
projector, vila (VilaModel: vision -> projector -> splice -> LLM), checkpoint (load/save),
generate (reference decoding), presets (new model shapes), cli (`vlm-model`).
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .generate import GenerationConfig, GenerationResult, chat, generate
from .vila import VilaModel

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
