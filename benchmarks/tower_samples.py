"""How many pictures does the tiny SigLIP tower need to tell a free-placed shape's form?

    python benchmarks/tower_samples.py [--image 56 --patch 14] [--batch 256 --steps 600 --lr 1e-3]
        [--width 128 --layers 4] [--init default|mimetic] [--every 400] [--pool 30000] [--save DIR] [--cnn]
        [--objects 3 --downsample 1|2]

The tower alone, as the checkpoint holds it (transformers SiglipVisionModel with the tiny
preset's width, depth and heads, here at --image px with --patch px patches): the tokens of its
second-to-last layer (the ones the VLM reads) mean-pooled into a linear classifier for the shape
(circle / square / triangle) and the colour of the one shape in the picture. The
pictures are the training world's free layout (train/renderers.py, train/scenes.py: any size,
angle and place, every training renderer and background), a pool of --pool drawn once and
sampled --batch at a time. Accuracy is read on 1,000 fresh pictures of the training world and
1,000 of the held-out world (numpy raster over texture grounds, never trained on).

With --objects N, pictures hold 1 to N free shapes and each shape is read off the image tokens
(the patches, or with --downsample 2 the mean of each 2x2 block, as the tiny projector merges them)
weighted by the share of its area in each: can the tokens a VLM reads tell several free shapes
apart, and how many tokens does that take?

The question it answers: the vision stage of the tiny recipe (tower_shapes.py) sees 12,800
pictures and its tower does not learn shapes in the free layout. Is that the tower's form or its
budget? A 3-layer CNN on the same pictures is the yardstick (--cnn).

--init mimetic starts attention as a local filter instead of at random: 2D sine-cosine position
embeddings, and each layer's query-key product W_q^T W_k and value-output product near
a random matrix plus (resp. minus) the identity, so that a token attends first to tokens near
it ("mimetic initialisation", Trockman and Kolter 2023). The checkpoint's layout does not
change.

One process, 2 threads. On a 2-vCPU Zen 2: 56 px / 14 px patches, batch 256, about 0.29 s a step.
"""

from __future__ import annotations

import argparse
import random
import sys
import time


def pictures(size: int, count: int, seed: int, world: str, objects: int = 1, grid: int = 0):
    """(pixels [N, 3, size, size] float32 in [-1, 1], labels): one free shape a picture, labels
    [N, 2] (shape, colour) indices; or with grid > 0, 1 to `objects` shapes a picture (as many of
    each count), labels [N, objects, 2] (-1 where a picture has fewer) and the share of each
    shape's area in each cell of a grid x grid split of the picture, [N, objects, grid * grid]."""
    import numpy as np
    import torch
    from PIL import Image

    from vlm_edge.train.renderers import draw, random_style
    from vlm_edge.train.scenes import COLOURS, SHAPES, random_scene

    rng = random.Random(seed)
    xs, ys, ws = [], [], []
    n = grid * 8
    points = (np.arange(n) + 0.5) / n
    py, px = np.meshgrid(points, points, indexing="ij")
    for _ in range(count):
        scene = random_scene(rng, word_probability=0.0, count_weights=(1,) * objects, layout="free")
        image = draw(scene, size, rng, random_style(rng, world, size)).convert("RGB").resize((size, size), Image.BICUBIC)
        xs.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # the SigLIP processor's scaling
        labels = [(SHAPES.index(o.shape), list(COLOURS).index(o.colour)) for o in scene.objects]
        if not grid:
            ys.append(labels[0])
            continue
        ys.append(labels + [(-1, -1)] * (objects - len(labels)))
        weights = np.zeros((objects, grid * grid), dtype=np.float32)
        for i, o in enumerate(scene.objects):
            cells = o.inside(px, py).reshape(grid, 8, grid, 8).sum(axis=(1, 3)).reshape(-1)
            weights[i] = cells / max(1, cells.sum())
        ws.append(weights)
    pixels = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    if not grid:
        return pixels, torch.tensor(ys)
    return pixels, torch.tensor(ys), torch.from_numpy(np.stack(ws))


def sincos(grid: int, width: int):
    """[grid * grid, width] 2D sine-cosine position embeddings: row then column, a quarter of the
    width each for sin(row), cos(row), sin(col), cos(col) at geometric frequencies."""
    import numpy as np
    import torch

    quarter = width // 4
    freqs = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angle = coord[:, None] * freqs[None, :]
        parts += [np.sin(angle), np.cos(angle)]
    return torch.tensor(np.concatenate(parts, 1), dtype=torch.float32)


