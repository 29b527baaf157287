"""Group-wise integer quantization of a weight matrix: the arithmetic shared by RTN and AWQ.

W [N out, K in] is cut into groups of G consecutive input channels per output row.

    asymmetric (zero point):  scale = (max - min) / (2^b - 1)
                              zero  = clamp(-round(min / scale), 0, 2^b - 1)
                              q     = clamp(round(w / scale) + zero, 0, 2^b - 1)
                              w'    = (q - zero) * scale
    symmetric:                scale = max|w| / (2^(b-1) - 1)
                              q     = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1)
                              w'    = q * scale      (stored as q + 2^(b-1) with zero 2^(b-1))

Scales are rounded to float16 first (the stored dtype), so the fake-quantized weight is
exactly what a reader of the packed artifact reconstructs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_edge.common.errors import UnsupportedFeatureError


@dataclass(frozen=True)
class QuantFormat:
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def check(self, name: str, weight: torch.Tensor) -> None:
        """A clear error when `weight` [N, K] cannot be stored in this format."""
        n, k = weight.shape
        if k % self.group_size:
            raise UnsupportedFeatureError(
                f"{name}: input size {k} is not divisible by the group size {self.group_size}; "
                f"pass a group size that divides it (--group-size {_largest_group(k)} works)"
            )
        if n % 8:
            raise UnsupportedFeatureError(
                f"{name}: output size {n} is not a multiple of 8, which the packed AWQ layout needs; "
                "leave this layer unquantized"
            )


def _largest_group(k: int) -> int:
    for g in (128, 64, 32):
        if k % g == 0:
            return g
    return k


@dataclass
class Quantized:
    """Integers and their group parameters; q is unsigned 0..2^b-1 in both modes (symmetric: +8)."""

    q: torch.Tensor  # uint8 [N, K]
    scales: torch.Tensor  # float16 [N, K/G]
    zeros: torch.Tensor  # uint8 [N, K/G]

    def dequantize(self, group_size: int) -> torch.Tensor:
        s = self.scales.float().repeat_interleave(group_size, dim=1)
        z = self.zeros.float().repeat_interleave(group_size, dim=1)
        return (self.q.float() - z) * s


def quantize(weight: torch.Tensor, fmt: QuantFormat) -> Quantized:
    """Round-to-nearest quantization of W [N, K] into groups of `fmt.group_size` along K."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // fmt.group_size, fmt.group_size)
    if fmt.symmetric:
        half = 2 ** (fmt.bits - 1)  # 8
        scales = (w.abs().amax(dim=2) / (half - 1)).clamp(min=1e-8)
        scales = scales.half().float().clamp(min=2**-24)
        q = torch.clamp(torch.round(w / scales[..., None]), -half, half - 1) + half
        zeros = torch.full_like(scales, half)
    else:
        wmax, wmin = w.amax(dim=2), w.amin(dim=2)
        scales = ((wmax - wmin) / fmt.qmax).clamp(min=1e-8)
        scales = scales.half().float().clamp(min=2**-24)
        zeros = torch.clamp(-torch.round(wmin / scales), 0, fmt.qmax)
        q = torch.clamp(torch.round(w / scales[..., None]) + zeros[..., None], 0, fmt.qmax)
    return Quantized(q.reshape(n, k).to(torch.uint8), scales.half(), zeros.to(torch.uint8))


def fake_quantize(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """quantize -> dequantize, in the weight's dtype."""
    return quantize(weight, fmt).dequantize(fmt.group_size).to(weight.dtype)
