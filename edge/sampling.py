"""Sampling options and next-token selection, in numpy (the rule of model/generate.py).

Order: repetition penalty over prompt and generated ids (divide positive logits, multiply
negative ones), then greedy argmax, or temperature -> top-k -> top-p (the smallest set of tokens
whose probability reaches top_p) -> a draw from a seeded numpy Generator. Greedy output equals
the PyTorch reference token for token; sampled output follows the same distribution (the random
streams differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vlm_edge.common.errors import InputError


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    seed: int | None = None
    stop: Sequence[str] = ()  # extra stop strings (the template's and EOS stop unless ignore_eos)
    ignore_eos: bool = False  # run to max_new_tokens whatever comes (benchmarks: a fixed decode length)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise InputError("top_k must be >= 0 and repetition_penalty > 0")


def select_token(logits: np.ndarray, history: Sequence[int], cfg: SamplingConfig, rng: np.random.Generator) -> int:
    """Pick the next token from last-position logits [vocab]."""
    logits = np.asarray(logits, dtype=np.float32)
    if cfg.repetition_penalty != 1.0 and len(history):
        logits = logits.copy()
        seen = np.unique(np.asarray(history, dtype=np.int64))
        values = logits[seen]
        logits[seen] = np.where(values > 0, values / cfg.repetition_penalty, values * cfg.repetition_penalty)
    if cfg.greedy:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # shifted first: a tiny temperature gives -inf, never inf - inf (NaN)
        logits = (logits - logits.max()) / cfg.temperature
    if cfg.top_k > 0:
        kth = np.partition(logits, -min(cfg.top_k, logits.size))[-min(cfg.top_k, logits.size)]
        logits = np.where(logits < kth, -np.inf, logits)
    if cfg.top_p < 1.0:
        order = np.argsort(-logits, kind="stable")
        probs = _softmax(logits[order])
        drop = np.cumsum(probs) - probs >= cfg.top_p
        logits[order[drop]] = -np.inf
    probs = _softmax(logits)
    return int(rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
