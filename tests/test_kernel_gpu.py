"""The CUDA kernel on a GPU, loaded as the runtime loads code (a fatbin through cuda-python), against
the numpy reference (gpu_kernels/reference.py).

Shapes: B in {1, 8} images, S in {27, 28} (odd: zero padding; even: none), C in {1152, 48}
(VILA1.5-3b's SigLIP width; a small one), ratio 2 and 3, both token orders, fp32/fp16/bf16.
The reference runs in float32 on the same (dtype-rounded) inputs; the kernel's output is compared
to it after its own rounding to the dtype. Tolerances: fp32 1e-5 (summation order only); fp16 and
bf16 2e-2, which covers half a unit in the last place of LayerNorm outputs up to |y| = 8 in bf16
(weights near 1, as a trained projector's are). Skipped where there is no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlm_edge.common.errors import UnsupportedFeatureError
from vlm_edge.kernels.reference import downsample_layernorm

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def kernel():
    pytest.importorskip("cuda.bindings", reason="needs cuda-python (pip install cuda-python) and an NVIDIA GPU")
    from vlm_edge.kernels.loader import DownsampleKernel

    try:
        return DownsampleKernel()
    except UnsupportedFeatureError as e:
        pytest.skip(str(e))


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


TOLERANCE = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 2e-2}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("order", ["column_major", "row_major"])
@pytest.mark.parametrize("ratio", [2, 3])
@pytest.mark.parametrize("batch,side,channels", [(1, 27, 1152), (8, 28, 1152), (8, 27, 48), (1, 28, 48)])
def test_kernel_matches_the_reference(kernel, dtype, order, ratio, batch, side, channels):
    rng = np.random.default_rng(batch * 1000 + side * 10 + ratio)
    width = ratio * ratio * channels
    t = _dtype(dtype)
    x = (rng.standard_normal((batch, side * side, channels)) * 1.5 + 0.3).astype(t)  # a mean to subtract
    weight = rng.uniform(0.5, 1.5, width).astype(t)
    bias = (rng.standard_normal(width) * 0.1).astype(t)
    got = kernel.run(x, weight, bias, ratio=ratio, order=order, eps=1e-5)
    want = downsample_layernorm(x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32),
                                ratio=ratio, order=order, eps=1e-5)
    assert got.dtype == t and got.shape == want.shape
    err = np.abs(got.astype(np.float32) - want).max()
    print(f"{dtype} {order} r{ratio} B{batch} S{side} C{channels}: max abs err {err:.2e}")
    assert err <= TOLERANCE[dtype]


def test_kernel_reads_unaligned_channels_with_narrow_loads(kernel):
    """C = 6 cannot take 16-byte loads: the v1 kernels run."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 49, 6)).astype(np.float32)
    weight, bias = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    got = kernel.run(x, weight, bias, ratio=2, order="row_major")
    np.testing.assert_allclose(got, downsample_layernorm(x, weight, bias, ratio=2, order="row_major"), atol=1e-5, rtol=0)
