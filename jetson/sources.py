"""Camera and video sources by URI: one interface that yields timestamped RGB frames.

    with open_source("rtsp://cam.local:8554/live", fps=5) as source:
        for frame in source:               # Frame(image [H, W, 3] uint8 RGB, index, captured, pts)
            ...

    file://clip.mp4, clip.mp4     a video file (OpenCV's FFmpeg backend); every frame, as fast as read,
                                  or paced to its own frame rate with realtime=True (then it is live)
    file://frames/, frames/       a folder of images, in name order
    v4l2:///dev/video0, v4l2://0  a USB camera (GStreamer v4l2src where OpenCV has GStreamer, else V4L2)
    csi://0                       a Jetson CSI camera (GStreamer nvarguscamerasrc; needs JetPack's OpenCV)
    rtsp://host:port/path         a network stream (FFmpeg over TCP); reconnects after a drop

Live sources (cameras, RTSP, realtime files) are read by a thread that never waits for the
consumer: it keeps the newest `queue_size` frames and drops the oldest, counting them
(`source.dropped`), so answers stay close to now. Non-live sources hand over every frame.
`fps` caps the frames handed over (by capture time for live sources, by timestamp for files).
`close()` (or leaving the `with` block, or Ctrl-C in the app) stops the reader and releases
the device. Query parameters set capture size and rate: `csi://0?width=1920&height=1080&framerate=30`.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import numpy as np

from vlm_edge.common.errors import InputError, UnsupportedFeatureError
from vlm_edge.common.log import get_logger

log = get_logger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SCHEMES = ("file", "v4l2", "csi", "rtsp", "rtsps")
FIRST_OPEN_SECONDS = 10.0  # how long a live source that never opened keeps trying


@dataclass
class Frame:
    image: np.ndarray  # [H, W, 3] uint8, RGB
    index: int  # order in which the source produced it (dropped frames keep their numbers)
    captured: float  # time.time() when it was read
    pts: float  # seconds into the stream (files: the frame's timestamp; live: since the source opened)


def _cv2():
    try:
        import cv2  # noqa: PLC0415  (the jetson extra: opencv-python-headless, or JetPack's python3-opencv)
    except ImportError:
        raise UnsupportedFeatureError('video and camera sources need OpenCV: pip install "vlm-edge[jetson]" '
                                      "(on a Jetson, JetPack's python3-opencv has GStreamer for CSI cameras)") from None
    return cv2


def has_gstreamer(cv2) -> bool:
    return "GStreamer:                   YES" in cv2.getBuildInformation()


# ---- GStreamer pipelines (OpenCV appsink) ----------------------------------------------------------
def csi_pipeline(sensor: int = 0, width: int = 1280, height: int = 720, framerate: int = 30) -> str:
    """A Jetson CSI camera through the ISP (nvarguscamerasrc), converted to BGR for OpenCV's appsink."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={framerate}/1,format=NV12 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def v4l2_pipeline(device: str = "/dev/video0", width: int = 640, height: int = 480, framerate: int = 30) -> str:
    """A USB (UVC) camera through v4l2src, decoded and converted to BGR for OpenCV's appsink."""
    return (f"v4l2src device={device} ! video/x-raw,width={width},height={height},framerate={framerate}/1 ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


# ---- the URI -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    kind: str  # video | folder | v4l2 | csi | rtsp
    target: str  # a path, a device, a sensor id or the URL
    options: dict[str, int]
    uri: str


def parse_uri(uri: str) -> SourceSpec:
    """What `uri` names; a clear InputError for what it cannot be."""
    parsed = urlparse(uri)
    options = {}
    for key, values in parse_qs(parsed.query).items():
        if key not in ("width", "height", "framerate") or not values[-1].isdigit() or int(values[-1]) < 1:
            raise InputError(f"source {uri}: option {key}={values[-1]!r}; use width, height and framerate as positive "
                             "integers")
        options[key] = int(values[-1])
    scheme = parsed.scheme.lower()
    if scheme in ("rtsp", "rtsps"):
        return SourceSpec("rtsp", uri, options, uri)
    if scheme == "csi":
        sensor = (parsed.netloc or parsed.path.strip("/")) or "0"
        if not sensor.isdigit():
            raise InputError(f"source {uri}: a CSI camera is csi://N with N its sensor id (csi://0)")
        return SourceSpec("csi", sensor, options, uri)
    if scheme == "v4l2":
        device = parsed.netloc + parsed.path
        device = f"/dev/video{device}" if device.isdigit() else device
        if not device.startswith("/dev/"):
            raise InputError(f"source {uri}: a USB camera is v4l2:///dev/videoN or v4l2://N")
        return SourceSpec("v4l2", device, options, uri)
    if scheme not in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise InputError(f"source {uri}: unknown scheme {parsed.scheme!r}; use file://, v4l2://, csi:// or rtsp://")
    path = Path(parsed.netloc + parsed.path if scheme == "file" else uri)
    if path.is_dir():
        return SourceSpec("folder", str(path), options, uri)
    if path.is_file():
        return SourceSpec("video", str(path), options, uri)
    raise InputError(f"source {uri}: {path} is neither a video file nor a folder of images")


# ---- sources -------------------------------------------------------------------------------------------
class FrameSource:
    """Iterate for frames; close() to stop. `live` sources drop the oldest frame rather than wait."""

    live = False

    def __init__(self, spec: SourceSpec, fps: float | None):
        if fps is not None and fps <= 0:
            raise InputError(f"--fps {fps} must be positive")
        self.spec = spec
        self.fps = fps
        self.dropped = 0  # frames the reader discarded (live) or skipped for the rate cap
        self.reconnects = 0
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderSource(FrameSource):
    def __iter__(self) -> Iterator[Frame]:
        from PIL import Image  # noqa: PLC0415

        files = sorted(p for p in Path(self.spec.target).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"source {self.spec.uri}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        period = 1.0 / self.fps if self.fps else 0.0
        for index, path in enumerate(files):
            if self._stop.is_set():
                return
            with Image.open(path) as image:
                yield Frame(np.asarray(image.convert("RGB")), index, time.time(), index * period)


class VideoFileSource(FrameSource):
    """A video file; `realtime` paces it to its own frame rate and makes it live (a recorded camera)."""

    def __init__(self, spec: SourceSpec, fps: float | None, realtime: bool = False, queue_size: int = 2):
        super().__init__(spec, fps)
        self.realtime = realtime
        self.live = realtime
        self.queue_size = queue_size

    def _frames(self) -> Iterator[Frame]:
        cv2 = _cv2()
        capture = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            raise InputError(f"source {self.spec.uri}: OpenCV could not open the video (is it a video file?)")
        try:
            rate = capture.get(cv2.CAP_PROP_FPS) or 30.0
            start, next_pts, index = time.monotonic(), 0.0, 0
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok:
                    return
                pts = index / rate
                index += 1
                if self.realtime:  # a recorded camera: the frame appears at its time
                    wait = start + pts - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                if self.fps and pts + 1e-9 < next_pts:
                    self.dropped += 1
                    continue
                next_pts = max(next_pts + 1.0 / self.fps, pts) if self.fps else pts
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index - 1, time.time(), pts)
        finally:
            capture.release()

    def __iter__(self) -> Iterator[Frame]:
        if not self.realtime:
            yield from self._frames()
            return
        yield from _LiveReader(self, self._frames, self.queue_size)


class CaptureSource(FrameSource):
    """A camera or network stream read by OpenCV; reconnects after a drop until closed or `retry_for` runs out."""

    live = True

    def __init__(self, spec: SourceSpec, fps: float | None, queue_size: int = 2, retry_for: float | None = None,
                 timeout_ms: int = 5000):
        super().__init__(spec, fps)
        self.queue_size = queue_size
        self.retry_for = retry_for  # seconds of failed reconnects before giving up (None: until closed)
        self.timeout_ms = timeout_ms

    def open(self):
        """A cv2.VideoCapture for the spec, or None when it cannot be opened now."""
        cv2 = _cv2()
        o = self.spec.options
        if self.spec.kind == "csi":
            if not has_gstreamer(cv2):
                raise UnsupportedFeatureError(f"source {self.spec.uri}: CSI cameras need OpenCV built with GStreamer "
                                              "(JetPack's python3-opencv, not the pip wheel)")
            capture = cv2.VideoCapture(csi_pipeline(int(self.spec.target), o.get("width", 1280), o.get("height", 720),
                                                    o.get("framerate", 30)), cv2.CAP_GSTREAMER)
        elif self.spec.kind == "v4l2" and has_gstreamer(cv2):
            capture = cv2.VideoCapture(v4l2_pipeline(self.spec.target, o.get("width", 640), o.get("height", 480),
                                                     o.get("framerate", 30)), cv2.CAP_GSTREAMER)
        elif self.spec.kind == "v4l2":
            capture = cv2.VideoCapture(self.spec.target, cv2.CAP_V4L2)
            for key, prop in (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT),
                              ("framerate", cv2.CAP_PROP_FPS)):
                if key in o:
                    capture.set(prop, o[key])
        else:  # rtsp: FFmpeg over TCP (no lost UDP packets smearing frames), bounded open and read waits
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
            capture = cv2.VideoCapture(self.spec.target, cv2.CAP_FFMPEG,
                                       [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms,
                                        cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms])
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _frames(self) -> Iterator[Frame]:
        cv2 = _cv2()
        opened, index, backoff, failing_since = time.monotonic(), 0, 0.25, None
        capture = None
        try:
            while not self._stop.is_set():
                if capture is None:
                    capture = self.open()
                    if capture is None:
                        failing_since = failing_since or time.monotonic()
                        # never opened: give up soon (a wrong address); after a drop: retry_for (None: forever)
                        limit = self.retry_for if self.retry_for is not None or index else FIRST_OPEN_SECONDS
                        if limit is not None and time.monotonic() - failing_since > limit:
                            raise InputError(f"source {self.spec.uri}: cannot open it (tried for {limit:.0f} s); check "
                                             "the address and that the camera or server is up")
                        log.warning("%s: not available, retrying in %.1f s", self.spec.uri, backoff)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    if index:  # it was open before: this is a reconnect
                        self.reconnects += 1
                        log.warning("%s: reconnected", self.spec.uri)
                    backoff, failing_since = 0.25, None
                ok, bgr = capture.read()
                if not ok:
                    log.warning("%s: the stream dropped; reconnecting", self.spec.uri)
                    capture.release()
                    capture = None
                    failing_since = time.monotonic()
                    continue
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index, time.time(), time.monotonic() - opened)
                index += 1
        finally:
            if capture is not None:
                capture.release()

    def __iter__(self) -> Iterator[Frame]:
        yield from _LiveReader(self, self._frames, self.queue_size)


