"""Training throughput of the tiny preset per way of computing a step, on the same batches.

    python benchmarks/train_step.py [--steps 40] [--rounds 3] [--stage sft]

Rows: the LM head over every position and AdamW's per-tensor loop (the trainer before), the LM
head only where a label follows (`VilaModel.forward(loss_only=True)`), and that with the fused
AdamW kernel (the trainer now). Each round draws --steps fresh batches of the stage's data (global
batch 32, split into micro-batches by length as the trainer does) and times every row on them,
rows in turn, so a busy or throttled host slows all rows alike; the table gives each row's median
over rounds and its ratio to the first. Weights are the preset's random init: the cost of a step
does not depend on what the model has learnt. Tokens are counted as the trainer counts them
(text tokens plus the image's positions).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlm_edge.common.templates import get_template
from vlm_edge.model.presets import preset_config
from vlm_edge.model.vila import VilaModel
from vlm_edge.train.batching import Batch, by_length, collate
from vlm_edge.train.recipe import default_config
from vlm_edge.train.tokenizer import train_tokenizer
from vlm_edge.train.trainer import DataMix, Distributed, corpus, preset_dims
from vlm_edge.train.datasets import SyntheticData

ROWS = [("LM head on all positions, AdamW loop", False, False),
        ("LM head on labelled positions", True, False),
        ("+ fused AdamW (the trainer)", True, True)]


def run_steps(model: VilaModel, batches: list[Batch], image_tokens: int, loss_only: bool, fused: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), fused=fused)
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        targets = torch.tensor(float(batch.num_targets))
        for part in by_length(batch, image_tokens):
            out = model(part.input_ids, torch.from_numpy(part.pixel_values), part.labels, loss_only=loss_only,
                        num_items_in_batch=targets)
            out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(ids) for ids in batch.input_ids) + len(batch.pixel_values) * (image_tokens - 1)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="batches per round (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each times every row (default 3)")
    p.add_argument("--stage", default="sft", choices=("pretrain", "sft"))
    args = p.parse_args()

    config = default_config("tiny")
    index = [s.name for s in config.stages].index(args.stage)
    stage = config.stages[index]
    dims = preset_dims("tiny")
    data = SyntheticData(dims.image_size, 0)
    tokenizer = train_tokenizer(corpus(data, dims.chat_template, per_kind=500), config.vocab_size)
    vila = preset_config("tiny", tokenizer)
    torch.manual_seed(0)
    model = VilaModel(vila)
    model.train()
    template = get_template(dims.chat_template)
    mix, one = DataMix(data, None), Distributed(0, 1)
    image_tokens = model.config.num_image_tokens
    rates: dict[str, list[float]] = {name: [] for name, _, _ in ROWS}
    for r in range(args.rounds):
        steps = range(1000 + r * args.steps, 1000 + (r + 1) * args.steps)
        batches = [collate(mix.batch(index, stage, s, one), tokenizer, template, model.image_processor_config) for s in steps]
        for name, loss_only, fused in ROWS:
            rates[name].append(run_steps(model, batches, image_tokens, loss_only, fused))
    print(f"tiny preset, {args.stage} batches of {stage.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.steps} steps")
    print(f"{'step':<40} {'tokens/s (median)':>18} {'rounds':>24} {'ratio':>6}")
    base = statistics.median(rates[ROWS[0][0]])
    for name, _, _ in ROWS:
        med = statistics.median(rates[name])
        print(f"{name:<40} {med:>18,.0f} {' '.join(f'{x:,.0f}' for x in rates[name]):>24} {med / base:>6.2f}")


if __name__ == "__main__":
    main()
