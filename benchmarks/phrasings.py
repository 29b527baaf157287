"""Which phrasings a checkpoint understands: held-out questions scored per phrasing, with the wrong answers.

    python benchmarks/phrasings.py ckpt/ [--wording heldout] [--world train] [--per-type 60] [--types count,position]

`vlm-eval ckpt --wording heldout` gives one number a question type; a type asked in two phrasings
can sit at 50% because one phrasing is always understood and the other never. This asks the same
held-out questions (train/datasets.py heldout_vqa, the checkpoint's seed) and splits each type by
the phrasing (train/wordings.py) the question was written in: right / asked and the commonest
wrong answers. Greedy answers of the float model, as vlm-eval.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--wording", choices=("plain", "train", "heldout"), default="heldout",
                   help="the phrasings asked (default heldout: none of them in any training data)")
    p.add_argument("--world", choices=("plain", "train", "heldout"), help="how pictures are drawn (default: the checkpoint's world)")
    p.add_argument("--per-type", type=int, default=60, help="questions a type (default 60)")
    p.add_argument("--types", help="comma-separated question types (default: all)")
    args = p.parse_args()

    import torch

    from vlm_edge.common.image import preprocess_tiled
    from vlm_edge.common.templates import render
    from vlm_edge.model.checkpoint import load_checkpoint
    from vlm_edge.model.generate import GenerationConfig, generate
    from vlm_edge.train.datasets import SyntheticData, heldout_vqa
    from vlm_edge.train.evaluate import training_seed, training_world
    from vlm_edge.train.wordings import PLAIN, WORDINGS, matcher

    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint)
    world = args.world or training_world(args.checkpoint)
    data = SyntheticData(ckpt.config.image_size, training_seed(args.checkpoint) or 0, world, args.wording)
    if args.wording == "plain":
        templates = list(PLAIN.values())
    else:
        templates = [t for sets in WORDINGS.values() for t in sets[args.wording]]
    patterns = [(t, matcher(t)) for t in templates]
    wanted = set(args.types.split(",")) if args.types else set(data.question_types)
    model, tokenizer, template = ckpt.model, ckpt.tokenizer, ckpt.template
    model.eval()
    config = GenerationConfig(max_new_tokens=8, stop_token_ids=tokenizer.stop_token_ids(template))
    right: Counter = Counter()
    asked: Counter = Counter()
    wrong: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sample in heldout_vqa(data, args.per_type):
        if sample.question_type not in wanted:
            continue
        question = (sample.messages or [])[0]["content"].split("\n")[-1]
        phrasing = next((t for t, rx in patterns if rx.fullmatch(question)), "(its one phrasing)")
        key = (sample.question_type, phrasing)
        prompt = tokenizer.tokenize_prompt(render(template, (sample.messages or [])[:1]))
        pixels, plans = preprocess_tiled(sample.images, model.image_processor_config)
        answer = tokenizer.decode(generate(model, prompt, pixels, config, plans=plans).token_ids).strip()
        asked[key] += 1
        if answer == sample.answer:
            right[key] += 1
        else:
            wrong[key][answer] += 1
    print(f"{args.checkpoint}: {args.wording} phrasings, {world} world, {args.per_type} questions a type")
    print(f"{'type':<12} {'phrasing':<48} {'right':>9}  commonest wrong answers")
    for key in sorted(asked):
        misses = ", ".join(f"{a!r} x{n}" for a, n in wrong[key].most_common(3))
        print(f"{key[0]:<12} {key[1]:<48} {right[key]:>4}/{asked[key]:<4}  {misses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
