"""The fused downsample + LayerNorm: the numpy reference (gpu_kernels/reference.py) against the
exporter's plain-op ONNX subgraph run in ONNX Runtime, and against the PyTorch projector's
DownSample + LayerNorm. Odd and even grids, both token orders, ratios 2 (VILA1.5) and 3 (NVILA).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vlm_edge.export.graph import GraphBuilder
from vlm_edge.export.vision import emit_space_to_depth
from vlm_edge.kernels.reference import downsample_layernorm, space_to_depth
from vlm_edge.model.projector import DownSample


def _plain_op_graph(tmp_path, side: int, channels: int, ratio: int, order: str, weight, bias, eps: float):
    path = tmp_path / f"ds_{side}_{ratio}_{order}.onnx"
    g = GraphBuilder("downsample", path)
    g.input("x", np.dtype("float32"), ["images", side * side, channels])
    y = emit_space_to_depth(g, "x", side, channels, ratio, order)
    y = g.op("LayerNormalization", y, g.weight("ln.weight", weight), g.weight("ln.bias", bias), axis=-1, epsilon=eps)
    tokens = (-(-side // ratio)) ** 2
    g.output(y, "y", np.float32, ["images", tokens, ratio * ratio * channels])
    g.save()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("ratio,side", [(2, 27), (2, 28), (2, 5), (3, 32), (3, 27), (3, 7)])
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_reference_equals_the_exporters_plain_op_subgraph(tmp_path, ratio, side, order):
    rng = np.random.default_rng(side * 10 + ratio)
    channels = 8
    x = rng.standard_normal((3, side * side, channels)).astype(np.float32)
    weight = rng.standard_normal(ratio * ratio * channels).astype(np.float32)
    bias = rng.standard_normal(ratio * ratio * channels).astype(np.float32)
    session = _plain_op_graph(tmp_path, side, channels, ratio, order, weight, bias, 1e-5)
    got = session.run(None, {"x": x})[0]
    want = downsample_layernorm(x, weight, bias, ratio=ratio, order=order, eps=1e-5)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # the data movement alone is exact
    moved = ort.InferenceSession(_moves_only(tmp_path, side, channels, ratio, order), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(moved.run(None, {"x": x})[0], space_to_depth(x, ratio, order))


def _moves_only(tmp_path, side, channels, ratio, order) -> str:
    path = tmp_path / f"moves_{side}_{ratio}_{order}.onnx"
    g = GraphBuilder("moves", path)
    g.input("x", np.dtype("float32"), ["images", side * side, channels])
    y = emit_space_to_depth(g, "x", side, channels, ratio, order)
    g.output(y, "y", np.float32, ["images", (-(-side // ratio)) ** 2, ratio * ratio * channels])
    g.save()
    return str(path)


@pytest.mark.parametrize("side", [27, 28])
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_reference_equals_the_pytorch_projector(side, order):
    rng = np.random.default_rng(side)
    x = rng.standard_normal((2, side * side, 16)).astype(np.float32)
    np.testing.assert_array_equal(space_to_depth(x, 2, order), DownSample(order)(torch.from_numpy(x)).numpy())
    ln = torch.nn.LayerNorm(64, eps=1e-5)
    with torch.no_grad():
        ln.weight.normal_(), ln.bias.normal_()
        want = ln(DownSample(order)(torch.from_numpy(x))).numpy()
    got = downsample_layernorm(x, ln.weight.detach().numpy(), ln.bias.detach().numpy(), ratio=2, order=order)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_token_orders_differ_and_a_swap_is_caught():
    x = np.arange(2 * 16 * 3, dtype=np.float32).reshape(2, 16, 3)
    column, row = space_to_depth(x, 2, "column_major"), space_to_depth(x, 2, "row_major")
    assert not np.array_equal(column, row)
    np.testing.assert_array_equal(column[:, [0, 2, 1, 3]], row)  # 2x2 result: the transpose of the token grid
    np.testing.assert_array_equal(row[0, 1, :3], x[0, 2])  # token (0, 1) starts at x(0, 2)


@pytest.mark.parametrize("dtype,atol", [(np.float16, 2e-2)])
def test_half_precision_keeps_fp32_statistics(dtype, atol):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 27 * 27, 48)) * 30 + 100).astype(np.float32)
    weight, bias = np.ones(192, np.float32), np.zeros(192, np.float32)
    full = downsample_layernorm(x, weight, bias)
    half = downsample_layernorm(x.astype(dtype), weight, bias)
    assert half.dtype == dtype
    np.testing.assert_allclose(half.astype(np.float32), full, atol=atol)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="square"):
        space_to_depth(np.zeros((1, 10, 4), np.float32), 2, "row_major")
    with pytest.raises(ValueError, match="order"):
        space_to_depth(np.zeros((1, 16, 4), np.float32), 2, "diagonal")
