"""edge: the torch-free runtime over a real exported engine, against the PyTorch reference.

The engine is exported (4-bit AWQ, MatMulNBits) from a micro checkpoint trained by the training
module and quantized by vlm-quant; the reference is that quantized checkpoint loaded with
vlm_edge.model (the same dequantized weights).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vlm_edge.common.conversations import read_conversations
from vlm_edge.common.errors import InputError
from vlm_edge.edge import SamplingConfig, load
from vlm_edge.edge.sampling import select_token


@pytest.fixture(scope="module")
def engine(micro_engine):
    return micro_engine


def test_greedy_output_equals_the_pytorch_reference(engine):
    from vlm_edge.model import GenerationConfig, load_checkpoint
    from vlm_edge.model.generate import generate

    pipe = load(engine / "engine", "ort-cpu")
    ref = load_checkpoint(engine / "awq")
    stops = ref.tokenizer.stop_token_ids(ref.template)
    convs = read_conversations(engine / "awq" / "calibration" / "conversations.json")[:10]
    same = 0
    for conv in convs:
        first = conv.messages[0]
        images = conv.images[: first["content"].count("<image>")]
        ours = pipe.generate([first], images, SamplingConfig(max_new_tokens=24))
        ids = pipe.prompt_ids([first], images)
        from vlm_edge.common.image import preprocess_images

        theirs = generate(ref.model, ids, preprocess_images(images, ref.model.image_processor_config),
                          GenerationConfig(max_new_tokens=24, stop_token_ids=stops))
        same += ours.token_ids == theirs.token_ids
    assert len(convs) == 10 and same == 10


def test_runtime_never_imports_torch(engine):
    code = ("import sys, vlm_edge.edge as e; p = e.load(sys.argv[1]); "
            "r = p.generate('Describe the image.', [sys.argv[2]]); "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(repr(r.text), bad); "
            "sys.exit(1 if bad else 0)")
    image = next((engine / "awq" / "calibration" / "images").iterdir())
    result = subprocess.run([sys.executable, "-c", code, str(engine / "engine"), str(image)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stream_pieces_join_to_the_answer_and_images_are_cached(engine):
    pipe = load(engine / "engine")
    image = next((engine / "awq" / "calibration" / "images").iterdir())
    pieces = list(pipe.stream("Describe the image.", [image], SamplingConfig(max_new_tokens=20)))
    again = pipe.generate("Describe the image.", [image.read_bytes()], SamplingConfig(max_new_tokens=20))
    assert "".join(pieces) == again.text
    assert len(pipe._image_cache) == 1  # the file and its bytes are the same picture


def test_stop_strings_and_errors(engine):
    pipe = load(engine / "engine")
    image = next((engine / "awq" / "calibration" / "images").iterdir())
    full = pipe.generate("Describe the image.", [image], SamplingConfig(max_new_tokens=20)).text
    word = full.split()[1] if len(full.split()) > 1 else full
    cut = pipe.generate("Describe the image.", [image], SamplingConfig(max_new_tokens=20, stop=(word,)))
    assert cut.finish_reason == "stop" and word not in cut.text and full.startswith(cut.text)
    with pytest.raises(InputError, match="exceeds the model's context"):
        pipe.generate("Describe the image.", [image], SamplingConfig(max_new_tokens=100_000))
    with pytest.raises(InputError, match="placeholder"):
        pipe.generate([{"role": "user", "content": "<image> <image> two?"}], [image])
    with pytest.raises(InputError, match="does not exist"):
        load(engine / "nope")


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 3.0, 2.0, -1.0], np.float32)
    assert select_token(logits, [], SamplingConfig(), rng) == 1
    assert select_token(logits, [1], SamplingConfig(repetition_penalty=4.0), rng) == 2  # 3 / 4 < 2
    assert all(select_token(logits, [], SamplingConfig(temperature=1.0, top_k=1), rng) == 1 for _ in range(20))
    draws = [select_token(logits, [], SamplingConfig(temperature=1.0, top_p=0.7), rng) for _ in range(200)]
    assert set(draws) <= {1, 2}  # p(1) = 0.67 < 0.7: the top two tokens are kept
    a = [select_token(logits, [], SamplingConfig(temperature=1.0), np.random.default_rng(5)) for _ in range(5)]
    b = [select_token(logits, [], SamplingConfig(temperature=1.0), np.random.default_rng(5)) for _ in range(5)]
    assert a == b


def test_vlm_run_streams_the_answer(engine):
    image = next((engine / "awq" / "calibration" / "images").iterdir())
    result = subprocess.run([sys.executable, "-m", "vlm_edge.edge.cli", str(engine / "engine"), "--image", str(image),
                             "--prompt", "Describe the image.", "--stats"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() and "decode" in result.stderr, result.stderr


def test_chat_turns_reuse_the_cached_prefix_and_match_a_fresh_run(engine):
    images = sorted((engine / "awq" / "calibration" / "images").iterdir())[:2]
    cfg = SamplingConfig(max_new_tokens=12)
    pipe = load(engine / "engine", "ort-cpu")
    assert type(pipe.decoder).__name__ == "SharedCacheDecoder"
    buffers = [b.data_ptr() for b in pipe.decoder.cache]
    turn1 = [{"role": "user", "content": "<image>\nDescribe the image."}]
    first = pipe.generate(turn1, images[:1], cfg)
    turn2 = turn1 + [{"role": "assistant", "content": first.text},
                     {"role": "user", "content": "<image>\nAnd this one?"}]
    second = pipe.generate(turn2, images, cfg)
    assert first.cached_tokens == 0 and second.cached_tokens > first.prompt_tokens - 2
    assert [b.data_ptr() for b in pipe.decoder.cache] == buffers  # the cache was written in place
    fresh = load(engine / "engine", "ort-cpu", reuse_prefix=False).generate(turn2, images, cfg)
    assert fresh.cached_tokens == 0 and fresh.token_ids == second.token_ids


def test_frame_stream_answers_every_frame_like_one_by_one(engine):
    images = sorted((engine / "awq" / "calibration" / "images").iterdir())[:5]
    cfg = SamplingConfig(max_new_tokens=8)
    pipe = load(engine / "engine", "ort-cpu")
    answers = list(pipe.stream_frames(iter(images), "Describe the image.", cfg, queue_size=2))
    single = [load(engine / "engine", "ort-cpu").generate("Describe the image.", [im], cfg) for im in images]
    assert [a.index for a in answers] == list(range(5)) and all(a.dropped == 0 for a in answers)
    assert [a.generation.token_ids for a in answers] == [s.token_ids for s in single]
    assert all(a.generation.cached_tokens > 0 for a in answers[1:])  # the text before the frame is reused


def test_live_frame_stream_drops_the_oldest_and_reports_bad_frames(engine):
    import time as _time

    images = sorted((engine / "awq" / "calibration" / "images").iterdir())[:1] * 12
    pipe = load(engine / "engine", "ort-cpu")
    seen = []
    for answer in pipe.stream_frames(images, "Describe the image.", SamplingConfig(max_new_tokens=4), queue_size=1,
                                     live=True):
        seen.append(answer)
        _time.sleep(0.2)  # a slow consumer: the source runs ahead, the oldest waiting frames go
    assert seen[-1].index == 11 and sum(a.dropped for a in seen) == 12 - len(seen) > 0
    with pytest.raises(InputError, match="frame 1"):
        list(pipe.stream_frames([images[0], b"not an image"], "Describe the image.", SamplingConfig(max_new_tokens=2)))


def test_vlm_bench_prints_and_saves_the_figures(engine, tmp_path):
    import json

    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "vlm_edge.edge.bench", str(engine / "engine"), "--runs", "3",
                             "--new-tokens", "6", "--backend", "ort-cpu", "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "decode tokens/s" in result.stdout and "peak RSS" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["runs"] == 3 and figures["new_tokens"] == 6
    decode = figures["metrics"]["decode_tokens_per_s"]
    assert 0 < decode["min"] <= decode["median"] <= decode["max"]
    assert 0 <= figures["metrics"]["python_overhead_pct"]["median"] < 100
    assert figures["peak_rss_bytes"] > figures["model_memory_bytes"]["weights"]


def test_tensorrt_backend_picks_plans_by_version_and_gpu_and_says_what_is_missing(engine):
    from vlm_edge.common.errors import CheckpointError, UnsupportedFeatureError
    from vlm_edge.edge.tensorrt import select_plans

    targets = [{"component": c, "file": f"engines/k/{c}.plan", "tensorrt": "10.3.0", "sm": "87"}
               for c in ("vision", "decoder.trt")]
    assert select_plans(targets, "10.3.0", "87", ("vision", "decoder.trt"))["decoder.trt"] == "engines/k/decoder.trt.plan"
    with pytest.raises(CheckpointError, match="built with TensorRT 10.3.0 for sm90.*vlm-build-engine"):
        select_plans(targets, "10.3.0", "90", ("vision", "decoder.trt"))
    with pytest.raises(CheckpointError, match="decoder.trt"):
        select_plans(targets[:1], "10.3.0", "87", ("vision", "decoder.trt"))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(UnsupportedFeatureError, match="tensorrt.*ort-cpu"):
            load(engine / "engine", "tensorrt")
    assert load(engine / "engine").backend in ("ort-cpu", "ort-cuda")  # auto: no plans were built


def test_tensorrt_plans_and_plugin_libraries_come_only_from_where_vlm_edge_puts_them(tmp_path, monkeypatch):
    """A manifest is untrusted: a plan outside the engine directory and a plugin library that is not
    vlm-edge's own build (loading one runs its code) are refused before TensorRT sees them."""
    from vlm_edge.common.errors import CheckpointError
    from vlm_edge.edge.tensorrt import check_plan_files, check_plugin_library

    monkeypatch.setenv("VLM_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VLM_EDGE_PLUGIN_LIBRARY", raising=False)
    engine_dir = tmp_path / "engine"
    (engine_dir / "engines").mkdir(parents=True)
    (engine_dir / "engines" / "out").symlink_to(tmp_path)
    check_plan_files(engine_dir, {"vision": "engines/k/vision.plan"})
    for rel in ("/etc/passwd", "../x.plan", "engines/out/x.plan"):
        with pytest.raises(CheckpointError, match="outside the engine directory"):
            check_plan_files(engine_dir, {"vision": rel})
    check_plugin_library(str(tmp_path / "cache" / "kernels" / "plugin-abc" / "libvlm_edge_plugins.so"))
    with pytest.raises(CheckpointError, match="not one vlm-edge built"):
        check_plugin_library(str(tmp_path / "evil.so"))
    monkeypatch.setenv("VLM_EDGE_PLUGIN_LIBRARY", str(tmp_path / "mine.so"))
    check_plugin_library(str(tmp_path / "mine.so"))  # the user's own prebuilt library, named by the user
