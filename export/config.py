"""The export settings: a typed config, saved into the engine's manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm_edge.common.errors import InputError
from vlm_edge.common.footprint import check_fits, export_needs, quantization_needs
from vlm_edge.common.vila_config import VilaConfig
from vlm_edge.quant.config import GROUP_SIZES, TRT_BLOCKS

# The most positions an engine is exported for: its RoPE tables (positions x head width, float32)
# are constants of the decoder graph, and 131072 positions (Llama 3.1's context) already need 64 MiB
# per table at head width 128; a config's max_position_embeddings beyond it does not size them.
ENGINE_MAX_POSITIONS = 1 << 17
LM_HEADS = ("auto", "float", "int8", "int4", "int4-rescore")
VISION_CHOICES = ("auto", "fp32", "int8", "fp16")
ACCURACY_LEVELS = ("auto", 0, 1, 2, 3, 4)


@dataclass
class ExportConfig:
    awq4: bool = False  # quantize the LLM's linears to 4 bits (AWQ), or take an already quantized checkpoint
    flavours: tuple[str, ...] = ()  # decoder graphs: ort and/or trt (4-bit); () = ("ort",), or ("fp",) unquantized
    group_size: int | None = None  # None: the largest of 128, 64, 32 that divides every linear's input width
    symmetric: bool | None = None  # None: symmetric exactly when a trt graph is wanted
    method: str = "awq"  # awq | rtn, when quantizing here
    tinychat_awq: str | None = None  # NVIDIA's released TinyChat AWQ file for this checkpoint's LLM: used as it is
    calib: str | None = None
    calib_samples: int = 128
    calib_len: int = 512
    validate: bool = True
    prompts: int = 10  # validation prompts (greedy check)
    decode_steps: int = 16
    greedy_steps: int = 32
    # auto | float | int8 | int4 | int4-rescore: RTN LM head (AWQ keeps it float; a large share of decode bytes).
    # auto, for a 4-bit export with ONNX Runtime graphs only: int4-rescore, int8, float, the first that validates
    # against the float head (int8 unvalidated); float otherwise
    lm_head: str = "auto"
    # MatMulNBits compute in the ort graph: 0 float (bit-faithful), 4 int8 activations (about 2x faster decode
    # on a CPU); "auto" = 4 when the validation passes with it, else 0 (the reason goes into the manifest)
    accuracy_level: int | str = "auto"
    build_engine: bool = False  # build TensorRT engines now (needs tensorrt and a GPU)
    # the vision tower's linears: auto = int8 when no trt graph is asked for and the int8 graph passes the
    # vision check (else fp32); fp32; int8 (ONNX Runtime CPU graph); fp16 (half the file, for GPU builds)
    vision: str = "auto"
    plugin: bool = True  # trt: the projector's downsample + LayerNorm as our TensorRT plugin (False: plain ops)
    device: str = "auto"  # quantization device
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_flavours(self) -> tuple[str, ...]:
        if not self.awq4:
            return ("fp",)
        flavours = tuple(self.flavours) or ("ort",)
        if self.build_engine and "trt" not in flavours:
            flavours += ("trt",)
        return flavours

    def wants_symmetric(self) -> bool:
        return self.symmetric if self.symmetric is not None else "trt" in self.resolved_flavours()

    def validate_options(self) -> None:
        flavours = self.resolved_flavours()
        unknown = set(flavours) - {"fp", "ort", "trt"}
        if unknown:
            raise InputError(f"unknown decoder flavour(s) {sorted(unknown)}; choose ort and/or trt")
        if not self.awq4 and set(self.flavours) - {"fp"}:
            raise InputError("--flavour ort/trt are 4-bit graphs; add --awq4")
        if self.tinychat_awq and not self.awq4:
            raise InputError("--tinychat-awq gives 4-bit weights; add --awq4")
        if self.tinychat_awq and "trt" in flavours:
            raise InputError("a TinyChat AWQ file has zero points, but the trt flavour needs symmetric AWQ; "
                             "export it with --flavour ort")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise InputError(f"group size {self.group_size} is not supported; choose 128, 64 or 32")
        if "trt" in flavours:
            if self.symmetric is False:
                raise InputError("the trt flavour needs symmetric AWQ (TensorRT's int4 has no zero point); "
                                 "drop --no-symmetric or the trt flavour")
            if self.group_size is not None and self.group_size not in TRT_BLOCKS:
                raise InputError(f"the trt flavour needs group size 64 or 128 (TensorRT's int4 blocks), got "
                                 f"{self.group_size}")
        if self.prompts < 1 or self.greedy_steps < 1 or self.decode_steps < 0:
            raise InputError("validation needs at least one prompt and one greedy step")
        if self.lm_head not in LM_HEADS:
            raise InputError(f"--lm-head {self.lm_head!r}: choose {', '.join(LM_HEADS)}")
        if self.lm_head not in ("auto", "float") and not self.awq4:
            raise InputError(f"--lm-head {self.lm_head} is part of the 4-bit export; add --awq4")
        if self.lm_head in ("int8", "int4-rescore") and "trt" in flavours:
            raise InputError(f"--lm-head {self.lm_head} is for ONNX Runtime graphs (MatMulNBits); a trt graph takes "
                             "float or int4")
        if self.vision not in VISION_CHOICES:
            raise InputError(f"--vision {self.vision!r}: choose {', '.join(VISION_CHOICES)}")
        if self.vision == "int8" and "trt" in flavours:
            raise InputError("--vision int8 writes ONNX Runtime's int8 CPU ops, which TensorRT does not read; use "
                             "--vision fp16 or fp32 with the trt flavour")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise InputError(f"--accuracy-level {self.accuracy_level!r}: choose auto, 0 (float) .. 4 (int8 activations)")

    def accuracy_candidates(self) -> tuple[int, ...]:
        """MatMulNBits accuracy levels to try in order: auto tries int8 activations first and keeps them
        only when the validation passes with them; without validation it keeps float (0)."""
        if self.accuracy_level != "auto":
            return (int(self.accuracy_level),)
        return (4, 0) if self.validate else (0,)

    def vision_candidates(self) -> tuple[str, ...]:
        """Vision precisions to try in order: the first that passes the vision check is written."""
        if self.vision != "auto":
            return (self.vision,)
        return ("fp32",) if "trt" in self.resolved_flavours() else ("int8", "fp32")

    @property
    def resolved_lm_head(self) -> str:
        """The first head to try. auto, for a 4-bit export whose graphs are all ONNX Runtime ones: the
        rescored int4 head when the validation can judge it, else the int8 head; float where a trt
        graph is asked for (it takes float or int4)."""
        if self.lm_head != "auto":
            return self.lm_head
        if not self.awq4 or "trt" in self.resolved_flavours():
            return "float"
        return "int4-rescore" if self.validate else "int8"

    def lm_head_candidates(self) -> tuple[str, ...]:
        """LM heads to try in order, each kept only when the validation (against the reference's float
        head: the head's rounding is measured) passes with it. auto: the rescored int4 head (the int4
        head's bytes per step, the int8 rows' answers), then int8, then float. The plain int4 head is
        asked for by name: on a real Qwen2.5 0.5B it moved one next token in 18."""
        head = self.resolved_lm_head
        return ("int4-rescore", "int8", "float") if self.lm_head == "auto" and head == "int4-rescore" else (head,)

    @property
    def lm_head_bits(self) -> int | None:
        return {"int8": 8, "int4": 4, "int4-rescore": 4}.get(self.resolved_lm_head)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def engine_positions(llm_config: dict[str, Any]) -> int:
    """The positions an engine of this LLM is exported for: its max_position_embeddings, at most
    ENGINE_MAX_POSITIONS."""
    return min(int(llm_config.get("max_position_embeddings", 2048)), ENGINE_MAX_POSITIONS)


def check_source(source: str | Path, config: ExportConfig) -> VilaConfig:
    """Read the checkpoint's config (every field checked: common/config_checks.py) and refuse a model
    that cannot be quantized (when the export quantizes) or exported in this machine's memory
    (common/footprint.py). Needs no torch: the CLI calls it first, so a broken or hostile checkpoint
    fails in a second."""
    vila = VilaConfig.read(source)
    quantizes = config.awq4 and not config.tinychat_awq and not isinstance(vila.llm.get("quantization_config"), dict)
    if quantizes:
        check_fits(quantization_needs(vila, config.calib_samples, config.calib_len, calibrate=config.method == "awq"),
                   source, "quantizing this model")
    check_fits(export_needs(vila, engine_positions(vila.llm)), source, "exporting this model")
    return vila
