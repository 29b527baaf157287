"""quant: the AutoAWQ layout, scale folding, AWQ against RTN on salient channels, the CLI.

The trained model is the `micro` preset trained by the training module for a few hundred steps
(seconds); its widths (32 / 64) take group size 32.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from fixtures import train_micro
from vlm_edge.common import awq_format
from vlm_edge.common.errors import InputError
from vlm_edge.model import load_checkpoint
from vlm_edge.quant.awq import _fold
from vlm_edge.quant.api import quantize_checkpoint, quantize_model
from vlm_edge.quant.config import QuantConfig
from vlm_edge.quant.mappings import family
from vlm_edge.quant.quantize import QuantFormat, quantize
from vlm_edge.train.batching import collate
from vlm_edge.train.datasets import SyntheticData

GROUP = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro checkpoint trained for 160 steps, with its calibration/ set."""
    return train_micro(tmp_path_factory.mktemp("micro") / "ckpt")


def _reader(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """An independent reader of the AutoAWQ GEMM layout, one nibble at a time: nibble i of each
    int32 holds column [0, 2, 4, 6, 1, 3, 5, 7][i] of its 8 columns."""
    order = [0, 2, 4, 6, 1, 3, 5, 7]

    def ints(packed):
        rows, words = packed.shape
        out = np.zeros((rows, words * 8), dtype=np.int64)
        for r in range(rows):
            for w in range(words):
                word = int(packed[r, w]) & 0xFFFFFFFF
                for i in range(8):
                    out[r, w * 8 + order[i]] = (word >> (4 * i)) & 0xF
        return out

    q, z = ints(qweight), ints(qzeros)
    k = q.shape[0]
    weight_t = np.zeros(q.shape, dtype=np.float64)
    for row in range(k):
        weight_t[row] = (q[row] - z[row // group]) * scales[row // group].astype(np.float64)
    return weight_t.T


@pytest.mark.parametrize("symmetric", [False, True])
def test_pack_unpack_exact_and_independent_reader_agrees(symmetric):
    torch.manual_seed(0)
    w = torch.randn(24, 96)  # N=24 (3 words), K=96 (3 groups of 32)
    fmt = QuantFormat(4, GROUP, symmetric)
    q = quantize(w, fmt)
    qweight = awq_format.pack(q.q.T.numpy())
    qzeros = awq_format.pack(q.zeros.T.numpy())
    assert np.array_equal(awq_format.unpack(qweight), q.q.T.numpy())
    assert np.array_equal(awq_format.unpack(qzeros), q.zeros.T.numpy())
    scales = q.scales.T.numpy()
    reference = q.dequantize(GROUP).numpy()  # the fake-quantized weight the algorithm uses
    assert np.array_equal(_reader(qweight, qzeros, scales, GROUP).astype(np.float32), reference)
    assert np.array_equal(awq_format.dequantize(qweight, qzeros, scales, GROUP), reference)
    if symmetric:
        assert (q.zeros == 8).all()


def test_nibble_order_is_awqs():
    values = np.arange(8, dtype=np.uint8)[None, :]  # columns 0..7 hold 0..7
    word = int(awq_format.pack(values)[0, 0]) & 0xFFFFFFFF
    assert [(word >> (4 * i)) & 0xF for i in range(8)] == [0, 2, 4, 6, 1, 3, 5, 7]


def test_asymmetric_quantization_follows_the_design_formula():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.25] * 8])  # one group of 32
    q = quantize(w, QuantFormat(4, 32, False))
    scale = np.float16(1.25 / 15)
    assert q.scales.item() == scale
    assert q.zeros.item() == round(1.0 / float(scale))
    assert int(q.q.min()) >= 0 and int(q.q.max()) <= 15


def _logits(ckpt, samples):
    batch = collate(samples, ckpt.tokenizer, ckpt.template, ckpt.model.image_processor_config)
    with torch.no_grad():
        return ckpt.model(batch.input_ids, torch.from_numpy(batch.pixel_values)).logits


def _heldout(ckpt, n=12):
    data = SyntheticData(ckpt.config.image_size, 0)
    return [data.sample(("describe", "vqa", "text")[i % 3], 1000 + i, split="heldout") for i in range(n)]


