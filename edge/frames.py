"""Pipelined frame streams: the vision graph encodes the next frames while the decoder answers.

    for answer in pipe.stream_frames(camera_frames(), "What colour is the circle?", live=True):
        print(answer.index, answer.generation.text)

A worker thread pulls frames from the source, decodes and preprocesses them and runs the vision
graph (ONNX Runtime and TensorRT release the GIL while they run), and puts the embeddings on a
bounded queue. The caller's thread takes them in order and runs prefill and decode; the prompt's
text before the image is prefilled once and reused from the KV cache for every frame.

Backpressure: a file or a list (`live=False`) waits for the decoder, so every frame is answered.
A live source (`live=True`) never waits: when `queue_size` encoded frames are already waiting,
the oldest is dropped and counted in the next answer's `dropped`, so answers stay close to now.
An error in the worker (an unreadable frame) is raised in the caller's thread at that frame.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from vlm_edge.common.errors import InputError
from vlm_edge.common.image import ImageInput, load_image
from vlm_edge.common.templates import Message

from .sampling import SamplingConfig

if TYPE_CHECKING:
    from .pipeline import FrameAnswer, Pipeline

_END = object()


def stream_frames(pipe: "Pipeline", frames: Iterable[ImageInput], prompt: str | Sequence[Message],
                  config: SamplingConfig, queue_size: int, live: bool) -> Iterator["FrameAnswer"]:
    from .pipeline import FrameAnswer, Generation

    if queue_size < 1:
        raise InputError(f"queue_size {queue_size} must be at least 1")
    config.validate()
    ids = pipe.prompt_ids(prompt, [None])  # one frame per request; the placeholder count is checked here
    pipe._check_context(ids, [pipe.model["num_image_tokens"]], config, Generation([], "", "length", 0))
    ready: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    lock = threading.Lock()  # guards the drop counter and drop-oldest against the consumer
    dropped = [0]

    def put(item) -> None:
        while not stop.is_set():
            if live and item is not _END:
                with lock:
                    if ready.full():
                        try:
                            ready.get_nowait()
                            dropped[0] += 1
                        except queue.Empty:
                            pass
                    ready.put_nowait(item)
                return
            try:
                ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for index, frame in enumerate(frames):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                pil = load_image(frame, name=f"frame {index}")
                key = hashlib.sha1(f"{pil.size}{pil.mode}".encode() + pil.tobytes()).hexdigest()
                embeds = pipe.run_vision([pil])
                put((index, embeds, key, time.perf_counter() - t0, t0))
        except BaseException as e:  # re-raised in the caller's thread, at the frame that failed
            put(e)
            return
        put(_END)

    worker = threading.Thread(target=work, name="vlm-edge-vision", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            index, embeds, key, vision_s, t0 = item
            with lock:
                skipped, dropped[0] = dropped[0], 0
            result = Generation([], "", "length", 0)
            pipe._check_context(ids, [len(embeds[0])], config, result)
            result.timings["vision"] = vision_s
            for _ in pipe._answer_stream(ids, embeds, [key], config, result, t0):
                pass
            yield FrameAnswer(index, result, skipped)
    finally:  # the caller stopped early, or the stream ended: let the worker finish its frame
        stop.set()
        deadline = time.monotonic() + 60
        while worker.is_alive() and time.monotonic() < deadline:
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)
