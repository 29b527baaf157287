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

import contextlib
import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np
from PIL import Image

from .errors import CheckpointError, InputError, UnsupportedFeatureError
from .fsutil import loads_json

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


class VideoTooLarge(InputError):
    """A clip over a limit: its frames' pixels, its frame count, or the memory decoding it needs."""


class VideoStopped(Exception):
    """`should_stop` said to stop (the client went away, the timeout passed) while a clip was decoded."""


MAX_FRAME_PIXELS = 4096 * 4096  # a frame's width x height, read from the container before any frame is decoded
MAX_FRAMES = 20_000  # frames in a clip (11 minutes at 30 frames/s); a longer clip is refused, not decoded through
BYTES_PER_DECODED_PIXEL = 24  # one frame being decoded, measured: 18-20 bytes a pixel at the peak (FFmpeg's planes, BGR, RGB, Pillow's copy)


@dataclass(frozen=True)
class VideoLimits:
    """What a clip may be; checked from its header where possible, else as frames are decoded."""

    max_pixels: int = MAX_FRAME_PIXELS
    max_frames: int = MAX_FRAMES


def container_of(head: bytes) -> str | None:
    """The container the first bytes of a file start (mp4 for MP4 and QuickTime, avi, mkv for
    Matroska and WebM), or None when they start none of them: a picture labelled as a video, say."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"):
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML
        return "mkv"
    return None


def decode_cost(width: int, height: int) -> int:
    """Bytes decoding one frame of `width` x `height` holds at once (one decoder thread)."""
    return int(width) * int(height) * BYTES_PER_DECODED_PIXEL


def read_frames(source: str | os.PathLike | bytes, count: int = DEFAULT_NUM_FRAMES, *,
                limits: VideoLimits = VideoLimits(),
                fit: Callable[[Image.Image], Image.Image] | None = None,
                reserve: Callable[[int], ContextManager] | None = None,
                should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
    """`count` RGB frames of the clip at path `source` (or in the bytes `source`, held in an in-memory
    file), sampled uniformly, each passed through `fit` as soon as it is decoded (e.g. resized to
    the vision tower's input).

    Before a frame is decoded: the file must start a video container (not a picture), its frame
    size must be within `limits.max_pixels` and its declared frame count within `limits.max_frames`
    (VideoTooLarge otherwise), and `reserve(bytes)`, when given, must grant the memory decoding one
    frame takes (it may raise to refuse). OpenCV decodes on one thread. `should_stop` is asked
    between frames (VideoStopped). A frame larger than its container said is refused when decoded.
    """
    if isinstance(source, (bytes, bytearray)):
        if container_of(bytes(source[:16])) is None:
            raise InputError(f"video {SENT} is not an MP4, QuickTime, AVI, Matroska or WebM file")
        cv2 = _cv2()
        try:
            with _as_file(bytes(source)) as path:
                try:
                    return _read(cv2, path, count, limits, fit, reserve, should_stop)
                except InputError as e:
                    raise type(e)(str(e).replace(str(path), SENT)) from None
        except OSError as e:  # no memory (memfd) or no disk (temporary file) to hold it
            raise VideoTooLarge(f"video {SENT}: there is no room to hold it here now ({os.strerror(e.errno or 0)}); "
                                "send a smaller clip or retry later") from None
    path = Path(source)
    if not path.is_file():
        raise InputError(f"video {path} does not exist or is not a file")
    with open(path, "rb") as f:
        if container_of(f.read(16)) is None:
            raise InputError(f"video {path} is not an MP4, QuickTime, AVI, Matroska or WebM file")
    return _read(_cv2(), path, count, limits, fit, reserve, should_stop)


SENT = "(sent in the request)"  # how errors name a clip given as bytes


def _read(cv2, path: Path, count: int, limits: VideoLimits, fit, reserve, should_stop) -> list[Image.Image]:
    capture = _open(cv2, path)
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    _check_frame(path, width, height, limits)
    if declared > limits.max_frames:
        raise VideoTooLarge(f"video {path} has {declared} frames, more than the {limits.max_frames} taken; "
                            "send a shorter clip")
    with reserve(decode_cost(width, height)) if reserve else contextlib.nullcontext():
        total = _count_frames(cv2, path, limits, should_stop)
        wanted = set(sample_indices(total, count))
        capture = _open(cv2, path)
        kept: list[Image.Image] = []
        try:
            for index in range(max(wanted) + 1):
                if should_stop is not None and should_stop():
                    raise VideoStopped()
                if index not in wanted:
                    if not capture.grab():
                        break
                    continue
                ok, bgr = capture.read()
                if not ok:
                    break
                _check_frame(path, bgr.shape[1], bgr.shape[0], limits)
                frame = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                del bgr
                kept.append(fit(frame) if fit is not None else frame)
        finally:
            capture.release()
    if len(kept) != len(wanted):
        raise InputError(f"video {path} stopped decoding after {len(kept)} of the {len(wanted)} frames to keep")
    return kept


def _open(cv2, path: Path):
    """A capture of `path` on one decoder thread (more threads hold a frame each)."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        capture.release()
        raise InputError(f"video {path} could not be opened; pass an MP4, AVI, MKV or WebM file OpenCV can decode")
    return capture


@contextlib.contextmanager
def _as_file(data: bytes) -> Iterator[Path]:
    """`data` as a file OpenCV can open: an anonymous in-memory file on Linux (memfd: no disk to
    fill, gone when closed), a private temporary file elsewhere. OpenCV's own reading from a
    Python stream is not used: mutated clips crashed it (a segmentation fault) where the same
    bytes from a file were refused cleanly."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("vlm-edge-video")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="vlm-edge-video-") as tmp:
        path = Path(tmp) / "clip"
        path.write_bytes(data)
        yield path


def _check_frame(path: Path, width: int, height: int, limits: VideoLimits) -> None:
    if width * height > limits.max_pixels:
        raise VideoTooLarge(f"video {path}: its {width}x{height} frames are over the limit of {limits.max_pixels} "
                            "pixels a frame; send a smaller video")


def _count_frames(cv2, path: Path, limits: VideoLimits, should_stop: Callable[[], bool] | None) -> int:
    """Frames the clip really has (CAP_PROP_FRAME_COUNT is an estimate in some containers)."""
    capture = _open(cv2, path)
    total = 0
    try:
        while capture.grab():
            total += 1
            if total > limits.max_frames:
                raise VideoTooLarge(f"video {path} has more than {limits.max_frames} frames; send a shorter clip")
            if should_stop is not None and total % 16 == 0 and should_stop():
                raise VideoStopped()
    finally:
        capture.release()
    if total == 0:
        raise InputError(f"video {path} has no frames OpenCV can decode")
    return total


BASIC_ENCODER = "llava.model.encoders.BasicVideoEncoder"
TSP_ENCODER = "llava.model.encoders.TSPVideoEncoder"


def video_pool_sizes(encoder: object, where: str = "config.json") -> list[tuple[int, int, int]]:
    """The (t, h, w) pool sizes a checkpoint's `video_encoder` asks for ([] for frames as they are).
    `encoder`: the config's value (a dict or its JSON text; None when absent)."""
    if encoder is None:
        return []
    if isinstance(encoder, str):
        try:
            encoder = loads_json(encoder, what="its text", error=CheckpointError)  # malformed or over-nested
        except CheckpointError as e:
            raise CheckpointError(f"{where}: video_encoder is not JSON that vlm-edge reads: {e}") from None
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
