"""The runtime benchmark: our runtime against PyTorch eager, onnxruntime-genai and OpenVINO GenAI, one machine.

    python benchmarks/runtime.py --work /tmp/bench [--threads 1,2] [--new-tokens 64] [--runs 3] [--json out.json]
    python benchmarks/runtime.py --work /tmp/bench --llm ~/models/Qwen2.5-0.5B --threads 1,2 --skip frames \
        --peer-python /tmp/peers/bin/python --repeat 3

1. Model: `vlm-model init --preset bench-qwen0.5b` (VILA1.5 layout: VILA1.5-3b's SigLIP so400m,
   384 px, 729 -> 196 image tokens; an LLM with Qwen2.5-0.5B's dimensions; random weights, since
   speed does not depend on values). Real-weight mode, --llm FOLDER: any transformers LLM folder
   (Qwen2 or Llama family, float weights) as the LLM, with that preset's vision tower and a new
   projector (`vlm-model init --preset bench-qwen0.5b --llm FOLDER`).
2. Engines (--exports), each `vlm-export --awq4 --method rtn` (AWQ's calibration changes values,
   not speed, and takes far longer on 2 cores) plus:
     float32 export   --lm-head float --vision fp32 --accuracy-level 4: the export before the
                      8-bit defaults, the baseline for vision and first-token time
     float32 head     --lm-head float --accuracy-level 4
     defaults         nothing more: what `vlm-export --awq4` writes (head, vision and accuracy
                      level as `auto` chooses them), validated
     int8 head        --lm-head int8 --accuracy-level 4 (the default head before int4-rescore)
     level 0          --accuracy-level 0: the defaults with float compute in the 4-bit linears
     int4 head        --lm-head int4 --accuracy-level 4 (what genai's builder does to a tied head)
   All but `defaults` are written with --no-validate (validation changes nothing that runs).
3. Each contender runs in its own process (clean peak RSS), on the same prompt (one image + a
   short question), decoding --new-tokens greedy tokens with end-of-sequence ignored:
     ours          vlm-bench --threads N (median of --runs)
     torch fp32    the checkpoint in PyTorch eager, transformers' Qwen2 with a DynamicCache,
                   torch threads = cores (median of --runs)
     genai int4    onnxruntime-genai's model builder on the same LLM folder (-p int4 -e cpu
                   --extra_options int4_block_size=128: our exports' group size; its default is
                   32), intra_op_num_threads = N; from token ids of the same prompt length (text only)
     openvino int4 optimum-intel's export of the same folder (--weight-format int4 --sym
                   --group-size 128 --ratio 1.0 --all-layers) run by OpenVINO GenAI's
                   LLMPipeline, INFERENCE_NUM_THREADS = N; token ids of the same prompt length
   The peers run with --peer-python (default: this Python); each is skipped with a note when
   it is not installed there. With --threads, each thread count is one round, every process
   pinned to that many cores. --repeat N runs each round's contenders N times, interleaved,
   and reports medians over the repeats (and each repeat's decode rate).
4. Pipelining (all cores only): --frames distinct frames, "Describe the image." each, 16 new
   tokens: one by one (generate per frame) against Pipeline.stream_frames.
5. Roofline: decode reads every weight once per token, so tokens/s <= bandwidth / weight bytes
   (embedding tables excluded: one row of them is read). Bandwidth is measured here (numpy
   copies over 1 GiB on the round's cores, bytes read + written).

Prints a table of ratios per round and saves everything as JSON with --json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROMPT = "Describe the image."


def sh(cmd: list[str], cores: int | None = None, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`; with `cores`, pinned to the first `cores` CPUs (what a 1-core device gets)."""
    print("$ " + ("" if cores is None else f"[cores 0-{cores - 1}] ") + " ".join(cmd), flush=True)
    if cores is not None:
        kw["preexec_fn"] = lambda: os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    result = subprocess.run(cmd, **kw)
    if result.returncode:
        sys.exit(f"{cmd[0]} failed with exit code {result.returncode}")
    return result


