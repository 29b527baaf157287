"""TinyChat packed AWQ (common/tinychat_format.py) against a packer written here, element by element,
from the published description of the layout (not from our unpacker's reshapes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlm_edge.common import awq_format, tinychat_format as tc


def pack_v2_by_element(q: np.ndarray) -> np.ndarray:
    """q uint8 [N, K] -> int16 [N/4, K]: each value's destination word and nibble, one at a time."""
    n, k = q.shape
    words = np.zeros((n // 4, k), dtype=np.uint16)
    for row in range(n):
        for col in range(k):
            chunk, u = divmod(col, 32)
            a, rest = divmod(u, 8)
            b, c = divmod(rest, 2)
            u1 = b * 8 + a * 2 + c  # move 1: 0, 1, 8, 9, 16, 17, 24, 25, 2, 3, ...
            eight, h = divmod(u1, 8)
            x, y = divmod(h, 2)
            col2 = chunk * 32 + eight * 8 + y * 4 + x  # move 2: 0, 2, 4, 6, 1, 3, 5, 7
            big_row, i = divmod(row, 4)  # move 3: [4, 64] blocks read row by row, four nibbles a word
            stride, j = divmod(col2, 64)
            m, r = divmod(i * 64 + j, 4)
            words[big_row, stride * 64 + m] |= np.uint16(int(q[row, col]) << (4 * r))
    return words.view(np.int16)


def pack_v1_by_element(q: np.ndarray) -> np.ndarray:
    n, k = q.shape
    words = np.zeros((n, k // 8), dtype=np.uint32)
    for row in range(n):
        for col in range(k):
            words[row, col // 8] |= np.uint32(int(q[row, col]) << (4 * (col % 8)))
    return words.view(np.int32)


def _layer(rng, n, k, group):
    q = rng.integers(0, 16, size=(n, k), dtype=np.uint8)
    groups = k // group
    padded = -(-groups // 8) * 8
    scales = np.zeros((padded, n), np.float16)
    scales[:groups] = rng.uniform(0.001, 0.05, size=(groups, n)).astype(np.float16)
    scales[groups:] = 1.0  # padding rows hold anything
    zeros = rng.integers(0, 16, size=(groups, n))
    scaled = np.zeros((padded, n), np.float16)
    scaled[:groups] = (-(scales[:groups].astype(np.float32) * zeros)).astype(np.float16)
    return q, scales, scaled, zeros


@pytest.mark.parametrize("n, k, group", [(8, 128, 64), (24, 192, 64), (16, 256, 128)])
def test_v2_unpacks_to_the_integers_packed(n, k, group):
    rng = np.random.default_rng(n * k)
    q, scales, scaled, zeros = _layer(rng, n, k, group)
    packed = pack_v2_by_element(q)
    assert packed.shape == (n // 4, k) and packed.dtype == np.int16
    np.testing.assert_array_equal(tc.unpack_v2(packed), q)
    s, z = tc.group_params(scales, scaled, n, k, group)
    np.testing.assert_array_equal(z, zeros)  # the integer zero points come back exactly
    # re-packed as AutoAWQ GEMM: the same integers, and the same weights as TinyChat's formula
    gemm = tc.to_gemm(tc.unpack_v2(packed), s, z)
    np.testing.assert_array_equal(awq_format.unpack(gemm["qweight"]).T, q)
    ours = awq_format.dequantize(gemm["qweight"], gemm["qzeros"], gemm["scales"], group)
    theirs = tc.dequantize(q, scales, scaled, group)
    # scaled_zero is -scale*zero rounded to float16: the two formulas differ by that rounding only
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=float(np.abs(scaled).max()) * 2**-10)


def test_v1_unpacks_to_the_integers_packed():
    q = np.random.default_rng(1).integers(0, 16, size=(6, 64), dtype=np.uint8)
    np.testing.assert_array_equal(tc.unpack_v1(pack_v1_by_element(q)), q)


def test_an_element_moves_where_the_description_says():
    """One non-zero value at a time: the first chunk's order is 0, 1, 8, 9, ... then 0, 2, 4, 6, ..."""
    q = np.zeros((4, 64), np.uint8)
    q[0, 8] = 5  # move 1: to position 2; move 2: position 2 of its 8 -> 1 (x=1, y=0 -> 0*4+1)
    packed = pack_v2_by_element(q).view(np.uint16)
    # row 0 of the block, column 1 -> flat 1 -> word 0, nibble 1
    assert packed[0, 0] == 5 << 4 and packed.sum() == 5 << 4
    np.testing.assert_array_equal(tc.unpack_v2(packed.view(np.int16)), q)


def test_bad_tensors_are_refused_with_the_reason():
    with pytest.raises(tc.TinyChatFormatError, match="int16"):
        tc.unpack_v2(np.zeros((2, 64), np.int32))
    with pytest.raises(tc.TinyChatFormatError, match="multiple of 64"):
        tc.unpack_v2(np.zeros((2, 96), np.int16))
    scales = np.full((8, 4), 0.01, np.float16)
    with pytest.raises(tc.TinyChatFormatError, match="needs"):
        tc.group_params(scales, scales, 5, 128, 64)
    with pytest.raises(tc.TinyChatFormatError, match="outside 0..15"):
        tc.group_params(scales, (scales * 20).astype(np.float16), 4, 128, 64)
    with pytest.raises(tc.TinyChatFormatError, match="positive"):
        tc.group_params(np.zeros((8, 4), np.float16), scales, 4, 128, 64)


# ---- a whole released-style file: vlm-export --awq4 --tinychat-awq ----------------------------------
def _tinychat_file_from(quantized: Path, path: Path, prefix: str = "llm.") -> None:
    """Re-pack an AWQ checkpoint's LLM the way a TinyChat v2 release stores it."""
    import torch
    from safetensors.numpy import load_file

    tensors = load_file(str(quantized / "llm" / "model.safetensors"))
    state = {}
    for key, value in tensors.items():
        if key.endswith(".qweight"):
            base = key[: -len(".qweight")]
            q = awq_format.unpack(value).T  # [N, K]
            zeros = awq_format.unpack(tensors[f"{base}.qzeros"])  # [K/G, N]
            scales = tensors[f"{base}.scales"]
            groups, n = scales.shape
            padded = -(-groups // 8) * 8
            s = np.ones((padded, n), np.float16)
            s[:groups] = scales
            z = np.zeros((padded, n), np.float16)
            z[:groups] = (-(scales.astype(np.float32) * zeros)).astype(np.float16)
            state[f"{prefix}{base}.qweight"] = torch.from_numpy(pack_v2_by_element(q))
            state[f"{prefix}{base}.scales"] = torch.from_numpy(s)
            state[f"{prefix}{base}.scaled_zeros"] = torch.from_numpy(z)
        elif not key.endswith((".qzeros", ".scales")):
            state[f"{prefix}{key}"] = torch.from_numpy(value)
    torch.save(state, path)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A float tiny-preset checkpoint, its RTN-quantized twin (group 64) and that twin as a TinyChat file."""
    from vlm_edge.quant.api import quantize_checkpoint
    from vlm_edge.quant.config import QuantConfig

    root = tmp_path_factory.mktemp("tinychat")
    subprocess.run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "tiny", "-o", str(root / "float")],
                   check=True, capture_output=True)
    quantize_checkpoint(root / "float", root / "rtn", QuantConfig(method="rtn", group_size=64))
    _tinychat_file_from(root / "rtn", root / "tiny-w4-g64-awq-v2.pt")
    return root


def test_a_tinychat_file_imports_to_the_same_integers(released, tmp_path):
    from safetensors.numpy import load_file

    from vlm_edge.quant.tinychat import import_tinychat

    out = import_tinychat(released / "float", released / "tiny-w4-g64-awq-v2.pt", tmp_path / "imported", group_size=64)
    ours, theirs = (load_file(str(d / "llm" / "model.safetensors")) for d in (released / "rtn", out))
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)


def test_vlm_export_takes_a_tinychat_file_and_validates(released, tmp_path):
    run = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", str(released / "float"), "--awq4",
                          "--tinychat-awq", str(released / "tiny-w4-g64-awq-v2.pt"), "--group-size", "64",
                          "--prompts", "4", "-o", str(tmp_path / "engine")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["quantization"]["quantized_by"] == "TinyChat file"
    assert "validate decoder.ort" in run.stderr


def test_a_file_that_is_not_tinychat_gets_one_line(released, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    run = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", str(released / "float"), "--awq4",
                          "--tinychat-awq", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "engine")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if not line.startswith("[vlm-edge]")]
    assert len(errors) == 1 and "bad.pt is not a TinyChat AWQ file" in errors[0], run.stderr


@pytest.mark.parametrize("flags, phrase", [(["--awq4", "--flavour", "trt"], "needs symmetric AWQ"), ([], "add --awq4")])
def test_options_a_tinychat_file_cannot_take_are_refused(released, tmp_path, flags, phrase):
    run = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", str(released / "float"), *flags,
                          "--tinychat-awq", str(released / "tiny-w4-g64-awq-v2.pt"), "-o", str(tmp_path / "engine")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr and phrase in run.stderr, run.stderr[-2000:]
