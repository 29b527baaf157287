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


def group_params(weight: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's scale and zero point [N, K/G] (float32; scales already rounded to float16)."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // fmt.group_size, fmt.group_size)
    if fmt.symmetric:
        half = 2 ** (fmt.bits - 1)  # 8
        scales = (w.abs().amax(dim=2) / (half - 1)).clamp(min=1e-8)
        scales = scales.half().float().clamp(min=2**-24)
        zeros = torch.full_like(scales, half)
    else:
        wmax, wmin = w.amax(dim=2), w.amin(dim=2)
        scales = ((wmax - wmin) / fmt.qmax).clamp(min=1e-8)
        scales = scales.half().float().clamp(min=2**-24)
        zeros = torch.clamp(-torch.round(wmin / scales), 0, fmt.qmax)
    return scales, zeros


def quantize(weight: torch.Tensor, fmt: QuantFormat) -> Quantized:
    """Round-to-nearest quantization of W [N, K] into groups of `fmt.group_size` along K.
    (Symmetric: clamp(round(w / s), -8, 7) + 8 is clamp(round(w / s) + 8, 0, 15), so both modes
    share one rounding with their own zero points.)"""
    n, k = weight.shape
    scales, zeros = group_params(weight, fmt)
    w = weight.detach().float().reshape(n, k // fmt.group_size, fmt.group_size)
    q = torch.clamp(torch.round(w / scales[..., None]) + zeros[..., None], 0, fmt.qmax)
    return Quantized(q.reshape(n, k).to(torch.uint8), scales.half(), zeros.to(torch.uint8))


def quantize_feedback(weight: torch.Tensor, gram: torch.Tensor, fmt: QuantFormat, *, damp: float = 0.01,
                      busiest_first: bool = True, block: int = 128) -> Quantized:
    """The integers of `quantize`'s grid (the same scales and zeros) chosen to minimise the
    output error over inputs whose Gram matrix X^T X is `gram` [K, K], not each weight's own.

    Columns are rounded one at a time; each one's rounding error e_i is spread onto the columns
    not yet rounded, w_j -= e_i H^-1_ij / H^-1_ii, the least-squares correction for inputs that
    correlate (GPTQ's update, over the Cholesky factor of H^-1 so that every step is one row).
    H = gram + damp * mean(diag) * I keeps it invertible. With a diagonal gram nothing is
    spread and this is `quantize`. `busiest_first`: columns in decreasing order of their inputs'
    energy (diag H), so the largest errors have the most columns left to absorb them; the
    groups' scales and zeros are fixed beforehand, so the order changes nothing in the layout.
    `block` columns are updated at a time (the rest lazily)."""
    n, k = weight.shape
    scales, zeros = group_params(weight, fmt)
    w = weight.detach().float().clone()
    h = gram.detach().double().clone()
    dead = torch.diag(h) == 0  # inputs that are always zero: any weight is exact there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype, device=h.device)
    order = torch.argsort(torch.diag(h), descending=True, stable=True) if busiest_first else torch.arange(k, device=w.device)
    w, h = w[:, order], h[order][:, order]
    group_of = order // fmt.group_size  # each (permuted) column's group
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    q = torch.empty(n, k, dtype=torch.float32, device=w.device)
    for start in range(0, k, block):
        end = min(start + block, k)
        w1, h1 = w[:, start:end], hinv[start:end, start:end]
        err = torch.zeros_like(w1)
        for j in range(end - start):
            s, z = scales[:, group_of[start + j]], zeros[:, group_of[start + j]]
            qj = torch.clamp(torch.round(w1[:, j] / s) + z, 0, fmt.qmax)
            e = (w1[:, j] - (qj - z) * s) / h1[j, j]
            w1[:, j:] -= e[:, None] * h1[j, j:][None, :]
            q[:, start + j], err[:, j] = qj, e
        w[:, end:] -= err @ hinv[start:end, end:]
    q = q[:, torch.argsort(order)]
    return Quantized(q.to(torch.uint8), scales.half(), zeros.to(torch.uint8))


def fake_quantize(weight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """quantize -> dequantize, in the weight's dtype."""
    return quantize(weight, fmt).dequantize(fmt.group_size).to(weight.dtype)
