"""Reference generation: the numerical ground truth that export and the runtime are compared with.

A plain loop over the LLM with a KV cache, written out so nothing hides in library defaults:

    prefill:  image embeddings spliced into the prompt -> llm(inputs_embeds, cache) -> last logits
    decode:   pick a token (greedy, or sampled), stop on a stop token or max_new_tokens,
              embed it -> llm(one token, cache) -> logits

Token selection, in order: repetition penalty (over prompt and generated ids; CTRL/transformers
rule: divide positive logits, multiply negative ones), then greedy argmax, or temperature ->
top-k -> top-p (nucleus) -> sample with a seeded torch.Generator.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from vlm_edge.common.errors import InputError
from vlm_edge.common.image import ImageInput, preprocess_tiled, whole_pictures
from vlm_edge.common.templates import Message, render
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX

from .checkpoint import Checkpoint
from .vila import VilaModel


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    seed: int | None = None
    stop_token_ids: Sequence[int] = ()

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise InputError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise InputError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated ids, without the stop token
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int  # sequence length after image splicing
    stop_token_id: int | None = None
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [vocab], when asked for


def select_token(logits: torch.Tensor, history: Sequence[int], cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """Pick the next token from last-position logits [vocab] (float32)."""
    logits = logits.float().clone()
    if cfg.repetition_penalty != 1.0 and len(history):
        seen = torch.as_tensor(sorted(set(history)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / cfg.repetition_penalty, values * cfg.repetition_penalty)
    if not cfg.do_sample:
        return int(torch.argmax(logits))
    logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, -1) >= cfg.top_p  # keep the smallest set reaching top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def cache_keyword(llm: torch.nn.Module) -> str:
    """The LLM forward's name for the KV cache: `cache` from transformers 5.24, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(type(llm).forward).parameters else "past_key_values"


@torch.no_grad()
def generate(
    model: VilaModel,
    input_ids: Sequence[int],
    pixel_values: torch.Tensor | np.ndarray | None = None,
    config: GenerationConfig | None = None,
    *,
    return_logits: bool = False,
    plans: Sequence | None = None,
    video: bool = False,
) -> GenerationResult:
    """Generate from one prompt (token ids with IMAGE_TOKEN_INDEX at each image) and its images
    (`pixel_values` from preprocess_images; for a tiling model from preprocess_tiled, with its tile plans;
    `video`: the pixels are a video's frames, one picture each or per pooled frame: encode_video)."""
    cfg = config or GenerationConfig()
    cfg.validate()
    if isinstance(pixel_values, np.ndarray):
        pixel_values = torch.from_numpy(pixel_values)
    if video and pixel_values is not None and len(pixel_values):  # whole frames; pooled where the config asks
        image_embeds = model.encode_video(pixel_values, plans)
    else:
        image_embeds = (model.encode_images(pixel_values, plans) if pixel_values is not None and len(pixel_values)
                        else None)
    inputs = model.build_inputs([list(input_ids)], image_embeds)
    prompt_len = inputs.inputs_embeds.shape[1]
    max_positions = int(model.config.llm.get("max_position_embeddings", 1 << 30))
    if prompt_len + cfg.max_new_tokens > max_positions:
        raise InputError(
            f"prompt ({prompt_len} tokens with images) + max_new_tokens ({cfg.max_new_tokens}) exceeds the "
            f"model's context of {max_positions} tokens; shorten the prompt or lower max_new_tokens"
        )
    llm = model.llm
    embed = llm.get_input_embeddings()
    cache = DynamicCache()
    cache_kw = cache_keyword(llm)
    out = llm(inputs_embeds=inputs.inputs_embeds, **{cache_kw: cache}, use_cache=True, logits_to_keep=1)
    generator = torch.Generator().manual_seed(cfg.seed) if cfg.do_sample and cfg.seed is not None else None
    history = [t for t in input_ids if t != IMAGE_TOKEN_INDEX]
    stops = set(int(t) for t in cfg.stop_token_ids)
    result = GenerationResult([], "length", prompt_len)
    for step in range(cfg.max_new_tokens):
        logits = out.logits[0, -1].float()
        if return_logits:
            result.logits.append(logits.clone())
        token = select_token(logits, history, cfg, generator)
        if token in stops:
            result.finish_reason, result.stop_token_id = "stop", token
            break
        result.token_ids.append(token)
        history.append(token)
        if step + 1 == cfg.max_new_tokens:
            break
        position = torch.tensor([[prompt_len + step]], device=model.device)
        out = llm(
            inputs_embeds=embed(torch.tensor([[token]], device=model.device)),
            **{cache_kw: cache},
            position_ids=position,
            use_cache=True,
        )
    return result


def chat(
    checkpoint: Checkpoint,
    messages: Sequence[Message],
    images: Sequence[ImageInput] = (),
    config: GenerationConfig | None = None,
    video: str | None = None,
) -> str:
    """Render `messages` with the checkpoint's template, generate, and decode the answer. `video`: a
    clip file in place of images, taken as the runtime takes it (common/video.py): num_video_frames
    frames seen whole, pooled where the config asks."""
    from vlm_edge.common.video import pooled_frames, read_frames, with_video

    cfg = config or GenerationConfig()
    if not cfg.stop_token_ids:
        cfg = dataclasses.replace(cfg, stop_token_ids=checkpoint.tokenizer.stop_token_ids(checkpoint.template))
    pre = checkpoint.model.image_processor_config
    if video is not None:
        if images:
            raise InputError("give images or a video, not both")
        images = read_frames(video, checkpoint.config.num_video_frames)
        messages = with_video(list(messages), pooled_frames(len(images), checkpoint.config.video_pool_sizes))
        pre = whole_pictures(pre)
    prompt = render(checkpoint.template, messages)
    input_ids = checkpoint.tokenizer.tokenize_prompt(prompt)
    pixel_values, plans = preprocess_tiled(list(images), pre)
    result = generate(checkpoint.model, input_ids, pixel_values, cfg, plans=plans, video=video is not None)
    return checkpoint.tokenizer.decode(result.token_ids)
