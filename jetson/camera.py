"""The camera app: ask about a live stream, answer by answer, with a log, alerts and a prompt that can change.

    app = CameraApp(pipe, open_source("csi://0"), CameraConfig(prompt="Is anyone at the door?"))
    for record in app.run():                 # AnswerRecord: frame, captured, answered, latency, answer
        print(record.line())

Frames go through the runtime's pipelined `stream_frames` (the vision graph encodes the next frame
while the decoder answers; live sources drop the oldest waiting frame). `set_prompt` takes effect
from the next frame: the stream is restarted with the new prompt on the same source. Each answer
can be appended to a JSONL log, and an answer matching `alert` runs a command and/or posts to a
webhook, at most once per `alert_every` seconds, off the answering thread.

Nothing a user sends while it runs may stop it:
- a new prompt is checked before it is taken (`check_prompt`: text, placeholders, the context),
  and should a stream still refuse it, the app goes back to the last prompt that was answered;
- a log write that fails (a full disk) is reported once, counted (`log_errors`) and leaves no
  partial line: each record is one os.write of the whole line, cut back on a short write;
- at most `max_alerts` alerts run at once; one more while they do is skipped and counted
  (`alerts_skipped`). The webhook and the command of an alert fail independently
  (`alert_failures`). The command is split with shlex and run without a shell; the answer
  reaches it in the environment, without the bytes an environment cannot carry (NUL).
- the webhook goes through common/net.py: http(s) only, never link-local or multicast hosts,
  loopback and LAN hosts only when `alert_webhook_private` says so, a 10 s deadline, and no
  redirects (a redirect is a failed alert).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import socket
import stat
import statistics
import subprocess
import threading
import time
import unicodedata
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

from vlm_edge.common.errors import InputError
from vlm_edge.common.log import get_logger
from vlm_edge.common.net import Fetch, FetchError, refused_address, request
from vlm_edge.common.tokenizer import IMAGE_TOKEN
from vlm_edge.common.video import VIDEO_TOKEN

from .sources import Frame, FrameSource

log = get_logger(__name__)

COMMAND_SECONDS = 30.0  # an alert command still running after this is killed
WEBHOOK = Fetch(deadline=10.0, max_bytes=1 << 16, max_redirects=0)  # allow_private: from the config


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
    alert_webhook_private: bool = False  # the webhook may be on this machine or the LAN
    max_alerts: int = 4  # alerts (command and/or webhook) running at once; one more is skipped

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
        if self.alert_every < 0 or self.max_new_tokens < 1 or self.queue_size < 1 or self.max_alerts < 1:
            raise InputError("--alert-every must be >= 0, --max-new-tokens, --queue-size and max_alerts >= 1")
        if self.alert_command is not None:
            check_command(self.alert_command)
        if self.alert_webhook is not None:
            check_webhook(self.alert_webhook, self.alert_webhook_private)


def check_command(command: str) -> list[str]:
    """The alert command's argv (shlex, no shell), or InputError when it cannot run."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise InputError(f"--alert-command {command!r} cannot be split into words ({e}); check its quotes") from None
    if not argv:
        raise InputError("--alert-command is empty; give a program to run on a match")
    if shutil.which(argv[0]) is None:
        raise InputError(f"--alert-command: {argv[0]!r} is not a program found on PATH (it runs without a shell: "
                         "no pipes or redirections; put them in a script)")
    return argv


