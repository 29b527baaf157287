"""The multimodal projector: vision features [N, P, C] -> LLM embeddings [N, T, H].

State-dict keys match VILA's `MultimodalProjector` (a `layers` attribute):

    linear                  layers = Linear(C, H)                                   layers.*
    mlp2x_gelu              layers = Sequential(Linear(C, H), GELU, Linear(H, H))   layers.0.*, layers.2.*
    mlp_downsample(_2x2_fix) layers = Sequential(DownSample(2), LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H))
                                                                                    layers.1.*, layers.2.*, layers.4.*
    mlp_downsample_3x3_fix   layers = Sequential(DownSample(3), LayerNorm(9C), Linear(9C, 3C), GELU,
                                                 LayerNorm(3C), Linear(3C, H), GELU, Linear(H, H))
                                                         layers.1.*, layers.2.*, layers.4.*, layers.5.*, layers.7.*

GELU is the exact (erf) one. DownSample with ratio r, on a square grid of S x S tokens (row-major,
t = row*S + col):

    zero rows at the bottom, then zero columns on the right, up to a multiple of r -> S' x S'
    token (i, j) of the (S'/r) x (S'/r) result = concat over a, then b (0..r-1) of x[r*i + a, r*j + b]
    emitted column-major (t = j * S'/r + i, VILA1.5-era code) or row-major (t = i * S'/r + j, NVILA-era)

VILA1.5-3b (2x2): 27 x 27 = 729 patches -> 28 x 28 -> 14 x 14 = 196 tokens of 4 * 1152 channels.
NVILA-Lite (3x3): 32 x 32 = 1024 patches per 448-pixel tile -> 33 x 33 -> 11 x 11 = 121 tokens of 9 * 1152.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from vlm_edge.common.errors import InputError


class DownSample(nn.Module):
    """r x r space-to-depth on a square token grid, with an explicit output token order."""

    def __init__(self, token_order: str, ratio: int = 2):
        super().__init__()
        if token_order not in ("column_major", "row_major"):
            raise ValueError(f"token_order must be column_major or row_major, got {token_order!r}")
        if ratio not in (2, 3):
            raise ValueError(f"ratio must be 2 or 3, got {ratio!r}")
        self.token_order = token_order
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise InputError(f"the downsample projector needs a square grid of tokens, got {tokens}")
        r = self.ratio
        grid = x.reshape(batch, side, side, channels)  # [B, row, col, C]
        extra = -side % r
        if extra:
            grid = nn.functional.pad(grid, (0, 0, 0, extra, 0, extra))  # zero columns right, zero rows below
        cells = grid.shape[1] // r
        # [B, i, a, j, b, C] with row = r*i + a, col = r*j + b
        blocks = grid.reshape(batch, cells, r, cells, r, channels)
        if self.token_order == "row_major":
            blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # [B, i, j, a, b, C]
        else:
            blocks = blocks.permute(0, 3, 1, 2, 4, 5)  # [B, j, i, a, b, C]
        return blocks.reshape(batch, cells * cells, r * r * channels)

    def extra_repr(self) -> str:
        return f"token_order={self.token_order}, ratio={self.ratio}"


def _linear(mm_hidden: int, hidden: int, order: str | None) -> nn.Module:
    return nn.Linear(mm_hidden, hidden)


def _mlp2x_gelu(mm_hidden: int, hidden: int, order: str | None) -> nn.Module:
    return nn.Sequential(nn.Linear(mm_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def _mlp_downsample(mm_hidden: int, hidden: int, order: str | None) -> nn.Module:
    if order is None:
        raise ValueError("a downsample projector needs its token order")
    return nn.Sequential(
        DownSample(order),
        nn.LayerNorm(4 * mm_hidden),
        nn.Linear(4 * mm_hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
    )


def _mlp_downsample_3x3(mm_hidden: int, hidden: int, order: str | None) -> nn.Module:
    if order is None:
        raise ValueError("a downsample projector needs its token order")
    return nn.Sequential(
        DownSample(order, 3),
        nn.LayerNorm(9 * mm_hidden),
        nn.Linear(9 * mm_hidden, 3 * mm_hidden),
        nn.GELU(),
        nn.LayerNorm(3 * mm_hidden),
        nn.Linear(3 * mm_hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
    )


PROJECTORS: dict[str, Callable[[int, int, str | None], nn.Module]] = {
    "linear": _linear,
    "mlp2x_gelu": _mlp2x_gelu,
    "mlp_downsample": _mlp_downsample,
    "mlp_downsample_2x2_fix": _mlp_downsample,  # same math; only the default token order differs
    "mlp_downsample_3x3_fix": _mlp_downsample_3x3,  # NVILA-Lite
}


class MultimodalProjector(nn.Module):
    def __init__(self, projector_type: str, mm_hidden_size: int, hidden_size: int, token_order: str | None = None):
        super().__init__()
        self.projector_type = projector_type
        self.layers = PROJECTORS[projector_type](mm_hidden_size, hidden_size, token_order)

    def init_weights(self, std: float) -> None:
        """Initialise as transformers initialises the LLM: Linear ~ N(0, std), zero bias, LayerNorm 1/0.

        PyTorch's default Linear init gives outputs of unit scale per channel, some 50x the norm of
        the LLM's token embeddings (std 0.02); image tokens then swamp the residual stream and a
        model trained from scratch learns fine attributes such as colour far more slowly.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [N, P, C] -> [N, T, H] (T = P, or the downsampled count)."""
        return self.layers(features)
