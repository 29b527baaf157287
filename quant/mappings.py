"""Where AWQ finds things in each LLM family: a table, so the algorithm stays generic.

A family names its decoder layers, and within one layer the groups of linears that share an
input. Each group gives the operation before it (into which the inverse scale is folded), the
linears (whose input columns are scaled), and the module whose output the scale search
compares against the unquantized one. Adding a family is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlm_edge.common.errors import UnsupportedFeatureError


@dataclass(frozen=True)
class ScaleGroup:
    prev: str  # RMSNorm or Linear, relative to the decoder layer
    linears: tuple[str, ...]
    inspect: str  # its output is what the search keeps close to the FP output
    needs_same_width: bool = False  # prev -> linear folding only when prev's outputs are the linear's inputs 1:1


@dataclass(frozen=True)
class Family:
    layers: str  # the ModuleList of decoder layers, relative to the CausalLM
    groups: tuple[ScaleGroup, ...]
    no_clip: tuple[str, ...] = ("self_attn.q_proj", "self_attn.k_proj")  # attention logits are too sensitive

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.groups for name in group.linears)


_LLAMA_LIKE = Family(
    layers="model.layers",
    groups=(
        ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        # v -> o only when every o input is one v output (no grouped-query attention)
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", needs_same_width=True),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
    ),
)

FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
}


def family(architecture: str) -> Family:
    if architecture not in FAMILIES:
        raise UnsupportedFeatureError(
            f"AWQ has no layer mapping for LLM architecture {architecture!r}; supported: {', '.join(FAMILIES)}. "
            "Add a row to vlm_edge.quant.mappings.FAMILIES"
        )
    return FAMILIES[architecture]
