"""The tiny model's text-only skills: how often a checkpoint answers each kind of text instruction
of the synthetic data right (greedy, the float model), and its answer to a few fixed prompts.

    python benchmarks/text_skills.py ckpt/ [more checkpoints ...] [--per-task 50]

The kinds are the SFT data's text instructions (train/datasets.py): "What number comes after
four?", "Repeat after me: red cat" (one to three words), "Which of these is a colour: cat or
red?". `vlm-eval` asks only questions about pictures; this is the table for the rest.
"""

from __future__ import annotations

import argparse
import sys

TASKS = {"What number": "count on", "Repeat after": "repeat", "Which of": "pick the colour"}
FIXED = ("What number comes after four?", "Repeat after me: red cat", "Which of these is a colour: cat or red?")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories (vlm-train -o DIR)")
    p.add_argument("--per-task", type=int, default=50, help="instructions asked per kind, about (default 50)")
    args = p.parse_args()

    import torch

    from vlm_edge.common.templates import render
    from vlm_edge.model import load_checkpoint
    from vlm_edge.model.generate import GenerationConfig, generate
    from vlm_edge.train.datasets import SyntheticData

    # the same instructions for every checkpoint, drawn with a seed no training run uses (text
    # instructions have no held-out split: some of them are ones training saw)
    data = SyntheticData(28, seed=-1)
    samples = [data.sample("text", i, "heldout") for i in range(3 * args.per_task)]
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        model, tokenizer, template = checkpoint.model.eval(), checkpoint.tokenizer, checkpoint.template
        config = GenerationConfig(max_new_tokens=8, stop_token_ids=tokenizer.stop_token_ids(template))

        def ask(question: str) -> str:
            prompt = tokenizer.tokenize_prompt(render(template, [{"role": "user", "content": question}]))
            return tokenizer.decode(generate(model, prompt, None, config).token_ids).strip()

        right: dict[str, list[bool]] = {name: [] for name in TASKS.values()}
        with torch.no_grad():
            for sample in samples:
                question = sample.messages[0]["content"]
                task = next(name for start, name in TASKS.items() if question.startswith(start))
                right[task].append(ask(question) == sample.answer)
            fixed = {q: ask(q) for q in FIXED}
        print(path)
        for task, marks in right.items():
            print(f"  {task:<16} {sum(marks):>3} of {len(marks):<3} right")
        for question, answer in fixed.items():
            print(f"  {question!r} -> {answer!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
