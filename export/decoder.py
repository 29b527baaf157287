"""The decoder graph: inputs_embeds + KV cache -> last-position logits + the KV cache.

Two forms of the same Llama/Qwen2 block, by flavour:

ONNX Runtime graphs (flavours fp, ort) use com.microsoft.GroupQueryAttention, which applies RoPE,
attends with the cache and writes the new keys and values into it. The runtime preallocates one
cache buffer per layer at the context size and binds it as both past and present (IOBinding), so
a step writes only its own positions: no per-step allocation, no copy of the cache. These graphs
also fuse what ONNX Runtime's optimizer would not: q/k/v as one product (GroupQueryAttention takes
them packed), gate/up as one product then a Split, RMSNorm as SimplifiedLayerNormalization and the
residual add with the next RMSNorm as com.microsoft.SkipSimplifiedLayerNormalization: 13 nodes
a layer instead of 24, which a decode step on one core feels.

    inputs_embeds              float32 [batch, seq, D]       text embeddings with image embeddings spliced in
    seqlens_k                  int32   [batch]               tokens in the cache after this call, minus 1
    total_sequence_length      int32   []                    the same plus 1 (batch 1); positions are
                                                             seqlens_k + 1 - seq .. seqlens_k
    past_key_values.{i}.key    float32 [batch, kv_heads, past, head_dim]   past = the buffer's length when
    past_key_values.{i}.value  float32 [batch, kv_heads, past, head_dim]   shared, else the cached tokens
  ->
    logits                     float32 [batch, vocab]        of the last position only (prefill and decode)
    present.{i}.key / .value   float32 [batch, kv_heads, total, head_dim]  (the same buffer when shared)

TensorRT graphs (flavour trt) use plain ONNX ops only and grow the cache by concatenation:

    inputs_embeds float32 [batch, seq, D], attention_mask int64 [batch, past + seq] (1 = real token,
    0 = left padding), position_ids int64 [batch, seq], past_key_values.* [batch, kv_heads, past,
    head_dim] -> logits [batch, vocab], present.* [batch, kv_heads, past + seq, head_dim]

    h = RMSNorm(x) ; q, k, v = linears(h) ; rotate q, k (RoPE, cos/sin gathered by position_ids)
    K = concat(past K, k) ; V likewise            (GQA: each KV head serves heads / kv_heads queries)
    x = x + o_proj(softmax(mask(q K^T / sqrt(head_dim))) V)
    x = x + down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))

The plain mask lets query i (absolute index past + i) see key j when j <= past + i and
attention_mask[j] = 1; masked scores are set to -1e4 (finite: a fully padded row stays finite in
fp16, and exp underflows to exactly 0 next to any real score).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from onnx import TensorProto

from vlm_edge.common.errors import UnsupportedFeatureError

from .config import engine_positions
from .graph import MS_DOMAIN, GraphBuilder
from .linear import QuantLinear, concat_outputs, emit_linear

MASKED = -1e4
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class DecoderWeights(Protocol):
    def get(self, key: str) -> np.ndarray: ...  # float32, torch layout ([out, in] for linears)
    def has(self, key: str) -> bool: ...
    def quant(self, key: str) -> QuantLinear | None: ...  # `key` without .weight


@dataclass(frozen=True)
class DecoderSpec:
    """What the graph needs to know of the LLM (Llama and Qwen2 share the block)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    inv_freq: np.ndarray  # [head_dim / 2] float32, as the PyTorch rotary embedding holds it
    rope_scaling: float  # multiplies cos and sin (1.0 for plain RoPE)
    max_positions: int  # max_position_embeddings, at most ENGINE_MAX_POSITIONS (export/config.py)
    tied_embeddings: bool

    @classmethod
    def from_llm(cls, llm) -> "DecoderSpec":
        """From a transformers Llama/Qwen2 ForCausalLM (the reference model being exported)."""
        c = llm.config
        rope_type = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type in ("dynamic", "longrope"):
            raise UnsupportedFeatureError(f"RoPE type {rope_type!r} changes with the sequence length; the exported "
                                          "graph supports static RoPE types (default, linear, llama3, yarn)")
        if getattr(c, "use_sliding_window", False):
            raise UnsupportedFeatureError("sliding-window attention is not supported by the exporter")
        rotary = llm.model.rotary_emb
        heads = c.num_attention_heads
        return cls(
            layers=c.num_hidden_layers, hidden=c.hidden_size, heads=heads,
            kv_heads=c.num_key_value_heads or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            intermediate=c.intermediate_size, vocab=c.vocab_size, eps=float(c.rms_norm_eps),
            inv_freq=rotary.inv_freq.detach().float().cpu().numpy(), rope_scaling=float(rotary.attention_scaling),
            max_positions=engine_positions({"max_position_embeddings": c.max_position_embeddings}),
            tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )


