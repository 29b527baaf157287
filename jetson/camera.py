"""The camera app: ask about a live stream, answer by answer, with a log, alerts and a prompt that can change.

    app = CameraApp(pipe, open_source("csi://0"), CameraConfig(prompt="Is anyone at the door?"))
    for record in app.run():                 # AnswerRecord: frame, captured, answered, latency, answer
        print(record.line())

Frames go through the runtime's pipelined `stream_frames` (the vision graph encodes the next frame
while the decoder answers; live sources drop the oldest waiting frame). `set_prompt` takes effect
from the next frame: the stream is restarted with the new prompt on the same source. Each answer
can be appended to a JSONL log, and an answer matching `alert` runs a command and/or posts to a
webhook, at most once per `alert_every` seconds, off the answering thread.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from vlm_edge.common.errors import InputError
from vlm_edge.common.log import get_logger

from .sources import Frame, FrameSource

log = get_logger(__name__)


@dataclass
class CameraConfig:
    prompt: str
    max_new_tokens: int = 16
    queue_size: int = 2  # encoded frames waiting for the decoder (live sources drop the oldest)
    log_path: str | None = None  # JSONL, one answer per line
    alert: str | None = None  # a regular expression searched in each answer
    alert_command: str | None = None  # run with the answer in $VLM_ANSWER (and the record as JSON on stdin)
    alert_webhook: str | None = None  # POST the record as JSON
    alert_every: float = 30.0  # seconds between two alerts at most

    def validate(self) -> None:
        if not self.prompt.strip():
            raise InputError("--prompt is empty; ask the camera something")
        if self.alert is not None:
            try:
                re.compile(self.alert)
            except re.error as e:
                raise InputError(f"--alert {self.alert!r} is not a regular expression: {e}") from None
            if not (self.alert_command or self.alert_webhook):
                raise InputError("--alert needs --alert-command and/or --alert-webhook to say what to do on a match")
        if self.alert_every < 0 or self.max_new_tokens < 1 or self.queue_size < 1:
            raise InputError("--alert-every must be >= 0, --max-new-tokens and --queue-size >= 1")


@dataclass
class AnswerRecord:
    frame: int  # the source's frame index
    captured: float  # time.time() when the frame was read
    answered: float  # time.time() when the answer was complete
    latency: float  # answered - captured, seconds
    prompt: str
    answer: str
    dropped: int  # frames skipped just before this one (source and pipeline)
    pts: float

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.captured)) + f".{int(self.captured * 1000) % 1000:03d}"
        skipped = f" (+{self.dropped} dropped)" if self.dropped else ""
        return f"[{stamp}] frame {self.frame}{skipped}: {self.answer}  ({self.latency * 1000:.0f} ms)"


@dataclass
class CameraStats:
    frames_in: int = 0  # frames the source produced
    answers: int = 0
    dropped: int = 0
    reconnects: int = 0
    alerts: int = 0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)  # noqa: E731
        return {"frames_in": self.frames_in, "answers": self.answers, "dropped": self.dropped,
                "reconnects": self.reconnects, "alerts": self.alerts,
                "latency_median_s": statistics.median(lat) if lat else None, "latency_p95_s": pick(0.95)}


class CameraApp:
    def __init__(self, pipe, source: FrameSource, config: CameraConfig):
        config.validate()
        from vlm_edge.edge.sampling import SamplingConfig  # noqa: PLC0415

        self.pipe, self.source, self.config = pipe, source, config
        self.sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
        self.stats = CameraStats()
        self.listeners: list[Callable[[str, object], None]] = []  # ("frame", Frame) and ("answer", AnswerRecord)
        self._prompt = config.prompt
        self._prompt_changed = threading.Event()
        self._stop = threading.Event()
        self._last_alert = -float("inf")
        self._alert_pattern = re.compile(config.alert) if config.alert else None

    @property
    def prompt(self) -> str:
        return self._prompt

    def set_prompt(self, prompt: str) -> None:
        """Ask this from the next frame on."""
        if not prompt.strip():
            raise InputError("the prompt is empty")
        self._prompt = prompt
        self._prompt_changed.set()

    def stop(self) -> None:
        self._stop.set()
        self.source.close()

    def _emit(self, kind: str, value) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, value)
            except Exception:  # a listener (the web view) must not stop the app
                log.exception("listener failed")

    def run(self) -> Iterator[AnswerRecord]:
        """Answer frames until the source ends, stop() is called, or the caller stops iterating."""
        frames = iter(self.source)
        seen: dict[int, Frame] = {}  # stream position -> frame, for the current prompt's stream
        log_file = open(self.config.log_path, "a", encoding="utf-8") if self.config.log_path else None
        try:
            while not self._stop.is_set():
                seen.clear()
                prompt = self._prompt
                self._prompt_changed.clear()
                exhausted = [False]

                def feed() -> Iterator:
                    position = 0
                    for frame in frames:
                        self.stats.frames_in = max(self.stats.frames_in, frame.index + 1)
                        seen[position] = frame
                        self._emit("frame", frame)
                        position += 1
                        yield frame.image
                        if self._prompt_changed.is_set() or self._stop.is_set():
                            return
                    exhausted[0] = True

                stream = self.pipe.stream_frames(feed(), prompt, self.sampling, queue_size=self.config.queue_size,
                                                 live=self.source.live)
                try:
                    for answer in stream:
                        frame = seen.pop(answer.index)
                        for old in [k for k in seen if k < answer.index]:
                            seen.pop(old)
                        record = self._record(frame, answer, prompt)
                        if log_file is not None:
                            log_file.write(json.dumps(asdict(record)) + "\n")
                            log_file.flush()
                        self._alert(record)
                        self._emit("answer", record)
                        yield record
                        if self._prompt_changed.is_set() or self._stop.is_set():
                            break
                finally:
                    stream.close()
                if exhausted[0]:
                    return
        finally:
            self.stats.reconnects = self.source.reconnects
            self.source.close()
            if log_file is not None:
                log_file.close()

    def _record(self, frame: Frame, answer, prompt: str) -> AnswerRecord:
        now = time.time()
        source_drops = self.source.dropped - getattr(self, "_source_dropped_seen", 0)
        self._source_dropped_seen = self.source.dropped
        dropped = answer.dropped + source_drops
        self.stats.answers += 1
        self.stats.dropped += dropped
        self.stats.latencies.append(now - frame.captured)
        self.stats.reconnects = self.source.reconnects
        return AnswerRecord(frame.index, frame.captured, now, now - frame.captured, prompt,
                            answer.generation.text.strip(), dropped, frame.pts)

    # ---- alerts -----------------------------------------------------------------------------------
    def _alert(self, record: AnswerRecord) -> None:
        if self._alert_pattern is None or not self._alert_pattern.search(record.answer):
            return
        now = time.monotonic()
        if now - self._last_alert < self.config.alert_every:
            return
        self._last_alert = now
        self.stats.alerts += 1
        threading.Thread(target=self._fire, args=(record,), daemon=True, name="vlm-edge-alert").start()

    def _fire(self, record: AnswerRecord) -> None:
        body = json.dumps(asdict(record)).encode()
        if self.config.alert_command:
            try:
                subprocess.run(shlex.split(self.config.alert_command), input=body, timeout=30, check=False,
                               env={**os.environ, "VLM_ANSWER": record.answer,
                                    "VLM_FRAME": str(record.frame)})
            except (OSError, subprocess.TimeoutExpired) as e:
                log.warning("alert command failed: %s", e)
        if self.config.alert_webhook:
            request = urllib.request.Request(self.config.alert_webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except OSError as e:
                log.warning("alert webhook %s failed: %s", self.config.alert_webhook, e)

