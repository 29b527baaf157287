"""What a checkpoint's config files may hold: every field vlm-edge reads, with its type, range and meaning.

A checkpoint is untrusted input. Each value below is checked before anything is sized by it, so
a hostile or damaged config fails in one line that names the file, the field, the value and what
is allowed, instead of a traceback from deep inside transformers or an allocation the machine
cannot serve. `common/footprint.py` then checks that the model the config describes fits in
memory, and the loader checks the safetensors shapes against the config before it allocates.

Fields marked `model` are the ones handed to the transformers config constructor
(model/architectures.py), and only those are: a key this table does not know (`num_labels`, say,
for which transformers builds a label map of that many entries) never reaches transformers. The
other keys of a file are kept as read, for a lossless load -> save round trip.

The bounds are generous for real models (VILA1.5-40B, NVILA, Llama 3.1 and Qwen2.5 releases sit
well inside them) and no wider than what an engine manifest may record (common/manifest.py),
so whatever passes here exports to an engine the runtime accepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError, UnsupportedFeatureError

WIDTH = 1 << 16  # a hidden size
FFN = 1 << 18  # an MLP width
LAYERS = 1024
HEADS = 1024
HEAD_DIM = 4096
VOCAB = 1 << 21
POSITIONS = 1 << 22
PIXELS = 1 << 14  # an image side
TOKEN_ID = (1 << 31) - 1


@dataclass(frozen=True)
class Field:
    """One config field: its kind (below), the range of a number, what it means, and how it is used.

    Kinds: int, number (int or float, finite), bool, str, list[str], list[number], ids (a token id
    or a list of them), size (an image side: an integer, or {height, width} / {shortest_edge} of
    integers), rgb (3 numbers), scales (comma-separated image sides, "448,896,1344", or a list),
    encoder (an object or its JSON text), rope (an object checked against ROPE), awq (an object
    checked against QUANTIZATION).
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    meaning: str = ""
    choices: tuple = ()
    null: bool = False  # JSON null is allowed (and means the default)
    required: bool = False
    model: bool = False  # passed to the transformers config constructor
    unsupported: bool = False  # a value outside `choices` is a feature we lack, not a broken file


F = Field
# transformers' RoPE types; the exporter refuses the two that change with the sequence length
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
LLM_ACTIVATIONS = ("silu", "swish")  # the decoder graph computes SiLU
VISION_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu", "quick_gelu")  # export/vision.py: ACTIVATIONS

# ---- the tables: file -> field -> Field ---------------------------------------------------------
TOP = {  # config.json
    "model_type": F("str", meaning="the checkpoint class; 'llava_llama' for VILA", required=True),
    "hidden_size": F("int", 1, WIDTH, "the LLM's width, a copy of llm/config.json's", null=True),
    "mm_hidden_size": F("int", 1, FFN, "the projector's input width", null=True),
    "image_aspect_ratio": F("str", meaning="how pictures are fitted to the tower", unsupported=True,
                            choices=("resize", "pad", "dynamic", "dynamic_s2")),
    "mm_vision_select_layer": F("int", -LAYERS - 1, LAYERS, "which vision layer's output is used"),
    "mm_vision_select_feature": F("str", meaning="which vision tokens are used", unsupported=True,
                                  choices=("patch", "cls_patch")),
    "s2": F("bool", meaning="VILA1.5 multi-scale features", null=True),
    "s2_scales": F("scales", 1, PIXELS, "the multi-scale image sides", null=True),
    "s2_max_split_size": F("int", 1, PIXELS, "the tile side of multi-scale features; null: the tower's", null=True),
    "s2_resize_output_to_scale_idx": F("int", -8, 7, "the scale whose grid features are merged onto"),
    "num_video_frames": F("int", 1, 256, "frames taken from a video"),
    "num_time_tokens": F("int", 0, 1 << 16, "time tokens in video prompts; 0: none", null=True),
    "video_encoder": F("encoder", meaning="NVILA's pooling of video frames", null=True),
    "min_tiles": F("int", 1, 64, "fewest tiles per picture in dynamic tiling"),
    "max_tiles": F("int", 1, 64, "most tiles per picture in dynamic tiling"),
    "chat_template": F("str", meaning="the chat template's name", null=True),
    "model_dtype": F("str", meaning="the dtype the weights were saved in", null=True),
}

