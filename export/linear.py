"""Linear layers in ONNX, per flavour, and the packing of 4-bit weights for each kernel.

A linear y = x @ W.T + b with W [N out, K in]. Quantized, W.T[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]
(the canonical AWQ form of `common.awq_format`, unpacked: q, z uint8 0..15, s float). The LM head may
also be 8-bit (q, z 0..255; ort flavour only): then B holds one q per byte, [N, K/G, G], and the
zero points one per byte, [N * K/G].

    fp    MatMul(x, W.T as float32 [K, N])
    ort   com.microsoft.MatMulNBits(x, B, scales, zero_points) with
            B            uint8 [N, K/G, G/2]   B[n, b, j] = q[bG + 2j, n] | q[bG + 2j + 1, n] << 4  (low nibble first)
            scales       float [N * K/G]       s.T flattened
            zero_points  uint8 [N * ceil(K/G / 2)]  z.T packed along the blocks, low nibble first
    trt   MatMul(x, DequantizeLinear(w_int4 [K, N], scale [K/G, N], axis=0, block_size=G))
            w_int4 = q - 8 (signed, symmetric only: every z is 8), two per byte in row-major order,
            low nibble first; no zero point input (TensorRT's native int4 is zero-point free)

The unpack functions are the independent readers the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from vlm_edge.common import awq_format
from vlm_edge.common.errors import UnsupportedFeatureError
from vlm_edge.quant.config import TRT_BLOCKS

from .graph import MS_DOMAIN, GraphBuilder

FLAVOURS = ("fp", "ort", "trt")


@dataclass
class QuantLinear:
    """One AWQ linear, unpacked: q [K, N] and zeros [K/G, N] in 0..15 (0..255 with 8 bits),
    scales [K/G, N] float32."""

    q: np.ndarray
    zeros: np.ndarray
    scales: np.ndarray
    group_size: int
    bits: int = 4

    @classmethod
    def from_awq(cls, qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int) -> "QuantLinear":
        return cls(awq_format.unpack(qweight), awq_format.unpack(qzeros), np.asarray(scales, np.float32), group_size)

    @property
    def symmetric(self) -> bool:
        return bool(np.all(self.zeros == 1 << (self.bits - 1)))  # 8 for 4 bits (awq_format.SYMMETRIC_ZERO)

    def dequantize(self) -> np.ndarray:
        """W.T [K, N] float32."""
        g = self.group_size
        return (self.q.astype(np.float32) - np.repeat(self.zeros, g, 0)) * np.repeat(self.scales, g, 0)


def concat_outputs(parts: list[QuantLinear]) -> QuantLinear:
    """Linears that read the same input as one: their output channels side by side (exact, since
    every group runs along K within one output channel)."""
    first = parts[0]
    if any((p.group_size, p.bits, p.q.shape[0]) != (first.group_size, first.bits, first.q.shape[0]) for p in parts):
        raise ValueError("concat_outputs: the linears differ in group size, bits or input width")
    return QuantLinear(np.concatenate([p.q for p in parts], axis=1), np.concatenate([p.zeros for p in parts], axis=1),
                       np.concatenate([p.scales for p in parts], axis=1), first.group_size, first.bits)


def rtn_quantize(weight_t: np.ndarray, group_size: int, symmetric: bool, bits: int = 4) -> QuantLinear:
    """Round-to-nearest 4- or 8-bit W.T [K, N] in groups of `group_size` along K, with the arithmetic
    of quant/quantize.py (float16-rounded scales): for the LM head, which AWQ leaves in float."""
    if bits not in (4, 8):
        raise ValueError(f"bits {bits}: 4 or 8")
    k, n = weight_t.shape
    top, mid = (1 << bits) - 1, 1 << (bits - 1)  # 15, 8 or 255, 128
    w = np.asarray(weight_t, np.float32).reshape(k // group_size, group_size, n)
    if symmetric:
        scales = np.maximum(np.abs(w).max(axis=1) / (mid - 1), 1e-8).astype(np.float16).astype(np.float32)
        scales = np.maximum(scales, 2.0**-24)
        q = np.clip(np.round(w / scales[:, None]), -mid, mid - 1) + mid
        zeros = np.full(scales.shape, mid, np.uint8)
    else:
        lo, hi = w.min(axis=1), w.max(axis=1)
        scales = np.maximum((hi - lo) / top, 1e-8).astype(np.float16).astype(np.float32)
        scales = np.maximum(scales, 2.0**-24)
        zeros = np.clip(-np.round(lo / scales), 0, top)
        q = np.clip(np.round(w / scales[:, None]) + zeros[:, None], 0, top)
        zeros = zeros.astype(np.uint8)
    return QuantLinear(q.reshape(k, n).astype(np.uint8), zeros, scales, group_size, bits)


# ---- packing ------------------------------------------------------------------------------------
def _pack_low_first(values: np.ndarray) -> np.ndarray:
    """uint8 [..., 2m] (0..15) -> uint8 [..., m], element 2j in the low nibble."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _unpack_low_first(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return out[..., :count]


