"""Greedy parity of the runtime with the PyTorch reference on a trained checkpoint.

    python benchmarks/runtime_parity.py ckpt/ --work /tmp/parity [--prompts 10] [--new-tokens 32]

Quantizes the checkpoint with AWQ (vlm-quant; group 64 fits the tiny preset), exports it with
--awq4, then asks both the runtime (ONNX Runtime, CPU) and the reference `generate()` on the same
dequantized weights the first user turn (with its images) of the checkpoint's first N
calibration conversations, greedy, and prints how many token sequences are identical.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--work", required=True)
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--group-size", default="64")
    args = p.parse_args()
    work = Path(args.work)
    awq, engine = work / "awq", work / "engine"
    if not (awq / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "vlm_edge.quant.cli", "--awq4", args.checkpoint, "-o", str(awq),
                        "--group-size", args.group_size, "--force"], check=True)
    if not (engine / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "vlm_edge.export.cli", "--awq4", str(awq), "-o", str(engine), "--force"],
                       check=True)

    from vlm_edge.common.conversations import read_conversations
    from vlm_edge.common.image import preprocess_images
    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.model import GenerationConfig, load_checkpoint
    from vlm_edge.model.generate import generate

    pipe = load(engine, "ort-cpu")
    ref = load_checkpoint(awq)
    stops = ref.tokenizer.stop_token_ids(ref.template)
    convs = [c for c in read_conversations(awq / "calibration" / "conversations.json") if c.images][: args.prompts]
    same = 0
    for i, conv in enumerate(convs):
        first = conv.messages[0]
        images = conv.images[: first["content"].count("<image>")]
        ours = pipe.generate([first], images, SamplingConfig(max_new_tokens=args.new_tokens))
        ids = pipe.prompt_ids([first], images)
        theirs = generate(ref.model, ids, preprocess_images(images, ref.model.image_processor_config),
                          GenerationConfig(max_new_tokens=args.new_tokens, stop_token_ids=stops))
        same += ours.token_ids == theirs.token_ids
        print(f"{i}: {len(images)} image(s), {first['content'][:50]!r} -> {ours.text!r} "
              f"{'identical' if ours.token_ids == theirs.token_ids else 'DIFFERENT: ' + repr(ref.tokenizer.decode(theirs.token_ids))}")
    print(f"greedy token sequences identical: {same}/{len(convs)}")
    sys.exit(0 if same == len(convs) else 1)


if __name__ == "__main__":
    main()
