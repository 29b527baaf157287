"""Procedural scenes: coloured shapes and rendered words, deterministic by seed.

A scene is 1-3 objects (training scenes up to 4) or a single short word written in black, at
most one object in each quadrant of the picture; the quadrant of an object's centre names its
position ("top left", ...). Three layouts:

    cells  each shape in the middle of its quadrant, left for the plain renderer to move a few
           pixels (the plain world: the tiny recipe's pictures, drawn by `render` without a style)
    grid   each shape upright, at one of two fixed sizes, moved at random within its quadrant
           (the training world's pictures)
    free   each shape of any size within its size word's range, turned at any angle, its centre
           anywhere in its quadrant, reaching over into the next one; a single shape may sit
           anywhere, the middle included (its position is then asked only when its centre is
           clearly in one quadrant). The tiny tower, trained from scratch, does not learn to tell
           shapes apart in this layout (docs/training.md, "Pictures from other renderers").

How a scene is drawn (renderer, background, lighting, compression) is train/renderers.py's: the
scene is what the picture shows, the style how.

Every question the datasets ask is answerable from the picture alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
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


# Radius (half the extent of the unrotated shape), as a share of the picture's width, by size word
FREE_RADIUS = {"small": (0.07, 0.11), "big": (0.16, 0.23)}
GRID_RADIUS = {"small": 0.14, "big": 0.21}  # the grid layout's fixed sizes
BOUND = {"circle": 1.0, "square": math.sqrt(2), "triangle": 1.0}  # farthest point from the centre, in radii
MIDDLE_MARGIN = 0.05  # a centre this close to the middle lines has no position answer
ANYWHERE_PROBABILITY = 0.35  # a single shape placed anywhere, the middle included (else inside its quadrant)


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: str
    # centre (shares of width and height), radius (share of the width) and rotation (radians); None:
    # the grid layout (the middle of the cell, GRID_RADIUS, upright)
    x: float | None = None
    y: float | None = None
    r: float | None = None
    angle: float = 0.0

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"

    def geometry(self) -> tuple[float, float, float, float]:
        """(x, y, r, angle) in shares of the picture."""
        if self.x is not None and self.y is not None and self.r is not None:
            return self.x, self.y, self.r, self.angle
        row, col = divmod(CELLS.index(self.cell), 2)
        return col * 0.5 + 0.25, row * 0.5 + 0.25, GRID_RADIUS[self.size], self.angle

    @property
    def clear(self) -> bool:
        """Whether the centre is clearly in its quadrant (position questions are asked only then)."""
        x, y, _, _ = self.geometry()
        return abs(x - 0.5) >= MIDDLE_MARGIN and abs(y - 0.5) >= MIDDLE_MARGIN

    def outline(self) -> list[tuple[float, float]]:
        """The polygon of a square or triangle, (x, y) in shares of the picture (a circle has none)."""
        x, y, r, angle = self.geometry()
        if self.shape == "square":
            corners = [(-r, -r), (r, -r), (r, r), (-r, r)]
        elif self.shape == "triangle":  # apex up (at angle 0): apex at -r, base corners at +r
            corners = [(0.0, -r), (r, r), (-r, r)]
        else:
            raise ValueError("a circle has no outline")
        c, s = math.cos(angle), math.sin(angle)
        return [(x + u * c - v * s, y + u * s + v * c) for u, v in corners]

    def inside(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Boolean mask of the points (px, py), shares of the picture, that the shape covers."""
        x, y, r, _ = self.geometry()
        if self.shape == "circle":
            return (px - x) ** 2 + (py - y) ** 2 <= r * r
        inside = np.ones(np.broadcast(px, py).shape, dtype=bool)
        points = self.outline()
        for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1]):  # clockwise on screen: inside on the right
            inside &= (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0
        return inside


def _within_quadrant(o: Shape) -> bool:
    """Whether the shape stays inside its own quadrant (upright, every shape's extent is its radius)."""
    x, y, r, angle = o.geometry()
    bound = r if angle == 0 else r * BOUND[o.shape]
    row, col = divmod(CELLS.index(o.cell), 2)
    return (col * 0.5 <= x - bound and x + bound <= col * 0.5 + 0.5
            and row * 0.5 <= y - bound and y + bound <= row * 0.5 + 0.5)


QUARTER_SAMPLES = 24  # samples per side of each quadrant when measuring how much of a shape lies in it


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...] = ()
    word: str | None = None
    background: int = 245  # grey level (the plain style's; train/renderers.py draws others)
    # The regions shares() and painted() split the picture into: a grid x grid split, one region an
    # image token (2: the quadrants, the tiny preset's 4 tokens; 4: 16 tokens). Not part of what
    # the picture shows.
    grid: int = field(default=2, compare=False)
    _shares: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def region(self, o: Shape) -> int:
        """The region (row-major index in the grid) that holds object `o`'s centre; on the 2x2 grid
        its quadrant's index into CELLS."""
        if self.grid == 2:
            return CELLS.index(o.cell)
        x, y, _, _ = o.geometry()
        return min(int(y * self.grid), self.grid - 1) * self.grid + min(int(x * self.grid), self.grid - 1)

    def quadrant(self, region: int) -> int:
        """The quadrant (index into CELLS) a region lies in."""
        row, col = divmod(region, self.grid)
        return (2 * row // self.grid) * 2 + 2 * col // self.grid

    def shares(self) -> np.ndarray:
        """[objects, grid * grid] float: the share of each object's area that lies in each region
        (on the 2x2 grid: each quadrant, CELLS order)."""
        g = self.grid
        if "value" not in self._shares and g == 2 and all(_within_quadrant(o) for o in self.objects):
            self._shares["value"] = np.eye(len(CELLS))[[CELLS.index(o.cell) for o in self.objects]].reshape(-1, len(CELLS))
        if "value" not in self._shares:
            n = 2 * QUARTER_SAMPLES  # samples a side: 24 a region on the 2x2 grid, 12 on the 4x4
            if n % g:
                raise ValueError(f"a {g}x{g} grid does not split {n} samples a side evenly")
            points = (np.arange(n) + 0.5) / n
            py, px = np.meshgrid(points, points, indexing="ij")
            out = np.zeros((len(self.objects), g * g))
            for i, o in enumerate(self.objects):
                mask = o.inside(px, py).reshape(g, n // g, g, n // g).sum(axis=(1, 3)).reshape(-1)
                out[i] = mask / max(1, mask.sum())
            self._shares["value"] = out
        return self._shares["value"]

    def painted(self, share: float | None = None) -> list[tuple[int, ...]]:
        """Per object, the regions that hold its centre or at least `share` of its area (default: a
        quarter on the 2x2 grid, a quarter of that on the 4x4): the image tokens a question about it
        should look at."""
        share = 0.25 * (2 / self.grid) ** 2 if share is None else share
        shares = self.shares()
        return [tuple(sorted({self.region(o)} | {c for c in range(self.grid ** 2) if shares[i, c] >= share}))
                for i, o in enumerate(self.objects)]

    def key(self) -> str:
        """Canonical text of the scene, used to keep training and held-out scenes apart."""
        if self.word is not None:
            return f"word:{self.word}"
        return "|".join(f"{o.size},{o.colour},{o.shape},{o.cell}" for o in sorted(self.objects, key=lambda o: o.cell))


def random_scene(rng: random.Random, *, word_probability: float = 0.15,
                 count_weights: Sequence[float] | None = None, layout: str = "cells") -> Scene:
    """A word, or objects in distinct quadrants: 1-3 of them, equally likely (what evaluation asks
    about), or with `count_weights` (w1, ..., wn), n <= 4, k objects with weight wk (training
    scenes may fill all four). `layout`: "cells" (where each shape sits is left to the plain
    renderer), "grid" (upright, fixed sizes, moved within the quadrant) or "free" (any size,
    angle and place)."""
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
    if layout == "free":
        objects = place(objects, rng)
    elif layout == "grid":
        objects = tuple(jitter(o, rng) for o in objects)
    elif layout != "cells":
        raise ValueError(f"layout {layout!r} is unknown: cells, grid or free")
    return Scene(objects=objects, background=background)


def jitter(o: Shape, rng: random.Random) -> Shape:
    """A grid shape moved at random within its quadrant, upright, at its size's fixed radius."""
    r = GRID_RADIUS[o.size]
    slack = max(0.0, 0.25 - r - 0.01)
    row, col = divmod(CELLS.index(o.cell), 2)
    x, y = col * 0.5 + 0.25 + rng.uniform(-slack, slack), row * 0.5 + 0.25 + rng.uniform(-slack, slack)
    return Shape(o.shape, o.colour, o.size, o.cell, round(x, 4), round(y, 4), r, 0.0)


def place(objects: Sequence[Shape], rng: random.Random) -> tuple[Shape, ...]:
    """Each shape a radius within its size's range, a rotation, and a centre in its quadrant (a
    single shape: with ANYWHERE_PROBABILITY anywhere in the picture), kept inside the picture and
    apart from the others; a shape that finds no room within 40 tries takes its smallest radius at
    the middle of its quadrant."""
    placed: list[Shape] = []
    anywhere = len(objects) == 1 and rng.random() < ANYWHERE_PROBABILITY
    for o in objects:
        low, high = FREE_RADIUS[o.size]
        angle = rng.uniform(0, 2 * math.pi) if o.shape != "circle" else 0.0
        row, col = divmod(CELLS.index(o.cell), 2)
        for _ in range(40):
            r = rng.uniform(low, high)
            bound = r * BOUND[o.shape]
            edge = min(bound + 0.01, 0.5 - MIDDLE_MARGIN)
            if anywhere:
                x, y = rng.uniform(edge, 1 - edge), rng.uniform(edge, 1 - edge)
            else:
                x = rng.uniform(edge, 0.5 - MIDDLE_MARGIN) if col == 0 else rng.uniform(0.5 + MIDDLE_MARGIN, 1 - edge)
                y = rng.uniform(edge, 0.5 - MIDDLE_MARGIN) if row == 0 else rng.uniform(0.5 + MIDDLE_MARGIN, 1 - edge)
            if all(math.hypot(x - p.x, y - p.y) > bound + p.r * BOUND[p.shape] + 0.02 for p in placed):  # type: ignore[operator]
                break
        else:
            r = low
            x, y = col * 0.5 + 0.25, row * 0.5 + 0.25
        cell = CELLS[(2 if y >= 0.5 else 0) + (1 if x >= 0.5 else 0)]
        placed.append(Shape(o.shape, o.colour, o.size, cell, round(x, 4), round(y, 4), round(r, 4), round(angle, 4)))
    return tuple(placed)


def render(scene: Scene, size: int, rng: random.Random, style=None) -> Image.Image:
    """Draw `scene` in `style` (train/renderers.py), or with style None as the plain world draws a
    scene of the cells layout: a size x size canvas of the scene's grey, plain Pillow drawing
    without anti-aliasing, exact colours, `rng` jittering each shape within its cell."""
    if style is not None:
        from .renderers import draw as draw_styled

        return draw_styled(scene, size, rng, style)
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
