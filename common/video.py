"""Video input: a clip becomes `num_video_frames` images, sampled uniformly, in the prompt as images.

Sampling: the clip's n decoded frames are split into k equal spans and the frame at the middle of
each span is kept (index floor((i + 0.5) * n / k), i = 0..k-1): first and last frames are not
favoured, and a clip of fewer than k frames gives all of them. Frames are decoded one after another
(no seeking, which some containers do inexactly) and only the kept ones are held.

In the prompt a video is its frames as images, each on its own line: `<video>` in the text is
replaced by k `<image>` lines; text without one gets them in front (as VILA's video prompts).
NVILA's temporal-spatial pooling (a checkpoint whose `video_encoder` is TSPVideoEncoder with
`pool_sizes`, as NVILA's video training scripts set `[[8, 1, 1]]`): the frames' projected tokens are
averaged over non-overlapping groups of t frames and h x w blocks of the token grid, for each
(t, h, w) in turn; every pooled frame is then one picture in the prompt (its tokens, then "\n"),
all of the first pool size's before the next one's. `pool_video` is that, in numpy; the PyTorch
reference computes it on its own (model/vila.py).
Decoding needs OpenCV (the jetson extra), imported only here; numpy + Pillow otherwise.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import CheckpointError, InputError, UnsupportedFeatureError

VIDEO_TOKEN = "<video>"
DEFAULT_NUM_FRAMES = 8  # VILA1.5's and NVILA's num_video_frames


def sample_indices(total: int, count: int) -> list[int]:
    """Which of `total` frames to keep for `count` (the module docstring)."""
    if count < 1:
        raise InputError(f"the number of video frames must be at least 1, got {count}")
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def _cv2():
    try:
        import cv2  # noqa: PLC0415  (opencv-python-headless: the jetson extra)
    except ImportError:
        raise UnsupportedFeatureError('video input needs OpenCV: pip install "vlm-edge[jetson]"') from None
    return cv2


def read_frames(path: str | os.PathLike, count: int = DEFAULT_NUM_FRAMES) -> list[Image.Image]:
    """`count` RGB frames of the clip at `path`, sampled uniformly."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video {path} does not exist or is not a file")
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InputError(f"video {path} could not be opened; pass an MP4, AVI, MKV or WebM file OpenCV can decode")
        frames: list[np.ndarray] = []
        while True:  # count first: CAP_PROP_FRAME_COUNT is an estimate in some containers
            ok = capture.grab()
            if not ok:
                break
            frames.append(None)  # type: ignore[arg-type]
        total = len(frames)
    finally:
        capture.release()
    if total == 0:
        raise InputError(f"video {path} has no frames OpenCV can decode")
    wanted = set(sample_indices(total, count))
    capture = cv2.VideoCapture(str(path))
    kept: list[Image.Image] = []
    try:
        for index in range(total):
            ok, bgr = capture.read()
            if not ok:
                break
            if index in wanted:
                kept.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    finally:
        capture.release()
    if len(kept) != len(wanted):
        raise InputError(f"video {path} stopped decoding after {len(kept)} of the {len(wanted)} frames to keep")
    return kept


BASIC_ENCODER = "llava.model.encoders.BasicVideoEncoder"
TSP_ENCODER = "llava.model.encoders.TSPVideoEncoder"


def video_pool_sizes(encoder: object, where: str = "config.json") -> list[tuple[int, int, int]]:
    """The (t, h, w) pool sizes a checkpoint's `video_encoder` asks for ([] for frames as they are).
    `encoder`: the config's value (a dict or its JSON text; None when absent)."""
    if encoder is None:
        return []
    if isinstance(encoder, str):
        try:
            encoder = json.loads(encoder)
        except ValueError:
            raise CheckpointError(f"{where}: video_encoder={encoder!r} is not JSON") from None
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{where}: video_encoder must be an object, got {encoder!r}")
    target = encoder.get("_target_", BASIC_ENCODER)
    if target not in (BASIC_ENCODER, TSP_ENCODER):
        raise UnsupportedFeatureError(f"{where}: video_encoder {target} is not supported; supported: "
                                      f"{BASIC_ENCODER}, {TSP_ENCODER}")
    for key, default in (("start_tokens", None), ("end_tokens", "\n"), ("sep_tokens", None), ("embed_time", "False")):
        if encoder.get(key, default) != default:
            raise UnsupportedFeatureError(f"{where}: video_encoder {key}={encoder[key]!r} is not supported "
                                          f"(only {default!r})")
    if target == BASIC_ENCODER:
        return []
    sizes = encoder.get("pool_sizes")
    if not (isinstance(sizes, list) and sizes and all(
            isinstance(s, (list, tuple)) and len(s) == 3 and all(isinstance(v, int) and v >= 1 for v in s) for s in sizes)):
        raise CheckpointError(f"{where}: video_encoder pool_sizes={sizes!r} must be a list of [t, h, w] positive integers")
    return [tuple(s) for s in sizes]  # type: ignore[misc]


def pooled_frames(frames: int, pool_sizes) -> int:
    """How many pictures `frames` frames become in the prompt."""
    return sum(frames // t for t, _, _ in pool_sizes) if pool_sizes else frames


def check_pooling(frames: int, tokens: int, pool_sizes, what: str = "the model") -> None:
    """Refuse in one line a frame count or token grid the pool sizes do not divide (VILA would fail)."""
    side = math.isqrt(tokens)
    for t, h, w in pool_sizes:
        if side * side != tokens or frames % t or side % h or side % w:
            raise InputError(f"{what}: {frames} frames of {tokens} tokens cannot be pooled by [{t}, {h}, {w}]: the "
                             "frame count must be a multiple of t and the square token grid's side of h and w")


def pool_video(features: "list[np.ndarray] | np.ndarray", pool_sizes) -> list[np.ndarray]:
    """[frames][tokens, D] projected frame tokens -> one [tokens', D] array per pooled frame."""
    x = np.stack([np.asarray(f) for f in features])
    if not pool_sizes:
        return list(x)
    n, tokens, dim = x.shape
    check_pooling(n, tokens, pool_sizes)
    side = math.isqrt(tokens)
    out: list[np.ndarray] = []
    for t, h, w in pool_sizes:
        grid = x.reshape(n // t, t, side // h, h, side // w, w, dim).astype(np.float32)
        pooled = grid.mean(axis=(1, 3, 5), dtype=np.float32).astype(x.dtype)
        out += list(pooled.reshape(n // t, (side // h) * (side // w), dim))
    return out


def video_prompt(text: str, frames: int) -> str:
    """The text with its video as `frames` image placeholders (the module docstring)."""
    lines = "".join("<image>\n" for _ in range(frames))
    if text.count(VIDEO_TOKEN) > 1:
        raise InputError("the prompt has more than one <video>; one video per request")
    if VIDEO_TOKEN in text:
        return text.replace(VIDEO_TOKEN, lines.rstrip("\n"))
    return lines + text


def with_video(messages, frames: int):
    """A prompt string or a conversation with its video as `frames` image placeholders (in the last
    user turn of a conversation)."""
    if isinstance(messages, str):
        return video_prompt(messages, frames)
    out = [dict(m) for m in messages]
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if not users:
        raise InputError("a video needs a user message to go with")
    out[users[-1]]["content"] = video_prompt(str(out[users[-1]].get("content", "")), frames)
    return out
