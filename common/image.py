"""Image loading and preprocessing (numpy + Pillow), shared by the PyTorch reference and the runtime.

VILA1.5 preprocessing, from `vision_tower/preprocessor_config.json` and the checkpoint's
`image_aspect_ratio`:

    "resize": resize to the processor size (aspect not kept)
    "pad":    pad to a square with the mean colour (int(mean*255) per channel), then resize
    "dynamic" (NVILA-Lite): cut into tiles of the tower's size plus a thumbnail (common/tiling.py);
              each tile is one row of the vision batch
    "dynamic_s2" (NVILA): the tiles of each of s2_scales, the last one's grid by aspect ratio; their
              features are merged per image before the projector (common/tiling.py)
    "s2" (VILA1.5's S2): the preprocessed picture resized bicubically to each of s2_scales and cut into
              tower-sized tiles; the features are merged onto the first scale's grid
    then:     rescale (x * rescale_factor, 1/255), normalize ((x - mean) / std)

The resize filter is the processor's `resample` (3 = bicubic) and goes through Pillow, as the
transformers image processors do. Output: float32 [N, 3, H, W].
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CheckpointError, InputError, UnsupportedFeatureError

ImageInput = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]


def _parse_size(value: Any, key: str) -> tuple[int, int]:
    """(height, width) from a processor's `size` / `crop_size`: dict or int."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:  # CLIP: square images after VILA's resize
            edge = int(value["shortest_edge"])
            return edge, edge
    raise CheckpointError(f"preprocessor_config.json: cannot read {key}={value!r} as an image size")


@dataclass(frozen=True)
class ImageProcessorConfig:
    """What preprocessing does, resolved from preprocessor_config.json + image_aspect_ratio."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC
    pad_to_square: bool = False
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    tiling: str = "none"  # "none" | "dynamic" | "dynamic_s2" | "s2": one image -> several tiles (common/tiling.py)
    min_tiles: int = 1
    max_tiles: int = 12
    s2_scales: tuple[int, ...] = ()  # dynamic_s2: the scales in pixels (448, 896, 1344 for NVILA-8B)
    s2_output_scale: int = -1  # dynamic_s2: the scale whose grid the features are merged onto

    @classmethod
    def from_preprocessor_config(cls, cfg: dict[str, Any], image_aspect_ratio: str = "resize", *,
                                 min_tiles: int = 1, max_tiles: int = 12, s2_scales: tuple[int, ...] = (),
                                 s2_output_scale: int = -1, s2: bool = False) -> "ImageProcessorConfig":
        # VILA resizes to the crop size when the processor has one (CLIP), else to `size` (SigLIP).
        if "crop_size" in cfg and cfg["crop_size"] is not None:
            height, width = _parse_size(cfg["crop_size"], "crop_size")
        elif "size" in cfg:
            height, width = _parse_size(cfg["size"], "size")
        else:
            raise CheckpointError("preprocessor_config.json has neither 'size' nor 'crop_size'")
        mean = tuple(float(x) for x in cfg.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(float(x) for x in cfg.get("image_std", (0.5, 0.5, 0.5)))
        if len(mean) != 3 or len(std) != 3:
            raise CheckpointError("preprocessor_config.json: image_mean and image_std need 3 values (RGB)")
        return cls(
            height=height,
            width=width,
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            resample=int(cfg.get("resample", Image.Resampling.BICUBIC)),
            pad_to_square=image_aspect_ratio == "pad",
            do_resize=bool(cfg.get("do_resize", True)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            tiling=image_aspect_ratio if image_aspect_ratio in ("dynamic", "dynamic_s2") else "s2" if s2 else "none",
            min_tiles=int(min_tiles),
            max_tiles=int(max_tiles),
            s2_scales=tuple(int(x) for x in s2_scales) if image_aspect_ratio == "dynamic_s2" or s2 else (),
            s2_output_scale=int(s2_output_scale),
        )


def image_label(source: ImageInput, index: int, count: int) -> str:
    """How an error names image `index` of `count`: its path, else its place in the request."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"{index + 1} of {count}"