GQA_FLAVOURS = ("fp", "ort")  # graphs for ONNX Runtime: GroupQueryAttention, shared KV buffers


def set_accuracy_level(path: Path, level: int) -> int:
    """Rewrite the accuracy_level of every 4-bit MatMulNBits node of the graph at `path` (its weights,
    external data beside it, are not touched); an 8-bit head keeps level 4, the only level its CPU
    kernel is fast at. Returns how many nodes changed."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a for a in node.attribute}
        if attrs["bits"].i != 4 or ("accuracy_level" in attrs and attrs["accuracy_level"].i == level):
            continue
        if "accuracy_level" in attrs:
            attrs["accuracy_level"].i = level
        else:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
        changed += 1
    part = path.with_name(f".{path.name}.part")
    onnx.save(model, str(part))
    os.replace(part, path)
    return changed


def uses_gqa(flavour: str) -> bool:
    return flavour in GQA_FLAVOURS


def decoder_io(spec: DecoderSpec, flavour: str) -> tuple[list[tuple], list[tuple]]:
    """(inputs, outputs) as (name, numpy dtype name, shape) triples, in graph order."""
    kv = ["batch", spec.kv_heads, "past", spec.head_dim]
    kv_out = ["batch", spec.kv_heads, "total", spec.head_dim]
    inputs: list[tuple] = [("inputs_embeds", "float32", ["batch", "seq", spec.hidden])]
    if uses_gqa(flavour):
        inputs += [("seqlens_k", "int32", ["batch"]), ("total_sequence_length", "int32", [])]
    else:
        inputs += [("attention_mask", "int64", ["batch", "total"]), ("position_ids", "int64", ["batch", "seq"])]
    outputs = [("logits", "float32", ["batch", spec.vocab])]
    for i in range(spec.layers):
        inputs += [(f"past_key_values.{i}.key", "float32", kv), (f"past_key_values.{i}.value", "float32", kv)]
        outputs += [(f"present.{i}.key", "float32", kv_out), (f"present.{i}.value", "float32", kv_out)]
    return inputs, outputs


def rope_tables(spec: DecoderSpec) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_positions, head_dim] float32, computed as the PyTorch rotary embedding does."""
    positions = np.arange(spec.max_positions, dtype=np.float32)[:, None]
    freqs = positions * spec.inv_freq[None, :].astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (np.cos(emb) * spec.rope_scaling).astype(np.float32), (np.sin(emb) * spec.rope_scaling).astype(np.float32)


