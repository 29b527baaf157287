"""How much memory a checkpoint's model needs, from its config, before anything is allocated.

A config that describes a model larger than the machine (a million layers, a vocabulary of ten
billion tokens) would otherwise end in the OOM killer minutes later, or in an allocator
traceback. Each stage adds up what it certainly holds at once and refuses, in one line naming
the fields behind the largest part, when that exceeds the memory this process may use:

    loading        the weights, at the dtype they are loaded in (float32 by default)
    quantizing     + the calibration activations (samples x length x (2 hidden + intermediate),
                   float32), AWQ's input statistics (width^2 per linear, twice) and one picture
                   through the vision tower (attention scores heads x patches^2, every layer's
                   hidden states, per tile)
    exporting      + the RoPE tables (positions x head width, cos and sin, float32; positions
                   capped by the exporter), float32 copies of the embedding table, the LM head and
                   the vision tower for the graphs, and one picture through the tower

These are lower bounds (Python, torch and the graphs' own buffers come on top): a model they
refuse cannot run here; one they pass may still be tight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config_checks import llm_head_dim
from .errors import CheckpointError

if TYPE_CHECKING:
    from .vila_config import VilaConfig

FLOAT32 = 4


@dataclass(frozen=True)
class Need:
    """One part of what a stage holds in memory at once."""

    what: str  # "LLM layers"
    bytes: int
    fields: str  # the config fields it grows with, with their values


def _fields(where: str, cfg: dict, *names: str) -> str:
    return f"{where}: " + ", ".join(f"{n}={cfg.get(n)}" for n in names)


# ---- parameters ---------------------------------------------------------------------------------
def weight_needs(config: "VilaConfig", bytes_per_param: int = FLOAT32) -> list[Need]:
    """The weights of the three sub-models, at `bytes_per_param` (biases and norms left out)."""
    llm, vis = config.llm, config.vision_tower
    h, inter, layers = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    heads = llm["num_attention_heads"]
    kv, hd = llm.get("num_key_value_heads") or heads, llm_head_dim(llm)
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    tables = 1 if llm.get("tie_word_embeddings") else 2
    vh, vinter, vlayers = vis["hidden_size"], vis["intermediate_size"], vis["num_hidden_layers"]
    patches = vision_patches(config)
    vision_layer = 4 * vh * vh + 2 * vh * vinter
    c, out = config.mm_hidden_size, config.hidden_size
    projector = {"linear": c * out, "mlp2x_gelu": c * out + out * out, "mlp_downsample_3x3_fix":
                 27 * c * c + 3 * c * out + out * out}.get(config.projector_type, 4 * c * out + out * out)
    b = bytes_per_param
    return [
        Need("LLM token embedding" + (" and LM head" if tables == 2 else ""), tables * llm["vocab_size"] * h * b,
             _fields("llm/config.json", llm, "vocab_size", "hidden_size")),
        Need("LLM layers", layers * per_layer * b,
             _fields("llm/config.json", llm, "num_hidden_layers", "hidden_size", "intermediate_size",
                     "num_attention_heads")),
        Need("vision layers", vlayers * vision_layer * b,
             _fields("vision_tower/config.json", vis, "num_hidden_layers", "hidden_size", "intermediate_size")),
        Need("vision patch and position embeddings", (patches * vh + 3 * vis["patch_size"] ** 2 * vh) * b,
             _fields("vision_tower/config.json", vis, "image_size", "patch_size", "hidden_size")),
        Need("projector", projector * b, f"mm_projector/config.json: mm_projector_type={config.projector_type} "
                                         f"({c} -> {out} channels)"),
    ]


def vision_patches(config: "VilaConfig") -> int:
    """Tokens one tile makes in the vision tower: (image_size / patch_size)^2."""
    return (config.image_size // config.patch_size) ** 2


def _tiles(config: "VilaConfig") -> int:
    """Tiles one picture becomes: 1, or dynamic tiling's most (+ the thumbnail), or every S2 scale's."""
    if config.is_s2:
        return sum((s // config.image_size) ** 2 for s in config.s2_scales)
    return config.max_tiles + 1 if config.image_aspect_ratio == "dynamic" else 1


def picture_needs(config: "VilaConfig") -> Need:
    """One picture through the vision tower: per tile, the attention scores of one layer and every
    layer's hidden states (the selected layer is read from them), float32."""
    vis = config.vision_tower
    p, vh = vision_patches(config), vis["hidden_size"]
    per_tile = (vis["num_attention_heads"] * p * p  # one layer's attention scores
                + (vis["num_hidden_layers"] + 2) * p * vh  # every layer's hidden states
                + p * vis["intermediate_size"])  # one MLP's activations
    return Need("one picture through the vision tower", _tiles(config) * per_tile * FLOAT32,
                _fields("vision_tower/config.json", vis, "image_size", "patch_size", "num_attention_heads"))


