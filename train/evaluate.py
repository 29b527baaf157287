"""The quality yardstick: held-out VQA exact match per question type, and held-out perplexity.

A library function, so quantization and export measure themselves with the same ruler:

    result = evaluate(checkpoint, SyntheticData(image_size, seed), per_type=50)
    print(format_table(result))

Exact match: the greedy answer (at most 8 new tokens, stopping at the template's stop tokens),
stripped of surrounding white space, equals the reference answer. Perplexity: exp of the mean
negative log-likelihood over the answer tokens of held-out conversations, 100 of each kind:
image descriptions, VQA answers and text-only answers (what the finished model is for).
Object questions are also broken down by the number of shapes in the picture: with one, naming
it needs no search ("the colour of any object" is right); with 2-3 the model must find it.

On a user's own test set (LLaVA-format JSON, `vlm-eval ckpt/ --data test.json`):

    result = evaluate_conversations(checkpoint, read_conversations("test.json"))

every assistant turn is one question, asked with the turns before it as they are in the file;
its greedy answer is compared with the file's after `normalize_answer` (case, surrounding white
space and a final full stop ignored), and the table breaks the exact match down by reference
answer and by the question's first word.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vlm_edge.common.conversations import Conversation
from vlm_edge.common.errors import CheckpointError, InputError
from vlm_edge.common.fsutil import read_json
from vlm_edge.common.image import preprocess_tiled
from vlm_edge.common.templates import render
from vlm_edge.common.tokenizer import IMAGE_TOKEN
from vlm_edge.model.checkpoint import Checkpoint
from vlm_edge.model.generate import GenerationConfig, generate

from .batching import collate
from .datasets import CHANCE, QUESTION_TYPES, Sample, SyntheticData, heldout_vqa


@torch.no_grad()
def vqa_results(checkpoint: Checkpoint, data: SyntheticData, per_type: int) -> list[tuple[Sample, bool]]:
    """Each held-out question with whether the greedy answer matched."""
    model, tokenizer, template = checkpoint.model, checkpoint.tokenizer, checkpoint.template
    was_training = model.training
    model.eval()
    config = GenerationConfig(max_new_tokens=8, stop_token_ids=tokenizer.stop_token_ids(template))
    results = []
    for sample in heldout_vqa(data, per_type):
        prompt = tokenizer.tokenize_prompt(render(template, (sample.messages or [])[:1]))
        pixels, plans = preprocess_tiled(sample.images, model.image_processor_config)
        answer = tokenizer.decode(generate(model, prompt, pixels, config, plans=plans).token_ids).strip()
        results.append((sample, answer == sample.answer))
    model.train(was_training)
    return results


def vqa_accuracy(checkpoint: Checkpoint, data: SyntheticData, per_type: int) -> dict[str, float]:
    results = vqa_results(checkpoint, data, per_type)
    return {qtype: sum(hit for s, hit in results if s.question_type == qtype) / per_type for qtype in data.question_types}


def _by_objects(results: list[tuple[Sample, bool]]) -> dict[str, dict[str, float]]:
    """Accuracy per question type and number of shapes in the picture (object questions only):
    with one shape, naming it by shape or colour needs no search; with 2-3 the model must find it."""
    table: dict[str, dict[str, float]] = {}
    for qtype in QUESTION_TYPES:  # the types asked are the ones with results
        counts = sorted({s.objects for s, _ in results if s.question_type == qtype and s.objects is not None})
        if counts:
            table[qtype] = {}
            for n in counts:
                hits = [hit for s, hit in results if s.question_type == qtype and s.objects == n]
                table[qtype][str(n)] = sum(hits) / len(hits)
    return table


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
    results = vqa_results(checkpoint, data, per_type)
    return {
        "accuracy": {q: sum(hit for s, hit in results if s.question_type == q) / per_type for q in data.question_types},
        "by_objects": _by_objects(results),
        "chance": dict(CHANCE),
        "perplexity": perplexity(checkpoint, data),
        "questions_per_type": per_type,
        "data": {"image_size": data.image_size, "seed": data.seed, "world": data.world, "wording": data.wording,
                 "layout": data.layout},
    }


def training_world(checkpoint_dir: str | Path) -> str:
    """The synthetic world a vlm-train checkpoint was trained in ("plain" for others and older runs)."""
    saved = Path(checkpoint_dir) / "training" / "train_config.json"
    if not saved.is_file():
        return "plain"
    world = read_json(saved, what="training config", error=CheckpointError).get("world", "plain")
    if world not in ("plain", "train"):
        raise CheckpointError(f"{saved}: world={world!r} must be plain or train")
    return world


def training_layout(checkpoint_dir: str | Path, world: str) -> str | None:
    """The layout a vlm-train checkpoint's scenes had (None: the world's default), when the
    evaluation draws that checkpoint's training world or the held-out one; else None."""
    saved = Path(checkpoint_dir) / "training" / "train_config.json"
    if not saved.is_file() or world == "plain":
        return None
    layout = read_json(saved, what="training config", error=CheckpointError).get("layout")
    if layout not in (None, "cells", "grid", "free"):
        raise CheckpointError(f"{saved}: layout={layout!r} must be cells, grid or free")
    return layout


def training_seed(checkpoint_dir: str | Path) -> int | None:
    """The data seed a vlm-train checkpoint was trained with, or None for other checkpoints."""
    saved = Path(checkpoint_dir) / "training" / "train_config.json"
    if not saved.is_file():
        return None
    seed = read_json(saved, what="training config", error=CheckpointError).get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise CheckpointError(f"{saved}: seed={seed!r} must be an integer from 0 to {2**32 - 1}")
    return seed


