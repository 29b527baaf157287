"""AutoAWQ's own quantized output for a transformers LLM folder (run in AutoAWQ's venv).

    python autoawq_save.py --model LLM/ --out DIR [--group-size 32] [--blocks 8] [--length 64] [--seed 0]

Quantizes with AutoAWQ's `quantize` (GEMM version, zero points) on seeded random token blocks
and writes the folder with AutoAWQ's `save_quantized`: its config.json (quantization_config) and
its packed safetensors, unchanged. tests/data/autoawq-tiny/ was written this way (see its README);
the tests read it to check that vlm-export takes an llm/ that AutoAWQ itself quantized.
The CPU snapshot fix of autoawq_awq.py is applied (it changes the scales found, not the format).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from autoawq_awq import _copy_snapshots, _transformers4_folder  # beside this file


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a transformers LLM folder (config.json + safetensors)")
    p.add_argument("--out", required=True, help="the folder AutoAWQ writes")
    p.add_argument("--group-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from awq import AutoAWQForCausalLM
    from awq.quantize.quantizer import AwqQuantizer

    _copy_snapshots(AwqQuantizer)
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(args.seed)
    blocks = torch.randint(0, vocab, (args.blocks, args.length), generator=g).tolist()
    with tempfile.TemporaryDirectory() as folder:
        model = AutoAWQForCausalLM.from_pretrained(_transformers4_folder(Path(args.model), Path(folder)),
                                                   torch_dtype=torch.float32)
    config = {"zero_point": True, "q_group_size": args.group_size, "w_bit": 4, "version": "GEMM"}
    model.quantize(None, quant_config=config, calib_data=blocks, max_calib_samples=len(blocks),
                   max_calib_seq_len=args.length)
    model.save_quantized(args.out)
    print(json.dumps({"out": args.out, "files": sorted(p.name for p in Path(args.out).iterdir())}))


if __name__ == "__main__":
    main()
