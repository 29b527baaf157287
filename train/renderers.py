"""How a scene is drawn: renderers, backgrounds, shades of colour, lighting, blur and compression.

A picture a user brings was not drawn by our code. So training pictures come from more than one
world, and evaluation keeps one world out of training entirely:

    world      renderers                                        backgrounds
    train      Pillow (aliased), Pillow anti-aliased (drawn      plain, linear gradient, noise
               at 4x and filtered down), OpenCV (LINE_8 and
               LINE_AA, sub-pixel)
    heldout    numpy coverage raster (4x4 samples a pixel)      texture: stripes, checks, blotches

(The plain world, the tiny recipe's pictures, is scenes.render without a style: one grey, exact
colours, Pillow without anti-aliasing.)

Every world draws each colour as a shade from a range around its name (red is any red from
Pillow's (255, 0, 0) to a dull brick), on a canvas of its own size and aspect (the processor's
resize brings it to the model's input, as it does a user's picture), and lights, blurs and
JPEG-compresses some of the pictures. Backgrounds are light or dark greys with a faint tint, or
(COLOURED_GROUNDS of them) a colour of any hue but the hues of the scene's own colours, and every
shape stands clear of its background (RGB distance >= MIN_CONTRAST).

`draw(scene, size, rng, style)` is a pure function of its arguments: the data stay deterministic
by seed and index. Words are written with Pillow's bundled font in every world.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .scenes import BOUND, COLOURS, Scene, Shape

# hue range (turns), saturation range, value range of each colour name
SHADES = {
    "red": ((-0.03, 0.025), (0.6, 1.0), (0.5, 1.0)),
    "orange": ((0.05, 0.11), (0.7, 1.0), (0.75, 1.0)),
    "yellow": ((0.13, 0.18), (0.6, 1.0), (0.75, 1.0)),
    "green": ((0.25, 0.45), (0.5, 1.0), (0.4, 0.95)),
    "blue": ((0.56, 0.69), (0.55, 1.0), (0.45, 1.0)),
    "purple": ((0.74, 0.86), (0.45, 1.0), (0.4, 0.9)),
}
assert set(SHADES) == set(COLOURS)
MIN_CONTRAST = 90.0  # RGB distance between a shape's fill and its background's mean
COLOURED_GROUNDS = 0.4  # share of backgrounds (both worlds) whose colour is a hue, not a grey
HUE_MARGIN = 0.05  # a coloured ground's hue keeps this far (turns) from each scene colour's hue range
WORLDS = ("train", "heldout")
TRAIN_RENDERERS = ("pillow", "pillow-aa", "opencv")
HELDOUT_RENDERERS = ("numpy",)
TRAIN_BACKGROUNDS = ("plain", "gradient", "noise")
HELDOUT_BACKGROUNDS = ("texture",)
CANVAS = (32, 96)  # native canvas sides (pixels) drawn from this range
SUPER = 4  # the anti-aliased renderers' samples per pixel side


@dataclass(frozen=True)
class Style:
    renderer: str  # pillow | pillow-aa | opencv | numpy
    background: str  # plain | gradient | noise | texture
    width: int
    height: int
    shades: bool = True  # colours drawn from SHADES (False: COLOURS' exact values)
    grey: int | None = None  # a fixed grey background (None: drawn; the renderers' tests use white)
    light: float = 0.0  # strength of a lighting ramp (0: none)
    blur: float = 0.0  # Gaussian blur radius in pixels (0: none)
    jpeg: int | None = None  # JPEG quality the picture goes through (None: none)


def random_style(rng: random.Random, world: str, size: int) -> Style:
    """A style of `world` (WORLDS); the canvas is its own (`size`, the model's input, is unused)."""
    if world not in WORLDS:
        raise ValueError(f"world {world!r} is unknown; choose one of {', '.join(WORLDS)}")
    renderers, backgrounds = ((TRAIN_RENDERERS, TRAIN_BACKGROUNDS) if world == "train"
                              else (HELDOUT_RENDERERS, HELDOUT_BACKGROUNDS))
    width = rng.randint(*CANVAS)
    height = width if rng.random() < 0.6 else max(CANVAS[0], min(CANVAS[1], round(width * rng.uniform(0.75, 1.33))))
    return Style(rng.choice(renderers), rng.choice(backgrounds), width, height,
                 light=rng.uniform(0.05, 0.3) if rng.random() < 0.4 else 0.0,
                 blur=rng.uniform(0.3, 1.0) if rng.random() < 0.25 else 0.0,
                 jpeg=rng.randint(30, 90) if rng.random() < 0.35 else None)


# ---- colours and backgrounds ----------------------------------------------------------------------
def shade(name: str, rng: random.Random) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = SHADES[name]
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(h0, h1) % 1.0, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return round(r * 255), round(g * 255), round(b * 255)


def _tint(rng: random.Random, light: bool, avoid: tuple[str, ...] = ()) -> np.ndarray:
    """A background colour: a grey, light or dark, with a faint tint; or, COLOURED_GROUNDS of the
    time, a colour whose hue is none of the colour names in `avoid` (a ground that is not itself one
    of the scene's colours)."""
    if rng.random() < COLOURED_GROUNDS:
        for _ in range(20):
            hue = rng.random()
            if not any(_near(hue, SHADES[name][0]) for name in avoid):
                value = rng.uniform(0.75, 1.0) if light else rng.uniform(0.2, 0.75)
                r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.25, 0.85), value)
                return np.array([r * 255, g * 255, b * 255])
    value = rng.uniform(190, 255) if light else rng.uniform(25, 190)
    return np.clip(value + np.array([rng.uniform(-12, 12) for _ in range(3)]), 0, 255)


