"""The vision graph: pixel_values [images, 3, H, W] -> image_embeds [images, T, D].

The tower runs up to the layer VILA selects (`mm_vision_select_layer`, -2: all but the last
encoder layer; hidden state 0 is the embedding output), drops the first token for
select_feature "patch", and the projector maps to the LLM width:

    embeddings   Conv(p x p, stride p) -> [images, P, C] (+ CLIP's class token) + position embedding
                 (CLIP: then pre_layrnorm)
    layer        x = x + attn(LayerNorm1(x)) ; x = x + fc2(act(fc1(LayerNorm2(x))))
    projector    linear | mlp2x_gelu | mlp_downsample(_2x2_fix) | mlp_downsample_3x3_fix (2x2 or 3x3
                 space-to-depth, see model/projector.py)

Towers are rows of VISION_FAMILIES; activations are ACTIVATIONS. The tower's and projector's
linears take one of VISION_PRECISIONS:

    fp32   MatMul + Add, float32 weights
    int8   com.microsoft.DynamicQuantizeMatMul(x, W8, scale, zero, bias): weights int8 symmetric per
           output channel (W.T[k, n] = W8[k, n] * scale[n], W8 in -64..64: see INT8_MAX), activations
           quantized to uint8 per tensor at run time; ONNX Runtime's CPU kernel runs it on the
           integer dot-product units (AVX-512 VNNI / AVX-VNNI / AMX on x86, SDOT on Arm), or on AVX2
           alone with 16-bit pair sums
    fp16   the same graph with float16 weights, each cast to float32 where it is used (half the file;
           for GPU builds, where TensorRT runs it in fp16)

Everything else (patch embedding, LayerNorms, attention, the downsample) stays float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from vlm_edge.common.errors import UnsupportedFeatureError
from vlm_edge.common.vila_config import VilaConfig

from .graph import MS_DOMAIN, GraphBuilder


@dataclass(frozen=True)
class VisionFamily:
    class_token: bool  # CLIP prepends a learnt class embedding
    pre_norm: str | None  # CLIP's pre_layrnorm
    default_act: str  # the transformers config defaults, for configs that leave them out
    default_eps: float


VISION_FAMILIES = {
    "SiglipVisionModel": VisionFamily(class_token=False, pre_norm=None, default_act="gelu_pytorch_tanh", default_eps=1e-6),
    "CLIPVisionModel": VisionFamily(class_token=True, pre_norm="pre_layrnorm", default_act="quick_gelu", default_eps=1e-5),
}


def _gelu_tanh(g: GraphBuilder, x: str) -> str:
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    c = g.const("gelu_c", np.array(math.sqrt(2 / math.pi), np.float32))
    inner = g.op("Mul", g.op("Add", x, g.op("Mul", g.op("Mul", g.op("Mul", x, x), x),
                                             g.const("gelu_a", np.array(0.044715, np.float32)))), c)
    return g.op("Mul", g.op("Mul", x, g.const("half", np.array(0.5, np.float32))),
                g.op("Add", g.op("Tanh", inner), g.const("one", np.array(1.0, np.float32))), name="gelu_tanh")


def _gelu_erf(g: GraphBuilder, x: str) -> str:
    # 0.5 x (1 + erf(x / sqrt(2)))
    erf = g.op("Erf", g.op("Mul", x, g.const("inv_sqrt2", np.array(1 / math.sqrt(2), np.float32))))
    return g.op("Mul", g.op("Mul", x, g.const("half", np.array(0.5, np.float32))),
                g.op("Add", erf, g.const("one", np.array(1.0, np.float32))), name="gelu")


def _quick_gelu(g: GraphBuilder, x: str) -> str:
    return g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.const("qg", np.array(1.702, np.float32)))), name="quick_gelu")


ACTIVATIONS = {"gelu_pytorch_tanh": _gelu_tanh, "gelu": _gelu_erf, "quick_gelu": _quick_gelu}
# the same activations as ONNX Runtime contrib ops (one kernel instead of 5-8 elementwise passes)
FUSED_ACTIVATIONS = {"gelu_pytorch_tanh": ("FastGelu", {}), "gelu": ("Gelu", {}), "quick_gelu": ("QuickGelu", {"alpha": 1.702})}
VISION_PRECISIONS = ("fp32", "int8", "fp16")
# 7-bit weights. Without VNNI, ONNX Runtime's x86 kernel (AVX2 vpmaddubsw) adds two uint8 x int8
# products in a saturating int16: 255 * 127 * 2 overflows it, 255 * 64 * 2 = 32640 does not. With
# full-range weights the benchmark model's SigLIP tower fell to cosine 0.94 on an AVX2-only host.
# The engine must answer the same on every host it is copied to, so every export uses the range
# that is exact everywhere; the lost bit costs ~1e-4 of cosine (docs/performance.md).
INT8_MAX = 64


def quantize_int8_per_channel(weight_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W.T [K, N] float -> (int8 [K, N], float32 scale [N]) with W.T ~= q * scale, symmetric, round to
    nearest. The numpy twin of what DynamicQuantizeMatMul computes with is `int8_linear_reference`."""
    w = np.asarray(weight_t, np.float32)
    scale = np.maximum(np.abs(w).max(axis=0) / INT8_MAX, np.float32(1e-12)).astype(np.float32)
    q = np.clip(np.round(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def int8_linear_reference(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """DynamicQuantizeMatMul in numpy: x quantized to uint8 over its whole range (0 included), an
    integer product, rescaled (DynamicQuantizeLinear's rounding: half to even, saturating)."""
    x = np.asarray(x, np.float32)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    x_scale = np.float32((hi - lo) / 255 if hi > lo else 1.0)
    zero = np.float32(np.clip(np.round(-lo / x_scale), 0, 255))
    xq = np.clip(np.round(x / x_scale) + zero, 0, 255)
    y = ((xq - zero).astype(np.float64) @ q.astype(np.float64)).astype(np.float32) * (x_scale * scale)
    return y + bias if bias is not None else y


def vision_io(config: VilaConfig) -> tuple[list[tuple], list[tuple]]:
    """The vision graph's inputs and outputs. dynamic_s2 (NVILA) splits it in two: the tower alone
    (tiles -> vision_features; the features of each image are merged across scales in numpy,
    common/tiling.py), then the projector graph (projector_io)."""
    size = config.image_size
    if config.is_s2:
        patches = (size // config.patch_size) ** 2
        return ([("pixel_values", "float32", ["tiles", 3, size, size])],
                [("vision_features", "float32", ["tiles", patches, int(config.vision_tower["hidden_size"])])])
    return ([("pixel_values", "float32", ["images", 3, size, size])],
            [("image_embeds", "float32", ["images", config.num_image_tokens, config.hidden_size])])


def projector_io(config: VilaConfig) -> tuple[list[tuple], list[tuple]]:
    """dynamic_s2's projector graph: merged blocks [blocks, P, scales*C] -> image_embeds [blocks, T, D]."""
    patches = (config.image_size // config.patch_size) ** 2
    return ([("features", "float32", ["blocks", patches, config.mm_hidden_size])],
            [("image_embeds", "float32", ["blocks", config.num_image_tokens, config.hidden_size])])


@dataclass(frozen=True)
class DownsampleSite:
    """Where the projector's downsample + LayerNorm sits in the vision graph (export/plugins.py fuses it).

    `start` is the [images, side*side, channels] value it reads, `end` the LayerNorm's output.
    """

    start: str
    end: str
    side: int
    channels: int
    ratio: int
    order: str
    eps: float


def build_vision(g: GraphBuilder, config: VilaConfig, tower: dict[str, np.ndarray],
                 projector: dict[str, np.ndarray], precision: str = "fp32") -> DownsampleSite | None:
    """`tower` / `projector`: float32 state dicts (transformers 5 key names) of the two modules;
    `precision`: the linears' weights (VISION_PRECISIONS).

    Returns the downsample's place in the graph for projectors that have one, else None.
    """
    if precision not in VISION_PRECISIONS:
        raise UnsupportedFeatureError(f"vision precision {precision!r}: choose {', '.join(VISION_PRECISIONS)}")
    arch = config.vision_architecture
    if arch not in VISION_FAMILIES:
        raise UnsupportedFeatureError(f"vision tower {arch} has no export recipe; supported: {', '.join(VISION_FAMILIES)}")
    family = VISION_FAMILIES[arch]
    vc = config.vision_tower
    act_name = vc.get("hidden_act", family.default_act)
    if act_name not in ACTIVATIONS:
        raise UnsupportedFeatureError(f"vision activation {act_name!r} has no export recipe; supported: {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[act_name]
    width, heads, eps = vc["hidden_size"], vc["num_attention_heads"], float(vc.get("layer_norm_eps", family.default_eps))
    head_dim = width // heads
    (in_name, _, in_shape), = vision_io(config)[0]
    g.input(in_name, np.float32, in_shape)

    def w(key: str) -> str:
        return g.weight(f"vision.{key}", tower[key])

    def layer_norm(x: str, key: str, params: dict[str, np.ndarray] = tower, e: float = eps) -> str:
        return g.op("LayerNormalization", x, g.weight(f"{key}.weight", params[f"{key}.weight"]),
                    g.weight(f"{key}.bias", params[f"{key}.bias"]), axis=-1, epsilon=e, name="layernorm")

    def dense(x: str, key: str, params: dict[str, np.ndarray] = tower) -> str:
        return emit_vision_linear(g, x, key, params[f"{key}.weight"].T, params.get(f"{key}.bias"), precision)

    # embeddings: [images, C, H/p, W/p] -> [images, P, C]
    patch = "embeddings.patch_embedding"
    conv_inputs = [in_name, w(f"{patch}.weight")] + ([w(f"{patch}.bias")] if f"{patch}.bias" in tower else [])
    p = vc["patch_size"]
    x = g.op("Conv", *conv_inputs, kernel_shape=[p, p], strides=[p, p], name="patch_embed")
    x = g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 3, 1]), g.ints(0, -1, width), name="patches")  # [images, P, C]
    if family.class_token:
        images = g.op("Gather", g.op("Shape", in_name), g.ints(0), axis=0)
        cls = g.op("Expand", g.const("cls", tower["embeddings.class_embedding"].reshape(1, 1, width)),
                   g.op("Concat", images, g.ints(1, width), axis=0))
        x = g.op("Concat", cls, x, axis=1)
    x = g.op("Add", x, w("embeddings.position_embedding.weight"), name="embeddings")
    if family.pre_norm:
        x = layer_norm(x, family.pre_norm)

    layers = int(vc["num_hidden_layers"])
    select = config.select_layer
    run = select if select >= 0 else layers + 1 + select
    if not 0 <= run <= layers:
        raise UnsupportedFeatureError(f"mm_vision_select_layer {select} is outside the tower's {layers} layers")

    def split_heads(h: str) -> str:
        return g.op("Transpose", g.op("Reshape", h, g.ints(0, 0, heads, head_dim)), perm=[0, 2, 1, 3])

    fused = precision == "int8"  # the CPU graph: ONNX Runtime's fused contrib ops (TensorRT reads fp32 / fp16)
    scale = None if fused else g.const("vision_attn_scale", np.array(head_dim ** -0.5, np.float32))
    for i in range(run):
        k = f"encoder.layers.{i}"
        h = layer_norm(x, f"{k}.layer_norm1")
        if fused:  # one int8 product for q, k and v, then ONNX Runtime's MultiHeadAttention
            names = [f"{k}.self_attn.{n}_proj" for n in ("q", "k", "v")]
            biases = [tower.get(f"{n}.bias") for n in names]
            qkv = emit_vision_linear(g, h, f"{k}.self_attn.qkv_proj",
                                     np.concatenate([tower[f"{n}.weight"].T for n in names], axis=1),
                                     None if any(b is None for b in biases) else np.concatenate(biases), precision)
            q, kk, v = g.op("Split", qkv, g.ints(width, width, width), axis=-1, outputs=3)
            attn = g.op("MultiHeadAttention", q, kk, v, domain=MS_DOMAIN, num_heads=heads, name="attention")
        else:
            q, kk, v = (split_heads(dense(h, f"{k}.self_attn.{n}_proj")) for n in ("q", "k", "v"))
            probs = g.op("Softmax", g.op("Mul", g.op("MatMul", q, g.op("Transpose", kk, perm=[0, 1, 3, 2])), scale),
                         axis=-1)
            attn = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), g.ints(0, 0, width))
        x = g.op("Add", x, dense(attn, f"{k}.self_attn.out_proj"), name="residual")
        h = dense(layer_norm(x, f"{k}.layer_norm2"), f"{k}.mlp.fc1")
        h = g.op(FUSED_ACTIVATIONS[act_name][0], h, domain=MS_DOMAIN, **FUSED_ACTIVATIONS[act_name][1],
                 name="activation") if fused else act(g, h)
        x = g.op("Add", x, dense(h, f"{k}.mlp.fc2"), name="residual")
    if config.select_feature == "patch":
        x = g.op("Slice", x, g.ints(1), g.ints(np.iinfo(np.int64).max), g.ints(1), name="drop_first")

    if config.is_s2:  # the projector is its own graph (build_projector)
        (out_name, _, out_shape), = vision_io(config)[1]
        g.output(x, out_name, np.float32, out_shape)
        return None
    embeds, site = _projector(g, x, config, projector, dense, layer_norm)
    g.output(embeds, "image_embeds", np.float32, vision_io(config)[1][0][2])
    return site


def build_projector(g: GraphBuilder, config: VilaConfig, projector: dict[str, np.ndarray],
                    precision: str = "fp32") -> DownsampleSite | None:
    """dynamic_s2's projector graph (projector_io), its linears in `precision` like the tower's."""
    if precision not in VISION_PRECISIONS:
        raise UnsupportedFeatureError(f"vision precision {precision!r}: choose {', '.join(VISION_PRECISIONS)}")
    (in_name, _, in_shape), = projector_io(config)[0]
    g.input(in_name, np.float32, in_shape)

    def layer_norm(x: str, key: str, params: dict[str, np.ndarray] = projector, e: float = 1e-5) -> str:
        return g.op("LayerNormalization", x, g.weight(f"{key}.weight", params[f"{key}.weight"]),
                    g.weight(f"{key}.bias", params[f"{key}.bias"]), axis=-1, epsilon=e, name="layernorm")

    def dense(x: str, key: str, params: dict[str, np.ndarray] = projector) -> str:
        return emit_vision_linear(g, x, key, params[f"{key}.weight"].T, params.get(f"{key}.bias"), precision)

    embeds, site = _projector(g, in_name, config, projector, dense, layer_norm)
    g.output(embeds, "image_embeds", np.float32, projector_io(config)[1][0][2])
    return site


def emit_vision_linear(g: GraphBuilder, x: str, key: str, weight_t: np.ndarray, bias: np.ndarray | None,
                       precision: str) -> str:
    """y = x @ W.T (+ b) with the weights in `precision` (the module docstring)."""
    if precision == "int8":
        q, scale = quantize_int8_per_channel(weight_t)
        inputs = [x, g.weight(f"{key}.weight_int8", q), g.weight(f"{key}.weight_scale", scale),
                  g.weight(f"{key}.weight_zero", np.zeros(scale.shape, np.int8))]
        if bias is not None:
            inputs.append(g.weight(f"{key}.bias", np.asarray(bias, np.float32)))
        g.ms_domain = True
        return g.op("DynamicQuantizeMatMul", *inputs, domain=MS_DOMAIN, name="linear_int8")
    if precision == "fp16":
        w = g.op("Cast", g.weight(f"{key}.weight", np.asarray(weight_t, np.float16)), to=TensorProto.FLOAT)
    else:
        w = g.weight(f"{key}.weight", np.asarray(weight_t, np.float32))
    y = g.op("MatMul", x, w)
    return g.op("Add", y, g.weight(f"{key}.bias", np.asarray(bias, np.float32))) if bias is not None else y


def _projector(g: GraphBuilder, x: str, config: VilaConfig, params: dict[str, np.ndarray], dense,
               layer_norm) -> tuple[str, DownsampleSite | None]:
    kind = config.projector_type
    if kind == "linear":
        return dense(x, "layers", params), None
    if kind == "mlp2x_gelu":
        return dense(_gelu_erf(g, dense(x, "layers.0", params)), "layers.2", params), None
    if kind not in ("mlp_downsample", "mlp_downsample_2x2_fix", "mlp_downsample_3x3_fix"):
        raise UnsupportedFeatureError(f"projector {kind!r} has no export recipe")
    side, eps, ratio = config.image_size // config.patch_size, 1e-5, config.downsample_ratio
    start = x
    x = emit_space_to_depth(g, x, side, config.mm_hidden_size, ratio, config.downsample_token_order)
    x = layer_norm(x, "layers.1", params, eps)
    site = DownsampleSite(start, x, side, config.mm_hidden_size, ratio, config.downsample_token_order, eps)
    if ratio == 2:
        return dense(_gelu_erf(g, dense(x, "layers.2", params)), "layers.4", params), site
    # 3x3: LN(9C) -> Linear(9C, 3C) -> GELU -> LN(3C) -> Linear(3C, H) -> GELU -> Linear(H, H)
    x = layer_norm(_gelu_erf(g, dense(x, "layers.2", params)), "layers.4", params, eps)
    return dense(_gelu_erf(g, dense(x, "layers.5", params)), "layers.7", params), site


def emit_space_to_depth(g: GraphBuilder, x: str, side: int, channels: int, ratio: int, order: str) -> str:
    """The downsample in plain ONNX ops: [images, side*side, C] -> [images, (side'/r)^2, r*r*C].

    Zero rows below and zero columns right up to a multiple of `ratio`, then each r x r block
    becomes one token (channels a-major, b-minor), tokens column- or row-major. The math of
    gpu_kernels/reference.py: space_to_depth; tests/test_kernels.py holds the two together.
    """
    grid = g.op("Reshape", x, g.ints(0, side, side, channels), name="grid")  # [images, row, col, C]
    extra = -side % ratio
    if extra:
        grid = g.op("Pad", grid, g.ints(0, 0, 0, 0, 0, extra, extra, 0), name="pad_grid")
        side += extra
    half = side // ratio
    blocks = g.op("Reshape", grid, g.ints(0, half, ratio, half, ratio, channels))  # [images, i, a, j, b, C]
    perm = [0, 1, 3, 2, 4, 5] if order == "row_major" else [0, 3, 1, 2, 4, 5]
    return g.op("Reshape", g.op("Transpose", blocks, perm=perm), g.ints(0, half * half, ratio * ratio * channels),
                name="downsample")
