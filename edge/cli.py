"""`vlm-run`: ask an exported engine about images; the answer streams to stdout.

    vlm-run engine/ --image shapes.png --prompt "What colour is the circle?"
    vlm-run engine/ --image a.png --image b.png --prompt "<image> and <image>: which has a red circle?"
    vlm-run engine/ --prompt "Repeat after me: cat dog" --temperature 0.7 --top-p 0.9 --seed 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlm_edge.common.cli import run
from vlm_edge.common.log import setup_logging

from .backends import BACKENDS
from .sampling import SamplingConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vlm-run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", help="an engine directory written by vlm-export")
    p.add_argument("--prompt", required=True, help="the question; <image> marks where each image goes "
                                                   "(default: all images first)")
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--video", help="a video file (MP4, AVI, MKV, WebM; needs OpenCV): the model's num_video_frames "
                                   "frames, sampled uniformly, in place of images; <video> in the prompt marks where")
    p.add_argument("--system", help="a system prompt (templates that have one)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="default auto: CUDA when it works, else CPU")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="an extra stop string (repeatable)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--verify", action="store_true", help="check every engine file's SHA-256 against the manifest "
                                                         "before answering (sizes are always checked)")
    p.add_argument("--stats", action="store_true", help="print timings to stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                            stop=tuple(args.stop))

    def ask() -> None:
        from vlm_edge.common.image import load_image

        from .pipeline import Generation, load

        from vlm_edge.common.errors import InputError

        if args.video and args.image:
            raise InputError("give --image or --video, not both")
        images = [load_image(path) for path in args.image]  # a bad file fails before the engine loads
        if args.video and not Path(args.video).is_file():
            raise InputError(f"video {args.video} does not exist or is not a file")
        pipe = load(args.engine, args.backend, threads=args.threads, verify=args.verify)
        messages = args.prompt
        if args.system is not None:
            text = args.prompt
            if args.image and "<image>" not in text:
                text = "".join("<image>\n" for _ in args.image) + text
            messages = [{"role": "system", "content": args.system}, {"role": "user", "content": text}]
        result = Generation([], "", "length", 0)
        for piece in pipe.stream(messages, images, config, result=result, video=args.video):
            print(piece, end="", flush=True)
        print()
        if args.stats:
            t = result.timings
            decode_tps = (len(result.token_ids) - 1) / t["decode"] if len(result.token_ids) > 1 and t["decode"] else 0.0
            print(f"[{pipe.backend}] prompt {result.prompt_tokens} tokens, {len(result.token_ids)} generated "
                  f"({result.finish_reason}); vision {t['vision'] * 1e3:.1f} ms, prefill {t['prefill'] * 1e3:.1f} ms, "
                  f"first token {t.get('first_token', 0) * 1e3:.1f} ms, decode {decode_tps:.1f} tokens/s",
                  file=sys.stderr)

    return run("vlm-run", ask)


if __name__ == "__main__":
    sys.exit(main())
