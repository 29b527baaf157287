"""export: engine directories from real checkpoints, validated in ONNX Runtime against PyTorch.

Checkpoints: the micro preset trained by the training module (Llama + SigLIP, with its
calibration set), the VILA1.5-3b-layout release fixture (Llama + SigLIP, sharded, SentencePiece
tokenizer) and a Qwen2 + CLIP checkpoint with random weights. Thresholds are export's own
(float32 1e-4, int4 1e-2 relative logits error; greedy tokens identical on 9 of 10 prompts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fixtures import train_micro
from safetensors import safe_open

from vlm_edge.common import awq_format
from vlm_edge.common.errors import InputError
from vlm_edge.common.manifest import Manifest, verify_files
from vlm_edge.export.api import export_checkpoint
from vlm_edge.export.config import ExportConfig
from vlm_edge.export.tensorrt import check_trt_graph

CALIB_TEXT = "\n".join(f"Line {i}: a small red circle at the top left and a big blue square below it." for i in range(64))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_micro(tmp_path_factory.mktemp("micro") / "ckpt")


@pytest.fixture(scope="module")
def qwen_clip(tmp_path_factory):
    """Qwen2 LLM + CLIP tower (class token dropped, quick_gelu) + mlp_downsample, random weights."""
    from fixtures import tiny_config

    from vlm_edge.model import Checkpoint, VilaModel
    from vlm_edge.model.presets import byte_level_tokenizer

    torch.manual_seed(3)
    model = VilaModel(tiny_config(llm="qwen2", vision="clip", select_feature="patch")).eval()
    with torch.no_grad():  # larger weights than the init, so that logits are far from uniform
        for p in model.llm.parameters():
            p.mul_(3.0)
    out = tmp_path_factory.mktemp("qwen") / "ckpt"
    Checkpoint(model, byte_level_tokenizer()).save(out)
    return out


def _calib(tmp_path: Path) -> str:
    path = tmp_path / "calib.txt"
    path.write_text(CALIB_TEXT)
    return str(path)


def _initializer(model_path: Path, name: str) -> tuple[onnx.TensorProto, bytes]:
    """An initializer and its raw bytes, read from the external data file by hand."""
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == name)
    info = {e.key: e.value for e in tensor.external_data}
    with open(model_path.parent / info["location"], "rb") as f:
        f.seek(int(info["offset"]))
        return tensor, f.read(int(info["length"]))


def _nibbles_low_first(raw: bytes) -> np.ndarray:
    """An independent unpacker: byte b -> [b & 15, b >> 4]."""
    out = []
    for byte in raw:
        out += [byte & 0xF, byte >> 4]
    return np.array(out, dtype=np.int64)


# ---- formats -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_lm_head_runs_in_onnx_runtime_as_its_dequantized_weights(tmp_path, bits, symmetric):
    """The LM head's RTN integers, packed for MatMulNBits, compute x @ dequantized W.T in ONNX Runtime."""
    import onnxruntime as ort

    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.linear import emit_linear, rtn_quantize

    rng = np.random.default_rng(bits)
    w_t = rng.standard_normal((64, 48)).astype(np.float32)
    lin = rtn_quantize(w_t, 32, symmetric, bits)
    deq = lin.dequantize()
    step = np.repeat(lin.scales, 32, 0)
    # round to nearest: half a step, plus what float16-rounded scales cut off the ends of a 255-step range
    assert np.all(np.abs(deq - w_t) <= 0.55 * step)
    assert lin.symmetric == symmetric and int(lin.q.max()) < 2**bits
    g = GraphBuilder("head", tmp_path / "head.onnx", ms_domain=True)
    g.input("x", np.dtype("float32"), [2, 64])
    g.output(emit_linear(g, "x", "lm_head", "ort", quant=lin), "y", np.float32, [2, 48])
    x = rng.standard_normal((2, 64)).astype(np.float32)
    g.save()
    y = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # the 8-bit head runs with int8 activations (accuracy level 4): per-block activation rounding
    np.testing.assert_allclose(y, x @ deq, rtol=0, atol=(0.05 if bits == 8 else 1e-4) * np.abs(x @ deq).max())



