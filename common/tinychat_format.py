"""TinyChat's packed AWQ layouts (llm-awq's WQLinear, NVIDIA's `-AWQ` releases), in numpy: read
them into integers, scales and zero points, and re-pack as AutoAWQ GEMM (`awq_format`).

For a linear layer y = x @ W.T with W of shape [N out, K in], 4-bit values q[n, k] and groups of
G along K, version 2 (the `*-w4-g128-awq-v2.pt` files) stores:

    qweight       int16   [N/4, K]           four nibbles per word
    scales        float16 [Kg, N]            Kg = K/G rounded up to a multiple of 8 (rows past K/G pad)
    scaled_zeros  float16 [Kg, N]            -scale * zero

    W[n, k] = q[n, k] * scale[k // G, n] + scaled_zero[k // G, n]

and q goes into qweight in three moves, each undone below in reverse:
  1. in every 32-wide chunk of K, element a*8 + b*2 + c (a, b < 4; c < 2) moves to b*8 + a*2 + c
     (the order 0, 1, 8, 9, 16, 17, 24, 25, 2, 3, ...);
  2. in every 8 of the result, element x*2 + y (x < 4, y < 2) moves to y*4 + x
     (the order 0, 2, 4, 6, 1, 3, 5, 7);
  3. rows go in fours, K in strides of 64: the [4, 64] block of rows 4R..4R+3 and columns
     64S..64S+63, read row by row, fills words 64S..64S+63 of row R four nibbles at a time,
     nibble r of a word at bits 4r..4r+3.

Version 1 stores qweight int32 [N, K/8] with nibble i of word j holding q[n, 8j + i], and
scales / scaled_zeros the same way.

The zero point is not stored, only -scale * zero in float16; zero = round(-scaled_zero / scale)
gets the integer back exactly (the float16 product is off by far less than half a step).
"""

from __future__ import annotations

import numpy as np

from . import awq_format

INTERLEAVE = 4  # output rows per packed row (v2)
KSTRIDE = 64  # K columns a block of interleaved rows spans (v2)


class TinyChatFormatError(ValueError):
    """A tensor that cannot be a TinyChat packed AWQ layer."""


def unpack_v2(qweight: np.ndarray) -> np.ndarray:
    """int16 [N/4, K] -> uint8 q [N, K]."""
    if qweight.dtype != np.int16 or qweight.ndim != 2:
        raise TinyChatFormatError(f"a v2 qweight is 2-D int16, got {qweight.ndim}-D {qweight.dtype}")
    rows, k = qweight.shape
    if k % KSTRIDE:
        raise TinyChatFormatError(f"a v2 qweight's K ({k}) must be a multiple of {KSTRIDE}")
    n = rows * INTERLEAVE
    words = qweight.view(np.uint16).reshape(rows, k // KSTRIDE, KSTRIDE).astype(np.uint32)
    nibbles = (words[..., None] >> (np.arange(INTERLEAVE, dtype=np.uint32) * 4)) & 0xF  # [R, S, 64, 4]
    # 3: the 64 x 4 nibbles of a block, read in order, are its [4, 64] rows x columns
    q = nibbles.reshape(rows, k // KSTRIDE, INTERLEAVE, KSTRIDE).transpose(0, 2, 1, 3).reshape(n, k)
    # 2: position y*4 + x of every 8 holds element x*2 + y
    q = q.reshape(n, k // 8, 2, 4).transpose(0, 1, 3, 2).reshape(n, k)
    # 1: position b*8 + a*2 + c of every 32 holds element a*8 + b*2 + c (swapping a and b undoes it)
    q = q.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, k)
    return q.astype(np.uint8)


def unpack_v1(qweight: np.ndarray) -> np.ndarray:
    """int32 [N, K/8] with sequential nibbles -> uint8 q [N, K]."""
    if qweight.dtype != np.int32 or qweight.ndim != 2:
        raise TinyChatFormatError(f"a v1 qweight is 2-D int32, got {qweight.ndim}-D {qweight.dtype}")
    nibbles = (qweight.view(np.uint32)[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF
    return nibbles.reshape(qweight.shape[0], -1).astype(np.uint8)


def group_params(scales: np.ndarray, scaled_zeros: np.ndarray, n: int, k: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 scales and scaled zeros [Kg, N] -> (scales float16 [K/G, N], zeros uint8 [K/G, N])."""
    if k % group_size:
        raise TinyChatFormatError(f"K ({k}) is not a multiple of the group size {group_size}")
    groups = k // group_size
    for name, t in (("scales", scales), ("scaled_zeros", scaled_zeros)):
        if t.ndim != 2 or t.shape[1] != n or t.shape[0] < groups:
            raise TinyChatFormatError(f"{name} has shape {list(t.shape)}; a layer with N={n}, K={k} and groups of "
                                      f"{group_size} needs [>= {groups}, {n}]")
    s = scales[:groups].astype(np.float16)
    if not np.all(np.isfinite(s)) or np.any(s.astype(np.float32) <= 0):
        raise TinyChatFormatError("scales must be finite and positive")
    zeros = np.rint(-scaled_zeros[:groups].astype(np.float32) / s.astype(np.float32))
    if zeros.min() < 0 or zeros.max() > 15:
        raise TinyChatFormatError(f"zero points {zeros.min():g}..{zeros.max():g} fall outside 0..15: not a 4-bit layer")
    return s, zeros.astype(np.uint8)


def to_gemm(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> dict[str, np.ndarray]:
    """q [N, K], scales / zeros [K/G, N] -> AutoAWQ GEMM tensors (qweight, qzeros, scales)."""
    return {"qweight": awq_format.pack(q.T), "qzeros": awq_format.pack(zeros), "scales": scales.astype(np.float16)}


def dequantize(q: np.ndarray, scales: np.ndarray, scaled_zeros: np.ndarray, group_size: int) -> np.ndarray:
    """TinyChat's own formula, W = q * scale + scaled_zero, as float32 [N, K]."""
    n, k = q.shape
    groups = k // group_size
    s = np.repeat(scales[:groups].astype(np.float32).T, group_size, axis=1)
    z = np.repeat(scaled_zeros[:groups].astype(np.float32).T, group_size, axis=1)
    return q.astype(np.float32) * s + z
