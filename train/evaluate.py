"""The quality yardstick: held-out VQA exact match per question type, and held-out perplexity.

A library function, so quantization and export measure themselves with the same ruler:

    result = evaluate(checkpoint, SyntheticData(image_size, seed), per_type=50)
    print(format_table(result))

Exact match: the greedy answer (at most 8 new tokens, stopping at the template's stop tokens),
stripped of surrounding white space, equals the reference answer. Perplexity: exp of the mean
negative log-likelihood over the answer tokens of held-out conversations, 100 of each kind:
image descriptions, VQA answers and text-only answers (what the finished model is for).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from vlm_edge.common.image import preprocess_images
from vlm_edge.common.templates import render
from vlm_edge.model.checkpoint import Checkpoint
from vlm_edge.model.generate import GenerationConfig, generate

from .batching import collate
from .datasets import CHANCE, QUESTION_TYPES, SyntheticData, heldout_vqa


@torch.no_grad()
def vqa_accuracy(checkpoint: Checkpoint, data: SyntheticData, per_type: int) -> dict[str, float]:
    model, tokenizer, template = checkpoint.model, checkpoint.tokenizer, checkpoint.template
    was_training = model.training
    model.eval()
    config = GenerationConfig(max_new_tokens=8, stop_token_ids=tokenizer.stop_token_ids(template))
    hits = {qtype: 0 for qtype in QUESTION_TYPES}
    for sample in heldout_vqa(data, per_type):
        prompt = tokenizer.tokenize_prompt(render(template, (sample.messages or [])[:1]))
        pixels = preprocess_images(sample.images, model.image_processor_config)
        answer = tokenizer.decode(generate(model, prompt, pixels, config).token_ids).strip()
        hits[sample.question_type] += answer == sample.answer  # type: ignore[index]
    model.train(was_training)
    return {qtype: hits[qtype] / per_type for qtype in QUESTION_TYPES}


@torch.no_grad()
def perplexity(checkpoint: Checkpoint, data: SyntheticData, per_kind: int = 100, batch_size: int = 25) -> float:
    model = checkpoint.model
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for kind in ("describe", "vqa", "text"):
        samples = [data.sample(kind, i, split="heldout") for i in range(per_kind)]
        for start in range(0, per_kind, batch_size):
            batch = collate(samples[start : start + batch_size], checkpoint.tokenizer, checkpoint.template,
                            model.image_processor_config)
            out = model(batch.input_ids, torch.from_numpy(batch.pixel_values), batch.labels, num_items_in_batch=1)
            total_nll += float(out.loss)  # summed over the batch's targets
            total_tokens += batch.num_targets
    model.train(was_training)
    return math.exp(total_nll / total_tokens)


def evaluate(checkpoint: Checkpoint, data: SyntheticData, per_type: int = 50) -> dict[str, Any]:
    """Accuracy per question type (with chance levels), held-out perplexity, and the set's size."""
    return {
        "accuracy": vqa_accuracy(checkpoint, data, per_type),
        "chance": dict(CHANCE),
        "perplexity": perplexity(checkpoint, data),
        "questions_per_type": per_type,
        "data": {"image_size": data.image_size, "seed": data.seed},
    }


def training_seed(checkpoint_dir: str | Path) -> int | None:
    """The data seed a vlm-train checkpoint was trained with, or None for other checkpoints."""
    saved = Path(checkpoint_dir) / "training" / "train_config.json"
    return int(json.loads(saved.read_text()).get("seed", 0)) if saved.is_file() else None


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'question type':<14} {'exact match':>11} {'chance':>7}"]
    for qtype, acc in result["accuracy"].items():
        lines.append(f"{qtype:<14} {acc:>10.1%} {result['chance'][qtype]:>7.1%}")
    lines.append(f"held-out perplexity: {result['perplexity']:.3f}  ({result['questions_per_type']} questions per type)")
    return "\n".join(lines)