class _LiveReader:
    """Reads `frames()` on a thread into a deque of the newest `size` frames; iterating takes them in order."""

    def __init__(self, source: FrameSource, frames, size: int):
        if size < 1:
            raise InputError(f"queue size {size} must be at least 1")
        self.source, self.frames = source, frames
        self.queue: collections.deque[Frame] = collections.deque()
        self.size = size
        self.ready = threading.Condition()
        self.done = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, name="vlm-edge-capture", daemon=True)

    def _read(self) -> None:
        source, last = self.source, None
        try:
            for frame in self.frames():
                if source.fps and last is not None and frame.captured - last < 1.0 / source.fps - 1e-3:
                    source.dropped += 1
                    continue
                last = frame.captured
                with self.ready:
                    if len(self.queue) >= self.size:
                        self.queue.popleft()
                        source.dropped += 1
                    self.queue.append(frame)
                    self.ready.notify()
        except BaseException as e:  # raised in the consumer's thread
            self.error = e
        finally:
            with self.ready:
                self.done = True
                self.ready.notify()

    def __iter__(self) -> Iterator[Frame]:
        self.thread.start()
        try:
            while True:
                with self.ready:
                    while not self.queue and not self.done:
                        self.ready.wait(0.1)
                    if self.queue:
                        frame = self.queue.popleft()
                    elif self.error is not None:
                        raise self.error
                    else:
                        return
                yield frame
        finally:
            self.source.close()
            self.thread.join(timeout=10)


def open_source(uri: str, *, fps: float | None = None, queue_size: int = 2, realtime: bool = False,
                retry_for: float | None = None) -> FrameSource:
    """The source `uri` names (see the module docstring); nothing is opened until it is iterated."""
    spec = parse_uri(uri)
    if spec.kind == "folder":
        return FolderSource(spec, fps)
    if spec.kind == "video":
        return VideoFileSource(spec, fps, realtime=realtime, queue_size=queue_size)
    return CaptureSource(spec, fps, queue_size=queue_size, retry_for=retry_for)
