"""Images from `image_url` parts: data URLs always; file paths and http(s) only when allowed.

Limits are checked before any pixel is decoded: the encoded size (bytes) first, then the
dimensions the header declares (a decompression bomb is a small file that declares a huge
canvas), then the full decode, so truncated files fail here with the part's index.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlm_edge.common.image import FORMATS_TEXT, IMAGE_FORMATS


class ImageRejected(Exception):
    """An image part the server will not take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_image"):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    allow_local: bool = False
    allow_remote: bool = False
    remote_timeout: float = 10.0


def fetch_image(url: str, limits: ImageLimits, label: str) -> Image.Image:
    """The RGB image an image_url points at, or ImageRejected saying why not."""
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
                                "(or start vlm-serve with --allow-local-images)")
        if not path.is_file():
            raise ImageRejected(f"{label}: {path} is not a file on the server")
        if path.stat().st_size > limits.max_bytes:
            raise ImageRejected(f"{label}: {path} is over the server's limit of {limits.max_bytes} bytes", 413,
                                "image_too_large")
        data = path.read_bytes()
    return decode_image(data, limits, label)


def _download(url: str, limits: ImageLimits, label: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout) as response:  # noqa: S310 (scheme checked)
            data = response.read(limits.max_bytes + 1)
    except OSError as e:
        raise ImageRejected(f"{label}: could not fetch {url} ({e})") from None
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"{label}: {url} is over the server's limit of {limits.max_bytes} bytes", 413,
                            "image_too_large")
    return data


def decode_image(data: bytes, limits: ImageLimits, label: str) -> Image.Image:
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
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(f"{label}: the image declares more pixels than the server decodes", 413,
                            "image_too_large") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{label}: the image could not be decoded: it is not a {FORMATS_TEXT} image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"{label}: the image could not be decoded ({e}); send a {FORMATS_TEXT} image") from None
    return image if image.mode == "RGB" else image.convert("RGB")
