"""`vlm-quant`: 4-bit AWQ / RTN quantization of a checkpoint's LLM, and the quality report.

    vlm-quant --awq4 ckpt/ -o ckpt-awq/              AWQ, 4-bit, zero point, group 128 where it fits
    vlm-quant --awq4 ckpt/ -o ckpt-awq/ --symmetric  for TensorRT's native int4
    vlm-quant --rtn ckpt/ -o ckpt-rtn/               round-to-nearest baseline, same format
    vlm-quant eval ckpt/ [--json report.json]        FP vs RTN vs AWQ on the held-out yardstick
    vlm-quant eval ckpt/ --text heldout.txt --calib calib.txt
                                                     any checkpoint: perplexity on a held-out text
"""

from __future__ import annotations

import argparse
import sys

from vlm_edge.common.cli import LayerProgress, emit_report, run
from vlm_edge.common.extras import require_installed
from vlm_edge.common.log import setup_logging

from .config import ROUNDINGS, QuantConfig, check_source


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-size", type=int, choices=(128, 64, 32),
                   help="input channels per scale (default: the largest of 128, 64, 32 that divides every "
                        "linear's input width; 64 for the tiny model)")
    p.add_argument("--symmetric", action="store_true",
                   help="no zero point: q in [-8, 7] (what TensorRT's native int4 needs); default asymmetric")
    p.add_argument("--calib", help="calibration data: .txt, .jsonl ({\"text\": ...}) or LLaVA conversation .json with "
                                   "images; pile-val (online, the published recipe's text); vlm-edge:offline (default where the checkpoint "
                                   "has no calibration/ set: Python's documentation and drawn pictures, no network)")
    p.add_argument("--calib-samples", type=int, default=128, help="calibration blocks (default 128)")
    p.add_argument("--calib-len", type=int, default=512, help="positions per block (default 512)")
    p.add_argument("--text-only", action="store_true", help="drop images from multimodal calibration data")
    p.add_argument("--no-clip", action="store_true", help="skip the clip search")
    p.add_argument("--duo-scaling", action="store_true",
                   help="scale candidates x^a / w^(1-a) from activations and weights (AutoAWQ's and llm-compressor's "
                        "default) instead of the published x^a")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="what the scale search's forward passes compute in; weights, scales, statistics and the clip search stay float32 "
                        "(default: float16 on a GPU, bfloat16 on a CPU with AVX512-BF16 or AMX, else float32)")
    p.add_argument("--rounding", choices=ROUNDINGS, default="feedback",
                   help="how AWQ picks each integer on its grid: feedback (default: each column's rounding error is "
                        "corrected in the columns after it, against the calibration inputs, as GPTQ does), or nearest "
                        "(the published AWQ recipe)")
    p.add_argument("-v", "--verbose", action="store_true")


def _config(args: argparse.Namespace, method: str) -> QuantConfig:
    return QuantConfig(method=method, group_size=args.group_size, symmetric=args.symmetric, calib=args.calib,
                       samples=args.calib_samples, seq_len=args.calib_len, text_only=args.text_only,
                       clip=not args.no_clip, duo=args.duo_scaling, device=args.device,
                       dtype=args.dtype, rounding=args.rounding)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        return eval_main(argv[1:])
    p = argparse.ArgumentParser(prog="vlm-quant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    method = p.add_mutually_exclusive_group(required=True)
    method.add_argument("--awq4", metavar="CKPT", help="quantize CKPT's LLM with AWQ (4-bit)")
    method.add_argument("--rtn", metavar="CKPT", help="quantize CKPT's LLM by round-to-nearest (4-bit)")
    p.add_argument("-o", "--output", required=True, help="directory for the quantized checkpoint")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output")
    _options(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def quantize() -> None:
        source, name = (args.awq4, "awq") if args.awq4 else (args.rtn, "rtn")
        require_installed("torch", "vlm-quant")  # a runtime-only install: say which extra, first
        check_source(source, _config(args, name))  # a broken checkpoint fails here, before torch loads
        from .api import quantize_checkpoint

        quantize_checkpoint(source, args.output, _config(args, name), overwrite=args.force, progress=LayerProgress())

    return run("vlm-quant", quantize)


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vlm-quant eval",
                                description="FP vs RTN vs AWQ on one yardstick; a table, optionally JSON. A checkpoint "
                                            "written by vlm-train: held-out VQA accuracy per question type and answer "
                                            "perplexity (and AWQ with text-only calibration). Any checkpoint, with "
                                            "--text: the LLM's perplexity on that held-out text.")
    p.add_argument("checkpoint", help="an FP VILA-layout checkpoint")
    p.add_argument("--per-type", type=int, default=50, help="held-out questions per type (default 50)")
    p.add_argument("--text", help="held-out UTF-8 text file: measure perplexity on it (any checkpoint)")
    p.add_argument("--eval-len", type=int, default=512, help="tokens per perplexity window (default 512)")
    p.add_argument("--eval-blocks", type=int, default=40, help="at most this many windows of --text (default 40)")
    p.add_argument("--json", help="also write the report to this file")
    _options(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def report() -> None:
        from .evaluate import format_report, format_text_report, quality_report, text_report

        if args.text:
            result = text_report(args.checkpoint, _config(args, "awq"), args.text, seq_len=args.eval_len,
                                 blocks=args.eval_blocks, progress=LayerProgress())
            emit_report(format_text_report(result), result, args.json)
            return
        result = quality_report(args.checkpoint, _config(args, "awq"), per_type=args.per_type)
        emit_report(format_report(result), result, args.json)

    return run("vlm-quant eval", report)


if __name__ == "__main__":
    sys.exit(main())
