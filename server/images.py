"""Images from `image_url` parts: data URLs always; file paths and http(s) only when allowed.

Limits are checked before any pixel is decoded: the encoded size (bytes) first, then the
dimensions the header declares (a decompression bomb is a small file that declares a huge
canvas), then the full decode, so truncated files fail here with the part's index.

Local paths must resolve (symlinks followed) inside the allowed root. Remote URLs are fetched
from the address their host resolved to, after checking it: loopback, private, link-local
(cloud metadata at 169.254.169.254), multicast and reserved addresses are refused (private and
loopback ones can be allowed for cameras on a LAN; link-local never), and every redirect is
checked the same way. Fetch errors are reported by kind, not with the library's message.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import io
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError

from vlm_edge.common.image import FORMATS_TEXT, IMAGE_FORMATS
from vlm_edge.common.net import Fetch, FetchError, request


class ImageRejected(Exception):
    """An image part the server will not take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_image"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    local_root: str | None = None  # image paths allowed under this directory; None: no local paths
    allow_remote: bool = False
    allow_private_hosts: bool = False  # remote: also loopback and private (LAN) addresses
    remote_timeout: float = 10.0  # seconds for a whole remote fetch, redirects included
    max_redirects: int = 3
    max_video_frames: int = 20_000  # frames in a video part (common/video.py MAX_FRAMES)

    @property
    def allow_local(self) -> bool:
        return self.local_root is not None


VIDEO_KINDS = ("mp4", "quicktime", "x-msvideo", "x-matroska", "webm")


