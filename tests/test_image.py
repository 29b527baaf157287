"""Torch-free preprocessing against transformers' own (PIL-backed) image processors, VILA-style.

VILA1.5 "resize": PIL-resize to the processor size, then the processor (a no-op resize, rescale,
normalize). "pad": expand to a square with the mean colour, then the processor. Both paths use
Pillow's bicubic filter, so pixels agree to float32 rounding of rescale/normalize (< 1e-6).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlm_edge.common.errors import InputError
from vlm_edge.common.image import ImageProcessorConfig, load_image, preprocess_images

SIGLIP = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
          "resample": 3, "rescale_factor": 1 / 255, "size": {"height": 48, "width": 48}}
CLIP = {"crop_size": {"height": 40, "width": 40}, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": {"shortest_edge": 40}}


def _image(rng, w=70, h=45) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_siglip():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    return SiglipImageProcessorPil(**{k: v for k, v in SIGLIP.items()})


def _hf_clip():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**CLIP)


def test_siglip_resize_matches_transformers(rng):
    image = _image(rng)
    ours = preprocess_images([image], ImageProcessorConfig.from_preprocessor_config(SIGLIP, "resize"))
    want = _hf_siglip()(images=image.resize((48, 48), Image.Resampling.BICUBIC), return_tensors="np")["pixel_values"]
    assert ours.shape == (1, 3, 48, 48) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)


def test_clip_resize_matches_transformers(rng):
    image = _image(rng, 90, 50)
    ours = preprocess_images([image], ImageProcessorConfig.from_preprocessor_config(CLIP, "resize"))
    want = _hf_clip()(images=image.resize((40, 40), Image.Resampling.BICUBIC), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)


def test_pad_mode_matches_expand_to_square_then_transformers(rng):
    image = _image(rng, 64, 30)
    ours = preprocess_images([image], ImageProcessorConfig.from_preprocessor_config(SIGLIP, "pad"))
    square = Image.new("RGB", (64, 64), (127, 127, 127))  # int(0.5 * 255) per channel
    square.paste(image, (0, (64 - 30) // 2))
    want = _hf_siglip()(images=square, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, want, rtol=0, atol=1e-6)


def test_every_input_kind_decodes_to_the_same_pixels(rng, tmp_path):
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(array).save(path)
    kinds = [array, Image.fromarray(array), path, str(path), path.read_bytes(), Image.fromarray(array).convert("RGBA")]
    for kind in kinds:
        np.testing.assert_array_equal(np.asarray(load_image(kind)), array)
    grey = load_image(array[:, :, 0])
    assert grey.mode == "RGB" and grey.size == (30, 20)


def test_no_images_gives_an_empty_batch():
    cfg = ImageProcessorConfig.from_preprocessor_config(SIGLIP)
    assert preprocess_images([], cfg).shape == (0, 3, 48, 48)


@pytest.mark.parametrize(
    "source,phrase",
    [(b"not an image at all", "could not be decoded"), ("missing.png", "does not exist"),
     (np.zeros((4, 4, 3), np.float32), "arrays must be uint8"), (12345, "expected a path")],
)
def test_bad_images_fail_clearly(source, phrase):
    with pytest.raises(InputError, match=phrase):
        load_image(source)


def test_truncated_png_fails_clearly(rng):
    buffer = io.BytesIO()
    _image(rng).save(buffer, format="PNG")
    with pytest.raises(InputError, match="could not be decoded"):
        load_image(buffer.getvalue()[:200])


@pytest.mark.parametrize("pad", [False, True])
def test_a_fitted_image_preprocesses_to_the_same_pixels(pad):
    """The server keeps only the image fitted to the tower's size: it must give the same input."""
    from vlm_edge.common.image import fit_image, preprocess_image, refits

    rng = np.random.default_rng(0)
    cfg = ImageProcessorConfig(height=28, width=28, mean=(0.5, 0.4, 0.3), std=(0.5, 0.5, 0.5), pad_to_square=pad)
    assert not refits(cfg)
    for w, h in ((640, 480), (97, 300), (28, 28), (20, 20)):
        image = _image(rng, w, h)
        np.testing.assert_array_equal(preprocess_image(fit_image(image, cfg), cfg), preprocess_image(image, cfg))
    assert refits(ImageProcessorConfig(height=28, width=56, mean=(0.5,) * 3, std=(0.5,) * 3, pad_to_square=True))  # not fitted ahead
