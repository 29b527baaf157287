"""Projector math against an independent numpy reference, in both token orders.

The reference is written as loops straight from VILA's DownSample definition (pad a zero row, then a
zero column; token (i, j) = [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]; t = j*half + i
column-major, t = i*half + j row-major), so it shares no code or reshaping trick with the module.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from vlm_edge.model.projector import DownSample, MultimodalProjector


def downsample_reference(x: np.ndarray, order: str, ratio: int = 2) -> np.ndarray:
    batch, tokens, channels = x.shape
    side = math.isqrt(tokens)
    padded_side = side
    while padded_side % ratio:
        padded_side += 1
    padded = np.zeros((batch, padded_side, padded_side, channels), x.dtype)
    padded[:, :side, :side] = x.reshape(batch, side, side, channels)
    cells = padded_side // ratio
    out = np.zeros((batch, cells * cells, ratio * ratio * channels), x.dtype)
    for i in range(cells):
        for j in range(cells):
            t = j * cells + i if order == "column_major" else i * cells + j
            # ratio 2: [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]; 3: the 9 of the block, row by row
            out[:, t] = np.concatenate([padded[:, ratio * i + a, ratio * j + b] for a in range(ratio) for b in range(ratio)], -1)
    return out


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu_erf(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def projector_reference(x: np.ndarray, state: dict[str, np.ndarray], projector_type: str, order: str | None) -> np.ndarray:
    if projector_type == "linear":
        return x @ state["layers.weight"].T + state["layers.bias"]
    if projector_type == "mlp2x_gelu":
        h = gelu_erf(x @ state["layers.0.weight"].T + state["layers.0.bias"])
        return h @ state["layers.2.weight"].T + state["layers.2.bias"]
    if projector_type == "mlp_downsample_3x3_fix":  # NVILA-Lite: LN(9C) Linear GELU LN(3C) Linear GELU Linear
        x = layer_norm(downsample_reference(x, order, 3), state["layers.1.weight"], state["layers.1.bias"])
        h = gelu_erf(x @ state["layers.2.weight"].T + state["layers.2.bias"])
        h = layer_norm(h, state["layers.4.weight"], state["layers.4.bias"])
        h = gelu_erf(h @ state["layers.5.weight"].T + state["layers.5.bias"])
        return h @ state["layers.7.weight"].T + state["layers.7.bias"]
    x = downsample_reference(x, order)
    x = layer_norm(x, state["layers.1.weight"], state["layers.1.bias"])
    h = gelu_erf(x @ state["layers.2.weight"].T + state["layers.2.bias"])
    return h @ state["layers.4.weight"].T + state["layers.4.bias"]


@pytest.mark.parametrize("side", [7, 8, 27])
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_downsample_matches_reference(side, order, rng):
    x = rng.standard_normal((2, side * side, 5)).astype(np.float32)
    got = DownSample(order)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, downsample_reference(x, order))  # pure data movement: exact


@pytest.mark.parametrize("side", [6, 7, 8, 32])  # 7, 8, 32: padded to 9, 9, 33 (NVILA-Lite's 448 tile: 11x11)
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_3x3_downsample_matches_reference(side, order, rng):
    x = rng.standard_normal((2, side * side, 3)).astype(np.float32)
    got = DownSample(order, 3)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, downsample_reference(x, order, 3))
    assert got.shape[1] == (-(-side // 3)) ** 2


def test_3x3_projector_keys_are_nvila_lites():
    """The state-dict layout of NVILA-Lite's mm_projector (Sequential indices of the Linears and LayerNorms)."""
    module = MultimodalProjector("mlp_downsample_3x3_fix", 8, 24, "row_major")
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {"layers.1.weight": (72,), "layers.1.bias": (72,), "layers.2.weight": (24, 72), "layers.2.bias": (24,),
                      "layers.4.weight": (24,), "layers.4.bias": (24,), "layers.5.weight": (24, 24), "layers.5.bias": (24,),
                      "layers.7.weight": (24, 24), "layers.7.bias": (24,)}


