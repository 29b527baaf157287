"""The AutoAWQ "GEMM" layout of a 4-bit linear layer, in numpy: pack, unpack, dequantize.

This is the canonical artifact `vlm-quant` writes (AutoAWQ's "GEMM" version, which vLLM and
transformers load). The PyTorch reference (`vlm_edge.model`) reads it to dequantize on the fly,
and the exporter re-packs it for a kernel (ONNX Runtime MatMulNBits, TensorRT int4), so it lives
here where every stage can reach it.

For a linear layer y = x @ W.T with W of shape [N out, K in], and groups of G along K:

    qweight  int32   [K, N/8]     8 output columns per word
    qzeros   int32   [K/G, N/8]   zero points, packed the same way
    scales   float16 [K/G, N]

    W.T[k, n] = (q[k, n] - z[k // G, n]) * s[k // G, n]

Inside one int32, nibble i (bits 4i .. 4i+3) holds column PACK_ORDER[i] of its 8 columns:
columns 0, 2, 4, 6, 1, 3, 5, 7 from the low nibble up. Unpacking in nibble order and indexing
with UNPACK_ORDER puts the 8 columns back in natural order.

Symmetric quantization (q in [-8, 7], no zero point; what TensorRT's native int4 needs) is
stored in the same layout as unsigned nibbles q + 8 with every zero point 8.
"""

from __future__ import annotations

import numpy as np

PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # argsort of PACK_ORDER
PACK = 8  # nibbles per int32
SYMMETRIC_ZERO = 8


def pack(values: np.ndarray) -> np.ndarray:
    """uint [R, C] with entries 0..15 (C divisible by 8) -> int32 [R, C/8] in AWQ nibble order."""
    values = np.ascontiguousarray(values)
    rows, cols = values.shape
    if cols % PACK:
        raise ValueError(f"cannot pack {cols} columns: the count must be a multiple of {PACK}")
    if values.size and (values.min() < 0 or values.max() > 15):
        raise ValueError("4-bit values must lie in 0..15")
    grouped = values.astype(np.uint32).reshape(rows, cols // PACK, PACK)[:, :, PACK_ORDER]
    shifts = np.arange(PACK, dtype=np.uint32) * 4
    words = np.bitwise_or.reduce(grouped << shifts, axis=2)
    return np.ascontiguousarray(words, dtype=np.uint32).view(np.int32)


def unpack(words: np.ndarray) -> np.ndarray:
    """int32 [R, C/8] -> uint8 [R, C], the inverse of `pack`."""
    words = np.ascontiguousarray(words)
    if words.dtype != np.int32:
        raise ValueError(f"packed AWQ tensors are int32, got {words.dtype}")
    shifts = np.arange(PACK, dtype=np.uint32) * 4
    nibbles = (words.view(np.uint32)[:, :, None] >> shifts) & 0xF  # [R, C/8, 8] in nibble order
    return nibbles[:, :, UNPACK_ORDER].reshape(words.shape[0], -1).astype(np.uint8)


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """The float32 weight W [N, K] (torch Linear layout) of one packed layer."""
    q = unpack(qweight).astype(np.float32)  # [K, N]
    z = unpack(qzeros).astype(np.float32)  # [K/G, N]
    s = np.asarray(scales, dtype=np.float32)  # [K/G, N]
    k, n = q.shape
    if k % group_size or z.shape != (k // group_size, n) or s.shape != (k // group_size, n):
        raise ValueError(
            f"inconsistent AWQ tensors: qweight unpacks to {q.shape}, qzeros to {z.shape}, scales are {s.shape}, "
            f"group size {group_size}"
        )
    z = np.repeat(z, group_size, axis=0)
    s = np.repeat(s, group_size, axis=0)
    return np.ascontiguousarray(((q - z) * s).T)


def quantization_config(bits: int, group_size: int, symmetric: bool) -> dict:
    """The `quantization_config` entry of the LLM's config.json (AutoAWQ / transformers / vLLM).

    Symmetric weights are stored with zero points of 8, so readers always apply a zero point.
    """
    return {
        "quant_method": "awq",
        "bits": bits,
        "group_size": group_size,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": None,
        "symmetric": symmetric,  # vlm-edge: every zero point is 8 when true
    }