def fetch_video(url: str, limits: ImageLimits, label: str, frames: int, *, budget: DecodeBudget | None = None,
                fit: Callable[[Image.Image], Image.Image] | None = None,
                should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
    """The `frames` RGB frames (sampled uniformly, each passed through `fit` as it is decoded) of the
    clip a video_url's data URL carries, or ImageRejected saying why not. Only data URLs. The clip
    is decoded from memory under the image limits: the container's frame size against max_pixels
    and its frame count against max_video_frames before any frame is decoded, one frame's decode
    memory reserved from `budget`; `should_stop` ends it between frames (VideoStopped)."""
    from vlm_edge.common.errors import InputError, UnsupportedFeatureError
    from vlm_edge.common.video import SENT, VideoLimits, VideoTooLarge, read_frames

    if not url.startswith("data:"):
        raise ImageRejected(f"{label}: send the video as a data URL (data:video/mp4;base64,...)", code="invalid_video")
    head, _, payload = url.partition(",")
    kind = head[len("data:video/"):].split(";")[0] if head.startswith("data:video/") else ""
    if kind not in VIDEO_KINDS or ";base64" not in head:
        raise ImageRejected(f"{label}: a video data URL must look like data:video/mp4;base64,... "
                            f"(mp4, quicktime, x-msvideo, x-matroska or webm)", code="invalid_video")
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise ImageRejected(f"{label}: the video is over the server's limit of {limits.max_bytes} bytes", 413,
                            "video_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(f"{label}: the data URL's base64 payload is not valid base64", code="invalid_video") from None

    def reserve(nbytes: int):
        if budget is None:
            return contextlib.nullcontext()
        return budget.reserve(nbytes, label, what="decoding a frame of this video")

    try:
        return read_frames(data, frames, limits=VideoLimits(limits.max_pixels, limits.max_video_frames), fit=fit,
                           reserve=reserve, should_stop=should_stop)
    except VideoTooLarge as e:
        raise ImageRejected(f"{label}: {str(e).replace(f'video {SENT}', 'the video')}", 413,
                            "video_too_large") from None
    except UnsupportedFeatureError as e:  # no OpenCV on this server, or one too old to read from memory
        raise ImageRejected(f"{label}: this server cannot decode video: {e}", 501, "video_unsupported") from None
    except InputError as e:
        raise ImageRejected(f"{label}: {str(e).replace(f'video {SENT}', 'the video')}",
                            code="invalid_video") from None


def fetch_image(url: str, limits: ImageLimits, label: str, *, budget: DecodeBudget | None = None,
                fit: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """The RGB image an image_url points at (passed through `fit` while its decode memory is
    reserved from `budget`), or ImageRejected saying why not."""
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if not head.startswith("data:image/") or ";base64" not in head:
            raise ImageRejected(f"{label}: a data URL must look like data:image/png;base64,...")
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise ImageRejected(f"{label}: the image is over the server's limit of {limits.max_bytes} bytes",
                                413, "image_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected(f"{label}: the data URL's base64 payload is not valid base64") from None
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise ImageRejected(f"{label}: http(s) image URLs are off on this server; send the image as a data URL "
                                "(or start vlm-serve with --allow-remote-images)")
        data = _download(url, limits, label)
    else:
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not limits.allow_local:
            raise ImageRejected(f"{label}: local image paths are off on this server; send the image as a data URL "
                                "(or start vlm-serve with --allow-local-images DIR)")
        root = Path(limits.local_root).resolve()
        path = (root / path).resolve()  # a relative path is taken under the root
        if not path.is_relative_to(root):
            raise ImageRejected(f"{label}: image paths must lie under the server's image folder {root}")
        if not path.is_file():
            raise ImageRejected(f"{label}: {path} is not a file on the server")
        if path.stat().st_size > limits.max_bytes:
            raise ImageRejected(f"{label}: {path} is over the server's limit of {limits.max_bytes} bytes", 413,
                                "image_too_large")
        data = path.read_bytes()
    return decode_image(data, limits, label, budget=budget, fit=fit)


class DecodeBudget:
    """Bytes of decoded pixels all requests together may hold at once. A decode reserves what the
    image will cost (its declared pixels x 5 bytes: the decoded bands and the RGB copy) before any
    pixel is decoded, and returns it once the image is fitted to the vision tower's size; a decode
    that does not fit waits for others to finish (up to `wait` seconds, then 503), and one image
    larger than the whole budget is refused (413)."""

    def __init__(self, limit_bytes: int, wait: float = 30.0):
        self.limit, self.wait = int(limit_bytes), wait
        self.used = 0
        self._cond = threading.Condition()

    @staticmethod
    def cost(width: int, height: int) -> int:
        return width * height * BYTES_PER_DECODED_PIXEL

    @contextlib.contextmanager
    def reserve(self, nbytes: int, label: str, what: str = "decoding this image"):
        if nbytes > self.limit:
            raise ImageRejected(f"{label}: {what} needs {nbytes >> 20} MiB, more than the server's image "
                                f"memory of {self.limit >> 20} MiB (vlm-serve --max-memory); send a smaller one",
                                413, "image_too_large")
        with self._cond:
            if not self._cond.wait_for(lambda: self.used + nbytes <= self.limit, timeout=self.wait):
                raise ImageRejected(f"{label}: the server is decoding other images and its image memory "
                                    f"({self.limit >> 20} MiB) stayed full for {self.wait:g} s; retry shortly", 503,
                                    "server_busy")
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


BYTES_PER_DECODED_PIXEL = 5  # a decoded single-band image (1) and its RGB copy (Pillow keeps 4 bytes a pixel)


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc malloc_trim); a no-op elsewhere."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc (musl)
        return None


_LIBC = _glibc()


def use_mmap_for_large_blocks(threshold: int = 1 << 20) -> None:
    """Allocate blocks over `threshold` bytes with mmap, so freeing a decoded image returns its
    memory at once (glibc otherwise raises the threshold after the first large free and keeps
    such blocks in the heap, where they stay resident)."""
    if _LIBC is not None:
        m_mmap_threshold = -3
        _LIBC.mallopt(m_mmap_threshold, threshold)


def _download(url: str, limits: ImageLimits, label: str) -> bytes:
    """The body of an http(s) image URL: its address checked, redirects checked too, within a total
    deadline of `limits.remote_timeout` seconds (common/net.py)."""
    how = Fetch(allow_private=limits.allow_private_hosts, deadline=limits.remote_timeout, max_bytes=limits.max_bytes,
                max_redirects=limits.max_redirects, user_agent="vlm-serve")
    try:
        status, data = request(url, how, headers={"Accept": "image/*"})
    except FetchError as e:
        message = str(e)
        if "loopback or private" in message:
            message += " (start vlm-serve with --allow-private-image-hosts for a LAN camera)"
        raise ImageRejected(f"{label}: {message}", e.status, "image_too_large" if e.status == 413 else "invalid_image") \
            from None
    if status != 200:
        raise ImageRejected(f"{label}: could not fetch {url} (HTTP {status})")
    return data


def decode_image(data: bytes, limits: ImageLimits, label: str, *, budget: DecodeBudget | None = None,
                 fit: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"{label}: the image is over the server's limit of {limits.max_bytes} bytes", 413,
                            "image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRejected(f"{label}: {width}x{height} pixels is over the server's limit of "
                                    f"{limits.max_pixels} pixels", 413, "image_too_large")
            with budget.reserve(budget.cost(width, height), label) if budget else contextlib.nullcontext():
                image.load()
                image = image if image.mode == "RGB" else image.convert("RGB")
                if fit is not None:
                    image = fit(image)  # the full-size decode is dropped here, inside the reservation
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"{label}: the image declares more pixels than the server decodes", 413,
                            "image_too_large") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{label}: the image could not be decoded: it is not a {FORMATS_TEXT} image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"{label}: the image could not be decoded ({e}); send a {FORMATS_TEXT} image") from None
    return image
