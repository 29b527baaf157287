"""The quantization settings: a typed config, saved into the quantized checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm_edge.common.errors import InputError
from vlm_edge.common.footprint import check_fits, quantization_needs
from vlm_edge.common.vila_config import VilaConfig

if TYPE_CHECKING:  # quantize imports torch; this module is read by CLIs before torch is needed
    from .quantize import QuantFormat

QUANT_DIR = "quant"  # inside a quantized checkpoint: quant_config.json, awq_search.safetensors
QUANT_CONFIG_FILE = "quant_config.json"
SEARCH_FILE = "awq_search.safetensors"
FORMAT_VERSION = 1
METHODS = ("awq", "rtn")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ROUNDINGS = ("feedback", "nearest")
GROUP_SIZES = (128, 64, 32)  # input channels per scale, largest first


@dataclass
class QuantConfig:
    method: str = "awq"  # awq | rtn
    bits: int = 4
    group_size: int | None = None  # None: the largest of GROUP_SIZES that divides every linear's input width
    symmetric: bool = False  # True: q in [-8, 7], zero point 0 (TensorRT's native int4 needs it)
    calib: str | None = None  # a file, "pile-val" or "vlm-edge:offline"; None: the checkpoint's own set, else offline
    samples: int = 128  # calibration blocks
    seq_len: int = 512  # positions per block
    text_only: bool = False  # drop the images from multimodal calibration data (the published recipe)
    n_grid: int = 20  # scale search grid; the clip search tries n_grid / 2 ratios
    clip: bool = True
    duo: bool = False  # scale candidates from activations and weights (AutoAWQ's duo scaling)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # what the searches run in: auto | float32 | bfloat16 | float16 (weights stay float32)
    rounding: str = "feedback"  # feedback | nearest: integers chosen against the calibration inputs, or nearest (AWQ only)

    @property
    def format(self) -> "QuantFormat":
        from .quantize import QuantFormat

        if self.group_size is None:
            raise ValueError("resolve the group size first (QuantConfig.for_llm)")
        return QuantFormat(self.bits, self.group_size, self.symmetric)

    def for_llm(self, llm_config: dict[str, Any], *, trt: bool = False) -> "QuantConfig":
        """This config with the group size chosen for the LLM when it is None (`auto_group_size`);
        a given group size must divide every quantized linear's input width."""
        widths = linear_input_widths(llm_config)
        if self.group_size is None:
            return dataclasses.replace(self, group_size=auto_group_size(widths, trt))
        bad = sorted({w for w in widths if w % self.group_size})
        if bad:
            raise InputError(f"the LLM's linear input size {bad[0]} is not divisible by the group size "
                             f"{self.group_size}; --group-size {auto_group_size(widths, trt)} works (or leave it out: the largest that "
                             "fits is chosen)")
        return self

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"quantization method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if self.bits != 4:
            raise InputError(f"{self.bits}-bit weights are not supported; the AWQ GEMM layout is 4-bit")
        if self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise InputError(f"group size {self.group_size} is not supported; choose 128, 64 or 32 "
                             "(or leave it out to pick the largest that fits the model)")
        if self.dtype not in DTYPES:
            raise InputError(f"search dtype {self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
        if self.rounding not in ROUNDINGS:
            raise InputError(f"rounding {self.rounding!r} is unknown; choose one of {', '.join(ROUNDINGS)}")
        if self.samples < 1 or self.seq_len < 1 or self.n_grid < 2:
            raise InputError("calibration samples and length must be >= 1, and the grid >= 2")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {"rounding": "nearest", **d}  # written before feedback rounding existed: rounded to nearest
        return cls(**{k: v for k, v in d.items() if k in known})


TRT_BLOCKS = (64, 128)  # block sizes TensorRT's int4 weight-only path accepts


def linear_input_widths(llm_config: dict[str, Any]) -> list[int]:
    """Input widths of the LLM's quantized linears (q/k/v/gate/up: hidden; o: heads x head_dim; down)."""
    heads = llm_config["num_attention_heads"]
    head_dim = llm_config.get("head_dim") or llm_config["hidden_size"] // heads
    return [llm_config["hidden_size"], heads * head_dim, llm_config["intermediate_size"]]


def auto_group_size(widths: list[int], trt: bool = False) -> int:
    """The largest supported group size that divides every width (TensorRT: 64 or 128 only)."""
    for g in GROUP_SIZES:
        if (not trt or g in TRT_BLOCKS) and all(w % g == 0 for w in widths):
            return g
    raise InputError(f"no supported group size divides the LLM's linear input widths {sorted(set(widths))}; "
                     f"4-bit quantization needs widths divisible by {'64' if trt else '32'}")


def check_source(source: str | Path, config: QuantConfig) -> VilaConfig:
    """Read the checkpoint's config (every field checked: common/config_checks.py) and refuse a model
    that cannot be quantized in this machine's memory (common/footprint.py). Needs no torch: the
    CLI calls it first, so a broken or hostile checkpoint fails in a second."""
    vila = VilaConfig.read(source)
    check_fits(quantization_needs(vila, config.samples, config.seq_len, calibrate=config.method == "awq"),
               source, "quantizing this model")
    return vila