def mimetic_init(tower, generator, alpha: float = 0.7, beta: float = 0.7) -> None:
    """W_q^T W_k = alpha Z + beta I and W_v^T W_o^T = alpha Z' - beta I (Z, Z' ~ N(0, 1/d)), each
    split into its two factors by an SVD; sine-cosine position embeddings."""
    import torch

    embeddings = tower.embeddings  # SiglipVisionModel: embeddings, encoder.layers
    grid, width = int(round(embeddings.num_patches ** 0.5)), embeddings.embed_dim

    def factors(sign: float):
        product = alpha * torch.randn(width, width, generator=generator) / width ** 0.5 + sign * beta * torch.eye(width)
        u, s, vh = torch.linalg.svd(product)
        return u * s.sqrt(), vh.T * s.sqrt()  # left @ right.T == product

    with torch.no_grad():
        embeddings.position_embedding.weight.copy_(sincos(grid, width))
        for layer in tower.encoder.layers:
            attention = layer.self_attn
            left, right = factors(+1.0)  # q.k = x W_q^T W_k x'^T
            attention.q_proj.weight.copy_(left.T)
            attention.k_proj.weight.copy_(right.T)
            left, right = factors(-1.0)  # out = x W_v^T W_o^T
            attention.v_proj.weight.copy_(left.T)
            attention.out_proj.weight.copy_(right)


def cnn():
    from torch import nn

    from vlm_edge.train.scenes import COLOURS

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(64, 3 + len(COLOURS)))


def vit(args):
    import torch
    from torch import nn
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from vlm_edge.model.presets import PRESETS
    from vlm_edge.train.scenes import COLOURS

    dims = PRESETS["tiny"]
    config = SiglipVisionConfig(hidden_size=args.width, intermediate_size=2 * args.width,
                                num_hidden_layers=args.layers, num_attention_heads=dims.vision_heads,
                                image_size=args.image, patch_size=args.patch)  # with the attention-pool head, as the preset builds it (unused)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower, self.head = SiglipVisionModel(config), nn.Linear(args.width, 3 + len(COLOURS))

        def forward(self, pixels, weights=None):
            """[N, 3, H, W] -> [N, 3 + colours] logits (shape, then colour) of the mean token; with
            weights [N, K, tokens], [N, K, 3 + colours] of each shape's tokens weighted by its shares."""
            # the tokens the VLM reads: the second-to-last layer's (mm_vision_select_layer -2)
            tokens = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            if weights is None:
                return self.head(tokens.mean(1))
            if args.downsample > 1:  # [N, g*g, C] -> [N, (g/d)^2, C]: the mean of each d x d block
                n, count, width = tokens.shape
                g = int(round(count ** 0.5))
                tokens = nn.functional.avg_pool2d(tokens.transpose(1, 2).reshape(n, width, g, g), args.downsample)
                tokens = tokens.flatten(2).transpose(1, 2)
            return self.head(torch.einsum("nkt,ntc->nkc", weights, tokens))

    net = Classifier()
    if args.init == "mimetic":
        mimetic_init(net.tower, torch.Generator().manual_seed(0))
    return net


