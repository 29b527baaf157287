"""Invariances of the reference: KV-cached decoding equals a full forward pass; padding is invisible.

Tolerance: float32, 2-4 layers of width 64; the cached path and the full pass differ only in
the order of floating-point reductions in attention, so logits agree to ~1e-6. We allow 2e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import tiny_config
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX
from vlm_edge.model import GenerationConfig, VilaModel, generate
from vlm_edge.model.vila import IGNORE_INDEX

TOL = dict(rtol=2e-5, atol=2e-5)


def _model(**kwargs) -> VilaModel:
    torch.manual_seed(0)
    return VilaModel(tiny_config(**kwargs)).eval()


def _prompt(rng, images: int) -> list[int]:
    ids = rng.integers(3, 250, 6).tolist()
    for _ in range(images):
        ids += [IMAGE_TOKEN_INDEX] + rng.integers(3, 250, 4).tolist()
    return ids


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(llm, rng):
    model = _model(llm=llm)
    prompt = _prompt(rng, images=2)
    pixels = torch.from_numpy(rng.standard_normal((2, 3, 42, 42)).astype(np.float32))
    steps = 16
    result = generate(model, prompt, pixels, GenerationConfig(max_new_tokens=steps), return_logits=True)
    assert len(result.token_ids) == steps and result.finish_reason == "length"

    full = model([prompt + result.token_ids], pixels).logits[0]  # [prompt_len + steps, vocab]
    start = result.prompt_tokens - 1  # logits at the last prompt position predict generated token 0
    for step, cached in enumerate(result.logits):
        np.testing.assert_allclose(cached.numpy(), full[start + step].numpy(), **TOL, err_msg=f"step {step}")
    assert result.token_ids == full[start : start + steps].argmax(-1).tolist()


@torch.no_grad()
def test_left_padded_batch_equals_single_samples(rng):
    model = _model()
    prompts = [_prompt(rng, images=1), _prompt(rng, images=0) + rng.integers(3, 250, 9).tolist()]
    pixels = torch.from_numpy(rng.standard_normal((1, 3, 42, 42)).astype(np.float32))
    image_embeds = model.encode_images(pixels)
    batch = model.build_inputs(prompts, image_embeds, padding_side="left")
    logits = model.llm(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    singles = [model([prompts[0]], pixels).logits[0, -1], model([prompts[1]]).logits[0, -1]]
    for b in range(2):
        np.testing.assert_allclose(logits[b, -1].numpy(), singles[b].numpy(), **TOL)


@torch.no_grad()
def test_labels_ignore_image_and_padding_positions(rng):
    model = _model()
    prompts = [[5, IMAGE_TOKEN_INDEX, 6, 7], [8, 9]]
    labels = [[IGNORE_INDEX, IMAGE_TOKEN_INDEX, 6, 7], [8, 9]]
    embeds = model.encode_images(torch.from_numpy(rng.standard_normal((1, 3, 42, 42)).astype(np.float32)))
    batch = model.build_inputs(prompts, embeds, labels)
    tokens = model.config.num_image_tokens
    assert batch.inputs_embeds.shape[:2] == (2, 3 + tokens)
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * (1 + tokens) + [6, 7]
    assert batch.labels[1].tolist() == [8, 9] + [IGNORE_INDEX] * (1 + tokens)
    assert batch.attention_mask[1].tolist() == [1, 1] + [0] * (1 + tokens)
