"""Which transformers classes build each sub-model, and how their weights are named on disk.

Adding a family is adding a row. `disk_prefix` is what VILA1.5 releases (saved with
transformers 4.x) put in front of the module's own state-dict keys: the vision towers were
`SiglipVisionModel.vision_model.*` there, while transformers 5 flattens them. We always write
the release layout and read both. `fields` is the table of the config fields the family reads
(common/config_checks.py): they are checked before the model is built, and only they are handed
to transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.initialization import no_init_weights

from vlm_edge.common import config_checks
from vlm_edge.common.config_checks import Field, model_kwargs
from vlm_edge.common.errors import CheckpointError


@dataclass(frozen=True)
class Architecture:
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    disk_prefix: str  # prepended to module keys in the release's safetensors files
    fields: dict[str, Field]  # the config fields it reads, with their types and ranges


LLM_ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(LlamaConfig, LlamaForCausalLM, "", config_checks.LLM),
    "Qwen2ForCausalLM": Architecture(Qwen2Config, Qwen2ForCausalLM, "", config_checks.LLM),
}
VISION_ARCHITECTURES: dict[str, Architecture] = {
    "SiglipVisionModel": Architecture(SiglipVisionConfig, SiglipVisionModel, "vision_model.", config_checks.VISION),
    "CLIPVisionModel": Architecture(CLIPVisionConfig, CLIPVisionModel, "vision_model.", config_checks.VISION),
}


def hf_config(arch: Architecture, cfg: dict[str, Any], attn_implementation: str) -> PretrainedConfig:
    """A transformers config from a config.json dict: the fields of the family's table (checked by
    VilaConfig.validate), nothing else; the other keys of real releases (how the file was stored,
    generation defaults, label maps) do not reach transformers. A quantized LLM
    (quantization_config) is built in float and filled with dequantized weights by checkpoint I/O."""
    try:
        return arch.config_class(**model_kwargs(cfg, arch.fields), attn_implementation=attn_implementation)
    except Exception as e:  # transformers' strict configs raise their own types; the table should have caught it
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{arch.config_class.__name__} refuses this config: {reason}") from None


def build(arch: Architecture, cfg: dict[str, Any], *, attn_implementation: str, init_weights: bool) -> PreTrainedModel:
    """Instantiate a sub-model. Without `init_weights` the parameters are left uninitialised
    (they are about to be loaded from files), which saves seconds to minutes on large models."""
    config = hf_config(arch, cfg, attn_implementation)
    if init_weights:
        return arch.model_class(config)
    with no_init_weights():
        model = arch.model_class(config)
    model.tie_weights()  # no_init_weights skips tying too (tie_word_embeddings models share lm_head)
    return model


def tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys that alias another key (e.g. lm_head.weight when embeddings are tied)."""
    seen: dict[int, str] = {}
    tied = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tied.add(key)
        else:
            seen[ptr] = key
    return tied