def child(mode: str, *args: str, cores: int | None = None, python: str = sys.executable) -> dict:
    """Run this script in a child process in `mode` (with `python`: a peer's own venv); its last
    stdout line is JSON."""
    result = sh([python, __file__, "--child", mode, *args], cores, capture_output=True, text=True)
    sys.stderr.write(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- children ------------------------------------------------------------------------------------
def run_torch(ckpt: str, new_tokens: int, runs: int) -> dict:
    import numpy as np
    import torch

    from vlm_edge.common.image import preprocess_images
    from vlm_edge.edge.bench import builtin_image
    from vlm_edge.model import load_checkpoint
    from vlm_edge.model.generate import DynamicCache

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ckpt_ = load_checkpoint(ckpt)
    model, tok = ckpt_.model.eval(), ckpt_.tokenizer
    from vlm_edge.common.templates import render

    ids = tok.tokenize_prompt(render(ckpt_.template, [{"role": "user", "content": f"<image>\n{PROMPT}"}]))
    pixels = torch.from_numpy(preprocess_images([builtin_image(model.config.image_size)], model.image_processor_config))
    rows = []
    with torch.inference_mode():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            image = model.encode_images(pixels)
            t1 = time.perf_counter()
            inputs = model.build_inputs([ids], image)
            cache = DynamicCache()
            out = model.llm(inputs_embeds=inputs.inputs_embeds, past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            t2 = time.perf_counter()
            prompt_len = inputs.inputs_embeds.shape[1]
            embed = model.llm.get_input_embeddings()
            for step in range(new_tokens - 1):
                out = model.llm(inputs_embeds=embed(torch.tensor([[token]])), past_key_values=cache,
                                position_ids=torch.tensor([[prompt_len + step]]), use_cache=True)
                token = int(out.logits[0, -1].argmax())
            t3 = time.perf_counter()
            if i:  # the first run warms up
                rows.append({"vision_ms": (t1 - t0) * 1e3, "first_token_ms": (t2 - t0) * 1e3,
                             "prefill_tokens_per_s": prompt_len / (t2 - t1),
                             "decode_tokens_per_s": (new_tokens - 1) / (t3 - t2)})
    del np
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {"peak_rss_bytes": peak_rss(),
                                                                           "prompt_tokens": prompt_len}


def run_genai(model_dir: str, prompt_tokens: int, new_tokens: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(model_dir)
    rng = np.random.default_rng(0)
    rates, firsts = [], []
    for i in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=prompt_tokens + new_tokens, min_length=prompt_tokens + new_tokens,
                                  do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(rng.integers(10, 1000, prompt_tokens).astype(np.int32))
        gen.generate_next_token()
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        t2 = time.perf_counter()
        del gen
        if i:
            rates.append((new_tokens - 1) / (t2 - t1))
            firsts.append((t1 - t0) * 1e3)
    first = statistics.median(firsts)
    return {"decode_tokens_per_s": statistics.median(rates), "prefill_plus_first_ms": first,
            "prefill_tokens_per_s": prompt_tokens / first * 1e3, "peak_rss_bytes": peak_rss(),
            "version": og.__version__}


def run_openvino(model_dir: str, prompt_tokens: int, new_tokens: int, runs: int, threads: int) -> dict:
    """OpenVINO GenAI's LLMPipeline on the CPU: decode and time to first token of token ids of the
    prompt's length, from its own performance metrics."""
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    pipe = og.LLMPipeline(model_dir, "CPU", INFERENCE_NUM_THREADS=threads)
    config = og.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = new_tokens
    config.ignore_eos, config.do_sample = True, False
    rng = np.random.default_rng(0)
    rates, firsts = [], []
    for i in range(runs + 1):
        ids = rng.integers(10, 1000, (1, prompt_tokens)).astype(np.int64)
        result = pipe.generate(og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config)
        metrics = result.perf_metrics
        if i:
            rates.append(1e3 / metrics.get_tpot().mean)
            firsts.append(metrics.get_ttft().mean)
    weights = sum(op.get_byte_size() for op in ov.Core().read_model(str(Path(model_dir) / "openvino_model.xml")).get_ops()
                  if op.get_type_name() == "Constant" and "embed" not in op.get_friendly_name())
    first = statistics.median(firsts)
    return {"decode_tokens_per_s": statistics.median(rates), "prefill_plus_first_ms": first,
            "prefill_tokens_per_s": prompt_tokens / first * 1e3, "peak_rss_bytes": peak_rss(),
            "version": og.__version__, "decoder_weight_bytes": weights}


def run_frames(engine: str, frames: int, new_tokens: int) -> dict:
    """One by one (all cores per graph) against stream_frames, with all cores per graph and with the
    cores split between the vision worker and the decoder."""
    import numpy as np

    from vlm_edge.edge import SamplingConfig, load
    from vlm_edge.edge.bench import builtin_image

    base = builtin_image(384)
    pictures = [np.roll(base, 7 * i, axis=1) for i in range(frames)]  # distinct frames: no cache hits
    cfg = SamplingConfig(max_new_tokens=new_tokens, ignore_eos=True)
    cores = os.cpu_count() or 1
    out = {"frames": frames, "new_tokens": new_tokens}

    def timed(fn, pipe):
        pipe.generate(PROMPT, [pictures[0][::-1].copy()], cfg)  # warm-up
        t0 = time.perf_counter()
        answers = fn(pipe)
        return time.perf_counter() - t0, answers

    one, ref = timed(lambda pipe: [pipe.generate(PROMPT, [p], cfg).token_ids for p in pictures], load(engine, "ort-cpu"))
    out["one_by_one_s"] = one
    stream = lambda pipe: [a.generation.token_ids for a in pipe.stream_frames(iter(pictures), PROMPT, cfg)]  # noqa: E731
    for label, kw in (("pipelined", {}),
                      ("pipelined, cores split", {"threads": max(cores // 2, 1), "vision_threads": max(cores // 2, 1)})):
        seconds, answers = timed(stream, load(engine, "ort-cpu", **kw))
        out[label] = {"seconds": seconds, "speedup": one / seconds, "same_answers": answers == ref, **kw}
    return out


def run_bandwidth() -> dict:
    """Copy bandwidth (read + write) of 1 GiB over all cores, best of 5."""
    import numpy as np

    n = (1 << 30) // 8
    src, dst = np.ones(n, np.float64), np.empty(n, np.float64)
    cores = len(os.sched_getaffinity(0))
    parts = np.array_split(np.arange(n), cores)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    best = 0.0
    for _ in range(5):
        threads = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, 2 * n * 8 / (time.perf_counter() - t0))
    return {"bandwidth_bytes_per_s": best, "cores": cores}


# ---- the driver ------------------------------------------------------------------------------------
def decoder_weight_bytes(engine: Path) -> int:
    """Bytes of the decoder's weights read per decode token (its external data, minus the RoPE tables,
    of which one row per position is read, and the rescored head's int8 rows, of which 64 are)."""
    import onnx

    model = onnx.load(str(engine / "decoder.ort.onnx"), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if "length" in info and "rows_int8" in t.name:  # [vocab, hidden]: RESCORE_TOP rows a step
            total += int(info["length"]) * 64 // t.dims[0]
        elif "length" in info and "rope" not in t.name:
            total += int(info["length"])
    return total


EXPORTS = {  # label -> (engine folder, vlm-export options after --awq4 --method rtn)
    # the export before the 8-bit defaults, the baseline for vision and first-token time
    "float32 export": ("engine-fp32", ["--lm-head", "float", "--vision", "fp32", "--accuracy-level", "4",
                                       "--no-validate"]),
    "float32 head": ("engine", ["--lm-head", "float", "--accuracy-level", "4", "--no-validate"]),
    # what `vlm-export --awq4` writes: head, vision and accuracy level as auto chooses, validated
    "defaults": ("engine-defaults", []),
    "int8 head": ("engine-head8", ["--lm-head", "int8", "--accuracy-level", "4", "--no-validate"]),
    "level 0": ("engine-level0", ["--accuracy-level", "0", "--no-validate"]),  # the default before auto
    "int4 head": ("engine-head4", ["--lm-head", "int4", "--accuracy-level", "4", "--no-validate"]),
}


def merge_repeats(results: list[dict]) -> dict:
    """One contender's figures over --repeat interleaved repeats: each figure's median over the
    repeats (our metrics: the median of the per-repeat medians, the min and max over all runs), and
    the per-repeat decode rates under "decode_repeats"."""
    out = dict(results[0])
    if "metrics" in out:
        out["metrics"] = {k: {"median": statistics.median(r["metrics"][k]["median"] for r in results),
                              "min": min(r["metrics"][k]["min"] for r in results),
                              "max": max(r["metrics"][k]["max"] for r in results)} for k in out["metrics"]}
        out["decode_repeats"] = [r["metrics"]["decode_tokens_per_s"]["median"] for r in results]
        out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in results)
        out["rss_over_model"] = max(r["rss_over_model"] for r in results)
        return out
    for key, value in out.items():
        if isinstance(value, (int, float)) and key not in ("decoder_weight_bytes", "prompt_tokens"):
            out[key] = statistics.median(r[key] for r in results)
    out["decode_repeats"] = [r["decode_tokens_per_s"] for r in results]
    return out


def has_module(python: str, name: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def genai_weight_bytes(genai_dir: Path) -> int:
    """Bytes of genai's model read per decode token: its initializers but the embedding table (one
    row of it is read)."""
    import onnx

    model = onnx.load(str(genai_dir / "model.onnx"), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        size = int(info["length"]) if "length" in info else len(t.raw_data)
        if "embed" not in t.name:
            total += size
    return total


def genai_with_threads(genai_dir: Path, threads: int) -> Path:
    """A sibling of `genai_dir` (hard links) whose genai_config.json sets intra_op_num_threads."""
    out = genai_dir.with_name(f"{genai_dir.name}-t{threads}")
    out.mkdir(exist_ok=True)
    for f in genai_dir.iterdir():
        if f.is_file() and f.name != "genai_config.json" and not (out / f.name).exists():
            os.link(f, out / f.name)
    config = json.loads((genai_dir / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="scratch directory (~8 GB of disk)")
    p.add_argument("--llm", metavar="FOLDER", help="real-weight mode: this transformers LLM folder (for example "
                   "Qwen2.5-0.5B or SmolLM2) wrapped with the benchmark's vision tower, and genai's int4 model of it")
    p.add_argument("--threads", default="", help="comma-separated thread counts, each run pinned to that many cores "
                   "(for example 1,2); default: all cores, unpinned")
    p.add_argument("--exports", default=",".join(EXPORTS), help=f"which of our exports to run (default: all of {', '.join(EXPORTS)})")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1,
                   help="run the whole round of contenders this many times, interleaved, and report each figure's "
                        "median over the repeats (a host whose speed drifts between minutes needs 3 or more)")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--frame-tokens", type=int, default=16)
    p.add_argument("--skip", action="append", default=[], choices=("torch", "genai", "openvino", "frames"))
    p.add_argument("--peer-python", default=sys.executable,
                   help="the Python with the peers installed (onnxruntime-genai, onnx_ir, optimum-intel[openvino], "
                        "nncf, openvino-genai), for example a venv of their own: their pins may not suit ours")
    p.add_argument("--json", help="save the figures here")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, rest = args.child[0], args.child[1:]
        fn = {"torch": lambda: run_torch(rest[0], int(rest[1]), int(rest[2])),
              "genai": lambda: run_genai(rest[0], int(rest[1]), int(rest[2]), int(rest[3])),
              "openvino": lambda: run_openvino(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4])),
              "frames": lambda: run_frames(rest[0], int(rest[1]), int(rest[2])),
              "bandwidth": run_bandwidth}[mode]
        print(json.dumps(fn()))
        return
    if not args.work:
        p.error("--work is required")
    labels = [x for x in args.exports.split(",") if x]
    if unknown := [x for x in labels if x not in EXPORTS]:
        p.error(f"--exports: unknown {', '.join(unknown)}; choose from {', '.join(EXPORTS)}")
    try:
        thread_counts = [int(t) for t in args.threads.split(",") if t] or [None]
    except ValueError:
        p.error(f"--threads {args.threads!r}: give whole numbers separated by commas, for example 1,2")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    if args.llm:
        llm_dir = Path(args.llm).resolve()
        ckpt = work / "ckpt-llm"
        if not (ckpt / "config.json").is_file():
            sh([py, "-m", "vlm_edge.model.cli", "init", "--preset", "bench-qwen0.5b", "--llm", str(llm_dir), "-o",
                str(ckpt), "--force"])
        prefix = "llm-"
    else:
        ckpt = work / "ckpt"
        if not (ckpt / "config.json").is_file():
            sh([py, "-m", "vlm_edge.model.cli", "init", "--preset", "bench-qwen0.5b", "-o", str(ckpt), "--force"])
        llm_dir, prefix = ckpt / "llm", ""
    engines = {label: work / (prefix + EXPORTS[label][0]) for label in labels}
    for label, engine in engines.items():
        if not (engine / "manifest.json").is_file():
            sh([py, "-m", "vlm_edge.export.cli", str(ckpt), "-o", str(engine), "--awq4", "--method", "rtn", "--force",
                *EXPORTS[label][1]])
    peer = args.peer_python
    genai_dir = openvino_dir = None
    if "genai" not in args.skip:
        if not has_module(peer, "onnxruntime_genai"):
            print("genai int4: skipped (pip install onnxruntime-genai onnx_ir, or --peer-python)")
        else:
            genai_dir = work / (prefix + "genai-int4-b128")
            if not (genai_dir / "genai_config.json").is_file():  # block 128: the group size of our exports
                sh([peer, "-m", "onnxruntime_genai.models.builder", "-i", str(llm_dir), "-o", str(genai_dir),
                    "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache"), "--extra_options",
                    "int4_block_size=128"])
    if "openvino" not in args.skip:
        if not has_module(peer, "openvino_genai") or not has_module(peer, "optimum.intel"):
            print("openvino int4: skipped (pip install optimum-intel[openvino] nncf openvino-genai, or --peer-python)")
        else:  # int4, symmetric, group 128, every linear (the head and embeddings too): like ours and genai's
            openvino_dir = work / (prefix + "openvino-int4")
            if not (openvino_dir / "openvino_model.xml").is_file():
                sh([str(Path(peer).with_name("optimum-cli")), "export", "openvino", "--model", str(llm_dir),
                    "--task", "text-generation-with-past", "--weight-format", "int4", "--sym", "--group-size", "128",
                    "--ratio", "1.0", "--all-layers", str(openvino_dir)])

    runs = {}
    for threads in thread_counts:
        cores = threads or (os.cpu_count() or 1)
        f: dict = {"cores": cores, "pinned": threads is not None, "new_tokens": args.new_tokens, "runs": args.runs,
                   "llm": str(llm_dir) if args.llm else "random weights (bench-qwen0.5b)"}
        f["bandwidth"] = child("bandwidth", cores=threads)
        repeats: dict[str, list[dict]] = {}
        for _ in range(args.repeat):  # every contender once per repeat: a drifting host hits them all alike
            for label, engine in engines.items():
                out = work / f"ours-{engine.name}-c{cores}.json"
                sh([py, "-m", "vlm_edge.edge.bench", str(engine), "--runs", str(args.runs), "--new-tokens",
                    str(args.new_tokens), "--backend", "ort-cpu", "--threads", str(cores), "-o", str(out)], threads)
                repeats.setdefault(f"ours ({label})", []).append(
                    json.loads(out.read_text()) | {"decoder_weight_bytes": decoder_weight_bytes(engine)})
            prompt_tokens = repeats[next(iter(repeats))][0]["prompt_tokens"]
            if "torch" not in args.skip:
                repeats.setdefault("torch fp32", []).append(
                    child("torch", str(ckpt), str(args.new_tokens), str(args.runs), cores=threads))
            if genai_dir is not None:
                model = genai_with_threads(genai_dir, cores)
                repeats.setdefault("genai int4", []).append(
                    child("genai", str(model), str(prompt_tokens), str(args.new_tokens), str(args.runs), cores=threads,
                          python=peer) | {"decoder_weight_bytes": genai_weight_bytes(genai_dir)})
            if openvino_dir is not None:
                repeats.setdefault("openvino int4", []).append(
                    child("openvino", str(openvino_dir), str(prompt_tokens), str(args.new_tokens), str(args.runs),
                          str(cores), cores=threads, python=peer))
        f.update({name: merge_repeats(results) for name, results in repeats.items()})
        if "frames" not in args.skip and threads is None and "int4 head" in engines:
            f["frames"] = child("frames", str(engines["int4 head"]), str(args.frames), str(args.frame_tokens))
        report(f)
        runs[str(cores)] = f
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        print(f"saved {args.json}")


def report(f: dict) -> None:
    bw = f["bandwidth"]["bandwidth_bytes_per_s"]
    mib = 1 << 20
    ours_labels = [label for label in f if label.startswith("ours (")]
    prompt = f[ours_labels[0]]["prompt_tokens"]
    print(f"\n== {f['cores']} {'pinned ' if f['pinned'] else ''}core(s); LLM: {f['llm']}")
    print(f"memory bandwidth (copy, {f['cores']} cores): {bw / 1e9:.1f} GB/s; "
          f"prompt {prompt} tokens (196 image), {f['new_tokens']} new tokens")
    print(f"\n{'contender':<26}{'decode tok/s':>13}{'first token ms':>16}{'vision ms':>11}{'prefill tok/s':>15}"
          f"{'peak RSS MiB':>14}{'roofline tok/s':>16}")
    torch_tps = f.get("torch fp32", {}).get("decode_tokens_per_s")
    for label in ours_labels:
        o = f[label]
        m = o["metrics"]
        roof = bw / o["decoder_weight_bytes"]
        print(f"{label:<26}{m['decode_tokens_per_s']['median']:>13.1f}{m['first_token_ms']['median']:>16.0f}"
              f"{m['vision_ms_per_image']['median']:>11.0f}{m['prefill_tokens_per_s']['median']:>15.0f}"
              f"{o['peak_rss_bytes'] / mib:>14.0f}{roof:>16.1f}")
    if torch_tps:
        t = f["torch fp32"]
        print(f"{'torch fp32 eager':<26}{torch_tps:>13.1f}{t['first_token_ms']:>16.0f}{t['vision_ms']:>11.0f}"
              f"{t['prefill_tokens_per_s']:>15.0f}{t['peak_rss_bytes'] / mib:>14.0f}")
    peers = [k for k in ("genai int4", "openvino int4") if k in f]
    for key in peers:  # text only: first token = prefill of the prompt's length as token ids + one token
        g = f[key]
        roof = f"{bw / g['decoder_weight_bytes']:>16.1f}" if "decoder_weight_bytes" in g else ""
        print(f"{key + ' ' + g['version']:<26}{g['decode_tokens_per_s']:>13.1f}"
              f"{'(' + format(g['prefill_plus_first_ms'], '.0f') + ')':>16}{'-':>11}"
              f"{g.get('prefill_tokens_per_s', float('nan')):>15.0f}{g['peak_rss_bytes'] / mib:>14.0f}{roof}")
    if any(len(f[k].get("decode_repeats", [])) > 1 for k in ours_labels + peers):
        print("\ndecode tokens/s per repeat (interleaved)")
        for key in ours_labels + peers:
            print(f"  {key}: " + ", ".join(f"{x:.1f}" for x in f[key].get("decode_repeats", [])))
    print("\nratios (decode tokens/s; prefill tokens/s)")
    for label in ours_labels:
        o = f[label]
        m = o["metrics"]
        ours, prefill = m["decode_tokens_per_s"]["median"], m["prefill_tokens_per_s"]["median"]
        parts = []
        if torch_tps:
            parts.append(f"{ours / torch_tps:.2f}x torch fp32")
        for key in peers:
            parts.append(f"{ours / f[key]['decode_tokens_per_s']:.2f}x {key}"
                         + (f" (prefill {prefill / f[key]['prefill_tokens_per_s']:.2f}x)"
                            if "prefill_tokens_per_s" in f[key] else ""))
        parts.append(f"{100 * ours / (bw / o['decoder_weight_bytes']):.0f}% of the roofline")
        parts.append(f"python overhead {m['python_overhead_pct']['median']:.1f}% of a step")
        parts.append(f"peak RSS {o['rss_over_model']:.2f}x the model's memory")
        print(f"  {label}: " + ", ".join(parts))
    for key in peers:
        if "decoder_weight_bytes" in f[key]:
            print(f"  {key}: {100 * f[key]['decode_tokens_per_s'] / (bw / f[key]['decoder_weight_bytes']):.0f}% of "
                  "its roofline")
    base = f.get("ours (float32 export)")
    if base:
        b = base["metrics"]
        print("\nagainst the float32 export (vision fp32, float32 head)")
        for label in ours_labels:
            m = f[label]["metrics"]
            print(f"  {label}: vision {b['vision_ms_per_image']['median'] / m['vision_ms_per_image']['median']:.2f}x "
                  f"faster, first token {100 * m['first_token_ms']['median'] / b['first_token_ms']['median']:.0f}% "
                  f"of its time, peak RSS {f[label]['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}x")
    if "frames" in f:
        fr = f["frames"]
        print(f"\n{fr['frames']} frames, {fr['new_tokens']} new tokens each: one by one {fr['one_by_one_s']:.1f} s")
        for label in ("pipelined", "pipelined, cores split"):
            r = fr[label]
            print(f"  {label}: {r['seconds']:.1f} s, {r['speedup']:.2f}x (answers identical: {r['same_answers']})")


if __name__ == "__main__":
    main()
