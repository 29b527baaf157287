"""`vlm-export` and `vlm-build-engine`.

    vlm-export --awq4 ckpt/ -o engine/                 AWQ 4-bit (zero point), ONNX Runtime graphs, validated
    vlm-export --awq4 ckpt/ -o engine/ --flavour ort --flavour trt
                                                       + TensorRT's int4 graph (symmetric AWQ) and a vision
                                                       graph with our downsample plugin (--no-plugin: plain ops)
    vlm-export --awq4 ckpt/ -o engine/ --build-engine  + TensorRT engines, on a machine with TensorRT and a GPU
    vlm-export ckpt/ -o engine/                        float32 graphs, no quantization
    vlm-build-engine engine/                           TensorRT engines for an exported directory, on the target

The checkpoint may already be AWQ-quantized (vlm-quant); its integers are exported as they are.
Validation (on by default) runs the graphs in ONNX Runtime, as the runtime runs them, against
the PyTorch reference and stops the export when they disagree: float32 logits within 1e-4
relative, 4-bit within 1e-2 of the fake-quantized model, greedy tokens identical over 32 steps on
9 of 10 prompts; a decoder with int8 activations (accuracy level 4, the int8 LM head), rounded on
purpose, by logits cosine >= 0.999 and the same next token at >= 95% of the steps.

The speed settings default to auto: int8 vision, accuracy level 4 and the int8 LM head are each
kept only when the validation passes with them, else fp32 vision, level 0 and a float head; the
summary and the manifest say what was chosen and why.
"""

from __future__ import annotations

import argparse
import sys

from vlm_edge.common.cli import LayerProgress, run
from vlm_edge.common.extras import require_installed
from vlm_edge.common.log import setup_logging

from .config import ExportConfig, check_source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a VILA1.5-layout checkpoint (vlm-train, vlm-quant or a release)")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    p.add_argument("--force", action="store_true", help="replace a non-empty --output (only once the export succeeded)")
    p.add_argument("--awq4", action="store_true", help="4-bit AWQ weights for the LLM's linears (quantizes unless the "
                                                       "checkpoint already is)")
    p.add_argument("--flavour", action="append", choices=("ort", "trt"), default=[],
                   help="decoder graph(s) with --awq4: ort (ONNX Runtime MatMulNBits, default) and/or trt (TensorRT "
                        "int4 DequantizeLinear; implies symmetric AWQ); repeat for both")
    p.add_argument("--group-size", type=int, choices=(128, 64, 32),
                   help="input channels per 4-bit scale (default: the largest that divides the LLM's widths)")
    p.add_argument("--symmetric", dest="symmetric", action="store_true", default=None,
                   help="symmetric AWQ even without a trt graph (default: only with one)")
    p.add_argument("--method", choices=("awq", "rtn"), default="awq", help="quantization method (default awq)")
    p.add_argument("--tinychat-awq", metavar="FILE",
                   help="with --awq4: NVIDIA's released TinyChat AWQ weights for this checkpoint (the "
                        "*-w4-g128-awq-v2.pt of a -AWQ release); its integers, scales and zeros are used as "
                        "they are, nothing is re-quantized")
    p.add_argument("--calib", help="calibration data for AWQ: a file, pile-val or vlm-edge:offline (see vlm-quant --help; "
                   "default: the checkpoint's own set, else vlm-edge:offline, which needs no network)")
    p.add_argument("--calib-samples", type=int, default=128, help="calibration blocks (default 128)")
    p.add_argument("--calib-len", type=int, default=512, help="positions per calibration block (default 512)")
    p.add_argument("--lm-head", choices=("auto", "float", "int8", "int4", "int4-rescore"), default="auto",
                   help="the LM head's weights: float (as AWQ leaves it), int8, int4 (round-to-nearest, per "
                        "group) or int4-rescore (the int4 head picks 64 candidates, int8 rows of the head give their "
                        "logits; ONNX Runtime graphs only). With a large vocabulary the head is most of the bytes a "
                        "decode step reads: int4 reads the fewest but moved 5.6%% of a real 0.5B model's next "
                        "tokens; int4-rescore reads about as few and kept the int8 head's 98.4%% agreement. auto "
                        "(default), with --awq4 and ONNX Runtime graphs only: int4-rescore, int8, float, the first "
                        "that validates against the float head (int8 with --no-validate); float with a trt graph")
    p.add_argument("--quantize-lm-head", dest="lm_head", action="store_const", const="int4",
                   help="the same as --lm-head int4")
    p.add_argument("--vision", choices=("auto", "fp32", "int8", "fp16"), default="auto",
                   help="the vision tower's linears: int8 (8-bit weights per channel, 8-bit activations: about 2.5x "
                        "faster on a CPU), fp32, or fp16 (half the file; for TensorRT builds). auto (default): int8 "
                        "when its embeddings keep cosine >= 0.999 to the float model's and no trt graph is asked "
                        "for, else fp32")
    p.add_argument("--accuracy-level", type=_accuracy_level, default="auto", metavar="{auto,0,4}",
                   help="how ONNX Runtime's 4-bit MatMulNBits computes: 4 quantizes the activations to int8 (2.4-2.7x "
                        "faster decode measured on an AVX2 CPU), 0 computes in float. auto (default): 4 when the "
                        "validation passes with it, else 0, with the reason in the log and the manifest")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="skip the comparison with PyTorch")
    p.add_argument("--prompts", type=int, default=10, help="validation prompts (default 10)")
    p.add_argument("--build-engine", action="store_true",
                   help="also build TensorRT engines now (needs the tensorrt package and a GPU; adds the trt graph)")
    p.add_argument("--no-plugin", dest="plugin", action="store_false",
                   help="trt: keep the projector's downsample + LayerNorm as plain ONNX ops in vision.trt.onnx "
                        "instead of one node for our TensorRT plugin (libvlm_edge_plugins.so)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="quantization device")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    config = ExportConfig(plugin=args.plugin, awq4=args.awq4, flavours=tuple(dict.fromkeys(args.flavour)), group_size=args.group_size,
                          symmetric=args.symmetric, method=args.method, tinychat_awq=args.tinychat_awq, calib=args.calib,
                          calib_samples=args.calib_samples, calib_len=args.calib_len, validate=args.validate,
                          prompts=args.prompts, accuracy_level=args.accuracy_level,
                          lm_head=args.lm_head, vision=args.vision, build_engine=args.build_engine,
                          device=args.device)

    def export() -> None:
        require_installed("torch", "vlm-export")  # a runtime-only install: say which extra, first
        check_source(args.checkpoint, config)  # a broken checkpoint fails here, before torch loads
        from .api import export_checkpoint

        manifest = export_checkpoint(args.checkpoint, args.output, config, overwrite=args.force,
                                     layer_progress=LayerProgress())
        print(summary(manifest))

    return run("vlm-export", export)