def test_scale_folding_keeps_the_fp_model(trained):
    ckpt = load_checkpoint(trained)
    samples = _heldout(ckpt)
    before = _logits(ckpt, samples)
    fam = family(ckpt.config.llm_architecture)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in ckpt.model.llm.get_submodule(fam.layers):
            for group in fam.groups:
                prev = layer.get_submodule(group.prev)
                linears = [layer.get_submodule(n) for n in group.linears]
                if group.needs_same_width and prev.weight.shape[0] != linears[0].weight.shape[1]:
                    continue
                s = torch.rand(linears[0].weight.shape[1], generator=gen) * 4 + 0.25
                _fold(prev, linears, s)
    after = _logits(ckpt, samples)
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4), (before - after).abs().max()


def _make_salient(ckpt, factor=30.0, channels=(1, 5, 9)):
    """Scale channels of every RMSNorm weight up and the matching input columns down: same function."""
    fam = family(ckpt.config.llm_architecture)
    with torch.no_grad():
        for layer in ckpt.model.llm.get_submodule(fam.layers):
            for group in fam.groups:
                prev = layer.get_submodule(group.prev)
                if isinstance(prev, torch.nn.Linear):
                    continue
                prev.weight[list(channels)] *= factor
                for name in group.linears:
                    layer.get_submodule(name).weight[:, list(channels)] /= factor


def test_awq_recovers_salient_channels_that_rtn_loses(trained, tmp_path):
    reference = load_checkpoint(trained)
    samples = _heldout(reference)
    fp = _logits(reference, samples)
    _make_salient(reference)
    assert torch.allclose(_logits(reference, samples), fp, atol=1e-4, rtol=1e-4)  # FP unchanged
    salient = tmp_path / "salient"
    reference.save(salient)
    (salient / "calibration").symlink_to(trained / "calibration")

    errors = {}
    for method in ("rtn", "awq"):
        ckpt = load_checkpoint(salient)
        quantize_model(ckpt, QuantConfig(method=method, group_size=GROUP), salient)
        errors[method] = float((_logits(ckpt, samples) - fp).pow(2).mean())
    ratio = errors["awq"] / errors["rtn"]
    print(f"\nlogits MSE vs FP on held-out data: RTN {errors['rtn']:.3e}, AWQ {errors['awq']:.3e}, ratio {ratio:.3f}")
    assert ratio <= 0.3