def test_rescored_head_matches_its_numpy_reference(tmp_path):
    """The rescored LM head: TopK of the 4-bit logits, those rows recomputed from int8 rows (the
    numpy reference beside the builder), scattered back; the rest keep the 4-bit estimate."""
    import onnxruntime as ort

    from vlm_edge.export.decoder import _rescored, int8_rows, rescore_reference
    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.linear import emit_linear, rtn_quantize

    rng = np.random.default_rng(5)
    head = rng.standard_normal((500, 64)).astype(np.float32)  # [vocab, hidden]
    q, scale = int8_rows(head)
    assert q.dtype == np.int8 and np.all(np.abs(q.astype(np.float32) * scale[:, None] - head) <= 0.5 * scale[:, None] + 1e-6)
    lin = rtn_quantize(head.T, 32, False, 4)
    g = GraphBuilder("rescored", tmp_path / "head.onnx", ms_domain=True)
    g.input("h", np.dtype("float32"), [3, 1, 64])
    approx = emit_linear(g, "h", "lm_head", "ort", quant=lin)
    g.output(approx, "approx", np.float32, [3, 1, 500])
    g.output(_rescored(g, "h", approx, q, scale, 16), "logits", np.float32, [3, 1, 500])
    g.save()
    h = rng.standard_normal((3, 1, 64)).astype(np.float32)
    got_approx, got = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"h": h})
    want = rescore_reference(h[:, 0], got_approx[:, 0], q, scale, 16)
    np.testing.assert_allclose(got[:, 0], want, rtol=0, atol=1e-4 * np.abs(want).max())
    exact = h[:, 0] @ (q.astype(np.float32) * scale[:, None]).T
    for r in range(3):  # the top 16 of the estimate hold the int8 rows' logits; the argmax is theirs
        top = np.argsort(-got_approx[r, 0])[:16]
        np.testing.assert_allclose(got[r, 0, top], exact[r, top], rtol=0, atol=1e-4 * np.abs(exact).max())
        assert int(got[r, 0].argmax()) == int(top[exact[r, top].argmax()])

