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
