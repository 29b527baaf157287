"""Held-out accuracy of exported engines, answered by the runtime: `vlm-eval`'s questions, per engine.

    python benchmarks/engine_eval.py ckpt/ engine-a/ engine-b/ ... [--per-type 200] [--json out.json]

Each engine answers the checkpoint's held-out VQA questions (the same draw `vlm-eval` makes, seed
from the checkpoint's training config) through `vlm_edge.edge.load(engine, "ort-cpu")`, greedy, at
most 8 new tokens; exact match after stripping. The table has one column per engine (its vision
precision and LM head from the manifest), object questions split by shapes in the picture, so two
exports that differ in one component (say `--vision int8` against `--vision fp32`) are compared
question for question.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vlm_edge.common.manifest import Manifest
from vlm_edge.common.vila_config import VilaConfig
from vlm_edge.edge import SamplingConfig, load
from vlm_edge.train.datasets import SyntheticData, heldout_vqa
from vlm_edge.train.evaluate import training_seed, training_world


def engine_label(engine: Path) -> str:
    m = Manifest.read(engine)
    vision = m.components["vision"].info.get("precision", "fp32")
    decoders = [c for c in m.components.values() if c.kind == "decoder"]
    head = decoders[0].info.get("lm_head", "float32") if decoders else "?"
    return f"{engine.name} (vision {vision}, head {head})"


def answer_all(engine: Path, samples) -> list[bool]:
    pipe = load(engine, "ort-cpu")
    config = SamplingConfig(max_new_tokens=8)
    return [pipe.generate((s.messages or [])[:1], s.images, config).text.strip() == s.answer for s in samples]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the checkpoint the engines were exported from (for its data seed and size)")
    p.add_argument("engines", nargs="+")
    p.add_argument("--per-type", type=int, default=200)
    p.add_argument("--json")
    args = p.parse_args()
    data = SyntheticData(VilaConfig.read(args.checkpoint).image_size, training_seed(args.checkpoint) or 0,
                         training_world(args.checkpoint))
    samples = list(heldout_vqa(data, args.per_type))
    results = {}
    for engine in map(Path, args.engines):
        t0 = time.perf_counter()
        hits = answer_all(engine, samples)
        label = engine_label(engine)
        table = {}
        for qtype in data.question_types:
            rows = [(s, h) for s, h in zip(samples, hits) if s.question_type == qtype]
            entry = {"all": sum(h for _, h in rows) / len(rows)}
            for n in sorted({s.objects for s, _ in rows if s.objects is not None}):
                sub = [h for s, h in rows if s.objects == n]
                entry[f"{n} shapes"] = sum(sub) / len(sub)
            table[qtype] = entry
        results[label] = {"accuracy": table, "seconds": time.perf_counter() - t0}
    labels = list(results)
    print(f"\n{args.per_type} held-out questions per type, answered by the runtime (ort-cpu)\n")
    print("| question type | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for qtype in data.question_types:
        cells = []
        for label in labels:
            e = results[label]["accuracy"][qtype]
            split = " / ".join(f"{100 * v:.0f}" for k, v in e.items() if k != "all")
            cells.append(f"{100 * e['all']:.1f}%" + (f" ({split})" if split else ""))
        print(f"| {qtype} | " + " | ".join(cells) + " |")
    for label in labels:
        print(f"{label}: {results[label]['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