def test_initializers_carry_exactly_the_checkpoints_integers_and_scales(trained, tmp_path):
    """MatMulNBits (ort) and int4 DequantizeLinear (trt) hold the AWQ checkpoint's q, zeros, scales."""
    from vlm_edge.quant.api import quantize_checkpoint
    from vlm_edge.quant.config import QuantConfig

    quantized = tmp_path / "awq"
    quantize_checkpoint(trained, quantized, QuantConfig(group_size=32, symmetric=True))
    engine = tmp_path / "engine"
    export_checkpoint(quantized, engine, ExportConfig(awq4=True, flavours=("ort",), prompts=3))

    name = "model.layers.1.mlp.down_proj"
    with safe_open(str(quantized / "llm" / "model.safetensors"), "pt") as f:
        q = awq_format.unpack(f.get_tensor(f"{name}.qweight").numpy()).astype(np.int64)  # [K, N]
        z = awq_format.unpack(f.get_tensor(f"{name}.qzeros").numpy()).astype(np.int64)  # [K/G, N]
        s = f.get_tensor(f"{name}.scales").float().numpy()  # [K/G, N]
    k, n = q.shape
    g = 32
    graph = engine / "decoder.ort.onnx"
    node = next(nd for nd in onnx.load(str(graph), load_external_data=False).graph.node
                if nd.op_type == "MatMulNBits" and nd.name.startswith(name))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (k, n, 4, g)
    _, b_raw = _initializer(graph, node.input[1])
    b = _nibbles_low_first(b_raw).reshape(n, k)  # row n: K values along the input dimension
    assert np.array_equal(b.T, q)
    _, s_raw = _initializer(graph, node.input[2])
    assert np.array_equal(np.frombuffer(s_raw, np.float32).reshape(n, k // g).T, s)
    _, z_raw = _initializer(graph, node.input[3])
    zeros = _nibbles_low_first(z_raw).reshape(n, -1)[:, : k // g]
    assert np.array_equal(zeros.T, z)


def test_trt_int4_initializers_and_constraint_check(tmp_path, qwen_clip):
    """Group 64 (TensorRT's block) on the Qwen2 fixture: int4 weights are q - 8, scales as stored."""
    engine = tmp_path / "engine"
    manifest = export_checkpoint(qwen_clip, engine, ExportConfig(awq4=True, flavours=("ort", "trt"), group_size=64,
                                                                 calib=_calib(tmp_path), prompts=10))
    assert manifest.quantization["symmetric"] is True
    graph = engine / "decoder.trt.onnx"
    onnx.checker.check_model(str(graph))
    assert check_trt_graph(graph) == []
    assert manifest.components["decoder.trt"].info["tensorrt_check"] == "passed"

    # the integers: compare with the fake-quantized reference that validation used
    from vlm_edge.quant.api import quantize_checkpoint
    from vlm_edge.quant.config import QuantConfig

    ref_dir = tmp_path / "awq"
    quantize_checkpoint(qwen_clip, ref_dir, QuantConfig(group_size=64, symmetric=True, calib=_calib(tmp_path)))
    name = "model.layers.0.self_attn.q_proj"
    with safe_open(str(ref_dir / "llm" / "model.safetensors"), "pt") as f:
        q = awq_format.unpack(f.get_tensor(f"{name}.qweight").numpy()).astype(np.int64)
        s = f.get_tensor(f"{name}.scales").float().numpy()
    model = onnx.load(str(graph), load_external_data=False)
    dq = next(nd for nd in model.graph.node if nd.op_type == "DequantizeLinear" and nd.name.startswith(name))
    tensor, raw = _initializer(graph, dq.input[0])
    k, n = q.shape
    assert tensor.data_type == onnx.TensorProto.INT4 and list(tensor.dims) == [k, n]
    nib = _nibbles_low_first(raw)[: k * n]
    signed = np.where(nib > 7, nib - 16, nib).reshape(k, n)
    assert np.array_equal(signed, q - 8)
    _, s_raw = _initializer(graph, dq.input[1])
    assert np.array_equal(np.frombuffer(s_raw, np.float32).reshape(k // 64, n), s)


def test_constraint_check_rejects_what_tensorrt_cannot_run(tmp_path, trained):
    export_checkpoint(trained, tmp_path / "e", ExportConfig(awq4=True, flavours=("ort",), prompts=2))
    problems = check_trt_graph(tmp_path / "e" / "decoder.ort.onnx")
    assert any("com.microsoft" in p for p in problems) and any("MatMulNBits" in p for p in problems)


# ---- validation on the three checkpoint kinds -------------------------------------------------------
def _assert_validated(manifest: Manifest, flavours: tuple[str, ...], threshold: float) -> None:
    v = manifest.validation
    vision = v["vision"]
    assert vision["precision"] == manifest.components["vision"].info["precision"]
    if vision["precision"] == "fp32":
        assert vision["rel_err"] <= 1e-4, vision
    else:  # the default on a CPU export: int8 linears, held by cosine to the float tower
        assert vision["cosine_min"] >= 0.999 and vision["rel_err"] <= 0.1 and vision["passed"], vision
    for flavour in flavours:
        figures = v[f"decoder.{flavour}"]
        print(f"\n{flavour}: logits rel err {figures['logits_rel_err']:.2e}, cosine {figures['logits_cosine_min']:.5f}, "
              f"greedy {figures['greedy_identical']}/10, next token {figures['next_token_agreement']:.1%}")
        if figures.get("rounded"):  # rounded on purpose (accuracy level 4, a quantized head)
            assert figures["logits_cosine_min"] >= 0.999 and figures["next_token_agreement"] >= 0.95, figures
        else:
            assert figures["logits_rel_err"] <= threshold and figures["greedy_identical"] >= 9, figures
        assert figures["passed"]


def test_trained_checkpoint_exports_in_both_precisions(trained, tmp_path):
    fp = export_checkpoint(trained, tmp_path / "fp", ExportConfig())
    _assert_validated(fp, ("fp",), 1e-4)
    q = export_checkpoint(trained, tmp_path / "q", ExportConfig(awq4=True))
    _assert_validated(q, ("ort",), 1e-2)
    assert q.quantization["group_size"] == 32  # auto: micro widths 32 / 64
    # the default head of a 4-bit ONNX Runtime export: the rescored int4 head when it validates
    info = q.components["decoder.ort"].info
    assert info["lm_head"] == "int4-rescore" and info["rescore_top"] == 64, info
    assert q.quantization["symmetric"] is False
    manifest = Manifest.read(tmp_path / "q")
    verify_files(tmp_path / "q", manifest)
    assert manifest.model["num_image_tokens"] > 0 and manifest.chat_template == "plain"
    assert (tmp_path / "q" / "tokenizer" / "tokenizer.json").is_file()
    assert not (tmp_path / "q" / ".quantized").exists()


def test_release_layout_llama_siglip_exports(release_dir, tmp_path):
    fp = export_checkpoint(release_dir, tmp_path / "fp", ExportConfig())
    _assert_validated(fp, ("fp",), 1e-4)
    q = export_checkpoint(release_dir, tmp_path / "q", ExportConfig(awq4=True, flavours=("ort", "trt"),
                                                                    calib=_calib(tmp_path)))
    _assert_validated(q, ("ort", "trt"), 1e-2)


def test_qwen2_clip_exports(qwen_clip, tmp_path):
    fp = export_checkpoint(qwen_clip, tmp_path / "fp", ExportConfig())
    _assert_validated(fp, ("fp",), 1e-4)
    q = export_checkpoint(qwen_clip, tmp_path / "q", ExportConfig(awq4=True, calib=_calib(tmp_path)))
    _assert_validated(q, ("ort",), 1e-2)
    # random weights scaled up: near-tied logits, which a quantized head (and int8 activations) may flip
    # against the reference's float head; the default (auto) head then falls back from the rescored
    # int4 head to int8 to float, with the reasons in the manifest
    info = q.components["decoder.ort"].info
    order = ("int4-rescore", "int8", "float32")
    assert list(info.get("lm_head_rejected", {})) == list(order[:order.index(info["lm_head"])]), info
    # 8- and 4-bit LM heads asked for by name: the graphs carry them (unvalidated: this model's near ties
    # need not survive the rounding)
    for head, bits in (("int8", 8), ("int4", 4)):
        h = export_checkpoint(qwen_clip, tmp_path / head, ExportConfig(awq4=True, lm_head=head, method="rtn",
                                                                       validate=False))
        assert h.components["decoder.ort"].info["lm_head"] == head
        nodes = onnx.load(str(tmp_path / head / "decoder.ort.onnx"), load_external_data=False).graph.node
        (node,) = [nd for nd in nodes if nd.op_type == "MatMulNBits" and nd.name.startswith("lm_head")]
        assert {a.name: a.i for a in node.attribute}["bits"] == bits


def test_awq_export_without_calib_is_calibrated_offline_and_says_so(qwen_clip, tmp_path, monkeypatch):
    """A checkpoint vlm-train did not write and no --calib: the offline set, named in the manifest and
    in what vlm-export prints; no `datasets`, no network."""
    from vlm_edge.export.cli import summary
    from vlm_edge.quant.calibration import OFFLINE

    monkeypatch.setitem(sys.modules, "datasets", None)
    q = export_checkpoint(qwen_clip, tmp_path / "q", ExportConfig(awq4=True, calib_samples=4, calib_len=64,
                                                                    validate=False))
    assert q.quantization["calibration"].startswith(OFFLINE), q.quantization
    assert f"calibration: {OFFLINE} (Python's documentation" in summary(q)


# ---- errors, atomicity, CLI --------------------------------------------------------------------------
def test_refuses_non_empty_output_and_bad_options(trained, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty.*--force"):
        export_checkpoint(trained, out, ExportConfig())
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="trt flavour needs group size 64 or 128"):
        export_checkpoint(trained, tmp_path / "x", ExportConfig(awq4=True, flavours=("trt",), group_size=32))
    with pytest.raises(InputError, match="lm-head int8 is for ONNX Runtime graphs"):
        export_checkpoint(trained, tmp_path / "x", ExportConfig(awq4=True, flavours=("ort", "trt"), lm_head="int8"))
    with pytest.raises(InputError, match="add --awq4"):
        export_checkpoint(trained, tmp_path / "x", ExportConfig(lm_head="int4"))
    with pytest.raises(InputError, match="inside the input checkpoint"):
        export_checkpoint(trained, trained / "engine", ExportConfig())


def test_killed_export_leaves_no_engine(trained, tmp_path):
    out = tmp_path / "engine"
    proc = subprocess.Popen([sys.executable, "-m", "vlm_edge.export.cli", str(trained), "-o", str(out)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # kill once the graphs are being written
        if "decoder graph" in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    time.sleep(0.1)
    assert not out.exists()
    assert not list(tmp_path.glob("engine*/manifest.json"))


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", str(tmp_path / "nope"), "-o",
                             str(tmp_path / "e")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("vlm-export: error:") and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--awq4" in result.stdout and "--build-engine" in result.stdout


def test_build_engine_without_tensorrt_is_a_clear_error(qwen_clip, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the engine build runs in test_tensorrt_build")
    result = subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", "--awq4", str(qwen_clip), "-o",
                             str(tmp_path / "e"), "--build-engine"], capture_output=True, text=True)
    assert result.returncode == 2 and "needs the `tensorrt` Python package" in result.stderr, result.stderr
    assert "quantizing" not in result.stderr and not (tmp_path / "e").exists()  # said before any work


@pytest.mark.tensorrt
def test_tensorrt_build(qwen_clip, tmp_path):
    pytest.importorskip("tensorrt", reason="needs TensorRT 10+ and an NVIDIA GPU")
    manifest = export_checkpoint(qwen_clip, tmp_path / "e", ExportConfig(awq4=True, flavours=("trt",), group_size=64,
                                                                         calib=_calib(tmp_path), build_engine=True))
    assert manifest.targets and all((tmp_path / "e" / t["file"]).is_file() for t in manifest.targets)
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["targets"]


# ---- the vision tower's precision (--vision) --------------------------------------------------------
def test_int8_linear_matches_its_numpy_reference_in_onnx_runtime(tmp_path):
    """DynamicQuantizeMatMul as exported (per-channel int8 weights, uint8 activations per tensor)
    against `int8_linear_reference`, and both near the float product."""
    import onnxruntime as ort

    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.vision import INT8_MAX, emit_vision_linear, int8_linear_reference, quantize_int8_per_channel

    rng = np.random.default_rng(0)
    w_t = rng.standard_normal((96, 80)).astype(np.float32) * 0.05
    bias = rng.standard_normal(80).astype(np.float32)
    x = (rng.standard_normal((2, 7, 96)) * 3 + 0.5).astype(np.float32)
    g = GraphBuilder("lin", tmp_path / "lin.onnx")
    g.output(emit_vision_linear(g, g.input("x", np.float32, ["b", "s", 96]), "fc", w_t, bias, "int8"), "y",
             np.float32, ["b", "s", 80])
    g.save()
    y = ort.InferenceSession(str(tmp_path / "lin.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q, scale = quantize_int8_per_channel(w_t)
    assert q.dtype == np.int8 and np.abs(q).max() == INT8_MAX
    assert np.abs(q * scale - w_t).max() <= scale.max() / 2 + 1e-7  # round to nearest
    ref = int8_linear_reference(x, q, scale, bias)
    exact = x @ w_t + bias
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(y - exact).max() <= 2e-2 * np.abs(exact).max()


def test_int8_linear_is_exact_where_16_bit_pair_sums_would_saturate(tmp_path):
    """Activations whose uint8 codes sit near 255 against weights near the top of their range: with
    -127..127 weights ONNX Runtime's AVX2 kernel (no VNNI) saturates its int16 pair sums and misses
    the reference by tens of percent; with the exported range it is exact on every x86 host."""
    import onnxruntime as ort

    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.vision import emit_vision_linear, int8_linear_reference, quantize_int8_per_channel

    rng = np.random.default_rng(1)
    w_t = (rng.uniform(0.9, 1.0, (64, 32)) * rng.choice([-1, 1], (1, 32))).astype(np.float32)
    x = rng.uniform(0.8, 1.0, (1, 16, 64)).astype(np.float32)
    x[0, 0, 0] = 0.0  # the range starts at 0: codes 204..255
    g = GraphBuilder("lin", tmp_path / "lin.onnx")
    g.output(emit_vision_linear(g, g.input("x", np.float32, ["b", "s", 64]), "fc", w_t, None, "int8"), "y",
             np.float32, ["b", "s", 32])
    g.save()
    y = ort.InferenceSession(str(tmp_path / "lin.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = int8_linear_reference(x, *quantize_int8_per_channel(w_t))
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("which", ["release", "qwen_clip"])
def test_vision_graph_in_int8_and_fp16_tracks_float32(which, release_dir, qwen_clip, tmp_path):
    """SigLIP (FastGelu) and CLIP (QuickGelu, class token) towers: int8 within cosine 0.999 of the
    float32 graph, fp16 weights within 1e-3."""
    import onnxruntime as ort

    from vlm_edge.common.image import preprocess_images
    from vlm_edge.export.graph import GraphBuilder
    from vlm_edge.export.validate import cosines
    from vlm_edge.export.vision import build_vision
    from vlm_edge.model import load_checkpoint

    ckpt = load_checkpoint(release_dir if which == "release" else qwen_clip)
    state = lambda m: {k: v.detach().float().numpy() for k, v in m.state_dict().items()}  # noqa: E731
    rng = np.random.default_rng(2)
    pre = ckpt.model.image_processor_config
    from PIL import Image

    pixels = preprocess_images([Image.fromarray(rng.integers(0, 256, (pre.height, pre.width, 3), dtype=np.uint8))
                                for _ in range(3)], pre)
    out = {}
    for precision in ("fp32", "int8", "fp16"):
        path = tmp_path / f"{precision}.onnx"
        g = GraphBuilder("vision", path)
        build_vision(g, ckpt.config, state(ckpt.model.vision_tower), state(ckpt.model.mm_projector), precision)
        g.save()
        out[precision] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"pixel_values": pixels})[0]
    with torch.no_grad():
        ref = ckpt.model.encode_images(torch.from_numpy(pixels)).float().numpy()
    assert np.abs(out["fp32"] - ref).max() <= 1e-4 * np.abs(ref).max()
    assert cosines(out["int8"], ref).min() >= 0.999
    assert np.abs(out["fp16"] - ref).max() <= 1e-3 * np.abs(ref).max()
    nodes = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx"), load_external_data=False).graph.node}
    assert {"DynamicQuantizeMatMul", "MultiHeadAttention"} <= nodes and "MatMul" not in nodes


def test_auto_vision_falls_back_to_float32_when_int8_does_not_validate(trained, tmp_path, monkeypatch):
    import vlm_edge.export.validate as validate_module

    monkeypatch.setattr(validate_module, "VISION_MIN_COSINE", 1.01)  # nothing rounded can pass
    manifest = export_checkpoint(trained, tmp_path / "e", ExportConfig(validate=False))
    info = manifest.components["vision"].info
    assert info["precision"] == "fp32" and info["rejected"] == {"int8": ["vision"]}
    explicit = export_checkpoint(trained, tmp_path / "i", ExportConfig(validate=False, vision="int8"))
    assert explicit.components["vision"].info["precision"] == "int8"  # asked for: written as asked


def _levels(graph: Path) -> dict[int, set[int]]:
    """{bits: the accuracy levels of the graph's MatMulNBits nodes of that width}."""
    out: dict[int, set[int]] = {}
    for node in onnx.load(str(graph), load_external_data=False).graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            out.setdefault(attrs["bits"], set()).add(attrs.get("accuracy_level", 0))
    return out


def test_accuracy_level_auto_keeps_int8_activations_only_when_they_validate(trained, tmp_path, monkeypatch):
    """auto (the default) writes level 4 when the validation, run as the runtime runs the graph,
    passes with it, and falls back to 0 (with the reason in the manifest) when it does not."""
    import vlm_edge.export.validate as validate_module

    assert ExportConfig().accuracy_level == "auto"
    base = dict(awq4=True, method="rtn", lm_head="float", vision="fp32", prompts=3)
    chosen = export_checkpoint(trained, tmp_path / "auto", ExportConfig(**base))
    info = chosen.components["decoder.ort"].info
    assert info["accuracy_asked"] == "auto" and info["accuracy_level"] in (0, 4)
    assert _levels(tmp_path / "auto" / "decoder.ort.onnx") == {4: {info["accuracy_level"]}}
    verify_files(tmp_path / "auto", Manifest.read(tmp_path / "auto"))  # hashed after any rewrite
    if info["accuracy_level"] == 0:
        assert info["accuracy_rejected"]["4"]

    # a graph with int8 activations is judged by its logits' cosine and next-token agreement: a cosine
    # above 1 rejects every such graph, while the float-compute graph is judged as before
    monkeypatch.setattr(validate_module, "ROUNDED_MIN_COSINE", 1.01)
    fallback = export_checkpoint(trained, tmp_path / "fallback", ExportConfig(**base))
    info = fallback.components["decoder.ort"].info
    assert info["accuracy_level"] == 0 and "logits cosine" in info["accuracy_rejected"]["4"][0]
    assert fallback.validation["decoder.ort"]["logits_rel_err"] <= 1e-4  # float compute: the reference's math
    assert fallback.validation["decoder.ort"]["passed"]
    assert _levels(tmp_path / "fallback" / "decoder.ort.onnx") == {4: {0}}
    verify_files(tmp_path / "fallback", Manifest.read(tmp_path / "fallback"))
    with pytest.raises(Exception, match="validation failed for decoder.ort"):  # asked for 4: no fallback
        export_checkpoint(trained, tmp_path / "four", ExportConfig(**base, accuracy_level=4))
    assert not (tmp_path / "four").exists()

    unchecked = export_checkpoint(trained, tmp_path / "unchecked", ExportConfig(**base, validate=False))
    assert unchecked.components["decoder.ort"].info["accuracy_level"] == 0  # auto never keeps 4 unvalidated


def test_accuracy_level_option():
    from types import SimpleNamespace

    from vlm_edge.export.api import _rounded
    from vlm_edge.export.cli import _accuracy_level

    # what each graph rounds beyond the checkpoint's 4-bit weights (judged by cosine and agreement)
    int4, int8 = SimpleNamespace(bits=4), SimpleNamespace(bits=8)
    assert _rounded(("ort",), {}, 0) == {} and _rounded(("ort",), {}, 4) == {"ort": "int8 activations"}
    assert _rounded(("ort",), {"ort": int4}, 0) == {"ort": "int4 head"}
    assert _rounded(("ort",), {"ort": int8}, 0) == {"ort": "int8 head, int8 activations"}
    assert _rounded(("ort", "trt"), {"trt": int4}, 4) == {"ort": "int8 activations", "trt": "int4 head"}

    assert ExportConfig(awq4=True).accuracy_candidates() == (4, 0)
    assert ExportConfig(awq4=True, validate=False).accuracy_candidates() == (0,)
    assert ExportConfig(awq4=True, accuracy_level=4).accuracy_candidates() == (4,)
    assert _accuracy_level("auto") == "auto" and _accuracy_level("4") == 4
    with pytest.raises(InputError, match="--accuracy-level 7"):
        ExportConfig(awq4=True, accuracy_level=7).validate_options()


def test_default_lm_head_for_onnx_runtime_graphs():
    assert ExportConfig(awq4=True).resolved_lm_head == "int4-rescore"
    assert ExportConfig(awq4=True).lm_head_candidates() == ("int4-rescore", "int8", "float")  # each validated
    assert ExportConfig(awq4=True, validate=False).lm_head_candidates() == ("int8",)  # unchecked: the closer head
    assert ExportConfig(awq4=True, lm_head="int4-rescore").lm_head_bits == 4
    with pytest.raises(InputError, match="int4-rescore is for ONNX Runtime"):
        ExportConfig(awq4=True, flavours=("ort", "trt"), lm_head="int4-rescore").validate_options()
    assert ExportConfig(awq4=True, lm_head="int8").lm_head_candidates() == ("int8",)
    assert ExportConfig(awq4=True, flavours=("ort", "trt")).resolved_lm_head == "float"  # trt takes float or int4
    assert ExportConfig().resolved_lm_head == "float"  # a float32 export quantizes nothing
    assert ExportConfig(awq4=True, lm_head="float").lm_head_bits is None


def test_vision_option_choices():
    assert ExportConfig().vision_candidates() == ("int8", "fp32")
    assert ExportConfig(awq4=True, flavours=("trt",)).vision_candidates() == ("fp32",)  # TensorRT reads float graphs
    assert ExportConfig(vision="fp16").vision_candidates() == ("fp16",)
    with pytest.raises(InputError, match="TensorRT does not read"):
        ExportConfig(awq4=True, flavours=("trt",), vision="int8").validate_options()
    with pytest.raises(InputError, match="--vision"):
        ExportConfig(vision="int4").validate_options()


def test_packed_linears_dequantize_to_their_parts_side_by_side():
    """q/k/v and gate/up become one MatMulNBits: the packed weights are the parts' columns, exactly."""
    from vlm_edge.export.linear import concat_outputs, rtn_quantize

    rng = np.random.default_rng(4)
    parts = [rtn_quantize(rng.standard_normal((64, n)).astype(np.float32), 32, symmetric=False) for n in (24, 8, 8)]
    packed = concat_outputs(parts)
    assert np.array_equal(packed.dequantize(), np.concatenate([p.dequantize() for p in parts], axis=1))
    with pytest.raises(ValueError, match="group size"):
        concat_outputs([parts[0], rtn_quantize(rng.standard_normal((64, 8)).astype(np.float32), 16, symmetric=False)])