LLM = {  # llm/config.json: transformers LlamaForCausalLM / Qwen2ForCausalLM
    "architectures": F("list[str]", meaning="the transformers class", required=True),
    "model_type": F("str", meaning="the transformers model type", null=True),
    "vocab_size": F("int", 2, VOCAB, "rows of the token embedding and the LM head", required=True, model=True),
    "hidden_size": F("int", 1, WIDTH, "the width of the residual stream", required=True, model=True),
    "intermediate_size": F("int", 1, FFN, "the MLP's width", required=True, model=True),
    "num_hidden_layers": F("int", 1, LAYERS, "decoder layers", required=True, model=True),
    "num_attention_heads": F("int", 1, HEADS, "query heads", required=True, model=True),
    "num_key_value_heads": F("int", 1, HEADS, "key/value heads; null: one per query head", null=True, model=True),
    "head_dim": F("int", 2, HEAD_DIM, "one head's width; null: hidden_size / num_attention_heads", null=True,
                  model=True),
    "max_position_embeddings": F("int", 2, POSITIONS, "the longest sequence the model was trained for", model=True),
    "rms_norm_eps": F("number", 1e-12, 1, "RMSNorm's epsilon", model=True),
    "rope_theta": F("number", 1, 1e12, "RoPE's base", model=True),
    "rope_scaling": F("rope", meaning="RoPE scaling: its type and factor", null=True, model=True),
    "rope_parameters": F("rope", meaning="RoPE settings as transformers 5 saves them", null=True, model=True),
    "hidden_act": F("str", meaning="the MLP's activation", choices=LLM_ACTIVATIONS, unsupported=True, model=True),
    "initializer_range": F("number", 0, 1, "std of freshly initialised weights", model=True),
    "tie_word_embeddings": F("bool", meaning="the LM head is the token embedding", model=True),
    "attention_bias": F("bool", meaning="q/k/v/o projections have biases", model=True),
    "mlp_bias": F("bool", meaning="MLP projections have biases", model=True),
    "attention_dropout": F("number", 0, 1, "dropout on attention weights in training", model=True),
    "use_cache": F("bool", meaning="transformers keeps a KV cache in generate()", model=True),
    "pretraining_tp": F("int", 1, 1024, "tensor-parallel slices in pre-training", null=True, model=True),
    "pad_token_id": F("int", -VOCAB, VOCAB, "the padding token, whose embedding row is kept at zero",
                      null=True, model=True),
    "bos_token_id": F("ids", 0, TOKEN_ID, "the begin-of-sequence token", null=True, model=True),
    "eos_token_id": F("ids", 0, TOKEN_ID, "the end-of-sequence token or tokens", null=True, model=True),
    "use_sliding_window": F("bool", meaning="Qwen2 sliding-window attention", model=True),
    "sliding_window": F("int", 1, POSITIONS, "Qwen2's attention window", null=True, model=True),
    "max_window_layers": F("int", 0, LAYERS, "Qwen2: layers below this one attend to everything", model=True),
    "layer_types": F("list[str]", meaning="each layer's attention", choices=("full_attention", "sliding_attention"),
                     null=True, model=True),
    "quantization_config": F("awq", meaning="the 4-bit layout of the weights", null=True),
}

VISION = {  # vision_tower/config.json: transformers SiglipVisionModel / CLIPVisionModel
    "architectures": F("list[str]", meaning="the transformers class", required=True),
    "model_type": F("str", meaning="the transformers model type", null=True),
    "hidden_size": F("int", 1, WIDTH, "the tower's width", required=True, model=True),
    "intermediate_size": F("int", 1, FFN, "the tower's MLP width", required=True, model=True),
    "num_hidden_layers": F("int", 1, LAYERS, "encoder layers", required=True, model=True),
    "num_attention_heads": F("int", 1, HEADS, "attention heads", required=True, model=True),
    "num_channels": F("int", 3, 3, "input channels: RGB", model=True),
    "image_size": F("int", 1, PIXELS, "the side of the square picture the tower takes", required=True, model=True),
    "patch_size": F("int", 1, PIXELS, "the side of one patch, which becomes one token", required=True, model=True),
    "hidden_act": F("str", meaning="the MLP's activation", choices=VISION_ACTIVATIONS, unsupported=True, model=True),
    "layer_norm_eps": F("number", 1e-12, 1, "LayerNorm's epsilon", model=True),
    "attention_dropout": F("number", 0, 1, "dropout on attention weights in training", model=True),
    "vision_use_head": F("bool", meaning="SigLIP's attention-pooling head is built", model=True),
    "projection_dim": F("int", 1, WIDTH, "CLIP's projection width", model=True),
    "initializer_range": F("number", 0, 1, "std of freshly initialised weights", model=True),
    "initializer_factor": F("number", 0, 1000, "CLIP's init scale", model=True),
}

