"""`vlm-train` and `vlm-eval`: train a VILA-class checkpoint with VILA's 3-stage recipe (after a vision
stage for towers trained from scratch), and measure it.

    vlm-train --preset tiny -o ckpt/                 vision -> align -> pretrain -> sft, then evaluate
    vlm-train -o ckpt/ --resume                      continue an interrupted run
    vlm-train --preset tiny16 -o ckpt16/             16 image tokens and a pretrained tower: for your own pictures
    vlm-train --init ckpt/ --data train.json -o mine/   fine-tune a trained checkpoint on your data
    torchrun --nproc_per_node 2 -m vlm_edge.train.cli --preset tiny -o ckpt/     data-parallel
    vlm-eval ckpt/                                   held-out accuracy per question type + perplexity
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_edge.common.cli import emit_report, run
from vlm_edge.common.errors import VlmEdgeError
from vlm_edge.common.log import setup_logging

from . import numerics


def _stage_steps(text: str) -> dict[str, int]:
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): int(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected stage=N pairs (vision, align, pretrain, sft), got {text!r}") from None


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", required=True, help="checkpoint directory (VILA1.5 layout + training/ state)")
    p.add_argument("--preset", default="tiny",
                   help="model shape and recipe: tiny (default: 28 px, 4 image tokens), tiny16 (56 px, 16 image "
                        "tokens, free scenes, starts from a tower pretrained on a million pictures), micro (tests), "
                        "vila1.5-3b")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    p.add_argument("--force", action="store_true", help="start over in a non-empty --output")
    p.add_argument("--steps", type=_stage_steps,
                   help="override stage steps, e.g. vision=200,align=50,pretrain=100,sft=500")
    p.add_argument("--lr", type=float, help="override every stage's peak learning rate (a fine-tune with --init defaults to half its "
                   "recipe's SFT rate: 0.00035 for tiny and tiny16)")
    p.add_argument("--batch-size", type=int, help="override every stage's global batch size")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the recipe's)")
    p.add_argument("--data", help="your own LLaVA-format conversation JSON, mixed into the SFT stage (with --init: "
                   "the fine-tune's main data)")
    p.add_argument("--init", metavar="CKPT", help="fine-tune this trained checkpoint on --data instead of training "
                   "from scratch: the recipe's SFT stage only (1,600 steps for tiny and tiny16: about 11 minutes "
                   "on 2 cores), your data 80%% of the draws, the synthetic SFT mix 20%% (so the model keeps what it "
                   "knew); a tenth of your records (at most 500) is held out and scored at the end unless "
                   "--eval-data is given")
    p.add_argument("--eval-data", help="your held-out test set (LLaVA-format JSON), scored at the end of training")
    p.add_argument("--image-folder", help="folder the --data image paths are relative to (default: the JSON's)")
    p.add_argument("--augment", action="store_true",
                   help="reframe your pictures on each draw: a crop of 90-100%% of each side, anywhere, scaled "
                        "back (colours, shapes and coarse positions kept; default: the pictures as they are)")
    p.add_argument("--init-llm", help="start from this LLM folder (config.json, safetensors, tokenizer) "
                   "instead of the preset's random one; its tokenizer and chat template are used")
    p.add_argument("--init-vision", help="start from this vision tower folder (config.json, safetensors, "
                   "preprocessor_config.json); the vision stage, for towers trained from scratch, is skipped. "
                   "tiny16 starts from the tower that ships with vlm-edge (pretrained on a million pictures "
                   "of free shapes) and keeps its vision stage; 'none' trains its tower from scratch")
    p.add_argument("--eval-per-type", type=int, help="held-out questions per type in the final evaluation (0 = skip)")
    p.add_argument("--world", choices=("train", "plain"),
                   help="the synthetic data: plain (one grey background, exact colours, one phrasing a "
                        "question; the default) or train (Pillow and OpenCV renderers, gradient and noisy "
                        "backgrounds, shades, lighting, blur and JPEG, several phrasings and yes/no questions)")
    p.add_argument("--layout", choices=("cells", "grid", "free"),
                   help="where the synthetic scenes' shapes sit: cells (the plain world's), grid (upright, two "
                        "sizes, one to a quadrant) or free (any size, angle and place: tiny16's); default: the "
                        "preset's, else the world's")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto (default): bf16 autocast on a GPU, fp32 on a CPU")
    p.add_argument("--numerics", choices=("portable", "native"),
                   help="CPU kernels: portable (default) gives bit-identical weights on every x86-64 host "
                   "with AVX2 (at the same --threads); native uses each host's fastest kernels, so each "
                   "host trains a slightly different model")
    p.add_argument("--threads", type=int, help="CPU threads (default: 2 with portable numerics, else all cores); "
                   "another count sums in another order and trains another model")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def build_config(args: argparse.Namespace):
    from .recipe import default_config, finetune_stages

    if args.init and not args.data:
        raise VlmEdgeError("--init fine-tunes a checkpoint on your data: add --data FILE (LLaVA-format JSON)")
    if args.init and Path(args.init).resolve() == Path(args.output).resolve():
        raise VlmEdgeError(f"--init {args.init} and -o {args.output} are the same directory; write the fine-tune "
                           "elsewhere")
    saved = _init_config(args.init) if args.init else {}
    preset = saved["preset"] if args.init else args.preset
    config = default_config(preset, seed=args.seed, device=args.device, precision=args.precision)
    if args.init:
        config.stages = finetune_stages(preset)
        # the synthetic share of the fine-tune is drawn as the checkpoint's own training data was
        config.world, config.layout = saved.get("world", "plain"), saved.get("layout")
    own_tower = args.init_vision not in (None, "none")
    for stage in config.stages:
        if own_tower and stage.pictures_only:
            stage.steps = 0  # a tower that has learnt to see elsewhere keeps what it learnt
        if args.steps and stage.name in args.steps:
            stage.steps = args.steps[stage.name]
        if args.lr:
            stage.lr = args.lr
        if args.batch_size:
            stage.batch_size = args.batch_size
        if args.data and stage.name == "sft" and not args.init:
            stage.mix = {**stage.mix, "user": 1.0}
    if args.steps and set(args.steps) - {s.name for s in config.stages}:
        raise VlmEdgeError(f"--steps names unknown stages {sorted(set(args.steps) - {s.name for s in config.stages})}")
    if args.checkpoint_every:
        config.checkpoint_every = args.checkpoint_every
    if args.eval_per_type is not None:
        config.eval_per_type = args.eval_per_type
    if args.world:
        config.world = args.world
    if args.layout:
        config.layout = args.layout
    config.user_data, config.image_folder = args.data, args.image_folder
    config.augment = args.augment
    config.init, config.eval_data = args.init, args.eval_data
    config.init_llm = args.init_llm
    if args.init_vision is not None:  # else the preset's: tiny16's shipped tower, or none
        config.init_vision = None if args.init_vision == "none" else args.init_vision
    if own_tower and not (args.steps or {}).get("vision"):
        # the probes name synthetic scenes' cells; another tower's tokens need not map to them. Asking for
        # vision steps (a tower of the preset's own token grid, pretrained elsewhere) keeps them.
        config.probe_weight = 0.0
    if args.numerics:
        config.numerics = args.numerics
    if args.threads is not None:
        config.threads = args.threads
    return config


def _init_config(init: str) -> dict:
    """The training config a vlm-train checkpoint was trained with: its preset (whose recipe's SFT
    stage is the fine-tune), world and layout."""
    from vlm_edge.common.errors import CheckpointError
    from vlm_edge.common.fsutil import read_json

    folder = Path(init)
    if not (folder / "config.json").is_file():
        raise VlmEdgeError(f"--init {init}: not a checkpoint directory (no config.json)")
    saved = folder / "training" / "train_config.json"
    if not saved.is_file():
        raise VlmEdgeError(f"--init {init}: no training/train_config.json, so no recipe to fine-tune with; "
                           "--init takes a checkpoint vlm-train wrote (for others, --init-llm / --init-vision)")
    config = read_json(saved, what="training config", error=CheckpointError)
    if not isinstance(config, dict) or not isinstance(config.get("preset"), str):
        raise VlmEdgeError(f"{saved}: 'preset' is missing")
    for key, allowed in (("world", ("plain", "train")), ("layout", (None, "cells", "grid", "free"))):
        if key in config and config[key] not in allowed:
            raise VlmEdgeError(f"{saved}: {key} {config[key]!r} is unknown")
    return config


def main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    setup_logging(args.verbose)
    # before torch loads: the kernels it picks are fixed when it starts (train/numerics.py)
    saved = numerics.saved_settings(args.output) if args.resume else None
    numerics.request(saved[0] if saved else args.numerics or "portable")

    def train() -> None:
        from .trainer import Trainer

        Trainer(build_config(args), args.output, resume=args.resume, force=args.force).run()

    return run("vlm-train", train)


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vlm-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure a checkpoint: held-out VQA exact match per question type and perplexity on the "
                    "training module's synthetic data, or, with --data, exact match on your own test set.",
        epilog="examples:\n  vlm-eval ckpt/                                  the synthetic yardstick\n"
               "  vlm-eval ckpt/ --data test.json --image-folder images/\n\n"
               "--data takes LLaVA-format JSON ([{\"image\": ..., \"conversations\": [{\"from\": \"human\", ...}, "
               "{\"from\": \"gpt\", ...}]}]);\nevery assistant turn is one question, asked with the turns before "
               "it. Answers match when they\nare equal ignoring case, surrounding space and a final full stop.")
    p.add_argument("checkpoint")
    p.add_argument("--per-type", type=int, default=50, help="synthetic questions per type (default 50)")
    p.add_argument("--seed", type=int, help="synthetic data seed (default: the one the checkpoint was trained with)")
    p.add_argument("--data", help="your own test set: LLaVA-format conversation JSON")
    p.add_argument("--image-folder", help="folder the --data image paths are relative to (default: the JSON's)")
    p.add_argument("--limit", type=int, help="with --data: at most this many answers")
    p.add_argument("--world", choices=("plain", "train", "heldout"),
                   help="how the synthetic pictures are drawn: plain (one grey, exact colours), train (several "
                        "renderers, backgrounds, lighting, blur, JPEG) or heldout (a renderer and backgrounds no "
                        "training world has); default: the world the checkpoint was trained in")
    p.add_argument("--layout", choices=("cells", "grid", "free"),
                   help="where the shapes sit: cells (the plain world's), grid (upright, two sizes, one to a "
                        "quadrant, moved within it) or free (any size, angle and place); default: the "
                        "checkpoint's training layout, else the world's")
    p.add_argument("--wording", choices=("plain", "train", "heldout"),
                   help="the questions' phrasings: plain (one a type), train (many, yes/no questions) or heldout "
                        "(phrasings no training data has); default: the world's (plain for plain)")
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    setup_logging()

    def measure() -> None:
        from vlm_edge.model import load_checkpoint

        if args.data:
            from vlm_edge.common.conversations import read_conversations

            from .evaluate import evaluate_conversations, format_conversation_table

            conversations = read_conversations(args.data, args.image_folder)  # checked before the model loads
            ckpt = load_checkpoint(args.checkpoint)
            result = evaluate_conversations(ckpt, conversations, limit=args.limit)
            emit_report(format_conversation_table(result), result, args.json)
            return
        from .datasets import SyntheticData
        from .evaluate import evaluate, format_table, training_layout, training_seed, training_world

        ckpt = load_checkpoint(args.checkpoint)
        seed = args.seed if args.seed is not None else training_seed(args.checkpoint) or 0
        world = args.world or training_world(args.checkpoint)
        wording = args.wording or ("plain" if world == "plain" else "train")
        layout = args.layout or training_layout(args.checkpoint, world)
        data = SyntheticData(ckpt.config.image_size, seed, world, wording, layout)
        result = evaluate(ckpt, data, args.per_type)
        emit_report(format_table(result), result, args.json)

    return run("vlm-eval", measure)


if __name__ == "__main__":
    sys.exit(main())
