"""The quality report: FP against RTN and AWQ on the same yardstick.

For a checkpoint written by vlm-train, the yardstick is the training module's held-out VQA
accuracy per question type and held-out answer perplexity (`vlm_edge.train.evaluate`). Each
quantized variant is made in memory from a fresh load of the FP checkpoint (weights replaced
by their dequantized values), so the report needs no files besides the checkpoint.

Variants: fp, rtn, awq (calibrated on the checkpoint's default set, images included) and, when
that set has images, awq-text (the same set with the images removed: the published recipe's
text-only calibration), to measure whether image tokens help.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vlm_edge.common.errors import InputError
from vlm_edge.common.log import get_logger
from vlm_edge.common.vila_config import VilaConfig
from vlm_edge.model.checkpoint import load_checkpoint
from vlm_edge.train.datasets import QUESTION_TYPES, SyntheticData
from vlm_edge.train.evaluate import evaluate, training_seed

from .api import quantize_model
from .calibration import load_calibration
from .config import QuantConfig

log = get_logger(__name__)


def quality_report(checkpoint_dir: str | Path, config: QuantConfig, *, per_type: int = 50) -> dict[str, Any]:
    checkpoint_dir = Path(checkpoint_dir)
    seed = training_seed(checkpoint_dir)
    if seed is None:
        raise InputError(f"{checkpoint_dir} was not written by vlm-train (no training/train_config.json), so it has no "
                         "held-out VQA set to measure with")
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
        data = SyntheticData(checkpoint.config.image_size, seed)
        result = evaluate(checkpoint, data, per_type)
        result["mean_accuracy"] = sum(result["accuracy"].values()) / len(result["accuracy"])
        rows[name] = result
        log.info("%s: perplexity %.4f, mean accuracy %.1f%%", name, result["perplexity"], 100 * result["mean_accuracy"])
    return {"checkpoint": str(checkpoint_dir), "config": config.to_dict(), "calibration": calib.source,
            "questions_per_type": per_type, "variants": rows}


def format_report(report: dict[str, Any]) -> str:
    names = list(report["variants"])
    lines = [f"{'':<14}" + "".join(f"{n:>10}" for n in names)]
    for qtype in QUESTION_TYPES:
        lines.append(f"{qtype:<14}" + "".join(f"{report['variants'][n]['accuracy'][qtype]:>10.1%}" for n in names))
    lines.append(f"{'mean':<14}" + "".join(f"{report['variants'][n]['mean_accuracy']:>10.1%}" for n in names))
    lines.append(f"{'perplexity':<14}" + "".join(f"{report['variants'][n]['perplexity']:>10.4f}" for n in names))
    cfg = report["config"]
    lines.append(f"({report['questions_per_type']} held-out questions per type; {cfg['bits']}-bit, group {cfg['group_size']}, "
                 f"{'symmetric' if cfg['symmetric'] else 'zero point'}; calibration: {report['calibration']})")
    return "\n".join(lines)