def load_image(source: ImageInput, *, name: str | None = None) -> Image.Image:
    """Decode a path, encoded bytes, an RGB/grey uint8 array or a PIL image into an RGB image."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__)
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (3, 4)):
            raise InputError(
                f"image {label}: arrays must be uint8 [H, W], [H, W, 3] (RGB) or [H, W, 4], "
                f"got {source.dtype} {list(source.shape)}"
            )
        image = Image.fromarray(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(bytes(source)), label)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"image {path} does not exist or is not a file")
        with open(path, "rb") as f:
            image = _open(io.BytesIO(f.read()), label)
    else:
        raise InputError(f"image {label}: expected a path, bytes, a numpy array or a PIL image")
    return image if image.mode == "RGB" else image.convert("RGB")


# The encoded formats we decode (Pillow names). Pillow knows some 40 more; we keep to the ones
# cameras and browsers produce, so that an odd file never reaches a rarely used decoder.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
FORMATS_TEXT = "PNG, JPEG, WebP or BMP"


def _open(stream: io.BytesIO, label: str) -> Image.Image:
    try:
        image = Image.open(stream, formats=IMAGE_FORMATS)
        image.load()  # decode now so truncated files fail here, not later
    except UnidentifiedImageError:
        raise InputError(f"image {label} could not be decoded: it is not a {FORMATS_TEXT} image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image {label} could not be decoded ({e}); pass a {FORMATS_TEXT} image") from None
    return image


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square canvas of its longer side, filled with `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def fit_image(image: Image.Image, cfg: ImageProcessorConfig) -> Image.Image:
    """The Pillow part of preprocessing: pad (when the processor pads) and resize to the processor
    size. When `refits(cfg)` is False a fitted image preprocesses to the same pixels as the
    original, so a server can drop a large decoded image at once and keep only the fitted one."""
    if cfg.pad_to_square:
        image = pad_to_square(image, tuple(int(m * 255) for m in cfg.mean))  # type: ignore[arg-type]
    if cfg.do_resize and image.size != (cfg.width, cfg.height):
        image = image.resize((cfg.width, cfg.height), resample=cfg.resample)
    return image


def refits(cfg: ImageProcessorConfig) -> bool:
    """Whether fitting a fitted image changes it again (padding to a square, then a non-square size),
    or the model tiles, which needs the whole image: then an image must be kept as it came."""
    return cfg.tiling != "none" or (cfg.pad_to_square and cfg.do_resize and cfg.width != cfg.height)


def preprocess_image(image: Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    """One RGB image -> float32 [3, H, W]."""
    pixels = np.asarray(fit_image(image, cfg))  # uint8 [H, W, 3]
    if cfg.do_rescale:
        pixels = (pixels.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    else:
        pixels = pixels.astype(np.float32)
    if cfg.do_normalize:
        pixels = (pixels - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def image_tiles(image: Image.Image, cfg: ImageProcessorConfig) -> tuple[list[Image.Image], "TilePlan"]:
    """The pictures the vision tower sees for one image (itself, or its tiles) and how they combine."""
    from .tiling import TilePlan, dynamic_tiles, s2_tiles

    if cfg.tiling == "dynamic":
        return dynamic_tiles(image, cfg.width, cfg.min_tiles, cfg.max_tiles)
    if cfg.tiling == "dynamic_s2":
        return s2_tiles(image, cfg.width, cfg.s2_scales, cfg.max_tiles)
    if cfg.tiling == "s2":
        raise ValueError("s2 tiles are cut from the preprocessed pixels: use image_pixels")
    return [image], TilePlan("single")


def image_pixels(image: Image.Image, cfg: ImageProcessorConfig) -> tuple[np.ndarray, "TilePlan"]:
    """One image -> the tower's input [tiles, 3, H, W] and its plan: its tiles preprocessed one by one,
    or for VILA1.5's S2 ("s2") the preprocessed picture resized to each scale and cut
    (common/tiling.py: s2_pixel_tiles)."""
    from .tiling import s2_pixel_tiles

    if cfg.tiling == "s2":
        return s2_pixel_tiles(preprocess_image(image, cfg), cfg.s2_scales)
    tiles, plan = image_tiles(image, cfg)
    return np.stack([preprocess_image(t, cfg) for t in tiles]), plan


def whole_pictures(cfg: ImageProcessorConfig) -> ImageProcessorConfig:
    """The settings for pictures seen whole (video frames): no aspect-ratio tiling. S2's scales
    stay: they are part of how the tower sees any picture."""
    return cfg if cfg.tiling in ("none", "s2") else dataclasses.replace(cfg, tiling="none")


def image_token_count(size: tuple[int, int], cfg: ImageProcessorConfig, tokens_per_block: int) -> int:
    """How many embeddings an image of `size` (width, height) takes in the prompt, without cutting it:
    tokens_per_block (the projector's output for one tower-sized picture) times the blocks."""
    from .tiling import choose_grid

    if cfg.tiling in ("none", "s2"):  # S2: merged onto the first scale's grid, one block
        return tokens_per_block
    if cfg.tiling == "dynamic":
        cols, rows = choose_grid(size[0], size[1], cfg.width, cfg.min_tiles, cfg.max_tiles)
        return tokens_per_block * (cols * rows + (1 if cols * rows > 1 else 0))
    scales = cfg.s2_scales
    sides = [s // scales[0] for s in scales[:-1]]
    least = (scales[-1] // scales[0]) ** 2
    grids = [(k, k) for k in sides] + [choose_grid(size[0], size[1], cfg.width, least, max(cfg.max_tiles, least))]
    cols, rows = grids[cfg.s2_output_scale]
    return tokens_per_block * cols * rows


def preprocess_tiled(images: Sequence[ImageInput], cfg: ImageProcessorConfig) -> tuple[np.ndarray, list]:
    """Load, tile and preprocess images in prompt order -> (float32 [tiles, 3, H, W], one TilePlan per
    image). Without tiling every image is one tile."""
    pixels, plans = [], []
    for i, img in enumerate(images):
        tiles, plan = image_pixels(load_image(img, name=image_label(img, i, len(images))), cfg)
        pixels += list(tiles)
        plans.append(plan)
    if not pixels:
        return np.zeros((0, 3, cfg.height, cfg.width), np.float32), plans
    return np.stack(pixels), plans


def preprocess_images(images: Sequence[ImageInput], cfg: ImageProcessorConfig) -> np.ndarray:
    """Load and preprocess images in prompt order -> float32 [N, 3, H, W] (N may be 0): one row per
    image, for models that see each image whole (see preprocess_tiled for tiling ones)."""
    if cfg.tiling != "none":
        raise UnsupportedFeatureError(f"this model cuts images into tiles ({cfg.tiling}); this path takes one "
                                      "picture per image (training does not support tiling yet)")
    return preprocess_tiled(images, cfg)[0]
