"""Chat templates render exactly as VILA's conversation styles; prompts tokenize as VILA does."""

from __future__ import annotations

import pytest

from vlm_edge.common.errors import InputError, UnsupportedFeatureError
from vlm_edge.common.templates import TEMPLATES, get_template, render, render_segments
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX, default_chat_template
from vlm_edge.model.presets import byte_level_tokenizer

TWO_TURNS = [
    {"role": "user", "content": "<image>\nWhat is it?"},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "Colour? <image>"},
]

EXPECTED = {
    "vicuna_v1": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>"
        "USER: Colour? <image> ASSISTANT:"
    ),
    "llama_3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
        "assistant. You are able to understand the visual content that the user provides, and assist the user with "
        "a variety of tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n"
        "What is it?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nColour? <image><|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "hermes-2": (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|>"
        "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nColour? <image><|im_end|><|im_start|>assistant\n"
    ),
    "qwen2": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColour? <image><|im_end|>\n<|im_start|>assistant\n"
    ),
    "plain": "USER: <image>\nWhat is it?\nASSISTANT: A cat.</s>USER: Colour? <image>\nASSISTANT:",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_render_matches_vila_format(name):
    assert render(get_template(name), TWO_TURNS) == EXPECTED[name]


def test_system_message_replaces_the_default():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(get_template("vicuna_v1"), messages) == "Be brief. USER: Hi ASSISTANT:"
    assert render(get_template("plain"), messages) == "Be brief.\nUSER: Hi\nASSISTANT:"


def test_training_segments_mark_answers_and_the_final_separator():
    convo = TWO_TURNS[:2]
    vicuna = render_segments(get_template("vicuna_v1"), convo, add_generation_prompt=False)
    assert [text for text, answer in vicuna if answer] == [" A cat.</s>"]
    llama3 = render_segments(get_template("llama_3"), convo, add_generation_prompt=False)
    assert [text for text, answer in llama3 if answer] == ["A cat.<|end_of_text|>"]  # VILA's sep2 on the last turn


@pytest.mark.parametrize(
    "messages,phrase",
    [([], "no user message"), ([{"role": "assistant", "content": "x"}], "expected a 'user' turn"),
     ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
     ([{"role": "user", "content": ["parts"]}], "must be a string"),
     (TWO_TURNS[:2], "must end with a user message")],
)
def test_bad_conversations_fail_clearly(messages, phrase):
    with pytest.raises(InputError, match=phrase):
        render(get_template("plain"), messages)


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(UnsupportedFeatureError, match="hermes-2, llama_3, plain, qwen2, vicuna_v1"):
        get_template("alpaca")
    assert get_template("v1").name == "vicuna_v1" and get_template("chatml").name == "hermes-2"


def test_image_placeholders_become_image_token_index():
    tok = byte_level_tokenizer()
    ids = tok.tokenize_prompt("ab<image>c<image><image>")
    a, b, c = (tok.encode(ch)[0] for ch in "abc")
    assert ids == [tok.bos_id, a, b, IMAGE_TOKEN_INDEX, c, IMAGE_TOKEN_INDEX, IMAGE_TOKEN_INDEX]
    assert tok.decode(ids) == "abc"


def _vila_tokenizer_image_token(prompt: str, hf_tokenizer) -> list[int]:
    """VILA's algorithm, restated: encode each <image>-separated chunk with special tokens,
    keep the first chunk's BOS once, drop it from the other chunks, join with -200."""
    chunks = [hf_tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == hf_tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def test_sentencepiece_prompt_tokenization_matches_vila(release, release_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(release_dir / "llm"), local_files_only=True)
    prompt = render(release.template, TWO_TURNS)
    ours = release.tokenizer.tokenize_prompt(prompt)
    assert ours == _vila_tokenizer_image_token(prompt, hf)
    assert ours[0] == 1 and ours.count(1) == 1 and ours.count(IMAGE_TOKEN_INDEX) == 2
    assert 2 in ours  # "</s>" in the text is the EOS token, as with VILA's tokenizer


def test_stop_tokens_and_default_template_from_vocabulary():
    tok = byte_level_tokenizer()
    assert tok.stop_token_ids(get_template("plain")) == [tok.eos_id]
    assert default_chat_template(tok) == "vicuna_v1"
    tok.tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    assert default_chat_template(tok) == "hermes-2"
    assert default_chat_template(tok, "Qwen2ForCausalLM") == "qwen2"  # NVILA's LLM
    assert tok.stop_token_ids(get_template("hermes-2")) == sorted([tok.eos_id, tok.token_to_id("<|im_end|>")])
    tok.tokenizer.add_special_tokens(["<|eot_id|>"])
    assert default_chat_template(tok) == "llama_3"


def test_qwen2_template_renders_qwen2s_chatml():
    """NVILA's Qwen2 LLMs: ChatML turns each followed by a newline, the default system first."""
    from vlm_edge.common.templates import render

    text = render(get_template("qwen2"), [{"role": "user", "content": "<image>\nWhat colour?"}])
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<image>\nWhat colour?<|im_end|>\n<|im_start|>assistant\n")
