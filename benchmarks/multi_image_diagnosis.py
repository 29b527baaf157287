"""Why a checkpoint misses multi-image questions: do its heads find their targets, and where is
"which picture" lost on the way to the answer?

    python benchmarks/multi_image_diagnosis.py ckpt/ [--questions 400]

On held-out multi-image questions (those vlm-eval asks), one forward pass each:

1. Attention (train/lookup.py): the look-up head's weight on the object the question names, at the
   position that predicts the answer, and the naming head's weight on the word that names each
   picture, from that picture's tokens; and whether the answer's first token is right.
2. Linear probes (logistic regression, trained on the first half, scored on the second) on the
   normalized input of each LLM layer: at the object's token, "which picture am I in", and at the
   answer position, "which picture is the object in". Chance is 50%.

Only meaningful for presets with one image token per scene cell (tiny).
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from vlm_edge.model.checkpoint import load_checkpoint
from vlm_edge.train.batching import collate
from vlm_edge.train.datasets import SyntheticData, _vqa
from vlm_edge.train.lookup import LOOKUP_LAYER, NAMING_LAYER, LookupLoss, expanded_positions
from vlm_edge.train.picture_stage import token_cells


def probe(features: list[torch.Tensor], labels: torch.Tensor, steps: int = 300) -> float:
    """Held-out accuracy of a logistic regression on standardized features (first half: fit)."""
    x = torch.stack(features).float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    half = len(x) // 2
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = x[:half] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[:half].float()) + 1e-3 * w.square().sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return ((x[half:] @ w + b > 0).long() == labels[half:]).float().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--questions", type=int, default=400, help="held-out multi-image questions (default 400)")
    args = p.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    image_tokens = model.config.num_image_tokens
    cells = token_cells(model.config.downsample_token_order, image_tokens)
    data = SyntheticData(model.config.image_size)
    samples = [_vqa(data, random.Random(f"{data.seed}:heldout:vqa-multi_image:{i}"), "heldout", "multi_image")
               for i in range(args.questions)]
    batch = collate(samples, checkpoint.tokenizer, checkpoint.template, model.image_processor_config, cells,
                    targets=False, lookups=True)
    lookup = LookupLoss(model.llm)
    layers = model.llm.get_decoder().layers
    inputs: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(layers):  # each layer's normalized input
        layer.self_attn.register_forward_pre_hook(
            lambda module, a, kw, index=index: inputs.__setitem__(index, kw.get("hidden_states", a[0] if a else None)),
            with_kwargs=True)

    answer_attention, naming_attention, right = [], [], []
    at_object: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    at_answer: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(layers))}
    pictures = []
    step = 20
    with torch.no_grad():
        for start in range(0, len(samples), step):
            ids, lookups = batch.input_ids[start:start + step], batch.lookups[start:start + step]
            pixels = torch.from_numpy(batch.pixel_values[2 * start:2 * (start + len(ids))])
            lookup.armed = True
            logits = model(ids, pixels, batch.labels[start:start + step]).logits
            lookup.armed = False
            captured, lookup._captured = lookup._captured, {}
            for j, (sample_ids, sample_lookups) in enumerate(zip(ids, lookups)):
                positions, images = expanded_positions(sample_ids, image_tokens)

                def at(ref) -> int:
                    return positions[ref] if isinstance(ref, int) else images[ref[0]] + ref[1]

                answered = False
                for layer, query, targets in sample_lookups:
                    weight = lookup._on_target(*captured[layer], lookup.attention[layer], [j], [at(query)],
                                               [[at(t) for t in targets]]).exp().item()
                    if layer == NAMING_LAYER:
                        naming_attention.append(weight)
                    elif not answered:  # the position that predicts the answer's first token
                        answered = True
                        answer_attention.append(weight)
                        right.append(logits[j, at(query)].argmax().item() == sample_ids[query + 1])
                        picture, token = targets[0]
                        for index in range(len(layers)):
                            at_object[index].append(inputs[index][j, images[picture] + token])
                            at_answer[index].append(inputs[index][j, at(query)])
                        pictures.append(picture)
    labels = torch.tensor(pictures)
    print(f"{len(samples)} held-out multi-image questions; first answer token right: {statistics.mean(right):.1%}")
    print(f"look-up head (layer {LOOKUP_LAYER}) attention on the object, at the answer: {statistics.mean(answer_attention):.4f}")
    print(f"naming head (layer {NAMING_LAYER}) attention on the picture's name, from its tokens: "
          f"{statistics.mean(naming_attention):.4f}")
    print("linear probes, which picture (chance 50%):")
    for index in range(len(layers)):
        print(f"  input of layer {index}: at the object's token {probe(at_object[index], labels):.0%}, "
              f"at the answer {probe(at_answer[index], labels):.0%}")


if __name__ == "__main__":
    main()