def format_table(result: dict[str, Any]) -> str:
    by_objects = result.get("by_objects", {})  # absent in eval.json files from before the breakdown
    lines = [f"{'question type':<14} {'exact match':>11} {'chance':>7}   {'1 shape':>7} {'2 shapes':>8} {'3 shapes':>8}"]
    for qtype, acc in result["accuracy"].items():
        split = by_objects.get(qtype, {})
        cells = " ".join(f"{split[n]:>{w}.0%}" if n in split else " " * w for n, w in (("1", 7), ("2", 8), ("3", 8)))
        lines.append(f"{qtype:<14} {acc:>10.1%} {result['chance'][qtype]:>7.1%}   {cells}".rstrip())
    lines.append(f"held-out perplexity: {result['perplexity']:.3f}  ({result['questions_per_type']} questions per type)")
    return "\n".join(lines)


# ---- a user's own test set ----------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """What exact match compares: lower case, no surrounding white space, no final full stop."""
    text = text.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def question_word(question: str) -> str:
    """The question's first word, lower case (without image placeholders and punctuation): what,
    is, how, which, ..."""
    words = question.replace(IMAGE_TOKEN, " ").split()
    return words[0].strip("?,.!:;\"'").lower() if words else ""


@torch.no_grad()
def evaluate_conversations(checkpoint: Checkpoint, conversations: list[Conversation], *,
                           limit: int | None = None, progress=None, keep_rows: bool = False,
                           max_new_tokens: int | None = None) -> dict[str, Any]:
    """Exact match of the greedy answers over every assistant turn of `conversations` (at most
    `limit` of them), overall, per reference answer and per question word; `keep_rows` adds every
    question's row (record, turn, question, reference, answer, match). Each answer may run to
    `max_new_tokens`, by default its reference's length + 8 tokens (at most 64): a longer one
    cannot match."""
    model, tokenizer, template = checkpoint.model, checkpoint.tokenizer, checkpoint.template
    was_training = model.training
    model.eval()
    stops = tokenizer.stop_token_ids(template)
    rows: list[dict[str, Any]] = []
    for index, conversation in enumerate(conversations):
        try:
            pixels, plans = preprocess_tiled(conversation.images, model.image_processor_config) \
                if conversation.images else (None, None)
        except InputError as e:
            raise InputError(f"record {index}: {e}") from None
        for turn in range(1, len(conversation.messages), 2):
            if limit is not None and len(rows) >= limit:
                break
            history = conversation.messages[:turn]
            reference = conversation.messages[turn]["content"]
            prompt = tokenizer.tokenize_prompt(render(template, history))
            budget = max_new_tokens or min(64, len(tokenizer.encode(reference)) + 8)
            config = GenerationConfig(max_new_tokens=budget, stop_token_ids=stops)
            answer = tokenizer.decode(generate(model, prompt, pixels, config, plans=plans).token_ids).strip()
            rows.append({"record": index, "turn": turn, "question": history[-1]["content"], "reference": reference,
                         "answer": answer, "match": normalize_answer(answer) == normalize_answer(reference)})
            if progress is not None:
                progress(len(rows))
    model.train(was_training)
    return conversation_table(rows) | ({"rows": rows} if keep_rows else {})


def conversation_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def share(group: list[dict[str, Any]]) -> dict[str, Any]:
        return {"exact_match": sum(r["match"] for r in group) / len(group), "count": len(group)}

    by_answer: dict[str, list] = {}
    by_word: dict[str, list] = {}
    for r in rows:
        by_answer.setdefault(normalize_answer(r["reference"]), []).append(r)
        by_word.setdefault(question_word(r["question"]), []).append(r)
    return {
        "exact_match": sum(r["match"] for r in rows) / len(rows) if rows else 0.0,
        "answers": len(rows),
        "by_answer": {k: share(v) for k, v in sorted(by_answer.items(), key=lambda kv: (-len(kv[1]), kv[0]))},
        "by_question_word": {k: share(v) for k, v in sorted(by_word.items(), key=lambda kv: (-len(kv[1]), kv[0]))},
        "misses": [r for r in rows if not r["match"]][:20],
    }


def format_conversation_table(result: dict[str, Any], top: int = 15) -> str:
    lines = [f"exact match {result['exact_match']:.1%} over {result['answers']} answers "
             "(case, surrounding space and a final full stop ignored)"]
    for title, key in (("question word", "by_question_word"), ("reference answer", "by_answer")):
        groups = list(result[key].items())
        lines.append(f"{title:<24} {'exact match':>11} {'answers':>8}")
        for name, g in groups[:top]:
            lines.append(f"  {name[:22]:<22} {g['exact_match']:>11.1%} {g['count']:>8}")
        if len(groups) > top:
            rest = groups[top:]
            count = sum(g["count"] for _, g in rest)
            hits = sum(g["exact_match"] * g["count"] for _, g in rest)
            lines.append(f"  {f'({len(rest)} more)':<22} {hits / count:>11.1%} {count:>8}")
    for miss in result["misses"][:5]:
        lines.append(f"  miss, record {miss['record']}: {miss['question'].replace(IMAGE_TOKEN, '').strip()!r} -> "
                     f"{miss['answer']!r}, expected {miss['reference']!r}")
    return "\n".join(lines)