def _near(hue: float, span: tuple[float, float]) -> bool:
    """Is `hue` (turns) within HUE_MARGIN of the range `span` (turns, may start below 0)?"""
    low, high = span
    centre, half = (low + high) / 2, (high - low) / 2 + HUE_MARGIN
    return abs((hue - centre + 0.5) % 1.0 - 0.5) <= half


def background(style: Style, rng: random.Random, light: bool, avoid: tuple[str, ...] = ()) -> np.ndarray:
    """[height, width, 3] float32 background of `style`; a coloured ground's hue is none of the
    colour names in `avoid`."""
    h, w = style.height, style.width
    if style.grey is not None:
        return np.full((h, w, 3), float(style.grey), dtype=np.float32)
    base = _tint(rng, light, avoid)
    if style.background == "plain":
        return np.broadcast_to(np.clip(base, 0, 255).astype(np.float32), (h, w, 3))
    y, x = np.ogrid[0:h, 0:w]
    if style.background == "gradient":
        other = _tint(rng, light if rng.random() < 0.7 else not light, avoid)
        angle = rng.uniform(0, 2 * math.pi)
        t = (x / max(1, w - 1) - 0.5) * math.cos(angle) + (y / max(1, h - 1) - 0.5) * math.sin(angle)
        t = np.clip(t / math.sqrt(0.5) + 0.5, 0, 1)[..., None]
        out = base * (1 - t) + other * t
    elif style.background == "noise":
        np_rng = np.random.default_rng(rng.getrandbits(32))
        sigma = rng.uniform(4, 22)
        grain = np_rng.standard_normal((h, w, 1 if rng.random() < 0.5 else 3), dtype=np.float32)
        out = base.astype(np.float32) + sigma * grain
    elif style.background == "texture":
        kind = rng.randrange(3)
        amplitude = rng.uniform(12, 35)
        if kind == 0:  # stripes at any angle
            period, angle = rng.uniform(3, 12), rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
            wave = np.broadcast_to(wave, (h, w))
        elif kind == 1:  # checks
            cell = rng.randint(2, 8)
            wave = np.broadcast_to(((x // cell + y // cell) % 2) * 2.0 - 1, (h, w))
        else:  # blotches: coarse noise, upsampled
            np_rng = np.random.default_rng(rng.getrandbits(32))
            coarse = np_rng.uniform(-1, 1, (max(2, h // 8), max(2, w // 8))).astype(np.float32)
            wave = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC))
        tone = np.array([rng.uniform(0.7, 1.0) for _ in range(3)])  # a faint colour to the pattern
        out = base + amplitude * wave[..., None] * tone
    else:
        raise ValueError(f"background {style.background!r} is unknown")
    return np.clip(out, 0, 255).astype(np.float32)


def fills(scene: Scene, style: Style, rng: random.Random, ground: np.ndarray) -> list[tuple[int, int, int]]:
    """The fill of each object: its exact colour, or a shade that stands clear of the background."""
    if not style.shades:
        return [COLOURS[o.colour] for o in scene.objects]
    mean = ground[::4, ::4].reshape(-1, 3).mean(0)
    out = []
    for o in scene.objects:
        for _ in range(30):
            fill = shade(o.colour, rng)
            if np.linalg.norm(np.array(fill, dtype=np.float32) - mean) >= MIN_CONTRAST:
                break
        out.append(fill)
    return out


# ---- renderers --------------------------------------------------------------------------------------
def _pixels(o: Shape, style: Style, scale: float) -> tuple[float, float, float, list[tuple[float, float]]]:
    """(cx, cy, radius, polygon) in pixels of a canvas `scale` times the style's."""
    w, h = style.width * scale, style.height * scale
    x, y, r, angle = o.geometry()
    radius = r * min(w, h)
    cx, cy = x * w, y * h
    if o.shape == "circle":
        return cx, cy, radius, []
    unit = Shape(o.shape, o.colour, o.size, o.cell, 0.0, 0.0, 1.0, angle).outline()
    return cx, cy, radius, [(cx + u * radius, cy + v * radius) for u, v in unit]


def _draw_pillow(canvas: Image.Image, scene: Scene, style: Style, colours, scale: int) -> Image.Image:
    big = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST) if scale > 1 else canvas
    draw = ImageDraw.Draw(big)
    for o, fill in zip(scene.objects, colours):
        cx, cy, radius, polygon = _pixels(o, style, scale)
        if o.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            draw.polygon(polygon, fill=fill)
    return big.resize(canvas.size, Image.Resampling.BOX) if scale > 1 else big


def _draw_opencv(pixels: np.ndarray, scene: Scene, style: Style, colours, rng: random.Random) -> np.ndarray:
    import cv2

    line = cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8
    shift = 4  # sub-pixel coordinates: 1/16 pixel
    out = np.ascontiguousarray(pixels.astype(np.uint8))
    for o, fill in zip(scene.objects, colours):
        cx, cy, radius, polygon = _pixels(o, style, 1.0)
        if o.shape == "circle":
            cv2.circle(out, (round(cx * 16), round(cy * 16)), round(radius * 16), fill, -1, line, shift)
        else:
            points = np.array([[round(px * 16), round(py * 16)] for px, py in polygon], dtype=np.int32)
            cv2.fillPoly(out, [points], fill, line, shift)
    return out


def _draw_numpy(pixels: np.ndarray, scene: Scene, style: Style, colours) -> np.ndarray:
    """Each pixel the mean of SUPER x SUPER point samples of the scene (its coverage, to 1/16),
    sampled over each shape's bounding box."""
    h, w = style.height, style.width
    side = min(w, h)
    out = np.array(pixels, dtype=np.float32)
    for o, fill in zip(scene.objects, colours):
        x, y, r, angle = o.geometry()
        bound = r * BOUND[o.shape] * side + 1
        x0, x1 = max(0, int(x * w - bound)), min(w, int(x * w + bound) + 1)
        y0, y1 = max(0, int(y * h - bound)), min(h, int(y * h + bound) + 1)
        py, px = np.meshgrid((np.arange(y0 * SUPER, y1 * SUPER) + 0.5) / SUPER,
                             (np.arange(x0 * SUPER, x1 * SUPER) + 0.5) / SUPER, indexing="ij")
        # the shape in units of the shorter side: centre scaled by each side, radius by the shorter one
        unit = Shape(o.shape, o.colour, o.size, o.cell, x * w / side, y * h / side, r, angle)
        cover = unit.inside(px / side, py / side).reshape(y1 - y0, SUPER, x1 - x0, SUPER).mean(axis=(1, 3))[..., None]
        box = out[y0:y1, x0:x1]
        out[y0:y1, x0:x1] = box * (1 - cover) + np.array(fill, dtype=np.float32) * cover
    return out


def _write(canvas: Image.Image, word: str, rng: random.Random) -> None:
    draw = ImageDraw.Draw(canvas)
    size = min(canvas.size)
    font = ImageFont.load_default(size=max(10, size // 3))
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    x = (canvas.width - (right - left)) // 2 - left + rng.randint(-size // 16, size // 16)
    y = (canvas.height - (bottom - top)) // 2 - top + rng.randint(-size // 8, size // 8)
    draw.text((x, y), word, fill=(0, 0, 0) if rng.random() < 0.7 else tuple([rng.randint(0, 50)] * 3), font=font)


def draw(scene: Scene, size: int, rng: random.Random, style: Style) -> Image.Image:
    """The picture of `scene` in `style`, on the style's own canvas (`size` is unused: the processor
    resizes the picture to the model's input, as it does a user's)."""
    ground = background(style, rng, light=scene.word is not None or rng.random() < 0.7,
                        avoid=tuple({o.colour for o in scene.objects}))
    colours = fills(scene, style, rng, ground)
    if scene.word is not None:
        canvas = Image.fromarray(ground.astype(np.uint8))
        _write(canvas, scene.word, rng)
        pixels = np.asarray(canvas, dtype=np.float32)
    elif style.renderer == "numpy":
        pixels = _draw_numpy(ground, scene, style, colours)
    elif style.renderer == "opencv":
        pixels = _draw_opencv(ground, scene, style, colours, rng).astype(np.float32)
    elif style.renderer in ("pillow", "pillow-aa"):
        canvas = Image.fromarray(ground.astype(np.uint8))
        pixels = np.asarray(_draw_pillow(canvas, scene, style, colours, 3 if style.renderer == "pillow-aa" else 1),
                            dtype=np.float32)
    else:
        raise ValueError(f"renderer {style.renderer!r} is unknown")
    if style.light:
        h, w = pixels.shape[:2]
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.ogrid[0:h, 0:w]
        ramp = (x / max(1, w - 1) - 0.5) * math.cos(angle) + (y / max(1, h - 1) - 0.5) * math.sin(angle)
        pixels = pixels * (rng.uniform(0.85, 1.1) + style.light * ramp)[..., None]
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    if style.blur:
        image = image.filter(ImageFilter.GaussianBlur(style.blur))
    if style.jpeg is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=style.jpeg)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image
