"""`vlm-bench`: how fast an engine directory runs here, stage by stage.

    vlm-bench engine/                               one built-in test image, 64 new tokens, 5 runs
    vlm-bench engine/ --image cam.jpg --new-tokens 128 --runs 10 -o bench.json

Each run is one request from a cold start of the request's state (no cached image embeddings, no
reused KV prefix), decoding exactly --new-tokens tokens (end-of-sequence is ignored). Reported
per metric: the median over the runs, and the min and max (the spread); warm-up runs first are
not counted. Figures:

    first token ms        request start -> first token chosen (vision + prefill + one sample)
    vision ms/image       image load + preprocessing + vision graph, per image
    prefill tokens/s      prompt positions (image tokens included) / prefill time
    decode tokens/s       generated tokens after the first / decode time
    python overhead %     share of each decode step spent outside the decoder graph (sampling,
                          detokenizing, stop checks, binding inputs)
    power W, J/token      with --power on a Jetson: mean power over the measured runs (the module
                          input rail where there is one) and joules per generated token
    peak RSS MiB          the process's high-water mark (ru_maxrss) after all runs

and a per-stage breakdown (ms) of the median run. The model memory figure it compares the peak
RSS with is computed from the manifest: graph weight bytes + the KV cache of the positions a run
uses + the largest activations (vision attention and MLP over its patches; decoder prefill).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from vlm_edge.common.cli import run
from vlm_edge.common.fsutil import atomic_write_text
from vlm_edge.common.log import setup_logging

from .backends import BACKENDS
from .sampling import SamplingConfig

STAGES = ("image_load", "preprocess", "vision_graph", "splice", "prefill", "decode_graph", "decode_python")


def builtin_image(size: int = 384) -> np.ndarray:
    """A deterministic RGB picture (gradients and a disc): no file needed."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05
    rgb = np.stack([x * 255, y * 255, np.where(disc, 255, 60) + 0 * x], axis=-1)
    return rgb.astype(np.uint8)


