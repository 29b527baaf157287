"""The quality report: FP against RTN and AWQ on the same yardstick.

For a checkpoint written by vlm-train, the yardstick is the training module's held-out VQA
accuracy per question type and held-out answer perplexity (`vlm_edge.train.evaluate`). Each
quantized variant is made in memory from a fresh load of the FP checkpoint (weights replaced
by their dequantized values), so the report needs no files besides the checkpoint.

Variants: fp, rtn, awq (calibrated on the checkpoint's default set, images included) and, when
that set has images, awq-text (the same set with the images removed: the published recipe's
text-only calibration), to measure whether image tokens help.

Any other VILA-layout checkpoint (a released one, or an LLM wrapped with `vlm-model init --llm`)
is measured by its LLM's perplexity on a held-out text file (`text_report`): the text is
tokenized once, cut into windows of `seq_len` tokens, and every token but each window's first
is predicted (the usual non-overlapping-window perplexity).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from vlm_edge.common.errors import InputError
from vlm_edge.common.log import get_logger
from vlm_edge.common.vila_config import VilaConfig
from vlm_edge.model.checkpoint import load_checkpoint
from vlm_edge.train.datasets import SyntheticData
from vlm_edge.train.evaluate import evaluate, training_seed, training_world

from .api import quantize_model
from .calibration import load_calibration
from .config import QuantConfig

log = get_logger(__name__)


def quality_report(checkpoint_dir: str | Path, config: QuantConfig, *, per_type: int = 50) -> dict[str, Any]:
    checkpoint_dir = Path(checkpoint_dir)
    seed = training_seed(checkpoint_dir)
    if seed is None:
        raise InputError(f"{checkpoint_dir} was not written by vlm-train (no training/train_config.json), so it has no "
                         "held-out VQA set to measure with; pass --text FILE (a held-out text) to measure its perplexity")
    config = config.for_llm(VilaConfig.read(checkpoint_dir).llm)
    variants: dict[str, QuantConfig | None] = {"fp": None, "rtn": dataclasses.replace(config, method="rtn"),
                                               "awq": dataclasses.replace(config, method="awq", text_only=False)}
    calib = load_calibration(config.calib, checkpoint_dir)
    if calib.conversations and any(c.images for c in calib.conversations):
        variants["awq-text"] = dataclasses.replace(config, method="awq", text_only=True)
    rows: dict[str, Any] = {}
    for name, variant in variants.items():
        checkpoint = load_checkpoint(checkpoint_dir)
        if variant is not None:
            quantize_model(checkpoint, variant, checkpoint_dir)
        data = SyntheticData(checkpoint.config.image_size, seed, training_world(checkpoint_dir))
        result = evaluate(checkpoint, data, per_type)
        result["mean_accuracy"] = sum(result["accuracy"].values()) / len(result["accuracy"])
        rows[name] = result
        log.info("%s: perplexity %.4f, mean accuracy %.1f%%", name, result["perplexity"], 100 * result["mean_accuracy"])
    return {"checkpoint": str(checkpoint_dir), "config": config.to_dict(), "calibration": calib.source,
            "questions_per_type": per_type, "variants": rows}


def text_blocks(checkpoint, text: str, *, seq_len: int = 512, blocks: int | None = None) -> torch.Tensor:
    """[n, seq_len] token ids of `text` in non-overlapping windows (at most `blocks` of them)."""
    ids = checkpoint.tokenizer.encode(text)
    n = len(ids) // seq_len
    if n == 0:
        raise InputError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {seq_len}; "
                         "give a longer text or a smaller --eval-len")
    n = min(n, blocks) if blocks else n
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def perplexity(llm: torch.nn.Module, blocks: torch.Tensor, batch: int = 4) -> float:
    """exp(mean next-token negative log-likelihood) of the LLM over `blocks` [n, L]."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), batch):
            ids = blocks[start : start + batch]
            logits = llm(input_ids=ids, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += float(nll)
            count += ids[:, 1:].numel()
    return math.exp(total / count)


def text_report(checkpoint_dir: str | Path, config: QuantConfig, text_file: str | Path, *, seq_len: int = 512,
                blocks: int | None = 40, progress=None) -> dict[str, Any]:
    """FP vs RTN vs AWQ perplexity of any VILA-layout checkpoint's LLM on a held-out text file."""
    checkpoint_dir, text_file = Path(checkpoint_dir), Path(text_file)
    if not text_file.is_file():
        raise InputError(f"evaluation text {text_file} does not exist")
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"evaluation text {text_file} is not UTF-8 text") from None
    config = config.for_llm(VilaConfig.read(checkpoint_dir).llm)
    calib = load_calibration(config.calib, checkpoint_dir)  # before any work: fails when there is none
    rows: dict[str, Any] = {}
    for name, variant in {"fp": None, "rtn": dataclasses.replace(config, method="rtn"),
                          "awq": dataclasses.replace(config, method="awq")}.items():
        checkpoint = load_checkpoint(checkpoint_dir)
        ids = text_blocks(checkpoint, text, seq_len=seq_len, blocks=blocks)
        seconds = None
        if variant is not None:
            start = time.time()
            quantize_model(checkpoint, variant, checkpoint_dir, progress=progress, calib=calib)
            seconds = round(time.time() - start, 1)
        rows[name] = {"perplexity": perplexity(checkpoint.model.llm, ids), "seconds": seconds}
        log.info("%s: perplexity %.4f", name, rows[name]["perplexity"])
    return {"checkpoint": str(checkpoint_dir), "config": config.to_dict(), "calibration": calib.source,
            "text": str(text_file), "tokens": int(ids.numel()), "seq_len": seq_len, "variants": rows}


def format_text_report(report: dict[str, Any]) -> str:
    fp = report["variants"]["fp"]["perplexity"]
    lines = [f"{'':<6}{'perplexity':>12}{'gap to fp':>11}{'seconds':>9}"]
    for name, row in report["variants"].items():
        gap = "" if name == "fp" else f"{row['perplexity'] - fp:+.4f}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(f"{name:<6}{row['perplexity']:>12.4f}{gap:>11}{seconds:>9}")
    cfg = report["config"]
    lines.append(f"({report['tokens']} tokens of {report['text']} in windows of {report['seq_len']}; {cfg['bits']}-bit, "
                 f"group {cfg['group_size']}, {'symmetric' if cfg['symmetric'] else 'zero point'}; "
                 f"calibration: {report['calibration']})")
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    names = list(report["variants"])
    lines = [f"{'':<14}" + "".join(f"{n:>10}" for n in names)]
    for qtype in report["variants"][names[0]]["accuracy"]:  # the types the checkpoint's world asks
        lines.append(f"{qtype:<14}" + "".join(f"{report['variants'][n]['accuracy'][qtype]:>10.1%}" for n in names))
    lines.append(f"{'mean':<14}" + "".join(f"{report['variants'][n]['mean_accuracy']:>10.1%}" for n in names))
    lines.append(f"{'perplexity':<14}" + "".join(f"{report['variants'][n]['perplexity']:>10.4f}" for n in names))
    cfg = report["config"]
    lines.append(f"({report['questions_per_type']} held-out questions per type; {cfg['bits']}-bit, group {cfg['group_size']}, "
                 f"{'symmetric' if cfg['symmetric'] else 'zero point'}; calibration: {report['calibration']})")
    return "\n".join(lines)
