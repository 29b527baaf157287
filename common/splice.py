"""Text embeddings with image embeddings spliced in, in numpy (the runtime's half of VilaModel.build_inputs).

    input_ids  [L] with IMAGE_TOKEN_INDEX (-200) at each <image>
    table      [vocab, D]    the LLM's input embedding table
    images     [N, T, D]     projected image embeddings, in prompt order
  -> embeds    [L - N + N * T, D]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError
from .tokenizer import IMAGE_TOKEN_INDEX


def splice_embeddings(input_ids: Sequence[int], table: np.ndarray,
                      images: np.ndarray | Sequence[np.ndarray] | None) -> np.ndarray:
    ids = np.asarray(list(input_ids), dtype=np.int64)
    is_image = ids == IMAGE_TOKEN_INDEX
    have = 0 if images is None else len(images)
    if int(is_image.sum()) != have:
        raise InputError(f"the prompt has {int(is_image.sum())} <image> placeholder(s) but {have} image(s) were given")
    text = ids[~is_image]
    if text.size and (text.min() < 0 or text.max() >= table.shape[0]):
        bad = text[(text < 0) | (text >= table.shape[0])][0]
        raise InputError(f"token id {int(bad)} is outside the vocabulary (0..{table.shape[0] - 1})")
    pieces, start, k = [], 0, 0
    for pos in np.flatnonzero(is_image):
        pieces += [table[ids[start:pos]], images[k]]  # type: ignore[index]
        k += 1
        start = pos + 1
    pieces.append(table[ids[start:]])
    return np.concatenate(pieces, axis=0).astype(np.float32, copy=False)
