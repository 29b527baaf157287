"""numpy reference of the fused visual-token downsample: space-to-depth, then the projector's LayerNorm.

This is the ground truth the CUDA kernel and the exporter's plain-op graph are held to
(tests/test_kernels.py). One image's features are a square grid of S x S tokens, row-major
(t = row * S + col), each C wide. With ratio r (2 for VILA1.5's mlp_downsample, 3 for NVILA's
mlp_downsample_3x3_fix):

    pad zero rows at the bottom, then zero columns on the right, up to S' = r * ceil(S / r)
    token (i, j) of the (S'/r) x (S'/r) result = concat over a = 0..r-1, then b = 0..r-1,
        of x[r*i + a, r*j + b]                                              (r*r*C channels)
    emitted column-major (t = j * S'/r + i, VILA1.5-era code) or row-major (t = i * S'/r + j)
    LayerNorm over the r*r*C channels: (v - mean) / sqrt(var + eps) * weight + bias,
        mean and (biased) variance in fp32 whatever the input's precision

For r = 2 the channel order is VILA's [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)].
"""

from __future__ import annotations

import numpy as np

ORDERS = ("column_major", "row_major")


def space_to_depth(x: np.ndarray, ratio: int, order: str) -> np.ndarray:
    """[B, S*S, C] -> [B, (S'/r)^2, r*r*C], written as loops over output tokens."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    batch, tokens, channels = x.shape
    side = int(round(tokens ** 0.5))
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens are not a square grid")
    padded = -(-side // ratio) * ratio
    grid = np.zeros((batch, padded, padded, channels), x.dtype)
    grid[:, :side, :side] = x.reshape(batch, side, side, channels)
    half = padded // ratio
    out = np.empty((batch, half * half, ratio * ratio * channels), x.dtype)
    for i in range(half):
        for j in range(half):
            t = j * half + i if order == "column_major" else i * half + j
            pieces = [grid[:, ratio * i + a, ratio * j + b] for a in range(ratio) for b in range(ratio)]
            out[:, t] = np.concatenate(pieces, axis=-1)
    return out


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with fp32 statistics; the result in x's dtype."""
    v = x.astype(np.float32)
    mean = v.mean(-1, keepdims=True)
    var = ((v - mean) ** 2).mean(-1, keepdims=True)
    y = (v - mean) / np.sqrt(var + eps) * weight.astype(np.float32) + bias.astype(np.float32)
    return y.astype(x.dtype)


def downsample_layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, ratio: int = 2,
                         order: str = "column_major", eps: float = 1e-5) -> np.ndarray:
    """What the fused kernel computes: space_to_depth then layer_norm."""
    return layer_norm(space_to_depth(x, ratio, order), weight, bias, eps)