def model_memory(manifest_model: dict, weight_bytes: int, positions: int, prompt_positions: int) -> dict[str, int]:
    """Bytes the model needs: weights, KV cache for `positions`, largest activations (float32)."""
    m = manifest_model
    kv = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * 4 * positions
    v = m.get("vision", {})
    act_vision = 0
    if v:
        patches = (m["image_size"] // v["patch_size"]) ** 2
        act_vision = 4 * (2 * v["heads"] * patches * patches + 2 * patches * v["intermediate_size"]
                          + 6 * patches * v["hidden_size"])
    s, heads = prompt_positions, m["heads"]
    act_decoder = 4 * (3 * s * m.get("intermediate_size", 4 * m["hidden_size"]) + 6 * s * m["hidden_size"]
                       + 2 * heads * s * s + m["vocab_size"])
    return {"weights": weight_bytes, "kv_cache": kv, "activations": max(act_vision, act_decoder)}


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(engine: str, images: list, prompt: str, new_tokens: int, runs: int, warmup: int, backend: str,
          threads: int | None, power_meter=None) -> dict:
    """`power_meter`: a context manager factory (vlm_edge.jetson.telemetry.PowerMeter) whose
    `watts`, `joules` and `source` cover the measured runs."""
    import contextlib

    from .pipeline import load

    pipe = load(engine, backend, threads=threads)
    images = images or [builtin_image(pipe.model["image_size"])]
    config = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)
    rows = []
    meter, stack = None, contextlib.ExitStack()
    for i in range(warmup + runs):
        if i == warmup and power_meter is not None:
            meter = stack.enter_context(power_meter())
        pipe._image_cache.clear()
        pipe.decoder.truncate(0)
        pipe._cached = []
        result = pipe.generate(prompt, images, config)
        if i < warmup:
            continue
        t = result.timings
        steps = max(len(result.token_ids) - 1, 1)
        rows.append({
            "first_token_ms": t["first_token"] * 1e3,
            "vision_ms_per_image": t["vision"] * 1e3 / len(images),
            "prefill_tokens_per_s": result.prompt_tokens / t["prefill"],
            "decode_tokens_per_s": steps / t["decode"],
            "python_overhead_pct": 100 * (t["decode"] - t["decode_graph"]) / t["decode"],
            "stages_ms": {**{k: t.get(k, 0.0) * 1e3 for k in STAGES[:-1]},
                          "decode_python": (t["decode"] - t["decode_graph"]) * 1e3},
            "prompt_tokens": result.prompt_tokens, "new_tokens": len(result.token_ids),
        })
    stack.close()
    power = None
    if meter is not None:
        tokens = sum(r["new_tokens"] for r in rows)
        power = {"source": meter.source, "watts": meter.watts, "joules": meter.joules,
                 "joules_per_token": meter.joules / tokens if meter.joules is not None else None,
                 "samples": len(meter.samples)}
    metrics = {k: summarize([r[k] for r in rows]) for k in
               ("first_token_ms", "vision_ms_per_image", "prefill_tokens_per_s", "decode_tokens_per_s",
                "python_overhead_pct")}
    median_run = sorted(rows, key=lambda r: r["first_token_ms"])[len(rows) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    files = [c for n, c in pipe.manifest.components.items() if n in ("vision", pipe.decoder_name)]
    weight_bytes = sum((pipe.dir / f).stat().st_size for c in files for f in c.files)
    positions = rows[0]["prompt_tokens"] + new_tokens
    memory = model_memory(pipe.model, weight_bytes, positions, rows[0]["prompt_tokens"])
    return {
        "engine": str(engine), "backend": pipe.backend, "decoder": pipe.decoder_name, "runs": runs,
        "images": len(images), "prompt_tokens": rows[0]["prompt_tokens"], "new_tokens": new_tokens,
        "metrics": metrics, "stages_ms": median_run["stages_ms"], "peak_rss_bytes": peak,
        "model_memory_bytes": memory, "rss_over_model": peak / sum(memory.values()),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"), "power": power,
    }


def print_report(r: dict, out=sys.stdout) -> None:
    print(f"{r['engine']} on {r['backend']} ({r['decoder']}): {r['images']} image(s), prompt {r['prompt_tokens']} "
          f"tokens, {r['new_tokens']} new tokens, {r['runs']} runs", file=out)
    print(f"{'metric':<22}{'median':>12}{'min':>12}{'max':>12}", file=out)
    for name, label in (("first_token_ms", "first token ms"), ("vision_ms_per_image", "vision ms/image"),
                        ("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s"),
                        ("python_overhead_pct", "python overhead %")):
        m = r["metrics"][name]
        print(f"{label:<22}{m['median']:>12.2f}{m['min']:>12.2f}{m['max']:>12.2f}", file=out)
    mib = 1 << 20
    mem = r["model_memory_bytes"]
    print(f"{'peak RSS MiB':<22}{r['peak_rss_bytes'] / mib:>12.1f}   model needs {sum(mem.values()) / mib:.1f} "
          f"(weights {mem['weights'] / mib:.1f} + KV {mem['kv_cache'] / mib:.1f} + activations "
          f"{mem['activations'] / mib:.1f}): {r['rss_over_model']:.2f}x", file=out)
    print("stages of the median run (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_ms"].items()), file=out)
    power = r.get("power")
    if power is not None:
        if power["watts"] is None:
            print("power: no telemetry on this machine (no INA3221 monitors in sysfs, no tegrastats)", file=out)
        else:
            print(f"power: {power['watts']:.2f} W mean ({power['source']}, {power['samples']} samples), "
                  f"{power['joules']:.1f} J, {power['joules_per_token']:.3f} J per generated token", file=out)


def main(argv: list[str] | None = None, power_meter=None) -> int:
    """`power_meter`: what --power measures with (vlm-bench's console script passes the Jetson one)."""
    p = argparse.ArgumentParser(prog="vlm-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", help="an engine directory written by vlm-export")
    p.add_argument("--image", action="append", default=[], help="an image file (repeatable; default: a built-in "
                                                                "test picture)")
    p.add_argument("--prompt", default="Describe the image.")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens to decode per run (default 64)")
    p.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="runs before measuring (default 1)")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--power", action="store_true", help="also measure power and energy per token (Jetson: INA3221 "
                                                        "sysfs monitors or tegrastats)")
    p.add_argument("-o", "--output", help="also save the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def go() -> None:
        from vlm_edge.common.errors import InputError

        if args.runs < 1 or args.new_tokens < 2 or args.warmup < 0:
            raise InputError("--runs must be >= 1, --new-tokens >= 2 and --warmup >= 0")
        if args.power and power_meter is None:
            raise InputError("--power needs vlm-edge's Jetson telemetry: run the vlm-bench command (not "
                             "python -m vlm_edge.edge.bench)")
        result = bench(args.engine, args.image, args.prompt, args.new_tokens, args.runs, args.warmup, args.backend,
                       args.threads, power_meter if args.power else None)
        print_report(result)
        if args.output:
            atomic_write_text(Path(args.output), json.dumps(result, indent=2) + "\n")
            print(f"saved {args.output}")

    return run("vlm-bench", go)


if __name__ == "__main__":
    sys.exit(main())
