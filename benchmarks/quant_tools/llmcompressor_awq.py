"""llm-compressor's AWQ on a transformers LLM folder, for benchmarks/quant.py (run in its own venv).

    python llmcompressor_awq.py --model LLM/ --calib-ids ids.json --group-size 64 [--symmetric] --out w.safetensors

Loads the folder in float32 (or --dtype bfloat16), runs `oneshot` with AWQModifier (its
defaults: duo scaling, grid of 20) and a W4A16 group quantization, and writes every LLM tensor
with the quantized linears replaced by their dequantized values (float32), so one evaluator
measures every tool.
"""

from __future__ import annotations

import json
import time

import torch
from runner_args import parse_args  # beside this file


def main() -> None:
    args = parse_args(__doc__)
    start = time.time()

    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not torch.accelerator.is_available():
        # 0.14's AWQ pins its activation cache for faster GPU copies, which fails on a CPU-only torch
        # ("Cannot access accelerator device"); without a GPU there is nothing to copy to
        IntermediatesCache.pin_memory = lambda self, *a, **k: None
    blocks = json.loads(open(args.calib_ids).read())
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]})
    weights = {"num_bits": 4, "type": "int", "symmetric": args.symmetric, "strategy": "group",
               "group_size": args.group_size}
    recipe = [AWQModifier(),
              QuantizationModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                                   ignore=["lm_head"])]
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe, max_seq_length=len(blocks[0]),
            num_calibration_samples=len(blocks))
    tensors = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                zero = getattr(module, "weight_zero_point", None)
                tensors[f"{name}.weight"] = fake_quantize(module.weight, module.weight_scale, zero,
                                                          module.quantization_scheme.weights).float()
        for key, value in model.state_dict().items():
            if key.endswith((".weight", ".bias")) and key not in tensors and "weight_" not in key.rsplit(".", 1)[-1]:
                tensors[key] = value.float()
    tensors.pop("lm_head.weight", None) if model.config.tie_word_embeddings else None
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
    print(json.dumps({"tool": "llm-compressor", "seconds": round(time.time() - start, 1),
                      "quantized": sum(hasattr(m, "weight_scale") for m in model.modules())}))


if __name__ == "__main__":
    main()
