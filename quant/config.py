"""The quantization settings: a typed config, saved into the quantized checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vlm_edge.common.errors import InputError

from .quantize import QuantFormat

QUANT_DIR = "quant"  # inside a quantized checkpoint: quant_config.json, awq_search.safetensors
QUANT_CONFIG_FILE = "quant_config.json"
SEARCH_FILE = "awq_search.safetensors"
FORMAT_VERSION = 1
METHODS = ("awq", "rtn")


@dataclass
class QuantConfig:
    method: str = "awq"  # awq | rtn
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False  # True: q in [-8, 7], zero point 0 (TensorRT's native int4 needs it)
    calib: str | None = None  # None: the checkpoint's own calibration set, else pile-val when online
    samples: int = 128  # calibration blocks
    seq_len: int = 512  # positions per block
    text_only: bool = False  # drop the images from multimodal calibration data (the published recipe)
    n_grid: int = 20  # scale search grid; the clip search tries n_grid / 2 ratios
    clip: bool = True
    device: str = "auto"  # auto | cpu | cuda

    @property
    def format(self) -> QuantFormat:
        return QuantFormat(self.bits, self.group_size, self.symmetric)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"quantization method {self.method!r} is unknown; choose one of {', '.join(METHODS)}")
        if self.bits != 4:
            raise InputError(f"{self.bits}-bit weights are not supported; the AWQ GEMM layout is 4-bit")
        if self.group_size not in (32, 64, 128):
            raise InputError(f"group size {self.group_size} is not supported; choose 128 (default), 64 or 32")
        if self.samples < 1 or self.seq_len < 1 or self.n_grid < 2:
            raise InputError("calibration samples and length must be >= 1, and the grid >= 2")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