# ---- stages -------------------------------------------------------------------------------------
def quantization_needs(config: "VilaConfig", samples: int, seq_len: int, *, calibrate: bool = True) -> list[Need]:
    """Quantizing the LLM: the float32 weights, and with AWQ (`calibrate`) the calibration activations,
    the input statistics of the widest linear and a picture for multimodal calibration."""
    needs = weight_needs(config)
    if not calibrate:
        return needs
    llm = config.llm
    h, inter = llm["hidden_size"], llm["intermediate_size"]
    width = max(h, inter, llm["num_attention_heads"] * llm_head_dim(llm))
    return needs + [
        Need("calibration activations", samples * seq_len * (2 * h + inter) * FLOAT32,
             f"--calib-samples {samples} x --calib-len {seq_len}; "
             + _fields("llm/config.json", llm, "hidden_size", "intermediate_size")),
        Need("AWQ input statistics", 2 * width * width * FLOAT32,
             _fields("llm/config.json", llm, "hidden_size", "intermediate_size")),
        picture_needs(config),
    ]


def export_needs(config: "VilaConfig", positions: int) -> list[Need]:
    """Exporting: the float32 weights, the RoPE tables of `positions` positions, the float32 copies
    the graphs are built from, and a picture for validation."""
    llm, vis = config.llm, config.vision_tower
    table = llm["vocab_size"] * llm["hidden_size"] * FLOAT32
    vision = sum(n.bytes for n in weight_needs(config) if n.what.startswith("vision"))
    return weight_needs(config) + [
        Need("RoPE tables", 2 * 2 * positions * llm_head_dim(llm) * FLOAT32,
             f"llm/config.json: max_position_embeddings={llm.get('max_position_embeddings')} (the engine keeps "
             f"{positions}), head width {llm_head_dim(llm)}"),
        Need("float32 copies of the embedding table and LM head", 2 * table,
             _fields("llm/config.json", llm, "vocab_size", "hidden_size")),
        Need("float32 copy of the vision tower", vision,
             _fields("vision_tower/config.json", vis, "num_hidden_layers", "hidden_size", "intermediate_size")),
        picture_needs(config),
    ]


# ---- the machine --------------------------------------------------------------------------------
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def available_memory() -> tuple[int | None, str]:
    """(bytes, what sets them): this machine's RAM, or less where a cgroup memory limit or an
    address-space limit (ulimit -v) of this process says so. (None, "") when nothing is known."""
    found: list[tuple[int, str]] = []
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means none; v1 writes a huge number for none
            found.append((int(text), "cgroup memory limit"))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            found.append((soft, "address-space limit"))
    except (ImportError, ValueError, OSError):
        pass
    return min(found) if found else (None, "")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def check_fits(needs: list[Need], where: str | Path, doing: str) -> None:
    """Raise CheckpointError when `needs` add up to more than `available_memory()`; the message
    names the largest part and the fields behind it. `doing`: "quantizing this model"."""
    available, source = available_memory()
    total = sum(n.bytes for n in needs)
    if available is None or total <= available:
        return
    top = max(needs, key=lambda n: n.bytes)
    raise CheckpointError(
        f"{where}: {doing} needs at least {_gib(total)} GiB of memory, more than the {_gib(available)} GiB this "
        f"machine has ({source}); the largest part: {top.what}, {_gib(top.bytes)} GiB, from {top.fields}"
    )
