"""Video input (common/video.py): uniform frame sampling on clips the tests render and encode, and
the runtime answering about a clip exactly as the PyTorch reference does about the same frames.

The clips are MPEG-4 files written with OpenCV (the jetson extra; skipped without it). Each frame
is one flat grey level that names its index, so a kept frame says which one it was even after
lossy encoding.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from vlm_edge.common.errors import InputError
from vlm_edge.common.video import read_frames, sample_indices, video_prompt

cv2 = pytest.importorskip("cv2", reason="video decoding needs OpenCV (pip install \"vlm-edge[jetson]\")")


def numbered_clip(path, count: int, size: int = 64):
    from fixtures import write_video

    frames = [np.full((size, size, 3), 3 * i, np.uint8) for i in range(count)]  # grey level 3 x index
    return write_video(path, frames)


def test_sampling_takes_the_middle_of_equal_spans():
    assert sample_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]  # a short clip: every frame
    with pytest.raises(InputError, match="at least 1"):
        sample_indices(10, 0)


@pytest.mark.parametrize("total,count", [(80, 8), (33, 8), (5, 8), (24, 3)])
def test_read_frames_keeps_the_sampled_frames_in_order(tmp_path, total, count):
    path = numbered_clip(tmp_path / "clip.mp4", total)
    frames = read_frames(path, count)
    assert len(frames) == min(total, count)
    # every frame's grey level as decoded (encoding shifts them a little), then each kept frame's nearest
    capture, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(float(bgr.mean()))
    capture.release()
    assert len(decoded) == total
    found = [int(np.argmin([abs(float(np.asarray(f).mean()) - d) for d in decoded])) for f in frames]
    assert found == sample_indices(total, count)


def test_bad_videos_fail_in_one_line(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_frames(tmp_path / "none.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="broken.mp4"):
        read_frames(broken)


def test_video_placeholders():
    assert video_prompt("What happens?", 2) == "<image>\n<image>\nWhat happens?"
    assert video_prompt("In <video> what happens?", 2) == "In <image>\n<image> what happens?"
    with pytest.raises(InputError, match="one video"):
        video_prompt("<video> and <video>", 2)


def test_runtime_answers_a_clip_like_the_reference_on_its_frames(micro_engine, tmp_path):
    """The micro engine (num_video_frames 8 by default): its answer about a rendered scene clip equals the
    reference's greedy answer about the 8 sampled frames given as 8 images."""
    from fixtures import scene_frames, write_video

    from vlm_edge.common.image import preprocess_tiled
    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.model import GenerationConfig, load_checkpoint
    from vlm_edge.model.generate import generate

    frames, _ = scene_frames(seconds=1.0, fps=10, size=64)
    clip = write_video(tmp_path / "scene.mp4", frames)
    pipe = load(micro_engine / "engine", "ort-cpu")
    assert pipe.model["num_video_frames"] == 8
    ours = pipe.generate("What colour is the shape?", config=SamplingConfig(max_new_tokens=8, ignore_eos=True), video=clip)
    kept = read_frames(clip, 8)
    ids = pipe.prompt_ids(video_prompt("What colour is the shape?", 8), kept)
    ref = load_checkpoint(micro_engine / "awq")
    pixels, plans = preprocess_tiled(kept, ref.model.image_processor_config)
    theirs = generate(ref.model, ids, pixels, GenerationConfig(max_new_tokens=8, stop_token_ids=[]), plans=plans)
    assert ours.token_ids == theirs.token_ids and ours.prompt_tokens == theirs.prompt_tokens
    with pytest.raises(InputError, match="not both"):
        pipe.generate("What?", [kept[0]], video=clip)


