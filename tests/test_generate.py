"""Reference generation: greedy, sampling, stop tokens, limits and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_edge.common.errors import InputError
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX
from vlm_edge.model import GenerationConfig, chat, generate
from vlm_edge.model.generate import select_token


@pytest.fixture
def prompt_and_pixels(rng):
    pixels = rng.standard_normal((1, 3, 42, 42)).astype(np.float32)
    return [1, 40, 41, IMAGE_TOKEN_INDEX, 42, 43], pixels


def test_greedy_is_deterministic_and_respects_max_new_tokens(tiny, prompt_and_pixels):
    prompt, pixels = prompt_and_pixels
    first = generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=10))
    again = generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=10))
    assert first.token_ids == again.token_ids and len(first.token_ids) == 10 and first.finish_reason == "length"
    assert first.prompt_tokens == 5 + tiny.config.num_image_tokens
    assert generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=0)).token_ids == []


def test_stop_token_ends_generation_and_is_not_returned(tiny, prompt_and_pixels):
    prompt, pixels = prompt_and_pixels
    greedy = generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=6)).token_ids
    stopped = generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=6, stop_token_ids=[greedy[2]]))
    assert stopped.finish_reason == "stop" and stopped.stop_token_id == greedy[2]
    assert stopped.token_ids == greedy[: greedy.index(greedy[2])]


def test_seeded_sampling_is_reproducible(tiny, prompt_and_pixels):
    prompt, pixels = prompt_and_pixels
    cfg = dict(max_new_tokens=12, do_sample=True, temperature=1.5)
    a = generate(tiny.model, prompt, pixels, GenerationConfig(seed=7, **cfg)).token_ids
    b = generate(tiny.model, prompt, pixels, GenerationConfig(seed=7, **cfg)).token_ids
    c = generate(tiny.model, prompt, pixels, GenerationConfig(seed=8, **cfg)).token_ids
    assert a == b and a != c  # 12 draws from ~260 near-uniform tokens: a collision is ~impossible
    top1 = generate(tiny.model, prompt, pixels, GenerationConfig(seed=1, top_k=1, **cfg)).token_ids
    assert top1 == generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=12)).token_ids


def test_select_token_rules():
    logits = torch.tensor([2.0, 1.9, -1.0, 0.5])
    greedy = GenerationConfig()
    assert select_token(logits, [], greedy, None) == 0
    # repetition penalty divides the positive logit of a seen token: 2.0 / 2 < 1.9
    assert select_token(logits, [0], GenerationConfig(repetition_penalty=2.0), None) == 1
    # top_p small enough keeps only the most likely token
    sampler = GenerationConfig(do_sample=True, top_p=0.05)
    assert {select_token(logits, [], sampler, torch.Generator().manual_seed(s)) for s in range(20)} == {0}
    # top_k=2 never picks outside the two largest
    sampler = GenerationConfig(do_sample=True, top_k=2, temperature=5.0)
    assert {select_token(logits, [], sampler, torch.Generator().manual_seed(s)) for s in range(50)} <= {0, 1}


def test_chat_answers_a_question_about_an_image(tiny, rng):
    image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    text = chat(tiny, [{"role": "user", "content": "<image>\nWhat is it?"}], [image], GenerationConfig(max_new_tokens=5))
    assert isinstance(text, str)


@pytest.mark.parametrize(
    "config,phrase",
    [(GenerationConfig(max_new_tokens=-1), "max_new_tokens"), (GenerationConfig(do_sample=True, temperature=0), "temperature"),
     (GenerationConfig(top_p=0), "top_p")],
)
def test_invalid_generation_settings(tiny, config, phrase):
    with pytest.raises(InputError, match=phrase):
        generate(tiny.model, [1, 2], None, config)


def test_image_count_mismatch_and_context_overflow(tiny, prompt_and_pixels):
    prompt, pixels = prompt_and_pixels
    with pytest.raises(InputError, match="1 <image> placeholder"):
        generate(tiny.model, prompt, None)
    with pytest.raises(InputError, match="exceeds the model's context of 256"):
        generate(tiny.model, prompt, pixels, GenerationConfig(max_new_tokens=300))
    with pytest.raises(InputError, match="outside the vocabulary"):
        generate(tiny.model, [1, 99999], None)
