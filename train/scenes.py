"""Procedural scenes: coloured shapes and rendered words, deterministic by seed.

A scene is 1-3 objects (training scenes up to 4), each in its own cell of a 2x2 grid (so positions
have names: "top left", ...), or a single short word written in black. Rendering is plain Pillow drawing on a light
background, anti-aliasing off, so the pixels are a pure function of the scene.

Every question the datasets ask is answerable from the picture alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # (row, col) = divmod(index, 2)
WORDS = ("cat", "dog", "sun", "box", "cup", "hat", "map", "pen", "key", "egg")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: str

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...] = ()
    word: str | None = None
    background: int = 245  # grey level

    def key(self) -> str:
        """Canonical text of the scene, used to keep training and held-out scenes apart."""
        if self.word is not None:
            return f"word:{self.word}"
        return "|".join(f"{o.size},{o.colour},{o.shape},{o.cell}" for o in sorted(self.objects, key=lambda o: o.cell))


def random_scene(rng: random.Random, *, word_probability: float = 0.15,
                 count_weights: Sequence[float] | None = None) -> Scene:
    """A word, or objects in distinct cells: 1-3 of them, equally likely (what evaluation asks
    about), or with `count_weights` (w1, ..., wn), n <= 4, k objects with weight wk (training
    scenes may fill all four cells)."""
    background = rng.randint(225, 255)
    if rng.random() < word_probability:
        return Scene(word=rng.choice(WORDS), background=background)
    if count_weights is None:
        count = rng.randint(1, 3)
    elif 1 <= len(count_weights) <= len(CELLS):
        count = rng.choices(range(1, len(count_weights) + 1), count_weights)[0]
    else:
        raise ValueError(f"count_weights {tuple(count_weights)} must weight 1 to {len(CELLS)} objects")
    cells = sorted(rng.sample(CELLS, count), key=CELLS.index)  # captions list objects in reading order
    objects = tuple(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES), cell) for cell in cells)
    return Scene(objects=objects, background=background)


def render(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Draw `scene` on a size x size canvas; `rng` jitters positions within each cell."""
    image = Image.new("RGB", (size, size), (scene.background,) * 3)
    draw = ImageDraw.Draw(image)
    if scene.word is not None:
        font = ImageFont.load_default(size=max(10, size // 3))
        left, top, right, bottom = draw.textbbox((0, 0), scene.word, font=font)
        x = (size - (right - left)) // 2 - left + rng.randint(-size // 16, size // 16)
        y = (size - (bottom - top)) // 2 - top + rng.randint(-size // 8, size // 8)
        draw.text((x, y), scene.word, fill=(0, 0, 0), font=font)
        return image
    cell = size // 2
    for obj in scene.objects:
        row, col = divmod(CELLS.index(obj.cell), 2)
        radius = cell * (0.42 if obj.size == "big" else 0.28)
        slack = max(0, int(cell / 2 - radius) - 1)
        cx = col * cell + cell / 2 + rng.randint(-slack, slack)
        cy = row * cell + cell / 2 + rng.randint(-slack, slack)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image
