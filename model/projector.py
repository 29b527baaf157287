"""The multimodal projector: vision features [N, P, C] -> LLM embeddings [N, T, H].

State-dict keys match VILA's `MultimodalProjector` (a `layers` attribute):

    linear                  layers = Linear(C, H)                                   layers.*
    mlp2x_gelu              layers = Sequential(Linear(C, H), GELU, Linear(H, H))   layers.0.*, layers.2.*
    mlp_downsample(_2x2_fix) layers = Sequential(DownSample, LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H))
                                                                                    layers.1.*, layers.2.*, layers.4.*

GELU is the exact (erf) one. DownSample, on a square grid of S x S tokens (row-major, t = r*S + c):

    pad one zero row at the bottom if S is odd, then one zero column on the right -> S' x S'
    token (i, j) of the (S'/2) x (S'/2) result = concat(x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1])
    emitted column-major (t = j * S'/2 + i, VILA1.5-era code) or row-major (t = i * S'/2 + j, NVILA-era)

For VILA1.5-3b: 27 x 27 = 729 patches -> 28 x 28 -> 14 x 14 = 196 tokens of 4 * 1152 channels.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from vlm_edge.common.errors import InputError


class DownSample(nn.Module):
    """2x2 space-to-depth on a square token grid, with an explicit output token order."""

    def __init__(self, token_order: str):
        super().__init__()
        if token_order not in ("column_major", "row_major"):
            raise ValueError(f"token_order must be column_major or row_major, got {token_order!r}")
        self.token_order = token_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise InputError(f"the downsample projector needs a square grid of tokens, got {tokens}")
        grid = x.reshape(batch, side, side, channels)  # [B, row, col, C]
        if side % 2:
            grid = nn.functional.pad(grid, (0, 0, 0, 1, 0, 1))  # one zero column right, one zero row below
        half = grid.shape[1] // 2
        # [B, i, a, j, b, C] with row = 2i + a, col = 2j + b
        blocks = grid.reshape(batch, half, 2, half, 2, channels)
        if self.token_order == "row_major":
            blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # [B, i, j, a, b, C]
        else:
            blocks = blocks.permute(0, 3, 1, 2, 4, 5)  # [B, j, i, a, b, C]
        return blocks.reshape(batch, half * half, 4 * channels)

    def extra_repr(self) -> str:
        return f"token_order={self.token_order}"


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


PROJECTORS: dict[str, Callable[[int, int, str | None], nn.Module]] = {
    "linear": _linear,
    "mlp2x_gelu": _mlp2x_gelu,
    "mlp_downsample": _mlp_downsample,
    "mlp_downsample_2x2_fix": _mlp_downsample,  # same math; only the default token order differs
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
