"""`vlm-model`: create, inspect and query VILA-layout checkpoints with the PyTorch reference.

    vlm-model init --preset tiny -o ckpt/          a new checkpoint with random weights
    vlm-model init --preset bench-qwen0.5b --llm Qwen2.5-0.5B/ -o ckpt/
                                                   an LLM folder's weights with the preset's vision tower
    vlm-model info ckpt/                           what a checkpoint holds
    vlm-model generate ckpt/ --image x.png --prompt "What is in the image?"
    vlm-model generate ckpt/ --video clip.mp4 --prompt "Which colour appears last?"
"""

from __future__ import annotations

import argparse
import sys

from vlm_edge.common.cli import run
from vlm_edge.common.log import setup_logging
from vlm_edge.common.tokenizer import IMAGE_TOKEN
from vlm_edge.common.vila_config import TOKEN_ORDERS

EPILOG = "Checkpoints use the VILA1.5 layout (config.json, llm/, vision_tower/, mm_projector/); see docs/checkpoint-format.md."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-model", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="write a new checkpoint with random weights from a preset")
    init.add_argument("--preset", default="tiny", help="model shape: micro, tiny (default), vila1.5-3b or bench-qwen0.5b (the runtime benchmark)")
    init.add_argument("-o", "--output", required=True, help="checkpoint directory to create")
    init.add_argument("--seed", type=int, default=0, help="random seed for the weights (default 0)")
    init.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    init.add_argument("--llm", metavar="FOLDER", help="take the LLM (weights, config, tokenizer) from this transformers "
                      "model folder instead of random weights; the preset gives the vision tower, and the projector "
                      "is new (random): for benchmarks on real LLM weights")

    info = sub.add_parser("info", help="print a checkpoint's configuration and parameter counts")
    info.add_argument("checkpoint", help="checkpoint directory (VILA1.5 layout)")

    gen = sub.add_parser("generate", help="answer a prompt about images with the PyTorch reference model")
    gen.add_argument("checkpoint", help="checkpoint directory (VILA1.5 layout)")
    gen.add_argument("--prompt", required=True, help=f"user message; put {IMAGE_TOKEN} where each image goes "
                     f"(if absent, one {IMAGE_TOKEN} per image is put in front)")
    gen.add_argument("--image", action="append", default=[], help="image file (repeat for several images)")
    gen.add_argument("--video", help="a video file instead of images (needs OpenCV): the checkpoint's num_video_frames "
                     "frames, sampled as vlm-run --video does")
    gen.add_argument("--system", help="system prompt (default: the chat template's)")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the K most likely tokens (0 = off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help=">1 discourages repeats (1.0 = off)")
    gen.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    gen.add_argument("--downsample-token-order", choices=TOKEN_ORDERS,
                     help="override the projector's token order recorded in (or defaulted for) the checkpoint")
    gen.add_argument("--chat-template", help="override the chat template (vicuna_v1, llama_3, hermes-2, plain)")
    return parser


def _init(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import Checkpoint
    from .presets import byte_level_tokenizer, preset_config
    from .vila import VilaModel

    if args.llm:
        from .presets import checkpoint_with_llm

        checkpoint_with_llm(args.preset, args.llm, args.seed).save(args.output, overwrite=args.force)
        print(f"wrote a checkpoint with the LLM of {args.llm} and the {args.preset} vision tower to {args.output}")
        return
    tokenizer = byte_level_tokenizer()
    config = preset_config(args.preset, tokenizer)
    torch.manual_seed(args.seed)
    Checkpoint(VilaModel(config).eval(), tokenizer).save(args.output, overwrite=args.force)
    print(f"wrote {args.preset} checkpoint to {args.output}")


def _info(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    cfg, model = ckpt.config, ckpt.model

    def millions(module) -> str:
        return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"

    rows = [
        ("LLM", f"{cfg.llm_architecture}, {cfg.llm['num_hidden_layers']} layers, hidden {cfg.hidden_size}, "
                f"vocab {cfg.llm['vocab_size']} ({millions(model.llm)} params)"),
        ("vision tower", f"{cfg.vision_architecture}, {cfg.image_size}px / patch {cfg.patch_size}, "
                         f"select layer {cfg.select_layer} ({millions(model.vision_tower)} params)"),
        ("projector", f"{cfg.projector_type}" + (f", {cfg.downsample_token_order} token order" if cfg.is_downsample else "")
                      + f" ({millions(model.mm_projector)} params)"),
        ("image tokens", str(cfg.num_image_tokens)),
        ("preprocessing", f"{cfg.image_aspect_ratio}"),
        ("chat template", str(cfg.chat_template)),
        ("stored dtype", str(cfg.top.get("model_dtype", "unknown"))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _generate(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .generate import GenerationConfig, chat

    ckpt = load_checkpoint(args.checkpoint, downsample_token_order=args.downsample_token_order, chat_template=args.chat_template)
    prompt = args.prompt
    if args.image and IMAGE_TOKEN not in prompt:
        prompt = f"{IMAGE_TOKEN}\n" * len(args.image) + prompt
    messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.temperature > 0,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    print(chat(ckpt, messages, args.image, config, video=args.video))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    command = {"init": _init, "info": _info, "generate": _generate}[args.command]
    return run("vlm-model", lambda: command(args))


if __name__ == "__main__":
    sys.exit(main())
