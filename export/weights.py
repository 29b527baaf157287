"""Where the exporter reads weights: the loaded reference model, plus the AWQ integers from disk.

Float tensors come from the PyTorch module that validation runs too (one float copy of the model
in memory, converted to numpy one tensor at a time). The 4-bit integers, zero points and scales
of a quantized LLM come straight from its AutoAWQ safetensors, so the graphs carry exactly the
integers `vlm-quant` wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from vlm_edge.common.errors import CheckpointError
from vlm_edge.model.checkpoint import weight_files

from .linear import QuantLinear

_AWQ_PARTS = ("qweight", "qzeros", "scales")


class ModuleWeights:
    """float32 numpy views of a module's state dict, and (for an AWQ LLM) its packed linears."""

    def __init__(self, module: torch.nn.Module, awq_dir: Path | None = None, group_size: int | None = None):
        self.state = module.state_dict()
        self.group_size = group_size
        self._awq: dict[str, tuple[Path, str]] = {}  # linear -> (file, key prefix)
        if awq_dir is not None:
            for file in weight_files(awq_dir):
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():
                        base, _, part = key.rpartition(".")
                        if part == "qweight":
                            self._awq[base] = (file, base)

    def has(self, key: str) -> bool:
        return key in self.state

    def get(self, key: str) -> np.ndarray:
        if key not in self.state:
            raise CheckpointError(f"the checkpoint has no tensor {key}, which the exported graph needs")
        return self.state[key].detach().float().cpu().numpy()

    def quant(self, key: str) -> QuantLinear | None:
        if key not in self._awq:
            return None
        file, base = self._awq[key]
        with safe_open(str(file), framework="pt") as f:
            parts = {p: f.get_tensor(f"{base}.{p}") for p in _AWQ_PARTS}
        return QuantLinear.from_awq(parts["qweight"].numpy(), parts["qzeros"].numpy(), parts["scales"].float().numpy(),
                                    self.group_size or 0)

    @property
    def quantized_linears(self) -> list[str]:
        return sorted(self._awq)