def pack_matmulnbits(lin: QuantLinear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, scales, zero_points) for MatMulNBits; see the module docstring for the layouts."""
    k, n = lin.q.shape
    g = lin.group_size
    blocks = np.ascontiguousarray(lin.q.T.reshape(n, k // g, g))  # [N, K/G, G]
    scales = np.ascontiguousarray(lin.scales.T, dtype=np.float32).reshape(-1)
    if lin.bits == 8:
        return blocks, scales, np.ascontiguousarray(lin.zeros.T).reshape(-1)
    b = _pack_low_first(blocks)  # [N, K/G, G/2]
    zero_points = _pack_low_first(np.ascontiguousarray(lin.zeros.T)).reshape(-1)  # [N * ceil(K/G / 2)]
    return b, scales, zero_points


def unpack_matmulnbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, k: int, n: int, g: int,
                       bits: int = 4) -> QuantLinear:
    blocks = k // g
    if bits == 8:
        q, zeros = b.reshape(n, k).T, zero_points.reshape(n, blocks).T
    else:
        q = _unpack_low_first(b, g).reshape(n, k).T
        zeros = _unpack_low_first(zero_points.reshape(n, -1), blocks).T
    return QuantLinear(np.ascontiguousarray(q), np.ascontiguousarray(zeros), scales.reshape(n, blocks).T.copy(), g,
                       bits)


def pack_int4(lin: QuantLinear) -> tuple[np.ndarray, np.ndarray]:
    """(packed signed int4 bytes of q - 8, row-major over [K, N]; scales [K/G, N]) for the trt flavour."""
    if not lin.symmetric:
        raise UnsupportedFeatureError("the trt flavour needs symmetric AWQ weights (TensorRT's int4 has no zero "
                                      "point); quantize with --symmetric")
    signed = lin.q.astype(np.int16) - awq_format.SYMMETRIC_ZERO  # -8..7
    nibbles = (signed & 0xF).astype(np.uint8).reshape(-1)
    return _pack_low_first(nibbles), np.ascontiguousarray(lin.scales, np.float32)


def unpack_int4(packed: np.ndarray, k: int, n: int) -> np.ndarray:
    """Signed int8 [K, N] from packed int4 bytes (two's complement nibbles, low first)."""
    nibbles = _unpack_low_first(packed.reshape(-1), k * n).astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).reshape(k, n)


# ---- emitting -----------------------------------------------------------------------------------
def emit_linear(g: GraphBuilder, x: str, name: str, flavour: str, *, weight_t: np.ndarray | None = None,
                quant: QuantLinear | None = None, bias: np.ndarray | None = None, accuracy_level: int = 0) -> str:
    """y = x @ W.T (+ b). Float weights come as `weight_t` = W.T [K, N]; quantized ones as `quant`."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}")
    if quant is None or flavour == "fp":
        w = weight_t if quant is None else quant.dequantize()
        y = g.op("MatMul", x, g.weight(f"{name}.weight", np.asarray(w, np.float32)), name=name)
    elif flavour == "ort":
        k, n = quant.q.shape
        b, scales, zp = pack_matmulnbits(quant)
        if quant.bits == 8:  # ONNX Runtime's CPU kernel for 8 bits is fast only with int8 activations
            accuracy_level = 4
        y = g.op("MatMulNBits", x, g.weight(f"{name}.qweight", b), g.weight(f"{name}.scales", scales),
                 g.weight(f"{name}.qzeros", zp), domain=MS_DOMAIN, name=name,
                 K=k, N=n, bits=quant.bits, block_size=quant.group_size, accuracy_level=accuracy_level)
    else:
        k, n = quant.q.shape
        if quant.bits != 4:
            raise UnsupportedFeatureError(f"{name}: the trt flavour takes 4-bit weights only, not {quant.bits}-bit")
        if quant.group_size not in TRT_BLOCKS:
            raise UnsupportedFeatureError(f"the trt flavour needs group size 64 or 128 (TensorRT's int4 blocks), "
                                          f"got {quant.group_size}")
        packed, scales = pack_int4(quant)
        w4 = g.packed_weight(f"{name}.qweight", packed, TensorProto.INT4, (k, n))
        w = g.op("DequantizeLinear", w4, g.weight(f"{name}.scales", scales), axis=0, block_size=quant.group_size,
                 name=f"{name}_dq")
        y = g.op("MatMul", x, w, name=name)
    if bias is not None:
        y = g.op("Add", y, g.weight(f"{name}.bias", np.asarray(bias, np.float32)), name=f"{name}_bias")
    return y