def test_vila15_grid_gives_196_tokens(rng):
    x = torch.from_numpy(rng.standard_normal((1, 729, 8)).astype(np.float32))
    assert DownSample("column_major")(x).shape == (1, 196, 32)


def test_orders_differ_so_a_swap_is_visible(rng):
    x = torch.from_numpy(rng.standard_normal((1, 49, 3)).astype(np.float32))
    column, row = DownSample("column_major")(x), DownSample("row_major")(x)
    assert not torch.equal(column, row)
    # same tokens, transposed 4x4 grid
    assert torch.equal(column.reshape(1, 4, 4, 12).transpose(1, 2), row.reshape(1, 4, 4, 12))


def test_non_square_grid_is_rejected(rng):
    from vlm_edge.common.errors import InputError

    with pytest.raises(InputError, match="square grid"):
        DownSample("row_major")(torch.zeros(1, 50, 4))


@pytest.mark.parametrize(
    "projector_type,order",
    [("linear", None), ("mlp2x_gelu", None), ("mlp_downsample", "column_major"), ("mlp_downsample", "row_major"),
     ("mlp_downsample_2x2_fix", "row_major"), ("mlp_downsample_2x2_fix", "column_major"),
     ("mlp_downsample_3x3_fix", "row_major")],
)
def test_projector_matches_numpy_reference(projector_type, order, rng):
    torch.manual_seed(0)
    module = MultimodalProjector(projector_type, 16, 24, order).eval()
    with torch.no_grad():  # fresh, non-trivial LayerNorm parameters
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32)) * (0.3 if p.ndim > 1 else 1))
    x = rng.standard_normal((2, 49, 16)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    state = {k: v.double().numpy() for k, v in module.state_dict().items()}
    want = projector_reference(x.astype(np.float64), state, projector_type, order)
    # float32 matmuls over <= 64 terms of O(1) values against a float64 reference
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_release_checkpoint_defaults_to_column_major_and_a_swap_is_caught(release_dir, caplog, rng):
    """A VILA1.5 release records no order: the loader picks column-major, logs it, and the
    embeddings match the column-major reference, not the row-major one; the override flips it."""
    from vlm_edge.model import load_checkpoint

    with caplog.at_level(logging.INFO, logger="vlm_edge"):
        ckpt = load_checkpoint(release_dir)
    assert ckpt.config.downsample_token_order == "column_major"
    assert any("downsample_token_order" in r.getMessage() and "column_major" in r.getMessage() for r in caplog.records)

    pixels = torch.from_numpy(rng.standard_normal((2, 3, 42, 42)).astype(np.float32))
    with torch.no_grad():
        features = ckpt.model.vision_features(pixels).double().numpy()  # [2, 9, 32]: a 3x3 grid, odd
        embeds = ckpt.model.encode_images(pixels).numpy()
    state = {k: v.double().numpy() for k, v in ckpt.model.mm_projector.state_dict().items()}
    column = projector_reference(features, state, "mlp_downsample", "column_major")
    row = projector_reference(features, state, "mlp_downsample", "row_major")
    np.testing.assert_allclose(embeds, column, rtol=1e-5, atol=1e-5)
    assert np.abs(embeds - row).max() > 1e-2  # the wrong order is far off

    swapped = load_checkpoint(release_dir, downsample_token_order="row_major")
    with torch.no_grad():
        np.testing.assert_allclose(swapped.model.encode_images(pixels).numpy(), row, rtol=1e-5, atol=1e-5)


def test_a_new_projector_starts_at_the_scale_of_the_text_embeddings(tiny):
    """Image tokens of a freshly initialised model must not swamp the text tokens (a 1000x mismatch
    once kept the tiny model from learning colours): within 10x of the embedding norms."""
    with torch.no_grad():
        image = tiny.model.encode_images(torch.randn(4, 3, 42, 42)).norm(dim=-1).mean()
        text = tiny.model.llm.get_input_embeddings().weight.norm(dim=-1).mean()
    assert 0.1 < float(image / text) < 10, (float(image), float(text))
