"""The vision graph: pixel_values [images, 3, H, W] -> image_embeds [images, T, D].

The tower runs up to the layer VILA selects (`mm_vision_select_layer`, -2: all but the last
encoder layer; hidden state 0 is the embedding output), drops the first token for
select_feature "patch", and the projector maps to the LLM width:

    embeddings   Conv(p x p, stride p) -> [images, P, C] (+ CLIP's class token) + position embedding
                 (CLIP: then pre_layrnorm)
    layer        x = x + attn(LayerNorm1(x)) ; x = x + fc2(act(fc1(LayerNorm2(x))))
    projector    linear | mlp2x_gelu | mlp_downsample (2x2 space-to-depth, see model/projector.py)

Towers are rows of VISION_FAMILIES; activations are ACTIVATIONS. Everything stays float32: only
the LLM is quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlm_edge.common.errors import UnsupportedFeatureError
from vlm_edge.common.vila_config import VilaConfig

from .graph import GraphBuilder


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


def vision_io(config: VilaConfig) -> tuple[list[tuple], list[tuple]]:
    size = config.image_size
    return ([("pixel_values", "float32", ["images", 3, size, size])],
            [("image_embeds", "float32", ["images", config.num_image_tokens, config.hidden_size])])


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
                 projector: dict[str, np.ndarray]) -> DownsampleSite | None:
    """`tower` / `projector`: float32 state dicts (transformers 5 key names) of the two modules.

    Returns the downsample's place in the graph for projectors that have one, else None.
    """
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
        y = g.op("MatMul", x, g.weight(f"{key}.weight", params[f"{key}.weight"].T))
        return g.op("Add", y, g.weight(f"{key}.bias", params[f"{key}.bias"])) if f"{key}.bias" in params else y

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

    scale = g.const("vision_attn_scale", np.array(head_dim ** -0.5, np.float32))
    for i in range(run):
        k = f"encoder.layers.{i}"
        h = layer_norm(x, f"{k}.layer_norm1")
        q, kk, v = (split_heads(dense(h, f"{k}.self_attn.{n}_proj")) for n in ("q", "k", "v"))
        probs = g.op("Softmax", g.op("Mul", g.op("MatMul", q, g.op("Transpose", kk, perm=[0, 1, 3, 2])), scale), axis=-1)
        attn = g.op("Reshape", g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3]), g.ints(0, 0, width))
        x = g.op("Add", x, dense(attn, f"{k}.self_attn.out_proj"), name="residual")
        h = act(g, dense(layer_norm(x, f"{k}.layer_norm2"), f"{k}.mlp.fc1"))
        x = g.op("Add", x, dense(h, f"{k}.mlp.fc2"), name="residual")
    if config.select_feature == "patch":
        x = g.op("Slice", x, g.ints(1), g.ints(np.iinfo(np.int64).max), g.ints(1), name="drop_first")

    embeds, site = _projector(g, x, config, projector, dense, layer_norm)
    g.output(embeds, "image_embeds", np.float32, vision_io(config)[1][0][2])
    return site


def _projector(g: GraphBuilder, x: str, config: VilaConfig, params: dict[str, np.ndarray], dense,
               layer_norm) -> tuple[str, DownsampleSite | None]:
    kind = config.projector_type
    if kind == "linear":
        return dense(x, "layers", params), None
    if kind == "mlp2x_gelu":
        return dense(_gelu_erf(g, dense(x, "layers.0", params)), "layers.2", params), None
    if kind not in ("mlp_downsample", "mlp_downsample_2x2_fix"):
        raise UnsupportedFeatureError(f"projector {kind!r} has no export recipe")
    side, eps = config.image_size // config.patch_size, 1e-5
    start = x
    x = emit_space_to_depth(g, x, side, config.mm_hidden_size, 2, config.downsample_token_order)
    x = layer_norm(x, "layers.1", params, eps)
    site = DownsampleSite(start, x, side, config.mm_hidden_size, 2, config.downsample_token_order, eps)
    return dense(_gelu_erf(g, dense(x, "layers.2", params)), "layers.4", params), site


def emit_space_to_depth(g: GraphBuilder, x: str, side: int, channels: int, ratio: int, order: str) -> str:
    """The downsample in plain ONNX ops: [images, side*side, C] -> [images, (side'/r)^2, r*r*C].

    Zero rows below and zero columns right up to a multiple of `ratio`, then each r x r block
    becomes one token (channels a-major, b-minor), tokens column- or row-major. The math of
    kernels/reference.py: space_to_depth; tests/test_kernels.py holds the two together.
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