PREPROCESSOR = {  # vision_tower/preprocessor_config.json
    "size": F("size", 1, PIXELS, "the side pictures are resized to"),
    "crop_size": F("size", 1, PIXELS, "the side CLIP pictures are cropped to, used before size", null=True),
    "image_mean": F("rgb", -1000, 1000, "per-channel mean subtracted"),
    "image_std": F("rgb", 1e-6, 1000, "per-channel std divided by"),
    "rescale_factor": F("number", 1e-12, 1, "what pixel values are multiplied by, 1/255"),
    "resample": F("int", 0, 5, "PIL's resampling filter, 3 = bicubic"),
    "do_resize": F("bool", meaning="resize pictures"),
    "do_rescale": F("bool", meaning="rescale pixel values"),
    "do_normalize": F("bool", meaning="normalise with image_mean / image_std"),
}

PROJECTOR = {  # mm_projector/config.json
    "mm_projector_type": F("str", meaning="the projector's layers", required=True, unsupported=True,
                           choices=("linear", "mlp2x_gelu", "mlp_downsample", "mlp_downsample_2x2_fix",
                                    "mlp_downsample_3x3_fix")),
    "downsample_token_order": F("str", meaning="the order the downsample projector emits tokens in", null=True,
                                choices=("column_major", "row_major")),
}

ROPE = {  # llm/config.json: rope_scaling / rope_parameters; other keys are refused
    "rope_type": F("str", meaning="the RoPE variant", choices=ROPE_TYPES, unsupported=True),
    "type": F("str", meaning="the RoPE variant, by its older name", choices=ROPE_TYPES, unsupported=True),
    "rope_theta": F("number", 1, 1e12, "RoPE's base"),
    "factor": F("number", 1e-3, 1024, "how many times the context is stretched"),
    "original_max_position_embeddings": F("int", 1, POSITIONS, "the context before stretching"),
    "low_freq_factor": F("number", 1e-3, 1e4, "Llama 3's low-frequency bound"),
    "high_freq_factor": F("number", 1e-3, 1e4, "Llama 3's high-frequency bound"),
    "attention_factor": F("number", 0, 1000, "YaRN's attention scale", null=True),
    "beta_fast": F("number", 0, 1e4, "YaRN's fast boundary", null=True),
    "beta_slow": F("number", 0, 1e4, "YaRN's slow boundary", null=True),
    "mscale": F("number", 0, 1000, "YaRN's mscale", null=True),
    "mscale_all_dim": F("number", 0, 1000, "YaRN's mscale_all_dim", null=True),
    "truncate": F("bool", meaning="YaRN's truncation", null=True),
    "short_factor": F("list[number]", 1e-3, 1e4, "LongRoPE's per-frequency factors", null=True),
    "long_factor": F("list[number]", 1e-3, 1e4, "LongRoPE's per-frequency factors", null=True),
    "partial_rotary_factor": F("number", 1e-3, 1, "the share of each head that rotates", null=True),
}

QUANTIZATION = {  # llm/config.json: quantization_config (model/checkpoint.py says which layouts it reads)
    "quant_method": F("str", meaning="the quantization method", required=True),
    "bits": F("int", 1, 16, "bits per weight", required=True),
    "group_size": F("int", 1, WIDTH, "input channels per scale", null=True),
    "version": F("str", meaning="the packed layout", null=True),
    "zero_point": F("bool", meaning="asymmetric, with zero points", null=True),
    "symmetric": F("bool", meaning="symmetric, as vlm-edge writes it", null=True),
    "modules_to_not_convert": F("list[str]", meaning="layers kept in float", null=True),
}

FILES = {"config.json": TOP, "llm/config.json": LLM, "vision_tower/config.json": VISION,
         "vision_tower/preprocessor_config.json": PREPROCESSOR, "mm_projector/config.json": PROJECTOR}