def check_webhook(url: str, allow_private: bool) -> None:
    """Refuse a webhook URL at start: not http(s), no host, or a host where it must not post."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--alert-webhook {url}: give an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except ValueError:
        raise InputError(f"--alert-webhook {url}: the port is not a number from 0 to 65535") from None
    except (socket.gaierror, UnicodeError):
        raise InputError(f"--alert-webhook {url}: the host name does not resolve") from None
    for address in (info[4][0] for info in infos):
        reason = refused_address(address, allow_private)
        if reason is not None:
            fix = (" (a webhook on this machine or your LAN: add --alert-webhook-private)"
                   if refused_address(address, allow_private=True) is None else "")
            raise InputError(f"--alert-webhook {url}: the host is {reason} ({address}); refused{fix}")


def environment_text(text: str) -> str:
    """`text` as an environment variable can carry it: no NUL, and encodable for this system."""
    text = text.replace("\0", "")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text


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
    alerts: int = 0  # alerts started
    alerts_skipped: int = 0  # due, but max_alerts were still running
    alert_failures: int = 0  # webhooks and commands that failed (each counts once)
    log_errors: int = 0  # answers the log could not take (a full disk)
    prompts_refused: int = 0  # new prompts a stream refused after all (the app went back)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)  # noqa: E731
        return {"frames_in": self.frames_in, "answers": self.answers, "dropped": self.dropped,
                "reconnects": self.reconnects, "alerts": self.alerts, "alerts_skipped": self.alerts_skipped,
                "alert_failures": self.alert_failures, "log_errors": self.log_errors,
                "prompts_refused": self.prompts_refused,
                "latency_median_s": statistics.median(lat) if lat else None, "latency_p95_s": pick(0.95)}


class CameraApp:
    def __init__(self, pipe, source: FrameSource, config: CameraConfig):
        config.validate()
        from vlm_edge.edge.sampling import SamplingConfig  # noqa: PLC0415

        self.pipe, self.source, self.config = pipe, source, config
        self.sampling = SamplingConfig(max_new_tokens=config.max_new_tokens)
        self.stats = CameraStats()
        self.listeners: list[Callable[[str, object], None]] = []  # ("frame", Frame), ("answer", AnswerRecord),
        #                                                             ("prompt", str) when the app went back
        self._frame_size: tuple[int, int] | None = None  # (width, height) of the latest frame
        self.check_prompt(config.prompt)
        self._prompt = self._answered_prompt = config.prompt  # the latter: the last prompt a stream took
        self._prompt_changed = threading.Event()
        self._stop = threading.Event()
        self._alert_lock = threading.Lock()  # guards the alert counters: alert threads update them
        self._alerts_running = 0
        self._last_alert = -float("inf")
        self._alert_pattern = re.compile(config.alert) if config.alert else None

    @property
    def prompt(self) -> str:
        return self._prompt

    @property
    def alerts_running(self) -> int:
        return self._alerts_running

    def check_prompt(self, prompt: object) -> None:
        """InputError, naming what to fix, unless `prompt` can be asked about every frame: non-empty
        valid text, at most one <image> (where the frame goes; none puts it first), no <video>, and
        short enough that the prompt, the frame's tokens and max_new_tokens fit the context."""
        if not isinstance(prompt, str):
            raise InputError("the prompt must be a string")
        if not prompt.strip():
            raise InputError("the prompt is empty; ask the camera something")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"the prompt is not valid Unicode text (a lone surrogate at character {e.start}); "
                             "send UTF-8 text") from None
        for i, char in enumerate(prompt):
            if unicodedata.category(char) == "Cc" and char not in "\t\n\r":
                raise InputError(f"the prompt has a control character (U+{ord(char):04X}) at character {i}; "
                                 "send plain text")
        if VIDEO_TOKEN in prompt:
            raise InputError(f"the prompt has {VIDEO_TOKEN}, but the camera asks about one frame at a time; remove "
                             f"it ({IMAGE_TOKEN} marks where the frame goes)")
        if prompt.count(IMAGE_TOKEN) > 1:
            raise InputError(f"the prompt has {prompt.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholders, but each "
                             f"question gets one frame; keep one {IMAGE_TOKEN} or none (the frame goes first)")
        ids = self.pipe.prompt_ids(prompt, [None])  # the template's own placeholders are counted here
        frame = self._frame_tokens()
        need = len(ids) - 1 + frame + self.config.max_new_tokens
        if need > self.pipe.context:
            raise InputError(f"the prompt is too long: {len(ids) - 1} tokens + the frame's {frame} + "
                             f"{self.config.max_new_tokens} for the answer = {need}, over the model's context of "
                             f"{self.pipe.context}; shorten the prompt")

    def _frame_tokens(self) -> int:
        """The tokens a frame takes in the prompt: the manifest's count, or more for a tiling model."""
        tokens = int(self.pipe.model["num_image_tokens"])
        if self._frame_size is not None:
            from PIL import Image  # noqa: PLC0415

            tokens = max(tokens, self.pipe.image_tokens([Image.new("RGB", self._frame_size)])[0])
        return tokens

    def set_prompt(self, prompt: str) -> None:
        """Ask this from the next frame on; InputError (check_prompt) when it cannot be asked."""
        self.check_prompt(prompt)
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
        log_fd = self._open_log()
        frames = iter(self.source)
        seen: dict[int, Frame] = {}  # stream position -> frame, for the current prompt's stream
        try:
            while not self._stop.is_set():
                seen.clear()
                prompt = self._prompt
                self._prompt_changed.clear()
                exhausted, source_error = [False], [None]

                def feed() -> Iterator:
                    position = 0
                    try:
                        for frame in frames:
                            self.stats.frames_in = max(self.stats.frames_in, frame.index + 1)
                            self._frame_size = (frame.image.shape[1], frame.image.shape[0])
                            seen[position] = frame
                            self._emit("frame", frame)
                            position += 1
                            yield frame.image
                            if self._prompt_changed.is_set() or self._stop.is_set():
                                return
                    except Exception as e:  # the source failed: its error, not the prompt's
                        source_error[0] = e
                        raise
                    exhausted[0] = True

                stream = self.pipe.stream_frames(feed(), prompt, self.sampling, queue_size=self.config.queue_size,
                                                 live=self.source.live)
                try:
                    for answer in stream:
                        self._answered_prompt = prompt
                        frame = seen.pop(answer.index)
                        for old in [k for k in seen if k < answer.index]:
                            seen.pop(old)
                        record = self._record(frame, answer, prompt)
                        if log_fd is not None:
                            self._write_log(log_fd, record)
                        self.alert(record)
                        self._emit("answer", record)
                        yield record
                        if self._prompt_changed.is_set() or self._stop.is_set():
                            break
                except InputError as e:
                    if prompt == self._answered_prompt or source_error[0] is not None:
                        raise  # the source failed, or a prompt that was answered before: not a request's fault
                    self._refuse(prompt, e)
                finally:
                    stream.close()
                if exhausted[0]:
                    return
        finally:
            self.stats.reconnects = self.source.reconnects
            self.source.close()
            if log_fd is not None:
                os.close(log_fd)

    def _refuse(self, prompt: str, error: InputError) -> None:
        """A stream refused a new prompt that check_prompt let through: go back to the last answered one."""
        self.stats.prompts_refused += 1
        log.warning("the prompt %r cannot be asked about these frames (%s); asking %r again", prompt, error,
                    self._answered_prompt)
        if self._prompt == prompt:  # not changed again meanwhile
            self._prompt = self._answered_prompt
            self._emit("prompt", self._prompt)

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

    # ---- the log ----------------------------------------------------------------------------------
    def _open_log(self) -> int | None:
        path = self.config.log_path
        if path is None:
            return None
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"--log {path}: cannot open it for appending ({e.strerror})") from None

    def _write_log(self, fd: int, record: AnswerRecord) -> None:
        """Append the record as one whole line, or nothing: a failed or short write is cut back to where
        the line began, reported once and counted; the app goes on answering."""
        line = (json.dumps(asdict(record)) + "\n").encode()
        start = None
        try:
            status = os.fstat(fd)
            start = status.st_size if stat.S_ISREG(status.st_mode) else None
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"wrote {written} of {len(line)} bytes")
        except OSError as e:
            if start is not None:
                try:
                    os.ftruncate(fd, start)
                except OSError:
                    pass
            self.stats.log_errors += 1
            if self.stats.log_errors == 1:
                log.warning("--log %s: cannot write (%s); answers go unlogged while it fails (counted as log_errors)",
                            self.config.log_path, e.strerror or e)

    # ---- alerts -----------------------------------------------------------------------------------
    def alert(self, record: AnswerRecord) -> bool:
        """Start the alert for `record` when its answer matches, the last one is `alert_every` seconds
        old and fewer than `max_alerts` are running (else it is skipped and counted); True if started."""
        if self._alert_pattern is None or not self._alert_pattern.search(record.answer):
            return False
        with self._alert_lock:
            now = time.monotonic()
            if now - self._last_alert < self.config.alert_every:
                return False
            if self._alerts_running >= self.config.max_alerts:
                self.stats.alerts_skipped += 1
                return False
            self._last_alert = now
            self._alerts_running += 1
            self.stats.alerts += 1
        threading.Thread(target=self._fire, args=(record,), daemon=True, name="vlm-edge-alert").start()
        return True

    def _fire(self, record: AnswerRecord) -> None:
        try:
            body = json.dumps(asdict(record)).encode()
            if self.config.alert_webhook:  # first: bounded by its deadline, and not held up by the command
                self._failed(self._post(body), "alert webhook")
            if self.config.alert_command:
                self._failed(self._command(record, body), "alert command")
        finally:
            with self._alert_lock:
                self._alerts_running -= 1

    def _failed(self, reason: str | None, what: str) -> None:
        if reason is not None:
            log.warning("%s failed: %s", what, reason)
            with self._alert_lock:
                self.stats.alert_failures += 1

    def _post(self, body: bytes) -> str | None:
        """Why the webhook failed, or None."""
        url = self.config.alert_webhook
        how = replace(WEBHOOK, allow_private=self.config.alert_webhook_private)
        try:
            status, _ = request(url, how, method="POST", body=body, headers={"Content-Type": "application/json"})
        except FetchError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001  (an alert thread must not die silently)
            return f"{url}: {type(e).__name__}: {e}"
        return None if 200 <= status < 300 else f"{url} answered HTTP {status}"

    def _command(self, record: AnswerRecord, body: bytes) -> str | None:
        """Why the command failed, or None."""
        env = {**os.environ, "VLM_ANSWER": environment_text(record.answer), "VLM_FRAME": str(record.frame)}
        try:
            done = subprocess.run(shlex.split(self.config.alert_command), input=body, timeout=COMMAND_SECONDS,
                                  check=False, env=env)
        except subprocess.TimeoutExpired:
            return f"still running after {COMMAND_SECONDS:g} s; stopped"
        except (OSError, ValueError) as e:
            return str(e)
        return None if done.returncode == 0 else f"exited with code {done.returncode}"