def test_vlm_quant_writes_an_awq_checkpoint_that_loads(trained, tmp_path):
    out = tmp_path / "awq"
    code = subprocess.run([sys.executable, "-m", "vlm_edge.quant.cli", "--awq4", str(trained), "-o", str(out),
                           "--group-size", str(GROUP)], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    llm_config = json.loads((out / "llm" / "config.json").read_text())
    assert llm_config["quantization_config"]["quant_method"] == "awq"
    assert llm_config["quantization_config"]["group_size"] == GROUP
    from safetensors import safe_open

    with safe_open(str(out / "llm" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        qweight = f.get_tensor("model.layers.0.mlp.down_proj.qweight")
    assert "model.layers.0.mlp.down_proj.weight" not in keys and qweight.dtype == torch.int32
    assert (out / "quant" / "quant_config.json").is_file() and (out / "quant" / "awq_search.safetensors").is_file()

    # the loaded model is the in-memory quantized one, bit for bit (dequantized on load)
    expected = load_checkpoint(trained)
    quantize_model(expected, QuantConfig(group_size=GROUP), trained)
    loaded = load_checkpoint(out)
    for (name, a), (_, b) in zip(expected.model.llm.named_parameters(), loaded.model.llm.named_parameters()):
        tol = 0 if name.endswith("proj.weight") else 1e-3  # the others are stored in float16
        assert torch.allclose(a, b.float(), atol=tol, rtol=tol), name

    again = subprocess.run([sys.executable, "-m", "vlm_edge.quant.cli", "--awq4", str(out), "-o", str(tmp_path / "x")],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "already AWQ-quantized" in again.stderr


def test_group_size_that_does_not_divide_k_is_a_clear_error(trained, tmp_path):
    with pytest.raises(InputError, match="not divisible by the group size 64.*--group-size 32"):
        quantize_checkpoint(trained, tmp_path / "out", QuantConfig(method="rtn", group_size=64))
    assert not (tmp_path / "out").exists()


def test_calibration_errors_name_the_input(trained, tmp_path):
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(InputError, match="line 2 is not valid JSON"):
        quantize_checkpoint(trained, tmp_path / "out", QuantConfig(calib=str(bad), group_size=GROUP))
    with pytest.raises(InputError, match="does not exist"):
        quantize_checkpoint(trained, tmp_path / "out", QuantConfig(calib=str(tmp_path / "nope.txt"), group_size=GROUP))


def test_text_calibration_file_works(trained, tmp_path):
    text = tmp_path / "calib.txt"
    rng = random.Random(0)
    words = ["red", "circle", "square", "big", "small", "the", "a", "at", "top", "left"]
    text.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(20)))
    ckpt = load_checkpoint(trained)
    result = quantize_model(ckpt, QuantConfig(calib=str(text), group_size=GROUP, seq_len=64), trained)
    assert result.scales and result.clips


def test_offline_calibration_is_seeded_and_needs_no_network(monkeypatch):
    """vlm-edge:offline: Python's documentation topics and drawn pictures, the same every run, without
    `datasets` or the network (importing `datasets` fails here)."""
    from pydoc_data.topics import topics

    from vlm_edge.quant.calibration import OFFLINE, OFFLINE_PICTURE_SHARE, _COLOURS, load_calibration, offline_calibration

    monkeypatch.setitem(sys.modules, "datasets", None)
    first, second = offline_calibration(), load_calibration(OFFLINE, "unused")
    assert first.source.startswith(OFFLINE) and first.conversation_share == OFFLINE_PICTURE_SHARE
    assert first.texts == second.texts and sorted(first.texts) == sorted(t.strip() for t in topics.values() if t.strip())
    assert len(first.conversations) == len(second.conversations) == 64
    for a, b in zip(first.conversations, second.conversations):
        assert a.messages == b.messages and np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
        pixels, answer = np.asarray(a.images[0]), a.messages[1]["content"]
        assert a.messages[0]["content"].startswith("<image>\n") and pixels.shape == (336, 336, 3)
        named = [c for c in _COLOURS if f" {c} " in answer]  # the description names what was drawn
        assert named and all(np.abs(pixels.astype(int) - _COLOURS[c]).max(axis=2).min() < 40 for c in named), answer
    with pytest.raises(InputError, match="--calib pile-val needs the `datasets` library"):
        load_calibration("pile-val", "unused")


def test_a_checkpoint_without_calibration_is_calibrated_offline(release_dir, tmp_path, monkeypatch):
    """A checkpoint vlm-train did not write (no calibration/): AWQ runs on vlm-edge:offline with no
    flag, pictures fill about a quarter of the positions, and the output says which set it used."""
    from vlm_edge.quant.calibration import OFFLINE, OFFLINE_PICTURE_SHARE, calibration_embeds, offline_calibration

    monkeypatch.setitem(sys.modules, "datasets", None)
    assert not (release_dir / "calibration").exists()
    ckpt = load_checkpoint(release_dir)
    encoded, encode = [], ckpt.model.encode_images
    monkeypatch.setattr(ckpt.model, "encode_images", lambda pixels, plans: encoded.append(len(pixels)) or encode(pixels, plans))
    samples, seq_len = 8, 256
    calib = offline_calibration()
    assert calibration_embeds(calib, ckpt, samples=samples, seq_len=seq_len).shape[:2] == (samples, seq_len)
    with_share = len(encoded)
    calib.conversation_share = 1.0  # conversations only, for as many positions as they fill
    calibration_embeds(calib, ckpt, samples=samples, seq_len=seq_len)
    alone = len(encoded) - with_share
    # conversations until a quarter of the positions is reached (the last one whole), then text
    assert 1 <= with_share <= OFFLINE_PICTURE_SHARE * alone + 1 < alone, (with_share, alone)
    quantize_checkpoint(release_dir, tmp_path / "awq", QuantConfig(samples=2, seq_len=64))
    manifest = json.loads((tmp_path / "awq" / "quant" / "quant_config.json").read_text())
    assert manifest["calibration"].startswith(OFFLINE), manifest


def test_layer_by_layer_memory_is_bounded(tmp_path):
    """Peak RSS over the weights stays about one layer's activations, whatever the depth."""
    script = r"""
import resource, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
from vlm_edge.quant.awq import quantize_llm
from vlm_edge.quant.mappings import family
from vlm_edge.quant.quantize import QuantFormat
torch.manual_seed(0)
torch.set_num_threads(1)  # one thread, one malloc arena: the figure does not depend on scheduling
layers = int(sys.argv[1])
cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=256)
llm = LlamaForCausalLM(cfg).eval()
embeds = torch.randn(32, 512, 256) * 0.02  # 16k tokens: activations (~100 MB a layer) dwarf the weights
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
quantize_llm(llm, family("LlamaForCausalLM"), QuantFormat(4, 128, False), embeds=embeds, n_grid=2, clip=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    growth = {}
    for layers in (2, 8):
        env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", script, str(layers)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        growth[layers] = float(out.stdout.strip().splitlines()[-1])
    print(f"\npeak RSS growth while quantizing: 2 layers {growth[2]:.0f} MiB, 8 layers {growth[8]:.0f} MiB")
    # the weights are counted in `base`; activations live one layer at a time, so the growth is one
    # layer's work, whatever the depth. Keeping every layer's inputs would add 6 x 16 MiB = 96 MiB
    # for the 6 extra layers; the bound allows 64. glibc's dynamic mmap threshold made the figure
    # vary by +-250 MiB between runs (big tensors landed on the heap and fragmented it); a fixed
    # threshold returns them to the OS on free, so RSS follows live memory. Measured: 274 vs
    # 275-290 MiB here, 108 vs 132 MiB in one CI run (the base differs by machine, the difference
    # stays small).
    assert growth[8] - growth[2] < 64


def _clip_reference(w: torch.Tensor, x: torch.Tensor, fmt: QuantFormat, n_grid: int) -> torch.Tensor:
    """The clip search written out elementwise: for each (output channel, group) and ratio, the
    partial products sum_j x_tj q_nj against sum_j x_tj w_nj, squared and averaged over tokens."""
    from vlm_edge.quant.quantize import fake_quantize

    n, k = w.shape
    g = fmt.group_size
    xg = x.reshape(-1, k)[:, None, :].view(-1, 1, k // g, g)  # [T, 1, ng, G]
    wg = w.view(1, n, k // g, g)
    reference = (xg * wg).sum(-1)  # [T, n, ng]
    original = wg.abs().amax(-1, keepdim=True)
    best, best_error = original.clone(), torch.full(original.shape, float("inf"))
    for i in range(n_grid // 2):
        limit = original * (1 - i / n_grid)
        q = fake_quantize(torch.maximum(torch.minimum(wg, limit), -limit).reshape(n, k), fmt).view_as(wg)
        error = ((xg * q).sum(-1) - reference).pow(2).mean(0, keepdim=True).unsqueeze(-1)
        better = error < best_error
        best_error, best = torch.where(better, error, best_error), torch.where(better, limit, best)
    return best.view(n, k // g)


@pytest.mark.parametrize("symmetric", [False, True])
def test_clip_search_matches_its_elementwise_reference(symmetric):
    from vlm_edge.quant.awq import _search_clip

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=gen) * 0.02
    x = torch.randn(300, 256, generator=gen)
    x[:, :3] *= 25  # outlier channels, as real LLM activations have
    fmt = QuantFormat(4, 64, symmetric)
    ours, reference = _search_clip(w, x, fmt, 20), _clip_reference(w, x, fmt, 20)
    assert ours.shape == (96, 4)
    # the same ratio is chosen for (nearly) every group: the two sum the same products in another order
    assert (ours == reference).float().mean() >= 0.99
    assert torch.allclose(ours, reference, rtol=0.1)


def test_scale_search_of_a_linear_uses_the_gram_matrix_and_agrees_with_a_forward_pass():
    from vlm_edge.quant.awq import _search_scale

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 128, 256, generator=gen)
    x[..., :4] *= 30
    linear = torch.nn.Linear(256, 64, bias=False)
    torch.nn.init.normal_(linear.weight, std=0.02, generator=gen)
    fmt = QuantFormat(4, 64, False)
    wrapped = torch.nn.Sequential(linear)  # not the linear itself: the forward-pass search runs
    direct = _search_scale(x, [linear], [linear], linear, ((x,), {}), fmt, 20)
    forward = _search_scale(x, [linear], [linear], wrapped, ((x,), {}), fmt, 20)
    assert torch.equal(direct, forward)
    assert not torch.equal(direct, torch.ones_like(direct))  # the outliers make some scale pay


def _small_llama(layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_search_keeps_float32_weights_and_quality(dtype):
    """The scale search's forward passes in 16 bits (what a GPU or a bfloat16 CPU gets): the
    weights stay float32 and the model quantized this way is about as close to FP as float32's."""
    from vlm_edge.quant.awq import quantize_llm

    fam = family("LlamaForCausalLM")
    gen = torch.Generator().manual_seed(1)
    embeds = torch.randn(4, 64, 128, generator=gen) * 0.5
    embeds[..., :2] *= 20
    ids = torch.randint(0, 128, (2, 48), generator=gen)
    with torch.no_grad():
        fp = _small_llama()(input_ids=ids).logits
    errors = {}
    for search in (torch.float32, dtype):
        llm = _small_llama()
        quantize_llm(llm, fam, QuantFormat(4, 64, False), embeds=embeds, dtype=search)
        assert all(p.dtype == torch.float32 for p in llm.parameters())
        with torch.no_grad():
            errors[search] = float((llm(input_ids=ids).logits - fp).pow(2).mean())
    assert errors[dtype] <= 1.25 * errors[torch.float32], errors


def test_a_layer_that_overflows_float16_is_searched_in_float32():
    import logging

    from vlm_edge.quant.awq import quantize_llm

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("vlm_edge.quant.awq")
    logger.addHandler(handler)

    llm = _small_llama(layers=1)
    with torch.no_grad():
        llm.model.layers[0].mlp.down_proj.weight.mul_(1e7)  # beyond float16 (65504): its 16-bit copy overflows
    embeds = torch.randn(2, 32, 128, generator=torch.Generator().manual_seed(2))
    try:
        result = quantize_llm(llm, family("LlamaForCausalLM"), QuantFormat(4, 64, False), embeds=embeds,
                              dtype=torch.float16)
    finally:
        logger.removeHandler(handler)
    assert any("searching it in float32" in m for m in seen), seen
    assert all(torch.isfinite(s).all() for s in result.scales.values()) and len(result.linears) == 7


def test_vlm_quant_eval_measures_text_perplexity_of_any_checkpoint(tmp_path):
    """A checkpoint not written by vlm-train (no held-out VQA set) is measured on a text file."""
    ckpt = tmp_path / "ckpt"
    made = subprocess.run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "micro", "-o", str(ckpt)],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    rng = random.Random(0)
    words = "the a red blue circle square big small left right top bottom of in is".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(80)) for _ in range(30))
    (tmp_path / "calib.txt").write_text(text)
    (tmp_path / "heldout.txt").write_text(text[::-1])
    base = [sys.executable, "-m", "vlm_edge.quant.cli", "eval", str(ckpt), "--group-size", str(GROUP)]
    no_text = subprocess.run(base, capture_output=True, text=True)
    assert no_text.returncode == 2 and "pass --text FILE" in no_text.stderr and "Traceback" not in no_text.stderr
    report = tmp_path / "report.json"
    out = subprocess.run(base + ["--text", str(tmp_path / "heldout.txt"), "--calib", str(tmp_path / "calib.txt"),
                                 "--calib-samples", "4", "--calib-len", "64", "--eval-len", "64", "--eval-blocks", "6",
                                 "--json", str(report)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(report.read_text())
    assert set(result["variants"]) == {"fp", "rtn", "awq"} and result["tokens"] == 6 * 64
    for name in ("fp", "rtn", "awq"):
        assert name in out.stdout and np.isfinite(result["variants"][name]["perplexity"])
    missing = subprocess.run(base + ["--text", str(tmp_path / "nope.txt"), "--calib", str(tmp_path / "calib.txt")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.txt does not exist" in missing.stderr


def test_the_scale_search_in_chunks_of_blocks_chooses_what_one_pass_does(monkeypatch):
    from vlm_edge.quant import awq

    fam = family("LlamaForCausalLM")
    embeds = torch.randn(6, 32, 128, generator=torch.Generator().manual_seed(3))
    embeds[..., :2] *= 20
    results = {}
    for tokens in (10**6, 64):  # every block in one pass; two blocks a pass
        monkeypatch.setattr(awq, "SEARCH_CHUNK_TOKENS", tokens)
        results[tokens] = awq.quantize_llm(_small_llama(), fam, QuantFormat(4, 64, False), embeds=embeds,
                                           dtype=torch.float32)
    whole, chunked = results[10**6], results[64]
    assert whole.scales.keys() == chunked.scales.keys()
    for key in whole.scales:
        assert torch.allclose(whole.scales[key], chunked.scales[key], rtol=1e-5), key


def _feedback_reference(w: np.ndarray, gram: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group: int,
                        qmax: int, damp: float = 0.01, busiest_first: bool = True) -> np.ndarray:
    """Error-feedback rounding the plain way, in float64: round column i, spread its error over the
    columns after it by the inverse Hessian's row i, then remove i from the inverse (the rank-one
    downdate of optimal brain surgeon). No Cholesky, no blocks: what quantize_feedback computes."""
    w, h = w.astype(np.float64).copy(), gram.astype(np.float64).copy()
    k = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.diag(h).mean() * np.eye(k)
    hinv = np.linalg.inv(h)
    q = np.zeros_like(w)
    order = np.argsort(-np.diag(h), kind="stable") if busiest_first else np.arange(k)
    for step, i in enumerate(order):
        later = order[step + 1 :]
        s, z = scales[:, i // group], zeros[:, i // group]
        q[:, i] = np.clip(np.round(w[:, i] / s) + z, 0, qmax)
        e = (w[:, i] - (q[:, i] - z) * s) / hinv[i, i]
        w[:, later] -= np.outer(e, hinv[i, later])
        hinv -= np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q


def _correlated_inputs(tokens: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(k) + 0.5 * torch.randn(k, k, generator=gen) / k**0.5
    x = torch.randn(tokens, k, generator=gen) @ mix
    x[:, 3] = 0.0  # an input that is always zero
    return x


@pytest.mark.parametrize("symmetric", [False, True])
def test_feedback_rounding_matches_its_reference_and_beats_nearest(symmetric):
    from vlm_edge.quant.quantize import group_params, quantize_feedback

    fmt = QuantFormat(4, 32, symmetric)
    w = torch.randn(24, 160, generator=torch.Generator().manual_seed(4))
    x = _correlated_inputs(2048, 160, seed=5)
    gram = x.T @ x
    scales, zeros = group_params(w, fmt)
    for busiest_first in (False, True):
        fast = quantize_feedback(w, gram, fmt, busiest_first=busiest_first, block=64)  # blocks across groups
        ref = _feedback_reference(w.numpy(), gram.numpy(), scales.numpy(), zeros.numpy(), 32, fmt.qmax,
                                  busiest_first=busiest_first)
        agree = (fast.q.numpy() == ref).mean()
        assert agree >= 0.99, agree  # float32 against float64: a near-tie may round the other way
    assert torch.equal(fast.scales, quantize(w, fmt).scales) and torch.equal(fast.zeros, quantize(w, fmt).zeros)

    def output_error(deq: torch.Tensor) -> float:
        return float((x @ (deq - w).T).pow(2).mean())

    nearest = output_error(quantize(w, fmt).dequantize(32))
    feedback = output_error(fast.dequantize(32))
    ref_deq = (torch.from_numpy(ref).float() - zeros.repeat_interleave(32, 1)) * scales.repeat_interleave(32, 1)
    assert feedback == pytest.approx(output_error(ref_deq), rel=0.02)
    assert feedback < 0.9 * nearest, (feedback, nearest)


def test_feedback_rounding_on_uncorrelated_inputs_is_nearest_rounding():
    from vlm_edge.quant.quantize import quantize_feedback

    fmt = QuantFormat(4, 64, False)
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(6))
    gram = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(7)) + 0.1)
    assert torch.equal(quantize_feedback(w, gram, fmt).q, quantize(w, fmt).q)


def test_awq_with_feedback_rounding_is_closer_to_fp_than_nearest():
    """On held-out inputs like the calibration ones (the model's own token embeddings; feedback
    fits the calibration inputs' statistics, so they have to be representative)."""
    from vlm_edge.quant.awq import quantize_llm

    fam = family("LlamaForCausalLM")
    gen = torch.Generator().manual_seed(9)
    calib_ids = torch.randint(0, 128, (16, 64), generator=gen)
    ids = torch.randint(0, 128, (4, 64), generator=gen)
    with torch.no_grad():
        model = _small_llama()
        fp, embeds = model(input_ids=ids).logits, model.model.embed_tokens(calib_ids)
    errors = {}
    for rounding in ("nearest", "feedback"):
        llm = _small_llama()
        result = quantize_llm(llm, fam, QuantFormat(4, 64, False), embeds=embeds, dtype=torch.float32,
                              rounding=rounding)
        for name, q in result.linears.items():  # the integers are what the model now computes with
            assert torch.equal(llm.get_submodule(name).weight.data, q.dequantize(64))
        with torch.no_grad():
            errors[rounding] = float((llm(input_ids=ids).logits - fp).pow(2).mean())
    assert errors["feedback"] < 0.9 * errors["nearest"], errors