def model_kwargs(cfg: dict[str, Any], table: dict[str, Field]) -> dict[str, Any]:
    """The keys of `cfg` the table hands to transformers (checked first, by `check_fields`), numbers
    as floats (transformers' strict configs refuse an integer rms_norm_eps)."""
    return {k: _as_model_value(v, table[k]) for k, v in cfg.items() if k in table and table[k].model}


def _as_model_value(value: Any, f: Field) -> Any:
    if value is None:
        return None
    if f.kind == "number":
        return float(value)
    if f.kind == "rope":
        return {k: _as_model_value(v, ROPE[k]) for k, v in value.items()}
    return value


# ---- checking -----------------------------------------------------------------------------------
def show(value: Any, limit: int = 60) -> str:
    """`value` for an error message: its repr, cut short (a hostile value may be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) or abs(v) < 1e6 else str(v)


def _in(v: Any, f: Field) -> bool:
    return (f.lo is None or v >= f.lo) and (f.hi is None or v <= f.hi)


def _range(f: Field) -> str:
    return f"from {_num(f.lo)} to {_num(f.hi)}"


def _problem(f: Field, v: Any, where: str, name: str) -> str | None:
    """What is wrong with value `v` of field `f` ("must be ..."), or None. Nested objects (rope,
    awq) are checked here too, raising with their own field names."""
    kind = f.kind
    if kind == "int":
        return None if _is_int(v) and _in(v, f) else f"must be an integer {_range(f)}"
    if kind == "number":
        return None if _is_number(v) and _in(v, f) else f"must be a number {_range(f)}"
    if kind == "bool":
        return None if isinstance(v, bool) else "must be true or false"
    if kind == "str":
        if not isinstance(v, str):
            return "must be a string"
        return None if not f.choices or v in f.choices else _choice(f)
    if kind == "list[str]":
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            return "must be a non-empty list of strings"
        return None if not f.choices or all(x in f.choices for x in v) else f"must list only {', '.join(f.choices)}"
    if kind == "list[number]":
        ok = isinstance(v, list) and len(v) <= HEAD_DIM and all(_is_number(x) and _in(x, f) for x in v)
        return None if ok else f"must be a list of at most {HEAD_DIM} numbers {_range(f)}"
    if kind == "ids":
        ids = v if isinstance(v, list) else [v]
        ok = 0 < len(ids) <= 64 and all(_is_int(x) and _in(x, f) for x in ids)
        return None if ok else f"must be a token id (an integer {_range(f)}) or a list of them"
    if kind == "size":
        return _size_problem(v, f)
    if kind == "rgb":
        ok = isinstance(v, list) and len(v) == 3 and all(_is_number(x) and _in(x, f) for x in v)
        return None if ok else f"must be 3 numbers (R, G, B) {_range(f)}"
    if kind == "scales":
        return None if scale_list(v, f) is not None else \
            f"must be image sides {_range(f)}, comma-separated (\"448,896,1344\") or a list, at most 8"
    if kind == "encoder":
        return None if isinstance(v, (dict, str)) else "must be an object (or its JSON text)"
    if kind in ("rope", "awq"):
        if not isinstance(v, dict):
            return "must be an object"
        check_fields(v, ROPE if kind == "rope" else QUANTIZATION, f"{where}: {name}", strict=kind == "rope")
        return None
    raise AssertionError(f"unknown field kind {kind}")


def _choice(f: Field) -> str:
    return f"is not supported (supported: {', '.join(f.choices)})" if f.unsupported else \
        f"must be one of {', '.join(f.choices)}"


def _size_problem(v: Any, f: Field) -> str | None:
    bad = f"must be an image side (an integer {_range(f)}) or {{height, width}} / {{shortest_edge}} of such"
    if _is_int(v):
        return None if _in(v, f) else bad
    if not isinstance(v, dict) or not ({"height", "width"} <= v.keys() or "shortest_edge" in v):
        return bad
    sides = [v[k] for k in ("height", "width", "shortest_edge") if k in v]
    return None if all(_is_int(s) and _in(s, f) for s in sides) else bad


def scale_list(v: Any, f: Field | None = None) -> tuple[int, ...] | None:
    """The sides of an s2_scales value ("448,896,1344" or [448, 896, 1344]), or None if it is not one."""
    f = f or TOP["s2_scales"]
    parts = v.split(",") if isinstance(v, str) else v if isinstance(v, list) else None
    if parts is None or not 0 < len(parts) <= 8:
        return None
    sides = []
    for part in parts:
        if isinstance(part, str):
            part = part.strip()
            if not (part.isascii() and part.isdigit()) or len(part) > 6:
                return None
            part = int(part)
        if not _is_int(part) or not _in(part, f):
            return None
        sides.append(part)
    return tuple(sides)


def check_fields(cfg: dict[str, Any], table: dict[str, Field], where: str, *, strict: bool = False) -> None:
    """Raise for the first field of `cfg` (a config file's object, called `where`) the table refuses.
    `strict`: keys the table does not know are refused too."""
    for name, f in table.items():
        if name not in cfg:
            if f.required:
                raise CheckpointError(f"{where}: {name} is missing ({f.meaning})")
            continue
        value = cfg[name]
        if value is None:
            if f.null and not f.required:
                continue
            problem = "must not be null"
        else:
            problem = _problem(f, value, where, name)
        if problem:
            error = UnsupportedFeatureError if f.unsupported and problem.startswith("is not supported") \
                else CheckpointError
            raise error(f"{where}: {name}={show(value)} {problem} ({f.meaning})")
    if strict:
        unknown = sorted(k for k in cfg if k not in table)
        if unknown:
            raise CheckpointError(f"{where}: {show(unknown[0])} is not a setting vlm-edge knows here "
                                  f"(known: {', '.join(table)})")


def llm_head_dim(llm: dict[str, Any]) -> int:
    """One attention head's width: head_dim, else hidden_size / num_attention_heads."""
    return llm.get("head_dim") or llm["hidden_size"] // llm["num_attention_heads"]


def check_relations(files: dict[str, dict[str, Any]], select_layer: int) -> None:
    """The checks between fields, once each field is fine on its own: divisibility and ids in range.
    `files`: relative file name -> its object (FILES' names)."""
    llm, vision = files["llm/config.json"], files["vision_tower/config.json"]
    where = "llm/config.json"
    hidden, heads = llm["hidden_size"], llm["num_attention_heads"]
    kv = llm.get("num_key_value_heads") or heads
    if not llm.get("head_dim") and hidden % heads:
        raise CheckpointError(f"{where}: hidden_size={hidden} is not a multiple of num_attention_heads={heads} "
                              "(each head gets hidden_size / num_attention_heads channels; or give head_dim)")
    head_dim = llm_head_dim(llm)
    if head_dim % 2 or head_dim > HEAD_DIM:
        width = f"head_dim={head_dim}" if llm.get("head_dim") else \
            f"the head width hidden_size / num_attention_heads = {hidden} / {heads} = {head_dim}"
        raise CheckpointError(f"{where}: {width} must be even (RoPE rotates pairs of channels) and at most {HEAD_DIM}")
    if heads % kv:
        raise CheckpointError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv} "
                              "(each key/value head serves a whole group of query heads)")
    pad = llm.get("pad_token_id")
    if pad is not None and not -llm["vocab_size"] <= pad < llm["vocab_size"]:
        raise CheckpointError(f"{where}: pad_token_id={pad} is outside the vocabulary of vocab_size="
                              f"{llm['vocab_size']} tokens")
    types = llm.get("layer_types")
    if types is not None and len(types) != llm["num_hidden_layers"]:
        raise CheckpointError(f"{where}: layer_types lists {len(types)} layers, but num_hidden_layers="
                              f"{llm['num_hidden_layers']}")
    where = "vision_tower/config.json"
    if vision["hidden_size"] % vision["num_attention_heads"]:
        raise CheckpointError(f"{where}: hidden_size={vision['hidden_size']} is not a multiple of "
                              f"num_attention_heads={vision['num_attention_heads']}")
    if vision["patch_size"] > vision["image_size"]:
        raise CheckpointError(f"{where}: patch_size={vision['patch_size']} is larger than image_size="
                              f"{vision['image_size']} (the picture would hold no patch)")
    layers = vision["num_hidden_layers"]
    if not -layers - 1 <= select_layer <= layers:
        raise CheckpointError(f"config.json: mm_vision_select_layer={select_layer} is outside the vision tower's "
                              f"{layers} layers (allowed: {-layers - 1} to {layers})")
    prep = files["vision_tower/preprocessor_config.json"]
    if prep.get("crop_size") is None and prep.get("size") is None:
        raise CheckpointError("vision_tower/preprocessor_config.json has neither size nor crop_size (the side "
                              "pictures are resized to)")