def build_decoder(g: GraphBuilder, spec: DecoderSpec, weights: DecoderWeights, flavour: str, *,
                  accuracy_level: int = 0, lm_head: QuantLinear | None = None, rescore: int = 0,
                  progress=None) -> None:
    """The decoder graph into `g`. `lm_head`, when given, is the 4- or 8-bit LM head (else float32);
    `rescore` > 0 (ort only): the `rescore` highest logits of that head are recomputed from int8
    rows of the float head (`rescore_reference`)."""
    inputs, outputs = decoder_io(spec, flavour)
    for name, dtype, shape in inputs:
        g.input(name, np.dtype(dtype), shape)
    attention = _gqa_attention(g, spec) if uses_gqa(flavour) else _plain_attention(g, spec)

    fused = uses_gqa(flavour)  # ONNX Runtime graphs: fused norms, packed q/k/v and gate/up products

    def rmsnorm(h: str, key: str) -> str:
        if fused:
            return g.op("SimplifiedLayerNormalization", h, g.weight(key, weights.get(key)), axis=-1, epsilon=spec.eps,
                        name="rmsnorm")
        var = g.op("ReduceMean", g.op("Mul", h, h), g.ints(-1), keepdims=1)
        rms = g.op("Sqrt", g.op("Add", var, g.const("eps", np.array(spec.eps, np.float32))))
        return g.op("Mul", g.op("Div", h, rms), g.weight(key, weights.get(key)), name="rmsnorm")

    def residual_rmsnorm(x: str, y: str, key: str) -> tuple[str, str]:
        """(RMSNorm(x + y), x + y): one SkipSimplifiedLayerNormalization where fused."""
        if not fused:
            s = g.op("Add", x, y, name="residual")
            return rmsnorm(s, key), s
        h, _, _, s = g.op("SkipSimplifiedLayerNormalization", y, x, g.weight(key, weights.get(key)), outputs=4,
                          out_names=(None, "", "", None), domain=MS_DOMAIN, epsilon=spec.eps, name="residual_rmsnorm")
        return h, s

    def linear(h: str, *keys: str, name: str | None = None) -> str:
        """One product for the linears `keys` (their outputs side by side, in order)."""
        quants = [weights.quant(k) for k in keys]
        if any(q is None for q in quants):  # float weights (a quantized part, if any, dequantized beside them)
            weight_t = np.concatenate([q.dequantize() if q is not None else weights.get(f"{k}.weight").T
                                       for k, q in zip(keys, quants)], axis=1)
            quant = None
        else:
            weight_t, quant = None, concat_outputs(quants)
        biases = [weights.get(f"{k}.bias") if weights.has(f"{k}.bias") else None for k in keys]
        bias = None
        if any(b is not None for b in biases):
            widths = [(q.q.shape[1] if q is not None else weights.get(f"{k}.weight").shape[0]) for k, q in zip(keys, quants)]
            bias = np.concatenate([b if b is not None else np.zeros(w, np.float32) for b, w in zip(biases, widths)])
        return emit_linear(g, h, name or keys[0], flavour, weight_t=weight_t, quant=quant, bias=bias,
                           accuracy_level=accuracy_level)

    x = "inputs_embeds"
    if progress is not None:
        progress(0, spec.layers)
    h = rmsnorm(x, "model.layers.0.input_layernorm.weight")
    for i in range(spec.layers):
        p = f"model.layers.{i}"
        attn_keys = [f"{p}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]
        if fused:  # q, k, v as one product; GroupQueryAttention takes them packed
            qkv = linear(h, *attn_keys, name=f"{p}.self_attn.qkv_proj")
            attn, k_all, v_all = attention(i, qkv, "", "")
        else:
            q, k, v = (linear(h, key) for key in attn_keys)
            attn, k_all, v_all = attention(i, q, k, v)  # attn [b, s, heads * hd]
        g.output(k_all, f"present.{i}.key", np.float32, outputs[1 + 2 * i][2])
        g.output(v_all, f"present.{i}.value", np.float32, outputs[2 + 2 * i][2])
        h, x = residual_rmsnorm(x, linear(attn, f"{p}.self_attn.o_proj"), f"{p}.post_attention_layernorm.weight")
        mlp_keys = (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")
        if fused:
            gate, up = g.op("Split", linear(h, *mlp_keys, name=f"{p}.mlp.gate_up_proj"), axis=-1, num_outputs=2,
                            outputs=2, name="gate_up")
        else:
            gate, up = (linear(h, key) for key in mlp_keys)
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        down = linear(act, f"{p}.mlp.down_proj")
        if i + 1 < spec.layers:
            h, x = residual_rmsnorm(x, down, f"model.layers.{i + 1}.input_layernorm.weight")
        else:
            x = g.op("Add", x, down, name="residual")
        if progress is not None:
            progress(i + 1, spec.layers)

    last = g.op("Slice", x, g.ints(-1), g.ints(np.iinfo(np.int64).max), g.ints(1), name="last")  # [b, 1, D]
    last = rmsnorm(last, "model.norm.weight")
    if lm_head is not None:
        logits = emit_linear(g, last, "lm_head", flavour, quant=lm_head, accuracy_level=accuracy_level)
        if rescore:
            logits = _rescored(g, last, logits, *int8_rows(lm_head_weight(spec, weights)), rescore)
    else:
        logits = g.op("MatMul", last, g.weight("lm_head.weight", lm_head_weight(spec, weights).T), name="lm_head")
    g.output(g.op("Squeeze", logits, g.ints(1)), "logits", np.float32, outputs[0][2])
    order = [name for name, _, _ in outputs]
    g.outputs.sort(key=lambda value: order.index(value.name))


# ---- the rescored head: a 4-bit head picks the candidates, int8 rows decide among them ------------
# Reading the vocabulary's rows is most of a small model's decode step. The 4-bit head reads half the
# bytes of the 8-bit one but its rounding moves next tokens (one in 18 on a real Qwen2.5 0.5B); the
# `k` highest of its logits are recomputed from the float head's rows in int8 (one scale per row,
# symmetric: 1/16 of the 4-bit step), read for those k rows only. The logits that pick the token
# and carry nearly all the probability are the int8 head's; the rest keep the 4-bit estimate.
RESCORE_TOP = 64


def int8_rows(head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head [vocab, hidden] as int8 rows and one float32 scale per row (symmetric, max / 127)."""
    scale = np.abs(head).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(head / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def rescore_reference(h: np.ndarray, approx: np.ndarray, q: np.ndarray, scale: np.ndarray, k: int) -> np.ndarray:
    """The rescored head in numpy: `approx` [rows, vocab] logits of the 4-bit head for hidden states
    `h` [rows, hidden]; each row's k highest are replaced by h . (q * scale) of their vocab rows."""
    out = approx.copy()
    for r in range(h.shape[0]):
        top = np.argpartition(-approx[r], k - 1)[:k]
        out[r, top] = (q[top].astype(np.float32) @ h[r]) * scale[top]
    return out


def _rescored(g: GraphBuilder, h: str, approx: str, q: np.ndarray, scale: np.ndarray, k: int) -> str:
    """h [b, 1, D], approx [b, 1, V] -> logits [b, 1, V] (rescore_reference as ONNX ops)."""
    _, top = g.op("TopK", approx, g.ints(k), axis=-1, largest=1, sorted=0, outputs=2, name="rescore_top")
    rows = g.op("Cast", g.op("Gather", g.weight("lm_head.rows_int8", q), top, axis=0), to=TensorProto.FLOAT)
    dots = g.op("MatMul", rows, g.op("Unsqueeze", h, g.ints(-1)), name="rescore_dot")  # [b, 1, k, 1]
    exact = g.op("Mul", g.op("Squeeze", dots, g.ints(-1)),
                 g.op("Gather", g.weight("lm_head.row_scales", scale), top, axis=0))
    return g.op("ScatterElements", approx, top, exact, axis=-1, name="rescore")


def lm_head_weight(spec: DecoderSpec, weights: DecoderWeights) -> np.ndarray:
    """The LM head [vocab, hidden]: the input embeddings when the model ties them."""
    tied = spec.tied_embeddings and not weights.has("lm_head.weight")
    return weights.get("model.embed_tokens.weight" if tied else "lm_head.weight")


def _gqa_attention(g: GraphBuilder, spec: DecoderSpec):
    """Attention as one GroupQueryAttention node per layer (RoPE inside, from half-width tables)."""
    cos_table, sin_table = rope_tables(spec)
    half = spec.head_dim // 2
    cos = g.weight("rope.cos_cache", np.ascontiguousarray(cos_table[:, :half]))
    sin = g.weight("rope.sin_cache", np.ascontiguousarray(sin_table[:, :half]))

    def attention(i: int, q: str, k: str, v: str) -> tuple[str, str, str]:
        # present.* are produced by the node itself (no Identity): bound to the past buffers, it
        # writes into them in place
        return g.op("GroupQueryAttention", q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                    "seqlens_k", "total_sequence_length", cos, sin, outputs=3, domain=MS_DOMAIN,
                    out_names=(None, f"present.{i}.key", f"present.{i}.value"),
                    num_heads=spec.heads, kv_num_heads=spec.kv_heads, do_rotary=1, rotary_interleaved=0,
                    scale=float(1.0 / np.sqrt(spec.head_dim)), name="gqa")
    return attention


def _plain_attention(g: GraphBuilder, spec: DecoderSpec):
    """Attention in plain ONNX ops (TensorRT): explicit mask, RoPE, repeated KV heads, concatenated cache."""
    # mask [batch, 1, seq, total] (bool), shared by every layer
    total = g.op("Gather", g.op("Shape", "attention_mask"), g.ints(1), axis=0, name="total")  # [1]
    seq = g.op("Gather", g.op("Shape", "inputs_embeds"), g.ints(1), axis=0, name="seq")
    past = g.op("Sub", total, seq, name="past")
    key_idx = g.op("Range", g.op("Squeeze", g.ints(0), name="zero"), g.op("Squeeze", total), g.op("Squeeze", g.ints(1)),
                   name="key_idx")  # [total]
    query_idx = g.op("Unsqueeze", g.op("Range", g.op("Squeeze", past), g.op("Squeeze", total), g.op("Squeeze", g.ints(1))),
                     g.ints(1), name="query_idx")  # [seq, 1]
    causal = g.op("LessOrEqual", key_idx, query_idx, name="causal")  # [seq, total]
    padding = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=9), g.ints(1, 2), name="padding")  # bool [b, 1, 1, total]
    allowed = g.op("And", causal, padding, name="allowed")  # [batch, 1, seq, total]
    masked = g.const("masked", np.array(MASKED, np.float32))
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(spec.head_dim), np.float32))

    # RoPE: cos/sin [batch, 1, seq, head_dim]
    cos_table, sin_table = rope_tables(spec)
    cos = g.op("Unsqueeze", g.op("Gather", g.weight("rope.cos", cos_table), "position_ids", axis=0), g.ints(1), name="cos")
    sin = g.op("Unsqueeze", g.op("Gather", g.weight("rope.sin", sin_table), "position_ids", axis=0), g.ints(1), name="sin")
    half = spec.head_dim // 2

    def heads(h: str, count: int) -> str:  # [b, s, count * hd] -> [b, count, s, hd]
        return g.op("Transpose", g.op("Reshape", h, g.ints(0, 0, count, spec.head_dim)), perm=[0, 2, 1, 3])

    def rotate(h: str) -> str:  # h * cos + rotate_half(h) * sin
        x1, x2 = g.op("Split", h, g.ints(half, half), axis=-1, outputs=2)
        rotated = g.op("Concat", g.op("Neg", x2), x1, axis=-1)
        return g.op("Add", g.op("Mul", h, cos), g.op("Mul", rotated, sin), name="rope")

    def repeat_kv(h: str) -> str:  # [b, kv, t, hd] -> [b, heads, t, hd]
        rep = spec.heads // spec.kv_heads
        if rep == 1:
            return h
        expanded = g.op("Expand", g.op("Unsqueeze", h, g.ints(2)), g.ints(1, 1, rep, 1, 1))
        return g.op("Reshape", expanded, g.ints(0, spec.heads, -1, spec.head_dim), name="repeat_kv")

    def attention(i: int, q: str, k: str, v: str) -> tuple[str, str, str]:
        q, k, v = rotate(heads(q, spec.heads)), rotate(heads(k, spec.kv_heads)), heads(v, spec.kv_heads)
        k_all = g.op("Concat", f"past_key_values.{i}.key", k, axis=2, name=f"present_{i}_key")
        v_all = g.op("Concat", f"past_key_values.{i}.value", v, axis=2, name=f"present_{i}_value")
        scores = g.op("Mul", g.op("MatMul", q, g.op("Transpose", repeat_kv(k_all), perm=[0, 1, 3, 2])), scale)
        probs = g.op("Softmax", g.op("Where", allowed, scores, masked), axis=-1, name="attn_probs")
        attn = g.op("MatMul", probs, repeat_kv(v_all))  # [b, heads, s, hd]
        attn = g.op("Reshape", g.op("Transpose", attn, perm=[0, 2, 1, 3]), g.ints(0, 0, spec.heads * spec.head_dim))
        return attn, k_all, v_all
    return attention
