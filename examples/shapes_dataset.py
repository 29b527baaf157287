"""A small visual-question set of your own, to try `vlm-train --init` and `vlm-eval --data` on.

    python examples/shapes_dataset.py -o shapes-data/ [--train 4000] [--test 500] [--size 64] [--seed 0]

writes shapes-data/images/*.png, shapes-data/train.json and shapes-data/test.json (LLaVA format:
one picture, one question, one answer per record). Each picture is one shape (circle, square or
triangle) in one of six colours, anywhere in the frame, of any size from a fifth to a half of it,
rotated, on a plain, gradient or noisy background. Questions, in US spelling:

    What color is the shape?              -> red
    What shape is in the picture?         -> circle
    Is there a blue square in the image?  -> yes / no
    Is the shape green?                   -> yes / no

The pictures are drawn with numpy (a 4x supersampled raster, so edges are anti-aliased), not with
the Pillow drawing the training module's own scenes use: a model fine-tuned on this set meets a
renderer it was not trained on. Nothing here imports vlm_edge; it stands for a user's data set.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (215, 45, 40), "green": (45, 165, 70), "blue": (45, 85, 215), "yellow": (235, 205, 35),
          "purple": (145, 65, 185), "orange": (240, 135, 25)}
SHAPES = ("circle", "square", "triangle")
SUPER = 4  # supersampling factor: each pixel is the mean of SUPER x SUPER samples


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float: plain, a linear gradient or noise, light or dark, never saturated."""
    kind = rng.integers(3)
    base = rng.uniform(20, 235, 3)
    if kind == 0:
        return np.broadcast_to(base, (size, size, 3)).copy()
    if kind == 1:
        other = rng.uniform(20, 235, 3)
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:size, 0:size] / (size - 1)
        t = ((x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)) / math.sqrt(0.5) * 0.5 + 0.5
        return base * (1 - t[..., None]) + other * t[..., None]
    return np.clip(base + rng.normal(0, rng.uniform(8, 30), (size, size, 3)), 0, 255)


def mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """[size, size] coverage in 0..1 of a shape centred at (cx, cy) (pixels) with circumradius `radius`."""
    n = size * SUPER
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / SUPER
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if shape == "circle":
        inside = u * u + v * v <= radius * radius
    elif shape == "square":
        half = radius / math.sqrt(2)
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    else:  # equilateral triangle: inside all three edges' half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + math.pi / 2 + k * 2 * math.pi / 3  # outward normal of edge k
            inside &= (dx * math.cos(a) + dy * math.sin(a)) <= radius / 2
    return inside.reshape(size, SUPER, size, SUPER).mean(axis=(1, 3))


def picture(rng: np.random.Generator, size: int, shape: str, color: str) -> Image.Image:
    radius = rng.uniform(0.2, 0.5) * size / 2 * math.sqrt(2)
    margin = radius * 0.75
    cx, cy = rng.uniform(margin, size - margin, 2)
    cover = mask(shape, size, cx, cy, radius, rng.uniform(0, 2 * math.pi))[..., None]
    fill = np.clip(np.array(COLORS[color]) + rng.normal(0, 8, 3), 0, 255)
    back = background(rng, size)
    while np.linalg.norm(back.mean(axis=(0, 1)) - fill) < 90:  # the shape must stand out from its ground
        back = background(rng, size)
    pixels = back * (1 - cover) + fill * cover
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


def question(rng: np.random.Generator, shape: str, color: str) -> tuple[str, str]:
    kind = rng.integers(4)
    if kind == 0:
        return "What color is the shape?", color
    if kind == 1:
        return "What shape is in the picture?", shape
    if kind == 2:  # half of them true
        asked_shape = shape if rng.random() < 0.5 else str(rng.choice([s for s in SHAPES if s != shape]))
        asked_color = color if asked_shape == shape and rng.random() < 0.5 else str(rng.choice(list(COLORS)))
        yes = asked_shape == shape and asked_color == color
        return f"Is there a {asked_color} {asked_shape} in the image?", "yes" if yes else "no"
    asked = color if rng.random() < 0.5 else str(rng.choice([c for c in COLORS if c != color]))
    return f"Is the shape {asked}?", "yes" if asked == color else "no"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="folder for images/, train.json and test.json")
    p.add_argument("--train", type=int, default=4000, help="training records (default 4000)")
    p.add_argument("--test", type=int, default=500, help="test records (default 500)")
    p.add_argument("--size", type=int, default=64, help="picture width and height in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        records = []
        for i in range(count):
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
            name = f"images/{split}_{i:05d}.png"
            picture(rng, args.size, shape, color).save(out / name)
            q, a = question(rng, shape, color)
            records.append({"image": name, "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                                             {"from": "gpt", "value": a}]})
        (out / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
        print(f"{split}: {count} records -> {out / f'{split}.json'}")


if __name__ == "__main__":
    main()
