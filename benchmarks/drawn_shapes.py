"""Pictures a user draws with Pillow, asked the way a user asks: does the model see them?

    python benchmarks/drawn_shapes.py ckpt/ [more checkpoints ...]

One shape in the middle of the picture, 40% of its width across, in Pillow's own named colours
(red, green, blue: (255, 0, 0), (0, 128, 0), (0, 0, 255)), on white or light grey (211, 211, 211),
at 320x240 and 224x224: circles, upright squares and apex-up triangles, 36 pictures. Each is asked
"What colour is the <shape>?" and "What shape is it?" (the float model, greedy). Nothing here
comes from the training module's renderers; the table says how many of each are right and lists
the misses.
"""

from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw

COLOURS = {"red": "red", "green": "green", "blue": "blue"}  # Pillow colour names
BACKGROUNDS = {"white": (255, 255, 255), "light grey": (211, 211, 211)}
SIZES = ((320, 240), (224, 224))
SHAPES = ("circle", "square", "triangle")


def picture(shape: str, colour: str, size: tuple[int, int], ground: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(image)
    w, h = size
    r = 0.2 * w  # 40% of the width across
    cx, cy = w / 2, h / 2
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    return image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (vlm-train -o DIR)")
    p.add_argument("--shapes", default=",".join(SHAPES), help="shapes to draw (default: all three)")
    args = p.parse_args()

    import torch

    from vlm_edge.common.image import preprocess_tiled
    from vlm_edge.common.templates import render
    from vlm_edge.common.tokenizer import IMAGE_TOKEN
    from vlm_edge.model import load_checkpoint
    from vlm_edge.model.generate import GenerationConfig, generate

    shapes = args.shapes.split(",")
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        model, tok, template = ckpt.model.eval(), ckpt.tokenizer, ckpt.template
        config = GenerationConfig(max_new_tokens=6, stop_token_ids=tok.stop_token_ids(template))
        right = {"colour": 0, "shape": 0}
        misses, total = [], 0
        with torch.no_grad():
            for shape in shapes:
                for colour in COLOURS:
                    for size in SIZES:
                        for ground_name, ground in BACKGROUNDS.items():
                            image = picture(shape, colour, size, ground)
                            pixels, plans = preprocess_tiled([image], model.image_processor_config)
                            total += 1
                            for kind, question, truth in (("colour", f"What colour is the {shape}?", colour),
                                                          ("shape", "What shape is it?", shape)):
                                prompt = tok.tokenize_prompt(render(template, [
                                    {"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}]))
                                answer = tok.decode(generate(model, prompt, pixels, config, plans=plans).token_ids).strip()
                                if answer == truth:
                                    right[kind] += 1
                                else:
                                    misses.append(f"{colour} {shape} {size[0]}x{size[1]} on {ground_name}: "
                                                  f"{question!r} -> {answer!r}")
        print(f"{path}: colour {right['colour']}/{total}, shape {right['shape']}/{total}")
        for line in misses[:12]:
            print(f"  miss: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
