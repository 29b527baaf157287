"""The vision stage, first for a vision tower trained from scratch: learn to see before learning to talk.

VILA starts from a SigLIP tower that was pretrained on image-text pairs before VILA ever saw it.
The tiny preset's tower starts from random weights, and without a stage of its own it learnt to
see only through the LLM's loss, which came late: the features that tell a circle from a square
formed in the last few hundred SFT steps, and the circuits that look objects up in the LLM
formed later still, or not at all (docs/training.md, "Seeing first").

This stage trains the tower and the projector (the LLM is untouched) to say, from each image
token alone, what its cell of the scene holds. Linear probes read six fields from the projector's
output, the embeddings the LLM will consume:

    field    classes                                       where it is defined
    kind     empty / a shape / part of a written word      every token
    colour   6 colours                                     tokens of a shape
    shape    circle / square / triangle                    tokens of a shape
    size     small / big                                   tokens of a shape
    cell     top left / top right / bottom left / ...     every token
    word     the 10 words                                  tokens of a word picture

The loss is the sum over fields of the mean cross-entropy over the tokens where the field is
defined. In the stages after it, the same loss on the pictures of each batch is added to the LM
loss with weight `TrainConfig.probe_weight` (1 for tiny), so that the LM's gradients do not wash
out what the tower learnt here. The probes are never part of the checkpoint: its layout does not
change. They need one image token per region of a 2x2 split of the picture (the `tiny` and `micro`
presets: 28 px pictures, 7 px patches, a 2x2 downsample) or of a 4x4 split (16 image tokens);
other shapes are refused in one line.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vlm_edge.common.errors import InputError

from .lookup import READOUT_PICTURES
from .scenes import CELLS, COLOURS, SHAPES, SIZES, WORDS, Scene

FIELDS: tuple[tuple[str, int], ...] = (("kind", 3), ("colour", len(COLOURS)), ("shape", len(SHAPES)),
                                       ("size", len(SIZES)), ("cell", len(CELLS)), ("word", len(WORDS)))
IGNORE = -100  # a field that is not defined for a token (the colour of an empty cell)
EMPTY, SHAPE, WORD = 0, 1, 2  # the kind field
GRIDS = (2, 4)  # image tokens a side the stage knows: 4 tokens (the tiny preset) or 16


def token_cells(token_order: str | None, num_tokens: int) -> list[int]:
    """The region of the picture (row-major index in a grid x grid split, Scene.grid) of each image
    token; on the 2x2 grid, its quadrant's index into CELLS (reading order).

    The downsample projector emits its tokens column-major (VILA1.5-era: t = col * grid + row) or
    row-major (t = row * grid + col); a projector without a downsample (mlp2x_gelu) keeps the
    patches' row-major order (model/projector.py)."""
    grid = int(round(num_tokens ** 0.5))
    if grid * grid != num_tokens or grid not in GRIDS:
        raise InputError(f"the vision stage needs 2x2 or 4x4 image tokens a picture; this model has {num_tokens}: "
                         "set its steps to 0 (--steps vision=0)")
    if token_order in ("row_major", None):
        return list(range(num_tokens))
    if token_order == "column_major":
        return [(t % grid) * grid + t // grid for t in range(num_tokens)]
    raise InputError(f"the vision stage does not know token order {token_order!r}")


PAINT_SHARE = 0.25  # a token with no centre in its cell still tells what covers it, from this share of an object


def picture_targets(scene: Scene, cells: list[int]) -> np.ndarray:
    """[tokens, len(FIELDS)] int64 class indices of each token's fields, IGNORE where undefined.

    kind is SHAPE where an object's centre lies in the token's region (counting reads it); colour,
    shape and size are that object's, or, in a region with no centre, those of the object with the
    largest share of its area there if it is at least PAINT_SHARE (a quarter of that on the 4x4
    grid: a shape that reaches over); cell is the quadrant the region lies in. The scene's grid
    must be the tokens' (Scene.grid)."""
    if scene.grid ** 2 != len(cells):
        raise ValueError(f"a scene split {scene.grid}x{scene.grid} for {len(cells)} image tokens")
    out = np.full((len(cells), len(FIELDS)), IGNORE, dtype=np.int64)
    by_region = {scene.region(o): o for o in scene.objects}
    shares = scene.shares() if scene.objects else None
    paint = PAINT_SHARE * (2 / scene.grid) ** 2
    for t, region in enumerate(cells):
        out[t, 4] = scene.quadrant(region)
        if scene.word is not None:
            out[t, 0], out[t, 5] = WORD, WORDS.index(scene.word)
            continue
        o = by_region.get(region)
        out[t, 0] = SHAPE if o is not None else EMPTY
        if o is None and shares is not None and shares[:, region].max() >= paint:
            o = scene.objects[int(shares[:, region].argmax())]
        if o is not None:
            out[t, 1:4] = list(COLOURS).index(o.colour), SHAPES.index(o.shape), SIZES.index(o.size)
    return out


def target_counts(targets: np.ndarray) -> np.ndarray:
    """[fields] float32: tokens with each field defined, the loss's denominators for a whole batch
    (a batch cut into micro-batches, or split over processes, sums to the loss of the whole)."""
    return (targets.reshape(-1, len(FIELDS)) != IGNORE).sum(0).astype(np.float32)


class PictureProbes(nn.Module):
    """One linear probe per field on the projector's output (the LLM's input embeddings), and the
    look-up loss's picture readout (train/lookup.py: which picture the looked-up object is in,
    read inside the LLM; not used by forward)."""

    def __init__(self, hidden: int, seed: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for _, n in FIELDS)
        self.readout = nn.Linear(hidden, READOUT_PICTURES)
        generator = torch.Generator().manual_seed(seed)  # the probes' init leaves the global RNG alone
        with torch.no_grad():
            for head in (*self.heads, self.readout):
                bound = hidden ** -0.5  # nn.Linear's own range
                head.weight.copy_(torch.empty_like(head.weight).uniform_(-bound, bound, generator=generator))
                head.bias.zero_()

    def forward(self, embeds: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds [N, tokens, D], targets [N, tokens, fields], counts [fields] (target_counts of the
        whole batch) -> (sum over fields of the cross-entropy summed over defined tokens / count,
        accuracy per field [fields], NaN where a field is undefined in these embeddings)."""
        flat, targets = embeds.reshape(-1, embeds.shape[-1]), targets.reshape(-1, len(FIELDS))
        loss = embeds.new_zeros((), dtype=torch.float32)
        accuracy = []
        for j, head in enumerate(self.heads):
            keep = targets[:, j] != IGNORE
            if not bool(keep.any()):
                accuracy.append(torch.tensor(float("nan")))
                continue
            logits = head(flat[keep]).float()
            loss = loss + nn.functional.cross_entropy(logits, targets[keep, j], reduction="sum") / counts[j].clamp(min=1)
            accuracy.append((logits.argmax(-1) == targets[keep, j]).float().mean().detach().cpu())
        return loss, torch.stack(accuracy)


class ProbedModel(nn.Module):
    """The model with the probes on its image tokens and the look-up loss (train/lookup.py): what a
    training step differentiates, as one module, so that torchrun's DDP syncs the probes' gradients
    with the model's.

    Vision stage:  forward(None, pixels, picture_targets=..., target_counts=...) -> probe loss
    other stages:  forward(input_ids, pixels, labels, loss_only=True, ...) -> LM loss + weight x probe loss
                   (+ lookup_weight x look-up loss where `lookups` are given)
    """

    def __init__(self, model: nn.Module, probes: PictureProbes | None, weight: float, lookup=None,
                 lookup_weight: float = 0.0):
        super().__init__()
        self.model, self.probes, self.weight = model, probes, weight
        self.lookup, self.lookup_weight = lookup, lookup_weight  # a LookupLoss holds no parameters of its own

    def forward(self, input_ids, pixel_values: torch.Tensor, labels=None, *, picture_targets: torch.Tensor | None = None,
                target_counts: torch.Tensor | None = None, lookups=None, lookup_count: torch.Tensor | None = None,
                **kwargs) -> "ProbedLoss":
        if input_ids is None:  # pictures alone
            loss, accuracy = self.probes(self.model.encode_images(pixel_values), picture_targets, target_counts)
            return ProbedLoss(loss, accuracy)
        looking = self.lookup is not None and self.lookup_weight > 0 and lookups is not None
        if looking:
            self.lookup.armed = True
        try:
            out = self.model(input_ids, pixel_values, labels, **kwargs)
        finally:
            if self.lookup is not None:
                self.lookup.armed = False
        loss, accuracy, attention, read = out.loss, None, None, None
        if self.probes is not None and self.weight and out.image_embeds is not None and picture_targets is not None:
            probe_loss, accuracy = self.probes(out.image_embeds, picture_targets, target_counts)
            loss = loss + self.weight * probe_loss
        if looking:
            lookup_loss, attention, read = self.lookup(input_ids, lookups, self.model.config.num_image_tokens,
                                                       lookup_count)
            loss = loss + self.lookup_weight * lookup_loss
        return ProbedLoss(loss, accuracy, attention, read)


class ProbedLoss(NamedTuple):
    loss: torch.Tensor
    probe_accuracy: torch.Tensor | None  # [fields]
    lookup_attention: torch.Tensor | None = None  # mean attention of the look-up head on its targets
    readout_accuracy: torch.Tensor | None = None  # the picture readout's accuracy (train/lookup.py)
