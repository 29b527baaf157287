"""The VILA1.5 checkpoint config: a typed view over the JSON files of a checkpoint directory.

On-disk layout (the VILA1.5 releases):

    ckpt/
      config.json                     top level: llava_llama, llm_cfg / vision_tower_cfg /
                                      mm_projector_cfg copies, mm_vision_select_*, image_aspect_ratio
      llm/config.json                 transformers LlamaForCausalLM / Qwen2ForCausalLM config
      vision_tower/config.json        transformers SiglipVisionModel / CLIPVisionModel config
      vision_tower/preprocessor_config.json
      mm_projector/config.json        model_type v2l_projector, mm_projector_type

Each file is kept as read (real releases carry dozens of transformers defaults) so that a
load -> save round trip loses nothing. The settings we act on are read through properties and
checked by `validate()`, which names the offending file and field: first each field's type and
range and the divisibility between fields (the table in common/config_checks.py), then what
vlm-edge supports and how the files agree with each other. Two settings are ours, saved
explicitly so nothing is inferred later:

- `mm_projector/config.json: downsample_token_order` ("column_major" | "row_major"): the order
  in which the downsample projector emits its 2x2 tokens (VILA1.5-era code: column-major;
  NVILA-era code: row-major, under the same type name).
- `config.json: chat_template`: the name of the chat template (common/templates.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_checks import FILES, PROJECTOR, TOP, check_fields, check_relations, scale_list
from .errors import CheckpointError, UnsupportedFeatureError, VlmEdgeError
from .fsutil import atomic_write_json, read_json
from .log import get_logger
from .video import video_pool_sizes

log = get_logger(__name__)

LLM_DIR, VISION_DIR, PROJECTOR_DIR = "llm", "vision_tower", "mm_projector"
PREPROCESSOR_FILE = "preprocessor_config.json"
GENERATION_FILE = "generation_config.json"

# Architectures model/architectures.py can build (a test keeps the two lists equal).
LLM_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
VISION_ARCHITECTURES = ("SiglipVisionModel", "CLIPVisionModel")

# The values a field may take live in the table of common/config_checks.py.
PROJECTOR_TYPES = PROJECTOR["mm_projector_type"].choices
TOKEN_ORDERS = PROJECTOR["downsample_token_order"].choices
# What a checkpoint that does not record the order was trained with (VILA1.5-era code emits
# column-major tokens, NVILA-era code row-major).
DEFAULT_TOKEN_ORDER = {"mlp_downsample": "column_major", "mlp_downsample_2x2_fix": "row_major",
                       "mlp_downsample_3x3_fix": "row_major"}
DOWNSAMPLE_RATIO = {"mlp_downsample": 2, "mlp_downsample_2x2_fix": 2, "mlp_downsample_3x3_fix": 3}
SELECT_FEATURES = TOP["mm_vision_select_feature"].choices
# dynamic: NVILA-Lite's tiles + thumbnail; dynamic_s2: NVILA's multi-scale tiles (common/tiling.py)
ASPECT_RATIOS = TOP["image_aspect_ratio"].choices
NVILA_ASPECT_RATIOS = ("dynamic", "dynamic_s2")  # NVILA-era code, whose mlp_downsample emits row-major tokens

# Top-level keys that copy the sub-folder configs (rebuilt from them on save); the sub-folder
# names double as the VilaConfig attribute names.
_SUB_CONFIG_KEYS = {"llm_cfg": LLM_DIR, "vision_tower_cfg": VISION_DIR, "mm_projector_cfg": PROJECTOR_DIR}


def _architecture(cfg: dict, where: str) -> str:
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise CheckpointError(f"{where}: 'architectures' must be a non-empty list of class names, found {archs!r}")
    return archs[0]


@dataclass
class VilaConfig:
    """All config files of a VILA-layout checkpoint, as dicts, with typed accessors."""

    top: dict[str, Any]  # config.json without the *_cfg copies
    llm: dict[str, Any]  # llm/config.json
    vision_tower: dict[str, Any]  # vision_tower/config.json
    mm_projector: dict[str, Any]  # mm_projector/config.json
    preprocessor: dict[str, Any]  # vision_tower/preprocessor_config.json
    llm_generation: dict[str, Any] | None = None  # llm/generation_config.json, when present

    # ---- typed accessors -------------------------------------------------------------
    @property
    def llm_architecture(self) -> str:
        return _architecture(self.llm, f"{LLM_DIR}/config.json")

    @property
    def vision_architecture(self) -> str:
        return _architecture(self.vision_tower, f"{VISION_DIR}/config.json")

    @property
    def projector_type(self) -> str:
        return self.mm_projector.get("mm_projector_type", "")

    @property
    def is_downsample(self) -> bool:
        return self.projector_type in DEFAULT_TOKEN_ORDER

    @property
    def downsample_ratio(self) -> int | None:
        """2 or 3 (the side of the blocks merged into one token) for downsample projectors, else None."""
        return DOWNSAMPLE_RATIO.get(self.projector_type)

    @property
    def downsample_token_order(self) -> str | None:
        """"column_major" | "row_major" for downsample projectors, None otherwise."""
        return self.mm_projector.get("downsample_token_order") if self.is_downsample else None

    @property
    def select_layer(self) -> int:
        return int(self.top.get("mm_vision_select_layer", -2))

    @property
    def select_feature(self) -> str:
        return self.top.get("mm_vision_select_feature", "cls_patch")

    @property
    def image_aspect_ratio(self) -> str:
        return self.top.get("image_aspect_ratio", "resize")

    @property
    def min_tiles(self) -> int:
        return int(self.top.get("min_tiles", 1))

    @property
    def max_tiles(self) -> int:
        """The most tiles one image is cut into (NVILA's training default, 12, when not saved)."""
        return int(self.top.get("max_tiles", 12))

    @property
    def num_video_frames(self) -> int:
        """How many frames of a video the model takes (VILA's num_video_frames; 8 when not saved)."""
        return int(self.top.get("num_video_frames", 8))

    @property
    def video_pool_sizes(self) -> list[tuple[int, int, int]]:
        """NVILA's temporal-spatial pooling of video frames ([] when the frames are kept as they are)."""
        return video_pool_sizes(self.top.get("video_encoder"))

    @property
    def default_token_order(self) -> str | None:
        """The order a checkpoint that records none was trained with: VILA1.5-era mlp_downsample
        column-major; NVILA-era code (dynamic aspect ratios) row-major under the same name."""
        if self.projector_type == "mlp_downsample" and self.image_aspect_ratio in NVILA_ASPECT_RATIOS:
            return "row_major"
        return DEFAULT_TOKEN_ORDER.get(self.projector_type)

    @property
    def chat_template(self) -> str | None:
        return self.top.get("chat_template")

    @property
    def hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def mm_hidden_size(self) -> int:
        """The projector's input width: the tower's, times the scales for dynamic_s2 (NVILA-8B: 3 x 1152)."""
        return int(self.vision_tower["hidden_size"]) * (len(self.s2_scales) if self.is_s2 else 1)

    @property
    def is_s2(self) -> bool:
        """Multi-scale features: NVILA's dynamic_s2, or VILA1.5's S2 (s2: true; s2_pixels)."""
        return self.image_aspect_ratio == "dynamic_s2" or self.s2_pixels

    @property
    def s2_pixels(self) -> bool:
        """VILA1.5's S2: the preprocessed picture resized to each scale (common/tiling.py: s2_pixel_tiles)."""
        return bool(self.top.get("s2")) and self.image_aspect_ratio not in NVILA_ASPECT_RATIOS

    @property
    def s2_scales(self) -> tuple[int, ...]:
        """dynamic_s2's scales in pixels, smallest first (config.json: s2_scales "448,896,1344")."""
        raw = self.top.get("s2_scales", "")
        scales = scale_list(raw)
        if scales is None:
            raise CheckpointError(f"config.json: s2_scales={raw!r} is not a list of sizes such as \"448,896,1344\"")
        return scales

    @property
    def s2_output_scale(self) -> int:
        """The scale whose grid dynamic_s2 merges features onto (s2_resize_output_to_scale_idx; NVILA: -1)."""
        return int(self.top.get("s2_resize_output_to_scale_idx", 0))

    @property
    def image_size(self) -> int:
        return int(self.vision_tower["image_size"])

    @property
    def preprocessor_size(self) -> int | None:
        """The square side the image processor resizes to (None when it is not square)."""
        cfg = self.preprocessor
        size = cfg.get("crop_size") or cfg.get("size")
        if isinstance(size, int):
            return size
        if isinstance(size, dict):
            if "height" in size and size.get("height") == size.get("width"):
                return int(size["height"])
            if "shortest_edge" in size:
                return int(size["shortest_edge"])
        return None

    @property
    def patch_size(self) -> int:
        return int(self.vision_tower["patch_size"])

    @property
    def num_image_tokens(self) -> int:
        """Projected tokens per image: 196 for VILA1.5-3b (27x27 patches -> 14x14), 121 for a 448-pixel
        NVILA-Lite tile (32x32 -> 11x11)."""
        side = self.image_size // self.patch_size
        if self.is_downsample:
            cells = -(-side // self.downsample_ratio)
            return cells * cells
        tokens = side * side + (1 if self.vision_architecture == "CLIPVisionModel" else 0)  # CLIP adds CLS
        return tokens - 1 if self.select_feature == "patch" else tokens  # "patch" drops the first token

    # ---- changes -------------------------------------------------------------------------
    def set_downsample_token_order(self, order: str) -> None:
        if order not in TOKEN_ORDERS:
            raise UnsupportedFeatureError(
                f"downsample token order {order!r} is not one of {', '.join(TOKEN_ORDERS)}"
            )
        if not self.is_downsample:
            raise UnsupportedFeatureError(
                f"a downsample token order was given, but the projector is {self.projector_type!r}, "
                "which does not downsample; drop the option"
            )
        self.mm_projector["downsample_token_order"] = order

    def set_chat_template(self, name: str) -> None:
        from .templates import get_template  # validates the name

        self.top["chat_template"] = get_template(name).name

    def copy(self) -> "VilaConfig":
        return copy.deepcopy(self)

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise a clear error for a field of the wrong type, out of range (common/config_checks.py)
        or inconsistent with another, and for settings we do not support, naming the file (relative
        to the checkpoint) and the field."""
        files = self.files()
        for name, table in FILES.items():
            check_fields(files[name], table, name)
        check_relations(files, self.select_layer)
        model_type = self.top.get("model_type")
        if model_type != "llava_llama":
            raise CheckpointError(
                f"config.json: model_type {model_type!r} is not a VILA-class checkpoint "
                "(expected 'llava_llama', as in VILA1.5 releases)"
            )
        if self.top.get("s2") and self.image_aspect_ratio in NVILA_ASPECT_RATIOS:
            raise UnsupportedFeatureError(f"config.json: s2=true with image_aspect_ratio={self.image_aspect_ratio} is not "
                                          "supported (S2 is VILA1.5's; NVILA's is dynamic_s2)")
        if self.s2_pixels and self.s2_output_scale != 0:
            raise UnsupportedFeatureError(f"config.json: s2_resize_output_to_scale_idx={self.s2_output_scale} with s2=true "
                                          "is not supported (only 0: the features merged onto the first scale's grid)")
        if self.llm_architecture not in LLM_ARCHITECTURES:
            raise UnsupportedFeatureError(
                f"{LLM_DIR}/config.json: architecture {self.llm_architecture!r} is not supported "
                f"(supported: {', '.join(LLM_ARCHITECTURES)})"
            )
        if self.vision_architecture not in VISION_ARCHITECTURES:
            raise UnsupportedFeatureError(
                f"{VISION_DIR}/config.json: architecture {self.vision_architecture!r} is not supported "
                f"(supported: {', '.join(VISION_ARCHITECTURES)})"
            )
        if self.is_s2:
            scales = self.s2_scales
            if len(scales) < 2 or scales[0] != self.image_size or any(b % scales[0] or b <= a for a, b in zip(scales, scales[1:])):
                raise CheckpointError(f"config.json: s2_scales={self.top.get('s2_scales')!r} must rise in multiples of the "
                                      f"vision tower's image size {self.image_size}, starting with it")
            if not -len(scales) <= self.s2_output_scale < len(scales):
                raise CheckpointError(f"config.json: s2_resize_output_to_scale_idx={self.s2_output_scale} is not one "
                                      f"of the {len(scales)} scales")
            split = self.top.get("s2_max_split_size") or self.image_size
            if split != self.image_size:
                raise UnsupportedFeatureError(f"config.json: s2_max_split_size={split} differs from the tower's image "
                                              f"size {self.image_size}; only tower-sized tiles are supported")
        if int(self.top.get("num_time_tokens") or 0):
            raise UnsupportedFeatureError(f"config.json: num_time_tokens={self.top['num_time_tokens']} (time tokens "
                                          "in video prompts) is not supported")
        if self.video_pool_sizes:
            frames = self.num_video_frames
            if any(frames % t for t, _, _ in self.video_pool_sizes):
                raise CheckpointError(f"config.json: num_video_frames={frames} is not a multiple of every video "
                                      f"pool size's t ({self.video_pool_sizes})")
        if not 1 <= self.min_tiles <= self.max_tiles <= 64:
            raise CheckpointError(f"config.json: min_tiles={self.min_tiles} and max_tiles={self.max_tiles} must satisfy "
                                  "1 <= min_tiles <= max_tiles <= 64")
        if self.image_aspect_ratio in NVILA_ASPECT_RATIOS and self.image_size != self.preprocessor_size:
            raise CheckpointError(f"config.json: image_aspect_ratio={self.image_aspect_ratio} cuts tiles of the vision tower's "
                                  f"{self.image_size} pixels, but {VISION_DIR}/{PREPROCESSOR_FILE} resizes to "
                                  f"{self.preprocessor_size}")
        sides = {self.image_size, *(self.s2_scales if self.s2_pixels else ())}  # VILA1.5's S2 may resize to a scale
        if self.preprocessor_size not in sides:
            prep = self.preprocessor.get("crop_size") or self.preprocessor.get("size")
            raise CheckpointError(f"{VISION_DIR}/{PREPROCESSOR_FILE}: pictures are resized to {prep!r}, but the vision "
                                  f"tower takes {self.image_size} x {self.image_size} pixels ({VISION_DIR}/config.json: "
                                  "image_size); the two must agree")
        mm_hidden = self.top.get("mm_hidden_size")
        if mm_hidden is not None and int(mm_hidden) != self.mm_hidden_size:
            scales = f" x {len(self.s2_scales)} scales" if self.is_s2 else ""
            raise CheckpointError(
                f"config.json: mm_hidden_size={mm_hidden} does not match the vision tower's hidden_size="
                f"{self.vision_tower['hidden_size']}{scales} in {VISION_DIR}/config.json"
            )
        hidden = self.top.get("hidden_size")
        if hidden is not None and int(hidden) != self.hidden_size:
            raise CheckpointError(
                f"config.json: hidden_size={hidden} does not match the LLM's hidden_size={self.hidden_size} "
                f"in {LLM_DIR}/config.json"
            )

    # ---- files ---------------------------------------------------------------------------
    @classmethod
    def read(cls, ckpt_dir: str | Path) -> "VilaConfig":
        """Read the config files of a checkpoint directory (no tensors)."""
        ckpt_dir = Path(ckpt_dir)
        if not ckpt_dir.is_dir():
            raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
        top = _read(ckpt_dir / "config.json", "checkpoint config")
        for sub in (LLM_DIR, VISION_DIR, PROJECTOR_DIR):
            if not (ckpt_dir / sub).is_dir():
                raise CheckpointError(
                    f"checkpoint {ckpt_dir} has no {sub}/ sub-folder; a VILA1.5-layout checkpoint holds "
                    f"{LLM_DIR}/, {VISION_DIR}/ and {PROJECTOR_DIR}/ next to config.json"
                )
        config = cls(
            top={k: v for k, v in top.items() if k not in _SUB_CONFIG_KEYS},
            llm=_read(ckpt_dir / LLM_DIR / "config.json", "LLM config"),
            vision_tower=_read(ckpt_dir / VISION_DIR / "config.json", "vision tower config"),
            mm_projector=_read(ckpt_dir / PROJECTOR_DIR / "config.json", "projector config"),
            preprocessor=_read(ckpt_dir / VISION_DIR / PREPROCESSOR_FILE, "image preprocessor config"),
        )
        if (ckpt_dir / LLM_DIR / GENERATION_FILE).is_file():
            config.llm_generation = _read(ckpt_dir / LLM_DIR / GENERATION_FILE, "LLM generation config")
        try:
            config.validate()
        except VlmEdgeError as e:  # validate() names files relative to the checkpoint: say which checkpoint
            raise type(e)(f"{ckpt_dir}/{e}") from None
        return config

    def files(self) -> dict[str, dict[str, Any]]:
        """Each config file's object by its name relative to the checkpoint (common/config_checks.FILES)."""
        return {"config.json": self.top, f"{LLM_DIR}/config.json": self.llm,
                f"{VISION_DIR}/config.json": self.vision_tower, f"{VISION_DIR}/{PREPROCESSOR_FILE}": self.preprocessor,
                f"{PROJECTOR_DIR}/config.json": self.mm_projector}

    def resolve_token_order(self, override: str | None = None, *, quiet: bool = False) -> None:
        """Fix the downsample token order: the override, else the saved one, else the default (said
        in a log line unless `quiet`)."""
        if override is not None:
            self.set_downsample_token_order(override)
        elif self.is_downsample and self.downsample_token_order is None:
            order = self.default_token_order
            (log.debug if quiet else log.info)(
                "checkpoint does not record downsample_token_order; using %s, the default for %s "
                "(override with downsample_token_order=...)",
                order,
                self.projector_type,
            )
            self.mm_projector["downsample_token_order"] = order

    def to_top_level_json(self) -> dict[str, Any]:
        """config.json as written: the top-level keys plus copies of the sub-folder configs."""
        out = dict(self.top)
        for key, sub in _SUB_CONFIG_KEYS.items():
            sub_cfg = {**getattr(self, sub), "_name_or_path": f"./{sub}"}
            out[key] = dict(sorted(sub_cfg.items()))
        return dict(sorted(out.items()))

    def write(self, ckpt_dir: str | Path) -> None:
        """Write all config files into an existing checkpoint directory (atomically, per file)."""
        ckpt_dir = Path(ckpt_dir)
        for sub in (LLM_DIR, VISION_DIR, PROJECTOR_DIR):
            (ckpt_dir / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_json(ckpt_dir / "config.json", self.to_top_level_json())
        atomic_write_json(ckpt_dir / LLM_DIR / "config.json", self.llm)
        atomic_write_json(ckpt_dir / VISION_DIR / "config.json", self.vision_tower)
        atomic_write_json(ckpt_dir / PROJECTOR_DIR / "config.json", self.mm_projector)
        atomic_write_json(ckpt_dir / VISION_DIR / PREPROCESSOR_FILE, self.preprocessor)
        if self.llm_generation is not None:
            atomic_write_json(ckpt_dir / LLM_DIR / GENERATION_FILE, self.llm_generation)


def _read(path: Path, what: str) -> dict[str, Any]:
    return read_json(path, what=what, error=CheckpointError)

