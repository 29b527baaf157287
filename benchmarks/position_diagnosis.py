"""Why a checkpoint misses position questions: answers split by how the object is named, by split,
by which object's cell was answered, and a linear probe of each image token's cell.

    python benchmarks/position_diagnosis.py ckpt/ [--questions 200] [--probe-scenes 3000]

1. Held-out (and training-split) position questions, as vlm-eval asks them, answered greedily by
   the PyTorch model; accuracy per number of shapes and per way the question names the object
   (shape, colour, both); for two or three shapes, whose cell a wrong answer gave.
2. Probe: projector outputs of the occupied image tokens of random scenes, least squares onto
   one-hot cells on two thirds, accuracy on the last third. Only meaningful for presets with one
   image token per scene cell (tiny: 2x2 tokens for the 2x2 grid).
"""

from __future__ import annotations

import argparse
import collections
import random

import numpy as np
import torch

from vlm_edge.common.image import preprocess_images
from vlm_edge.common.templates import render
from vlm_edge.model.checkpoint import load_checkpoint
from vlm_edge.model.generate import GenerationConfig, generate
from vlm_edge.train import datasets, scenes


class _Recording(datasets.SyntheticData):
    """The synthetic data, remembering the last scene drawn (the question's picture)."""

    last: scenes.Scene | None = None

    def scene(self, rng, split, **kwargs):
        found = super().scene(rng, split, **kwargs)
        object.__setattr__(self, "last", found)
        return found


def _style(question: str) -> str:
    colour = any(c in question for c in scenes.COLOURS)
    shape = any(s in question for s in scenes.SHAPES)
    return "colour+shape" if colour and shape else ("colour" if colour else "shape")


def answers(checkpoint, split: str, count: int) -> None:
    model, tok, template = checkpoint.model, checkpoint.tokenizer, checkpoint.template
    data = _Recording(model.config.image_size, 0)
    config = GenerationConfig(max_new_tokens=8, stop_token_ids=tok.stop_token_ids(template))
    right: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    given = collections.Counter()
    for i in range(count):
        rng = random.Random(f"0:{split}:vqa-position:{i}")
        sample = datasets._vqa(data, rng, split, "position")
        scene = data.last
        prompt = tok.tokenize_prompt(render(template, sample.messages[:1]))
        pixels = preprocess_images(sample.images, model.image_processor_config)
        with torch.no_grad():
            answer = tok.decode(generate(model, prompt, pixels, config).token_ids).strip()
        ok = answer == sample.answer
        n = len(scene.objects)
        for key in (f"{n} shapes", f"{n} shapes, named by {_style(sample.messages[0]['content'])}"):
            right[key][0] += ok
            right[key][1] += 1
        if n > 1:
            cells = [o.cell for o in scene.objects]
            given[(n, cells.index(answer) if answer in cells else -1)] += 1
    print(f"\nposition questions, {split} split ({count})")
    for key in sorted(right):
        print(f"  {key:<34}{right[key][0]:>4}/{right[key][1]:<4}{right[key][0] / right[key][1]:>6.0%}")
    for n in (2, 3):
        spread = ", ".join(f"object {k + 1}: {given[(n, k)]}" for k in range(n))
        print(f"  {n} shapes, answered the cell of (reading order) {spread}, none: {given[(n, -1)]}")


def probe(checkpoint, count: int) -> None:
    model = checkpoint.model
    rng = random.Random(1)
    pictures, occupied = [], []
    for _ in range(count):
        scene = scenes.random_scene(rng, word_probability=0.0)
        pictures.append(scenes.render(scene, model.config.image_size, rng))
        occupied.append({scenes.CELLS.index(o.cell) for o in scene.objects})
    with torch.no_grad():
        tokens = model.encode_images(torch.as_tensor(preprocess_images(pictures, model.image_processor_config))).numpy()
    if tokens.shape[1] != len(scenes.CELLS):
        print(f"\nprobe skipped: {tokens.shape[1]} image tokens per picture, not one per cell")
        return
    x = np.array([tokens[i, t] for i, cells in enumerate(occupied) for t in sorted(cells)])
    y = np.array([t for cells in occupied for t in sorted(cells)])
    a = np.c_[x, np.ones(len(x))]
    fit = len(a) * 2 // 3
    w = np.linalg.lstsq(a[:fit], np.eye(len(scenes.CELLS))[y[:fit]], rcond=None)[0]
    accuracy = float(((a[fit:] @ w).argmax(1) == y[fit:]).mean())
    print(f"\nprobe: an occupied image token's cell from its embedding, {len(a) - fit} tokens held out: {accuracy:.0%}")
    # the token order is the projector's (VILA's column-major downsample), not CELLS's; the probe
    # learns whichever mapping there is


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--probe-scenes", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    checkpoint.model.eval()
    for split in ("heldout", "train"):
        answers(checkpoint, split, args.questions)
    probe(checkpoint, args.probe_scenes)


if __name__ == "__main__":
    main()