def train(net, data, args, steps: int, lr: float, colour: bool = True, report=None) -> float:
    """AdamW, 30 warm-up steps, linear decay to 5%; the shape's cross-entropy (+ the colour's),
    over every shape of a picture when data carries share weights; returns seconds."""
    import torch
    from torch import nn

    x, y = data[0], data[1]
    optimizer = torch.optim.AdamW(net.parameters(), lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 30) * max(0.05, 1 - s / steps))
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        index = torch.randint(0, len(y), (args.batch,), generator=generator)
        logits = net(x[index], *(w[index] for w in data[2:]))
        labels = y[index]
        if labels.dim() == 3:  # [N, K, 2] -> the shapes pictures have
            keep = labels[..., 0] >= 0
            logits, labels = logits[keep], labels[keep]
        loss = nn.functional.cross_entropy(logits[:, :3], labels[:, 0])
        if colour:
            loss = loss + nn.functional.cross_entropy(logits[:, 3:], labels[:, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if report is not None and (step + 1) % args.every == 0 and step + 1 < steps:
            report(step + 1, time.time() - start)
    return time.time() - start


def accuracy(net, data, field: int = 0) -> float:
    """Share of shapes whose shape (field 0) or colour (1) is read right."""
    import torch

    net.eval()
    with torch.no_grad():
        logits, labels = net(data[0], *data[2:]), data[1]
        if labels.dim() == 3:
            keep = labels[..., 0] >= 0
            logits, labels = logits[keep], labels[keep]
        logits = logits[:, :3] if field == 0 else logits[:, 3:]
        out = float((logits.argmax(1) == labels[:, field]).float().mean())
    net.train()
    return out


def save(net, args, folder: str) -> None:
    """The tower as a folder `vlm-train --init-vision` takes: the tiny preset's vision config at
    this picture and patch size, its preprocessor config and the weights under VILA's key prefix."""
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from vlm_edge.common.fsutil import atomic_directory
    from vlm_edge.model.architectures import VISION_ARCHITECTURES

    vision = {"architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
              "hidden_size": args.width, "intermediate_size": 2 * args.width, "num_hidden_layers": args.layers,
              "num_attention_heads": net.tower.config.num_attention_heads, "image_size": args.image,
              "patch_size": args.patch, "num_channels": 3, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
    preprocessor = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
                    "size": {"height": args.image, "width": args.image}, "resample": 3, "do_rescale": True,
                    "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    prefix = VISION_ARCHITECTURES["SiglipVisionModel"].disk_prefix
    with atomic_directory(Path(folder), overwrite=True) as tmp:
        (tmp / "config.json").write_text(json.dumps(vision, indent=2))
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
        save_file({prefix + k: v.detach().contiguous() for k, v in net.tower.state_dict().items()},
                  str(tmp / "model.safetensors"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=int, default=56, help="picture side in pixels (default 56)")
    p.add_argument("--patch", type=int, default=14, help="patch side in pixels (default 14: 4x4 patches, 4 tokens after 2x2)")
    p.add_argument("--width", type=int, default=128, help="tower width (default 128, the tiny preset's)")
    p.add_argument("--layers", type=int, default=4, help="tower layers (default 4, the tiny preset's)")
    p.add_argument("--batch", type=int, default=256, help="pictures a step (default 256)")
    p.add_argument("--steps", type=int, default=600, help="steps (default 600)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--objects", type=int, default=1,
                   help="shapes a picture, 1 to N (default 1); above 1, each shape is read off the tokens it covers")
    p.add_argument("--readout", choices=("mean", "shares"), default="mean",
                   help="mean: every token pooled (one shape a picture); shares: each shape's tokens weighted by "
                        "the share of its area in them (the default above one shape)")
    p.add_argument("--downsample", type=int, default=2,
                   help="with --readout shares, tokens are the mean of each d x d block of patches (default 2, the "
                        "tiny projector's 2x2; 1 keeps every patch, as the mlp2x_gelu projector does)")
    p.add_argument("--init", choices=("default", "mimetic"), default="default", help="the tower's initialisation")
    p.add_argument("--pool", type=int, default=30000, help="training pictures drawn (default 30,000)")
    p.add_argument("--every", type=int, default=10**9, help="also print the accuracy every this many steps")
    p.add_argument("--save", metavar="DIR", help="write the trained tower as a folder for vlm-train --init-vision")
    p.add_argument("--cnn", action="store_true", help="train the 3-layer CNN yardstick instead (300 steps)")
    args = p.parse_args()

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if args.objects > 1:
        args.readout = "shares"
    if args.cnn and args.readout == "shares":
        p.error("--cnn reads one shape a picture: leave out --objects and --readout")
    grid = args.image // args.patch // args.downsample if args.readout == "shares" else 0
    data = pictures(args.image, args.pool, 1, "train", args.objects, grid)
    own, held = (pictures(args.image, 1000, seed, world, args.objects, grid)
                 for seed, world in ((2, "train"), (3, "heldout")))
    samples = f"{args.batch} x {args.steps} = {args.batch * args.steps:,} pictures"
    if args.cnn:  # the shape alone: is it in the pixels?
        net = cnn()
        seconds = train(net, data, args, 300, 2e-3, colour=False)
        print(f"3-layer CNN, {args.image} px, shape only, {args.batch} x 300 ({seconds:.0f} s): training world "
              f"{accuracy(net, own):.1%}, held-out world {accuracy(net, held):.1%}", flush=True)
        return 0
    net = vit(args)
    name = (f"tower {args.image} px / {args.patch} px patches, width {args.width}, {args.layers} layers, "
            f"{args.init} init, lr {args.lr:g}"
            + (f", 1-{args.objects} shapes read off {grid}x{grid} tokens" if grid else ""))

    def report(step: int, seconds: float) -> None:
        print(f"  step {step} ({seconds:.0f} s): training world {accuracy(net, own):.1%}, "
              f"held-out world {accuracy(net, held):.1%}", flush=True)

    seconds = train(net, data, args, args.steps, args.lr, report=report)
    print(f"{name}, {samples} ({seconds:.0f} s): shape, training world {accuracy(net, own):.1%}, "
          f"held-out world {accuracy(net, held):.1%}; colour {accuracy(net, own, 1):.1%} / "
          f"{accuracy(net, held, 1):.1%}", flush=True)
    if args.save:
        save(net, args, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