def _accuracy_level(text: str) -> int | str:
    if text == "auto":
        return text
    if text in ("0", "1", "2", "3", "4"):
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: choose auto, 0 (float) .. 4 (int8 activations)")


def summary(manifest) -> str:
    lines = [f"components: {', '.join(manifest.components)}"]
    if manifest.quantization and manifest.quantization.get("calibration"):
        lines.append(f"  calibration: {manifest.quantization['calibration']}")
    for name, figures in manifest.validation.items():
        if name == "vision":
            cosine = f", cosine >= {figures['cosine_min']:.5f}" if "cosine_min" in figures else ""
            lines.append(f"  vision   {figures.get('precision', 'fp32')}: image embeddings rel err "
                         f"{figures['rel_err']:.2e}{cosine}")
        elif figures.get("rounded"):
            kl = f"KL mean {figures['kl_mean']:.2e}, " if "kl_threshold" in figures else ""
            lines.append(f"  {name:<12} {kl}logits cosine >= {figures['logits_cosine_min']:.5f}, next token agreement "
                         f"{100 * figures['next_token_agreement']:.1f}%, greedy identical "
                         f"{figures['greedy_identical']}/{figures['prompts']} ({figures['rounded']})")
        else:
            lines.append(f"  {name:<12} logits rel err {figures['logits_rel_err']:.2e} (<= {figures['logits_threshold']:.0e}),"
                         f" greedy identical {figures['greedy_identical']}/{figures['prompts']}")
    ort_graph = manifest.components.get("decoder.ort")
    if ort_graph is not None and "accuracy_level" in ort_graph.info:
        info = ort_graph.info
        why = {0: "float compute", 4: "int8 activations"}.get(info["accuracy_level"], "")
        if info.get("accuracy_rejected"):
            why += "; 4 did not validate: " + "; ".join(info["accuracy_rejected"]["4"])
        elif info.get("accuracy_asked") == "auto" and info["accuracy_level"] == 0:
            why += "; auto keeps float without validation"
        lines.append(f"  accuracy level {info['accuracy_level']} ({why})")
    for decoder in (c for c in manifest.components.values() if c.kind == "decoder" and c.info.get("lm_head_rejected")):
        rejected = "; ".join(f"{head} did not validate: {why}" for head, why in decoder.info["lm_head_rejected"].items())
        lines.append(f"  LM head {decoder.info['lm_head']} ({rejected})")
        break
    return "\n".join(lines)


def build_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-build-engine",
                                description="Build TensorRT engines (fp16, one optimization profile per graph, a "
                                            "timing cache) from an engine directory's trt graphs, on this machine. "
                                            "A vision graph with our downsample plugin needs libvlm_edge_plugins.so: "
                                            "it is built here once (nvcc, CMake and TensorRT's headers; set "
                                            "TENSORRT_ROOT if they are not under /usr) and cached in "
                                            "~/.cache/vlm-edge, or given with --plugin-library.")
    p.add_argument("engine", help="an engine directory written by vlm-export with a trt graph")
    p.add_argument("--plugin-library", help="a prebuilt libvlm_edge_plugins.so (also: $VLM_EDGE_PLUGIN_LIBRARY)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def build() -> None:
        from .api import build_engine_dir

        for target in build_engine_dir(args.engine, args.plugin_library).targets:
            print(f"{target['component']}: {target['file']} ({target['cache_key']})")

    return run("vlm-build-engine", build)


if __name__ == "__main__":
    sys.exit(main())
