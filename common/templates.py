"""Chat templates as data, and the one renderer they share.

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}; images
are `<image>` placeholders inside the content, one per image, anywhere in the text.

Rendering, for a template T:

    T.system_format.format(system)                        (skipped if empty and T.omit_empty_system)
    for each turn:
        user:       T.user_prefix + content + T.user_suffix
        assistant:  T.assistant_prefix + T.answer_prefix + content + T.assistant_suffix
    the last filled turn ends with T.final_suffix instead, where the template has one
    + T.assistant_prefix                                  (the generation prompt, if asked)

This reproduces VILA's separator styles: vicuna_v1 is style TWO (sep " ", sep2 "</s>"),
llama_3 is LLAMA_3 (sep <|eot_id|>, sep2 <|end_of_text|> after the last message), hermes-2 is
MPT (ChatML without newlines between turns). `plain` is ours, for tiny models: no system
prompt, short role tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import InputError, UnsupportedFeatureError


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system_format: str  # contains "{system}"
    default_system: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str  # also the generation prompt
    answer_prefix: str  # between the assistant prefix and the answer text
    assistant_suffix: str
    final_suffix: str | None = None  # replaces the suffix of the last filled turn
    omit_empty_system: bool = False
    stop_strings: tuple[str, ...] = ()  # generation stops when one of these is produced


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="vicuna_v1",  # VILA1.5-3B, VILA1.5-13B
            system_format="{system} ",
            default_system=(
                "A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions."
            ),
            user_prefix="USER: ",
            user_suffix=" ",
            assistant_prefix="ASSISTANT:",
            answer_prefix=" ",
            assistant_suffix="</s>",
            stop_strings=("</s>",),
        ),
        ChatTemplate(
            name="llama_3",  # Llama-3-VILA1.5-8B
            system_format="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            default_system=(
                "You are a helpful language and vision assistant. You are able to understand the visual "
                "content that the user provides, and assist the user with a variety of tasks using natural "
                "language."
            ),
            user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
            user_suffix="<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            answer_prefix="",
            assistant_suffix="<|eot_id|>",
            final_suffix="<|end_of_text|>",
            stop_strings=("<|eot_id|>", "<|end_of_text|>"),
        ),
        ChatTemplate(
            name="hermes-2",  # VILA1.5-40B (ChatML)
            system_format="<|im_start|>system\n{system}<|im_end|>",
            default_system="Answer the questions.",
            user_prefix="<|im_start|>user\n",
            user_suffix="<|im_end|>",
            assistant_prefix="<|im_start|>assistant\n",
            answer_prefix="",
            assistant_suffix="<|im_end|>",
            stop_strings=("<|im_end|>",),
        ),
        ChatTemplate(
            name="qwen2",  # NVILA, NVILA-Lite (Qwen2 LLMs): ChatML with a newline after every turn
            system_format="<|im_start|>system\n{system}<|im_end|>\n",
            default_system="You are a helpful assistant.",
            user_prefix="<|im_start|>user\n",
            user_suffix="<|im_end|>\n",
            assistant_prefix="<|im_start|>assistant\n",
            answer_prefix="",
            assistant_suffix="<|im_end|>\n",
            stop_strings=("<|im_end|>",),
        ),
        ChatTemplate(
            name="plain",  # tiny models trained by vlm_edge.train
            system_format="{system}\n",
            default_system="",
            user_prefix="USER: ",
            user_suffix="\n",
            assistant_prefix="ASSISTANT:",
            answer_prefix=" ",
            assistant_suffix="</s>",
            omit_empty_system=True,
            stop_strings=("</s>",),
        ),
    )
}
ALIASES = {"v1": "vicuna_v1", "chatml": "hermes-2", "llama3": "llama_3"}


def get_template(name: str) -> ChatTemplate:
    """Template by name (or alias); an unknown name lists the known ones."""
    key = ALIASES.get(name, name)
    if key not in TEMPLATES:
        raise UnsupportedFeatureError(
            f"chat template {name!r} is unknown; choose one of {', '.join(sorted(TEMPLATES))}"
        )
    return TEMPLATES[key]


Message = Mapping[str, str]


def render_segments(
    template: ChatTemplate, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> list[tuple[str, bool]]:
    """Render to (text, is_answer) pieces; is_answer marks what the model must produce after the
    generation prompt: answer prefix, answer and end marker.

    Training puts the loss on the is_answer pieces; inference joins them (see `render`).
    """
    messages = list(messages)
    system = template.default_system
    if messages and messages[0].get("role") == "system":
        system = str(messages[0].get("content", ""))
        messages = messages[1:]
    _check_turns(messages, add_generation_prompt)

    pieces: list[tuple[str, bool]] = []
    if system or not template.omit_empty_system:
        pieces.append((template.system_format.format(system=system), False))
    for i, message in enumerate(messages):
        last = i == len(messages) - 1 and not add_generation_prompt
        content = str(message["content"])
        if message["role"] == "user":
            suffix = template.final_suffix if (last and template.final_suffix is not None) else template.user_suffix
            pieces.append((template.user_prefix + content + suffix, False))
        else:
            suffix = template.final_suffix if (last and template.final_suffix is not None) else template.assistant_suffix
            pieces.append((template.assistant_prefix, False))  # = the generation prompt
            pieces.append((template.answer_prefix + content + suffix, True))  # what the model must produce
    if add_generation_prompt:
        pieces.append((template.assistant_prefix, False))
    return pieces


def render(template: ChatTemplate, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`; ends with the generation prompt unless told otherwise."""
    return "".join(text for text, _ in render_segments(template, messages, add_generation_prompt=add_generation_prompt))


def _check_turns(messages: Sequence[Message], add_generation_prompt: bool) -> None:
    if not messages:
        raise InputError("the conversation has no user message")
    for i, message in enumerate(messages):
        role = message.get("role")
        expected = "user" if i % 2 == 0 else "assistant"
        if role == "system":
            raise InputError(f"message {i}: a system message may only come first")
        if role != expected:
            raise InputError(
                f"message {i}: expected a {expected!r} turn, got {role!r}; turns alternate user/assistant, "
                "starting with user"
            )
        if not isinstance(message.get("content"), str):
            raise InputError(f"message {i}: 'content' must be a string (images as <image> placeholders)")
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise InputError("the conversation must end with a user message to generate a reply")
