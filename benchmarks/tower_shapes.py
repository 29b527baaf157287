"""Can a vision tower trained from scratch tell shapes apart wherever they sit? The vision stage alone.

    python benchmarks/tower_shapes.py [--image 28 --patch 7 --projector mlp_downsample] [--steps 200]
        [--free-share 0.0 [--ramp]] [--position-std 1.0] [--lr 2e-3] [--width 128 --layers 4] [--cnn]

Trains the tiny preset's vision stage (tower + projector + linear probes, train/picture_stage.py)
on the training world's pictures (train/renderers.py) for --steps steps, --free-share of the
scenes in the free layout (any size, angle and place) and the rest on the grid, then reads the
probes on 512 fresh free-layout scenes of 1-4 shapes, drawn in the training world and in the
held-out world: colour, shape and size accuracy on the tokens that hold a shape's centre. The
line printed is one row of the table in docs/training.md ("Pictures from other renderers").

--cnn instead trains a small convolutional classifier (three 3x3 layers, not a tower the VILA
layout can hold) on one free shape a picture for the same steps, the yardstick for "is the shape
in the pixels at all". One process, 2 threads, about 30-120 s on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time


def probe_accuracy(trainer, data_cls, image_size: int, world: str, batches: int = 8) -> dict[str, float]:
    import numpy as np
    import torch

    from vlm_edge.common.image import preprocess_images
    from vlm_edge.train.picture_stage import picture_targets
    from vlm_edge.train.scenes import random_scene

    model = trainer.model.eval()
    data = data_cls(image_size, 7, world, layout="free")
    rng = random.Random(0)
    hits: dict[str, list[bool]] = {"colour": [], "shape": [], "size": [], "shape of big": [], "shape of small": []}
    for _ in range(batches):
        scenes = [random_scene(rng, word_probability=0.0, count_weights=(1, 1, 1, 1), layout="free") for _ in range(64)]
        pixels = torch.from_numpy(preprocess_images([data.image(s, rng) for s in scenes], model.image_processor_config))
        with torch.no_grad():
            embeds = model.encode_images(pixels)
        for i, scene in enumerate(scenes):
            targets = picture_targets(scene, trainer.cells)
            for t in range(targets.shape[0]):
                if targets[t, 0] != 1:  # tokens that hold a shape's centre
                    continue
                for j, name in ((1, "colour"), (2, "shape"), (3, "size")):
                    hits[name].append(int(trainer.probes.heads[j](embeds[i, t]).argmax()) == targets[t, j])
                hits["shape of big" if targets[t, 3] == 1 else "shape of small"].append(hits["shape"][-1])
    return {k: float(np.mean(v)) for k, v in hits.items()}


def tower(args) -> str:
    from vlm_edge.train import numerics

    numerics.request("portable")
    from vlm_edge.model import presets

    presets.PRESETS["tiny"] = dataclasses.replace(
        presets.PRESETS["tiny"], image_size=args.image, patch_size=args.patch, projector_type=args.projector,
        vision_hidden=args.width, vision_intermediate=2 * args.width, vision_layers=args.layers)
    from vlm_edge.train import datasets
    from vlm_edge.train.recipe import default_config
    from vlm_edge.train.trainer import Trainer

    base = datasets.SyntheticData

    def mixed(image_size, seed=0, world="train", *rest, **kw):  # the trainer's data: grid and free scenes
        return base(image_size, seed, world, *rest, **kw)

    original_scene, original_sample = base.scene, base.sample
    progress = [0.0]  # of the vision stage, from the sample index (sample g of step s: g = s * 64 + k)

    def sample(self, kind, index, split="train"):
        progress[0] = (index % 10**9) / max(1, args.steps * 64)
        return original_sample(self, kind, index, split)

    def scene(self, rng, split, **kwargs):
        share = args.free_share * (min(1.0, 2 * progress[0]) if args.ramp else 1.0)
        if "layout" not in kwargs and self.layout == "grid" and rng.random() < share:
            kwargs["layout"] = "free"
        return original_scene(self, rng, split, **kwargs)

    base.scene, base.sample = scene, sample
    config = default_config("tiny", eval_per_type=0, world="train")
    config.vision_position_std = args.position_std
    for stage in config.stages:
        stage.steps = args.steps if stage.name == "vision" else 0
        if stage.name == "vision" and args.lr:
            stage.lr = args.lr
    with tempfile.TemporaryDirectory() as out:
        start = time.time()
        trainer = Trainer(config, out, force=True)
        trainer.run()
        seconds = time.time() - start
        base.scene, base.sample = original_scene, original_sample
        train = probe_accuracy(trainer, mixed, args.image, "train")
        held = probe_accuracy(trainer, mixed, args.image, "heldout")
    return (f"tower {args.image} px / {args.patch} px patches / {args.projector}, width {args.width}, "
            f"{args.layers} layers, position std {args.position_std}, free share {args.free_share:.0%}"
            f"{' (ramped up)' if args.ramp else ''}, "
            f"{args.steps} steps ({seconds:.0f} s): free-layout probes, training world colour {train['colour']:.1%} "
            f"shape {train['shape']:.1%} (big {train['shape of big']:.1%}, small {train['shape of small']:.1%}) "
            f"size {train['size']:.1%}; held-out world colour {held['colour']:.1%} shape {held['shape']:.1%} "
            f"(big {held['shape of big']:.1%}, small {held['shape of small']:.1%}) size {held['size']:.1%}")


def cnn(args) -> str:
    import numpy as np
    import torch
    from torch import nn

    from vlm_edge.train.renderers import draw, random_style
    from vlm_edge.train.scenes import SHAPES, random_scene

    torch.manual_seed(0)
    torch.set_num_threads(2)

    def batch(rng: random.Random, n: int = 64):
        xs, ys = [], []
        for _ in range(n):
            scene = random_scene(rng, word_probability=0.0, count_weights=(1,), layout="free")
            image = draw(scene, args.image, rng, random_style(rng, "train", args.image)).resize((args.image, args.image))
            xs.append(np.asarray(image, dtype=np.float32) / 255)
            ys.append(SHAPES.index(scene.objects[0].shape))
        return torch.tensor(np.stack(xs)).permute(0, 3, 1, 2), torch.tensor(ys)

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                        nn.Linear(64, len(SHAPES)))
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)
    rng = random.Random(0)
    for _ in range(args.steps):
        x, y = batch(rng)
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        x, y = batch(random.Random(9), 512)
        accuracy = float((net(x).argmax(1) == y).float().mean())
    return f"3-layer CNN, {args.image} px, one free shape a picture, {args.steps} steps: shape {accuracy:.1%}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=int, default=28, help="input size in pixels (default 28, the tiny preset's)")
    p.add_argument("--patch", type=int, default=7, help="patch size in pixels (default 7)")
    p.add_argument("--projector", default="mlp_downsample", help="mlp_downsample (2x2) or mlp_downsample_3x3_fix")
    p.add_argument("--width", type=int, default=128, help="tower width (default 128, the tiny preset's)")
    p.add_argument("--layers", type=int, default=4, help="tower layers (default 4)")
    p.add_argument("--steps", type=int, default=200, help="vision-stage steps of 64 pictures (default 200)")
    p.add_argument("--free-share", type=float, default=0.0, help="share of training scenes in the free layout")
    p.add_argument("--ramp", action="store_true",
                   help="grow the free share from 0 to --free-share over the first half of the stage")
    p.add_argument("--position-std", type=float, default=1.0, help="std of the position embeddings at init")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, 2e-3)")
    p.add_argument("--cnn", action="store_true", help="train the convolutional yardstick instead")
    args = p.parse_args()
    print(cnn(args) if args.cnn else tower(args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
