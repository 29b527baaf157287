"""The command line every tool runner here takes (stdlib only: each runs in its tool's own venv)."""

from __future__ import annotations

import argparse


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a transformers LLM folder")
    p.add_argument("--calib-ids", required=True, help="JSON list of token-id blocks, all of one length")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="what the model is loaded and calibrated in (default float32)")
    p.add_argument("--out", required=True, help="safetensors file for the dequantized LLM tensors")
    return p.parse_args()