def test_vlm_run_takes_a_video(micro_engine, tmp_path):
    from fixtures import scene_frames, write_video

    frames, _ = scene_frames(seconds=1.0, fps=10, size=64)
    clip = write_video(tmp_path / "scene.mp4", frames)
    out = subprocess.run(["vlm-run", str(micro_engine / "engine"), "--video", str(clip), "--prompt", "What colour?",
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    out = subprocess.run(["vlm-run", str(micro_engine / "engine"), "--video", str(tmp_path / "none.mp4"), "--prompt", "x"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "none.mp4" in out.stderr


# ---- NVILA's temporal-spatial pooling (video_encoder: TSPVideoEncoder with pool_sizes) ----------------------
TSP = "llava.model.encoders.TSPVideoEncoder"


def pool_by_loops(frames, pool_sizes):
    """The pooling written out: for each (t, h, w), every pooled frame's tokens row by row over the
    pooled grid, each the plain mean of its t x h x w source tokens (tokens: a row-major square grid)."""
    n, tokens, dim = frames.shape
    side = int(round(tokens ** 0.5))
    out = []
    for t, h, w in pool_sizes:
        for f in range(n // t):
            rows = []
            for r in range(side // h):
                for c in range(side // w):
                    total = np.zeros(dim, np.float64)
                    for df in range(t):
                        for dr in range(h):
                            for dc in range(w):
                                total += frames[f * t + df, (r * h + dr) * side + c * w + dc]
                    rows.append(total / (t * h * w))
            out.append(np.array(rows))
    return out


@pytest.mark.parametrize("sizes", [[(4, 1, 1)], [(2, 2, 2)], [(8, 1, 1), (1, 2, 2)], [(1, 1, 1)]])
def test_pool_video_equals_the_loops(sizes):
    from vlm_edge.common.video import pool_video

    frames = np.random.default_rng(0).standard_normal((8, 16, 5)).astype(np.float32)  # a 4x4 token grid
    ours, theirs = pool_video(list(frames), sizes), pool_by_loops(frames, sizes)
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_video_encoder_config_is_read_or_refused_in_one_line():
    import json

    from vlm_edge.common.errors import CheckpointError, UnsupportedFeatureError
    from vlm_edge.common.video import check_pooling, video_pool_sizes

    assert video_pool_sizes(None) == []
    assert video_pool_sizes({"_target_": "llava.model.encoders.BasicVideoEncoder"}) == []
    assert video_pool_sizes(json.dumps({"_target_": TSP, "pool_sizes": [[8, 1, 1]]})) == [(8, 1, 1)]  # as NVILA's scripts pass it
    with pytest.raises(UnsupportedFeatureError, match="not supported"):
        video_pool_sizes({"_target_": "llava.model.encoders.Other"})
    with pytest.raises(UnsupportedFeatureError, match="sep_tokens"):
        video_pool_sizes({"_target_": TSP, "pool_sizes": [[8, 1, 1]], "sep_tokens": "\n"})
    with pytest.raises(CheckpointError, match="pool_sizes"):
        video_pool_sizes({"_target_": TSP, "pool_sizes": [[8, 1]]})
    with pytest.raises(CheckpointError, match="not JSON"):
        video_pool_sizes("{oops")
    with pytest.raises(InputError, match="5 frames"):
        check_pooling(5, 4, [(4, 1, 1)], "the video")


def test_a_pooling_checkpoint_exports_and_answers_a_clip_like_the_reference(micro_engine, tmp_path):
    """The micro checkpoint given NVILA's TSP video encoder with two pool sizes, [4, 1, 1] (2 pictures of
    4 tokens from 8 frames) and [8, 2, 2] (1 picture of 1 token): exported, the runtime's prompt and
    greedy answer about a clip equal the reference's; the config's mistakes are refused."""
    import json
    import shutil

    from fixtures import scene_frames, write_video

    from vlm_edge.common.errors import CheckpointError
    from vlm_edge.common.image import preprocess_images
    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.export.api import export_checkpoint
    from vlm_edge.export.config import ExportConfig
    from vlm_edge.model import GenerationConfig, load_checkpoint
    from vlm_edge.model.generate import generate

    ckpt = tmp_path / "ckpt"
    shutil.copytree(micro_engine / "awq", ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["video_encoder"] = json.dumps({"_target_": TSP, "pool_sizes": [[4, 1, 1], [8, 2, 2]]})
    (ckpt / "config.json").write_text(json.dumps(config))
    export_checkpoint(ckpt, tmp_path / "engine", ExportConfig(awq4=True, prompts=1))
    pipe = load(tmp_path / "engine", "ort-cpu")
    assert pipe.video_pool_sizes == [(4, 1, 1), (8, 2, 2)]

    frames, _ = scene_frames(seconds=1.0, fps=10, size=64)
    clip = write_video(tmp_path / "scene.mp4", frames)
    ours = pipe.generate("What colour is the shape?", config=SamplingConfig(max_new_tokens=8, ignore_eos=True), video=clip)
    kept = read_frames(clip, 8)
    ids = pipe.prompt_ids(video_prompt("What colour is the shape?", 3), [None] * 3)
    ref = load_checkpoint(ckpt)
    pixels = preprocess_images(kept, ref.model.image_processor_config)
    theirs = generate(ref.model, ids, pixels, GenerationConfig(max_new_tokens=8, stop_token_ids=[]), video=True)
    assert ours.prompt_tokens == len(ids) - 3 + 4 + 4 + 1 == theirs.prompt_tokens
    assert ours.token_ids == theirs.token_ids

    short = write_video(tmp_path / "short.mp4", frames[:5])  # 5 frames: not a multiple of 4
    with pytest.raises(InputError, match="5 frames"):
        pipe.generate("What?", video=short)
    config["video_encoder"] = {"_target_": TSP, "pool_sizes": [[3, 1, 1]]}  # 8 frames do not split in threes
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_video_frames=8"):
        load_checkpoint(ckpt)
    config["video_encoder"], config["num_time_tokens"] = None, 100
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="num_time_tokens=100"):
        load_checkpoint(ckpt)


# ---- a video question answered by a model trained on rendered clips -----------------------------------------
@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    from fixtures import train_video_model

    return train_video_model(tmp_path_factory.mktemp("video"))


CLIPS = [  # (colour, shape) per segment of a second (10 frames at 10 fps)
    (("red", "circle"), ("blue", "square"), ("green", "triangle")),
    (("yellow", "triangle"), ("purple", "circle")),
    (("blue", "circle"), ("red", "square"), ("yellow", "circle")),
    (("green", "square"), ("red", "triangle")),
    (("orange", "circle"), ("green", "circle")),
    (("purple", "square"), ("yellow", "triangle"), ("blue", "circle")),
    (("red", "triangle"), ("orange", "square")),
    (("blue", "square"), ("green", "circle"), ("red", "circle")),
]


def test_a_trained_model_answers_which_colour_appears_first_and_last(video_model, tmp_path):
    """The micro preset trained on "Which colour appears first / last?" over 8-frame clips of our
    scenes (tests/fixtures.py: train_video_model) answers about MPEG-4 clips rendered and encoded
    here, through vlm-run's pipeline: the clip's 8 sampled frames (the middle of equal spans) carry
    the segments' colours in order, every answer is a colour, and most name the first and the last
    segment's colour. Which colours the micro model tells apart is a property of its draw (the CPU's
    kernels decide it): two draws measured on 80 held-out questions were right on 65 and 64, every
    miss a colour taken for a neighbour (purple for blue or red), never the wrong segment. So the
    bound is more than half of 16 (a model at 80% misses it about 3 times in 1,000), not all."""
    from fixtures import VIDEO_QUESTIONS, scene_frames, write_video

    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.train.scenes import COLOURS

    pipe = load(video_model, "ort-cpu")
    right, answers = [], []
    for k, segments in enumerate(CLIPS):
        frames, colours = scene_frames(segments, seconds=1.0, fps=10, size=64, seed=k)
        clip = write_video(tmp_path / f"clip{k}.mp4", frames)
        kept = read_frames(clip, 8)
        seen = [min(COLOURS, key=lambda c: _distance(f, COLOURS[c])) for f in kept]  # each kept frame's shape colour
        assert seen == [colours[i] for i in sample_indices(len(frames), 8)]
        for which, question in VIDEO_QUESTIONS.items():
            answer = pipe.generate(question, config=SamplingConfig(max_new_tokens=4), video=clip).text.strip()
            answers.append(answer)
            right.append(answer == (segments[0][0] if which == "first" else segments[-1][0]))
    assert all(a in COLOURS for a in answers), answers
    assert sum(right) > len(right) // 2, list(zip(answers, right))


def _distance(frame, rgb) -> float:
    """How far the frame's most saturated pixels (the shape; the background is grey) are from `rgb`."""
    pixels = np.asarray(frame, np.float32).reshape(-1, 3)
    shape = pixels[np.ptp(pixels, axis=1) > 60]
    return float(np.abs(shape.mean(axis=0) - np.asarray(rgb, np.float32)).sum())


def test_the_reference_cli_takes_a_video_and_answers_as_the_runtime(video_model, tmp_path):
    """`vlm-model generate --video` (the PyTorch reference) on the trained checkpoint: the same
    answer as the exported engine, and a clear one-line error for a missing clip."""
    from fixtures import scene_frames, write_video

    from vlm_edge.edge import SamplingConfig, load

    frames, _ = scene_frames(CLIPS[0], seconds=1.0, fps=10, size=64, seed=0)
    clip = write_video(tmp_path / "clip.mp4", frames)
    question = "Which colour appears last?"
    out = subprocess.run(["vlm-model", "generate", str(video_model.parent / "ckpt"), "--video", str(clip),
                          "--prompt", question, "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    runtime = load(video_model, "ort-cpu").generate(question, config=SamplingConfig(max_new_tokens=4), video=clip)
    from vlm_edge.train.scenes import COLOURS

    assert out.stdout.strip() == runtime.text.strip() and runtime.text.strip() in COLOURS, (out.stdout, runtime.text)
    out = subprocess.run(["vlm-model", "generate", str(video_model.parent / "ckpt"), "--video", str(tmp_path / "none.mp4"),
                          "--prompt", question], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "none.mp4" in out.stderr
