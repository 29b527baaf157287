"""One pipeline, one generation thread, a bounded admission count.

The pipeline holds one KV cache, so requests run one at a time on a worker thread (which also
keeps ONNX Runtime's threads off the event loop). `admit` counts a request in when fewer than
`limit` are being prepared (images and videos decoded), waiting or running, else raises `Busy`
(the server answers 429); `enqueue` then queues its job. A job streams its
pieces through callbacks; setting `job.cancel` (a client went away, the timeout passed, the
server is stopping) ends its generation at the next token.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from vlm_edge.common.log import get_logger

log = get_logger(__name__)


class Busy(Exception):
    """The admission limit is reached."""


class NotReady(Exception):
    """The pipeline is still loading, failed to load, or the server is stopping."""


@dataclass
class Job:
    messages: list
    images: list
    config: Any  # SamplingConfig
    on_piece: Callable[[str], None]
    on_done: Callable[[Any, BaseException | None], None]  # (Generation or None, error or None)
    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    reason: str = ""  # why it was cancelled: disconnect | timeout | shutdown
    video: list | None = None  # a video_url part's decoded frames (then images is empty)


class Worker:
    def __init__(self, load: Callable[[], Any], limit: int):
        self._load, self.limit = load, limit
        self.pipe = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.closing = False
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self.admitted = 0  # running + waiting
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="vlm-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def admit(self) -> None:
        """Count a request in before its images or video are decoded; Busy when `limit` are in.
        Every admit is followed by one `enqueue` (the job then leaves through `_finish`) or one
        `release` (it failed before it got that far)."""
        if self.closing or not self.ready.is_set() or self.pipe is None:
            raise NotReady("the server is stopping" if self.closing else "the model is still loading")
        with self._lock:
            if self.admitted >= self.limit:
                raise Busy()
            self.admitted += 1

    def release(self) -> None:
        """An admitted request that will not be enqueued (its input was refused, its client left)."""
        with self._lock:
            self.admitted -= 1

    def enqueue(self, job: Job) -> None:
        """Queue an admitted job for generation."""
        if self.closing:
            self._finish(job, None, NotReady("the server is stopping"))
            return
        self._jobs.put(job)

    def submit(self, job: Job) -> None:
        self.admit()
        self.enqueue(job)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def stop(self, grace: float) -> None:
        """Refuse new jobs, cancel the waiting ones, give the running one `grace` seconds."""
        self.closing = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.reason = "shutdown"
                job.cancel.set()
                self._finish(job, None, NotReady("the server is stopping"))
        deadline = time.monotonic() + grace
        while self.running is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.running is not None:
            self.running.reason = "shutdown"
            self.running.cancel.set()
        self._jobs.put(None)
        self._thread.join(timeout=max(grace, 1.0))

    def _finish(self, job: Job, result, error) -> None:
        with self._lock:
            self.admitted -= 1
        try:
            job.on_done(result, error)
        except Exception:  # a callback into a closed event loop must not kill the worker
            log.exception("job callback failed")

    def _run(self) -> None:
        try:
            self.pipe = self._load()
        except BaseException as e:  # /health reports it; the worker stays down
            self.error = e
            log.error("loading the engine failed: %s", e)
            return
        finally:
            self.ready.set()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancel.is_set() or self.closing:
                self._finish(job, None, None)
                continue
            self.running = job
            try:
                self._generate(job)
            finally:
                self.running = None

    def _generate(self, job: Job) -> None:
        from vlm_edge.edge import Generation

        def should_stop() -> bool:
            if not job.cancel.is_set() and time.perf_counter() > job.deadline:
                job.reason = "timeout"
                job.cancel.set()
            return job.cancel.is_set()

        result = Generation([], "", "length", 0)
        try:
            for piece in self.pipe.stream(job.messages, job.images, job.config, result=result, should_stop=should_stop,
                                          video=job.video):
                job.on_piece(piece)
        except Exception as e:
            self._finish(job, None, e)
            return
        self._finish(job, result, None)
