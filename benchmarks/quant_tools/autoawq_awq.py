"""AutoAWQ on a transformers LLM folder, for benchmarks/quant.py (run in its own venv).

    python autoawq_awq.py --model LLM/ --calib-ids ids.json --group-size 64 [--symmetric] --out w.safetensors

Loads the folder in float32 (or --dtype bfloat16), runs `quantize` (its defaults: duo scaling,
clip search, grid of 20) into its GEMM layout, and writes every LLM tensor with the quantized
linears dequantized from that layout (float32), so one evaluator measures every tool. AutoAWQ
has no symmetric mode: --symmetric is refused.

On a CPU, AutoAWQ 0.2.9's scale search does not restore the weights between grid points: it keeps
`{k: v.cpu() ...}` of the module's state_dict as the copy to restore from, and `.cpu()` of a CPU
tensor is that tensor, which the search then scales in place. Every grid point's scaling stays in
the weights, and the model it writes no longer computes what the FP model did (a 2-layer test:
loss 20.76 -> 23.96 with the scales applied and nothing quantized). On a GPU `.cpu()` copies, so
the bug never shows there. `_copy_snapshots` makes the snapshot a copy on every device; nothing
else of AutoAWQ is changed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from runner_args import parse_args  # beside this file


def _transformers4_folder(source: Path, folder: Path) -> str:
    """`source` as the transformers 4.x that AutoAWQ needs reads it: config.json written by
    transformers 5 keeps rope_theta inside rope_parameters, which 4.x would not see (it would use
    its default); the weights are linked, not copied."""
    config = json.loads((source / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (folder / "config.json").write_text(json.dumps(config))
    for file in source.glob("*.safetensors"):
        (folder / file.name).symlink_to(file.resolve())
    return str(folder)


def _copy_snapshots(quantizer_class) -> None:
    """Wrap `quantizer_class._compute_best_scale` so that any state_dict taken of the module it
    searches, while it searches, holds copies rather than the live weights."""
    search = quantizer_class._compute_best_scale

    def copy_values(module, state_dict, prefix, local_metadata):
        for key, value in state_dict.items():
            state_dict[key] = value.clone()

    def compute_best_scale(self, x, w_mean, x_mean, module2inspect, *args, **kwargs):
        handle = module2inspect.register_state_dict_post_hook(copy_values)
        try:
            return search(self, x, w_mean, x_mean, module2inspect, *args, **kwargs)
        finally:
            handle.remove()

    quantizer_class._compute_best_scale = compute_best_scale


def main() -> None:
    args = parse_args(__doc__)
    if args.symmetric:
        sys.exit("autoawq_awq.py: AutoAWQ's GEMM layout always has zero points; run it without --symmetric")
    start = time.time()

    from awq import AutoAWQForCausalLM
    from awq.quantize.quantizer import AwqQuantizer
    from awq.utils.packing_utils import dequantize_gemm
    from safetensors.torch import save_file

    _copy_snapshots(AwqQuantizer)
    blocks = json.loads(open(args.calib_ids).read())
    with tempfile.TemporaryDirectory() as folder:
        model = AutoAWQForCausalLM.from_pretrained(_transformers4_folder(Path(args.model), Path(folder)),
                                                   torch_dtype=getattr(torch, args.dtype))
    config = {"zero_point": True, "q_group_size": args.group_size, "w_bit": 4, "version": "GEMM"}
    model.quantize(None, quant_config=config, calib_data=blocks, max_calib_samples=len(blocks),
                   max_calib_seq_len=len(blocks[0]))
    tensors = {}
    quantized = 0
    with torch.no_grad():
        for name, module in model.model.named_modules():
            if hasattr(module, "qweight"):
                w = dequantize_gemm(module.qweight, module.qzeros, module.scales, 4, args.group_size)
                tensors[f"{name}.weight"] = w.T.float()
                quantized += 1
        for key, value in model.model.state_dict().items():
            base, _, leaf = key.rpartition(".")
            if leaf in ("weight", "bias") and key not in tensors:
                tensors[key] = value.float()
    if model.model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
    print(json.dumps({"tool": "AutoAWQ", "seconds": round(time.time() - start, 1), "quantized": quantized}))


if __name__ == "__main__":
    main()
