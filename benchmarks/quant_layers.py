"""Time of AWQ (and RTN) per decoder layer at a preset's dimensions, on this machine.

    python benchmarks/quant_layers.py [--preset vila1.5-3b] [--layers 1] [--samples 16] [--seq-len 512]

A whole 3B AWQ run on a CPU takes hours; this measures what one decoder layer costs with the
preset's exact widths (random weights and random calibration activations: the arithmetic, and so
the time, does not depend on the values), so the full run's time is layers x seconds per layer.
AWQ's work per layer grows linearly with the calibration tokens (samples x seq-len): the default
recipe is 128 x 512. Prints a table; --json saves it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

DEFAULT_TOKENS = 128 * 512  # the default calibration: 128 blocks of 512 positions

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vila1.5-3b")
    p.add_argument("--layers", type=int, default=1, help="decoder layers to quantize (default 1)")
    p.add_argument("--samples", type=int, default=16, help="calibration blocks (the default recipe: 128)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vlm_edge.model.architectures import LLM_ARCHITECTURES, build
    from vlm_edge.model.presets import PRESETS, byte_level_tokenizer, preset_config
    from vlm_edge.quant.awq import quantize_llm
    from vlm_edge.quant.mappings import family
    from vlm_edge.quant.quantize import QuantFormat

    dims = PRESETS[args.preset]
    config = preset_config(args.preset, byte_level_tokenizer())
    llm_config = {**config.llm, "num_hidden_layers": args.layers}
    torch.manual_seed(0)
    arch = LLM_ARCHITECTURES[config.llm_architecture]

    fam = family(config.llm_architecture)
    fmt = QuantFormat(4, args.group_size, False)
    embeds = torch.randn(args.samples, args.seq_len, dims.hidden) * 0.02
    rows = []
    for method in ("rtn", "awq"):
        torch.manual_seed(0)
        model = build(arch, llm_config, attn_implementation="sdpa", init_weights=True).eval()
        start = time.time()
        quantize_llm(model, fam, fmt, method=method, embeds=embeds if method == "awq" else None)
        per_layer = (time.time() - start) / args.layers
        rows.append((method, per_layer))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB on Linux)
    tokens = args.samples * args.seq_len
    print(f"{args.preset}: hidden {dims.hidden}, intermediate {dims.intermediate}, {dims.layers} layers; "
          f"calibration {args.samples} x {args.seq_len} = {tokens} tokens; {torch.get_num_threads()} threads")
    scale = {"rtn": 1.0, "awq": DEFAULT_TOKENS / tokens}  # AWQ's work grows with the calibration tokens
    print(f"{'method':<8}{'s / layer':>12}{'whole LLM':>14}{'at 128 x 512':>16}")
    for method, seconds in rows:
        whole = seconds * dims.layers / 60
        print(f"{method:<8}{seconds:>12.1f}{whole:>10.1f} min{whole * scale[method]:>12.1f} min")
    print(f"peak RSS {peak:.2f} GiB (this process: {args.layers} layer(s) and the activations)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "samples": args.samples, "seq_len": args.seq_len,
                       "threads": torch.get_num_threads(), "seconds_per_layer": dict(rows),
                       "layers": dims.layers, "peak_rss_gib": peak}, f, indent=2)


if __name__ == "__main__":
    main()
