"""An llm/ quantized by AutoAWQ itself (tests/data/autoawq-tiny/, written by its save_quantized) inside
a VILA-layout checkpoint: our loader reads its packed weights as an independent nibble reader does,
vlm-export --awq4 carries its integers and scales into MatMulNBits unchanged, and the runtime answers
token for token like the reference on the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

from vlm_edge.common import awq_format

DATA = Path(__file__).resolve().parent / "data" / "autoawq-tiny"


@pytest.fixture(scope="module")
def autoawq_ckpt(tmp_path_factory):
    """The float checkpoint autoawq-tiny was quantized from (seed 11), its llm/ then replaced by AutoAWQ's."""
    from fixtures import tiny_config

    from vlm_edge.model import Checkpoint, VilaModel
    from vlm_edge.model.presets import byte_level_tokenizer

    torch.manual_seed(11)
    config = tiny_config(llm="qwen2", vision="siglip")
    config.llm["num_key_value_heads"] = 4  # AutoAWQ's clip search needs outputs in multiples of 64
    model = VilaModel(config).eval()
    with torch.no_grad():
        for p in model.llm.parameters():
            p.mul_(3.0)
    out = tmp_path_factory.mktemp("autoawq") / "ckpt"
    Checkpoint(model, byte_level_tokenizer()).save(out)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(DATA / name, out / "llm" / name)
    return out


def test_the_data_is_autoawqs_own_format():
    config = json.loads((DATA / "config.json").read_text())
    assert config["quantization_config"] == {"bits": 4, "group_size": 32, "modules_to_not_convert": None,
                                             "quant_method": "awq", "version": "gemm", "zero_point": True}
    with safe_open(str(DATA / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.qweight" in keys and "model.layers.0.self_attn.q_proj.weight" not in keys


@torch.no_grad()
def test_loader_reads_autoawqs_packing_like_an_independent_reader(autoawq_ckpt):
    from test_quant import _reader

    from vlm_edge.model import load_checkpoint

    ckpt = load_checkpoint(autoawq_ckpt)
    layers = dict(ckpt.model.llm.named_modules())
    checked = 0
    with safe_open(str(DATA / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if key.endswith(".qweight"):
                name = key[: -len(".qweight")]
                want = _reader(f.get_tensor(key).numpy(), f.get_tensor(f"{name}.qzeros").numpy(),
                               f.get_tensor(f"{name}.scales").float().numpy(), 32)
                np.testing.assert_allclose(layers[name].weight.numpy(), want, rtol=1e-6, atol=1e-6)
                checked += 1
    assert checked == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers


def test_export_carries_autoawqs_integers_and_the_runtime_matches(autoawq_ckpt, tmp_path, rng):
    from vlm_edge.common.image import preprocess_tiled
    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.export.api import export_checkpoint
    from vlm_edge.export.config import ExportConfig
    from vlm_edge.model import GenerationConfig, load_checkpoint
    from vlm_edge.model.generate import generate

    # the checkpoint's own math (a float head, float compute): the runtime is held to the reference token
    # for token, which the default's rounding on purpose (judged by agreement) need not keep on random weights
    manifest = export_checkpoint(autoawq_ckpt, tmp_path / "engine", ExportConfig(awq4=True, vision="fp32",
                                                                                 lm_head="float", accuracy_level=0))
    assert manifest.quantization["group_size"] == 32 and manifest.validation["decoder.ort"]["passed"]
    graph = tmp_path / "engine" / "decoder.ort.onnx"
    model = onnx.load(str(graph))  # with its external data
    inits = {t.name: t for t in model.graph.initializer}
    name = "model.layers.1.mlp.down_proj"
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(name))
    with safe_open(str(DATA / "model.safetensors"), "pt") as f:
        q = awq_format.unpack(f.get_tensor(f"{name}.qweight").numpy()).astype(np.int64)  # [K, N]
        s = f.get_tensor(f"{name}.scales").float().numpy()
    k, n = q.shape
    raw = np.frombuffer(onnx.numpy_helper.to_array(inits[node.input[1]]).tobytes(), np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(n, k)  # low nibble first
    assert np.array_equal(nibbles.T, q)
    assert np.array_equal(onnx.numpy_helper.to_array(inits[node.input[2]]).reshape(n, k // 32).T, s)

    pipe, ref = load(tmp_path / "engine", "ort-cpu"), load_checkpoint(autoawq_ckpt)
    for prompt in ("What is in the image?", "Describe it."):
        image = rng.integers(0, 256, (42, 42, 3), dtype=np.uint8)
        ours = pipe.generate(prompt, [image], SamplingConfig(max_new_tokens=12, ignore_eos=True))
        pixels, plans = preprocess_tiled([image], ref.model.image_processor_config)
        theirs = generate(ref.model, pipe.prompt_ids(prompt, [image]), pixels,
                          GenerationConfig(max_new_tokens=12, stop_token_ids=[]), plans=plans)
        assert ours.token_ids == theirs.token_ids
