"""VilaModel: vision tower -> projector -> LLM, assembled from transformers parts.

    pixel_values [N, 3, H, W]
      -> vision_tower(..., output_hidden_states=True).hidden_states[mm_vision_select_layer]
                                           [N, P, C]   (no post-layernorm; "patch" drops CLS)
      -> mm_projector                      [N, T, D]   (T = 196 for VILA1.5-3b)
    input_ids with IMAGE_TOKEN_INDEX (-200) at each <image>
      -> text embeddings, with image k's T embeddings spliced in at the k-th -200
                                           [B, L, D]
      -> llm(inputs_embeds=...)            logits [B, L, vocab]

Images are consumed in order across the batch: sample 0's images first, then sample 1's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from vlm_edge.common.errors import InputError
from vlm_edge.common.image import ImageProcessorConfig
from vlm_edge.common.tiling import TilePlan, s2_image_embeds
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX
from vlm_edge.common.vila_config import VilaConfig

from .architectures import LLM_ARCHITECTURES, VISION_ARCHITECTURES, build
from .projector import MultimodalProjector

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, images, padding)


@dataclass
class MultimodalInputs:
    """What the LLM consumes after image splicing; all [B, L(, D)]."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor  # 1 = real token, 0 = padding
    position_ids: torch.Tensor  # 0.. per sample, counted over real tokens only
    labels: torch.Tensor | None = None


class VilaModel(nn.Module):
    def __init__(self, config: VilaConfig, *, attn_implementation: str = "sdpa", init_weights: bool = True):
        super().__init__()
        config.validate()
        if config.is_downsample and config.downsample_token_order is None:
            raise ValueError("resolve the downsample token order first (VilaConfig.resolve_token_order)")
        self.config = config
        self.vision_tower = build(VISION_ARCHITECTURES[config.vision_architecture], config.vision_tower, attn_implementation=attn_implementation, init_weights=init_weights)
        self.mm_projector = MultimodalProjector(
            config.projector_type, config.mm_hidden_size, config.hidden_size, config.downsample_token_order
        )
        if init_weights:
            self.mm_projector.init_weights(float(config.llm.get("initializer_range", 0.02)))
        self.llm = build(
            LLM_ARCHITECTURES[config.llm_architecture], config.llm, attn_implementation=attn_implementation, init_weights=init_weights
        )

    @property
    def image_processor_config(self) -> ImageProcessorConfig:
        c = self.config
        return ImageProcessorConfig.from_preprocessor_config(c.preprocessor, c.image_aspect_ratio, min_tiles=c.min_tiles,
                                                             max_tiles=c.max_tiles, s2_scales=c.s2_scales if c.is_s2 else (),
                                                             s2_output_scale=c.s2_output_scale, s2=c.s2_pixels)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # ---- vision ----------------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> selected-layer features [N, P, C]."""
        out = self.vision_tower(pixel_values=pixel_values.to(self.device, self.dtype), output_hidden_states=True)
        features = out.hidden_states[self.config.select_layer]
        if self.config.select_feature == "patch":  # as VILA: drop the first token, whatever the tower
            features = features[:, 1:]
        return features

    def encode_images(self, pixel_values: torch.Tensor, plans: Sequence[TilePlan] | None = None
                      ) -> torch.Tensor | list[torch.Tensor]:
        """[N, 3, H, W] -> projected image embeddings [N, T, D]. With `plans` (one per image, from
        preprocess_tiled) the rows are tiles, and the result is one [tokens, D] tensor per image:
        dynamic: its tiles' T tokens one tile after the other (NVILA-Lite); dynamic_s2: the tiles'
        features merged across scales, projected per tower-sized block, tokens in row order over
        the merged grid (NVILA; common/tiling.py, shared with the runtime)."""
        if plans is None:
            if self.config.is_s2:
                raise InputError("a dynamic_s2 model needs the tile plans of its images (preprocess_tiled)")
            return self.mm_projector(self.vision_features(pixel_values))
        if sum(p.num_tiles for p in plans) != pixel_values.shape[0]:
            raise InputError(f"{pixel_values.shape[0]} tiles of pixels for images of "
                             f"{[p.num_tiles for p in plans]} tiles")
        if self.config.is_s2:
            features = self.vision_features(pixel_values).float().cpu().numpy()

            def project(blocks):
                return self.mm_projector(torch.from_numpy(blocks).to(self.device, self.dtype)).float().cpu().numpy()

            embeds = s2_image_embeds(features, list(plans), project, self.config.s2_output_scale,
                                     len(self.config.s2_scales))
            return [torch.from_numpy(e).to(self.device, self.dtype) for e in embeds]
        embeds = self.mm_projector(self.vision_features(pixel_values))
        return [part.reshape(-1, part.shape[-1]) for part in embeds.split([p.num_tiles for p in plans])]

    def encode_video(self, pixel_values: torch.Tensor, plans: Sequence[TilePlan] | None = None) -> list[torch.Tensor]:
        """[frames, 3, H, W] (whole frames) -> one [tokens, D] tensor per picture the video is in the
        prompt: each frame, or with the config's video pool sizes (NVILA's TSPVideoEncoder) each
        pooled frame: the mean over t consecutive frames and h x w blocks of the square token grid.
        `plans`: the frames' single-picture plans, which a dynamic_s2 model needs (encode_images)."""
        frames = (torch.stack(list(self.encode_images(pixel_values, plans))) if plans is not None
                  else self.mm_projector(self.vision_features(pixel_values)))  # [n, T, D]
        sizes = self.config.video_pool_sizes
        if not sizes:
            return list(frames)
        n, tokens, dim = frames.shape
        side = int(round(tokens ** 0.5))
        volume = frames.reshape(n, side, side, dim).permute(3, 0, 1, 2).unsqueeze(0).float()  # [1, D, n, side, side]
        out: list[torch.Tensor] = []
        for t, h, w in sizes:
            if n % t or side % h or side % w or side * side != tokens:
                raise InputError(f"{n} frames of {tokens} tokens cannot be pooled by [{t}, {h}, {w}]")
            pooled = torch.nn.functional.avg_pool3d(volume, (t, h, w))[0]  # [D, n/t, side/h, side/w]
            out += [p.reshape(dim, -1).t().to(frames.dtype) for p in pooled.unbind(1)]
        return out

    # ---- splicing --------------------------------------------------------------------------
    def build_inputs(
        self,
        input_ids: Sequence[Sequence[int]],
        image_embeds: torch.Tensor | Sequence[torch.Tensor] | None,
        labels: Sequence[Sequence[int]] | None = None,
        *,
        padding_side: str = "right",
    ) -> MultimodalInputs:
        """Splice image embeddings [N, T, D] into each sample's text embeddings and pad the batch.

        `labels` (same lengths as `input_ids`) get IGNORE_INDEX at image and padding positions.
        """
        num_images = sum(int(t == IMAGE_TOKEN_INDEX) for ids in input_ids for t in ids)
        have = 0 if image_embeds is None else len(image_embeds)
        if num_images != have:
            raise InputError(f"the prompt has {num_images} <image> placeholder(s) but {have} image(s) were given")
        embed = self.llm.get_input_embeddings()
        vocab = embed.num_embeddings
        samples, sample_labels = [], []
        next_image = 0
        for b, ids in enumerate(input_ids):
            ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=self.device)
            bad = ids_t[(ids_t != IMAGE_TOKEN_INDEX) & ((ids_t < 0) | (ids_t >= vocab))]
            if bad.numel():
                raise InputError(f"sample {b}: token id {int(bad[0])} is outside the vocabulary (0..{vocab - 1})")
            is_image = ids_t == IMAGE_TOKEN_INDEX
            text = embed(torch.where(is_image, 0, ids_t))  # [len, D]
            lab = None if labels is None else torch.as_tensor(list(labels[b]), dtype=torch.long, device=self.device)
            pieces, label_pieces, start = [], [], 0
            for pos in is_image.nonzero().flatten().tolist():
                image = image_embeds[next_image].to(text.dtype)  # type: ignore[index]
                next_image += 1
                pieces += [text[start:pos], image]
                if lab is not None:
                    label_pieces += [lab[start:pos], lab.new_full((image.shape[0],), IGNORE_INDEX)]
                start = pos + 1
            pieces.append(text[start:])
            samples.append(torch.cat(pieces))
            if lab is not None:
                label_pieces.append(lab[start:])
                sample_labels.append(torch.cat(label_pieces))
        return _pad(samples, sample_labels if labels is not None else None, padding_side)

    # ---- LLM -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Sequence[Sequence[int]],
        pixel_values: torch.Tensor | None = None,
        labels: Sequence[Sequence[int]] | None = None,
        *,
        loss_only: bool = False,
        **llm_kwargs,
    ):
        """Full forward pass; returns the LLM's output (logits, and loss when labels are given).

        `loss_only=True` (training) returns just the loss and the image embeddings it used, with the
        LM head applied only where a label follows: in SFT about one position in eight carries loss,
        and the head's matmul over the rest is wasted. Same value as transformers' causal-LM loss: cross-entropy of
        position t's logits against label t+1, summed over labelled positions and divided by
        `num_items_in_batch` (or averaged when it is not given).
        """
        image_embeds = self.encode_images(pixel_values) if pixel_values is not None and len(pixel_values) else None
        inputs = self.build_inputs(input_ids, image_embeds, labels)
        if loss_only:
            if inputs.labels is None:
                raise ValueError("loss_only needs labels")
            out = self._loss(inputs, llm_kwargs.pop("num_items_in_batch", None))
            out.image_embeds = image_embeds if isinstance(image_embeds, torch.Tensor) else None
            return out
        return self.llm(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            labels=inputs.labels,
            **llm_kwargs,
        )

    def _loss(self, inputs: MultimodalInputs, num_items_in_batch: torch.Tensor | float | None) -> "LossOutput":
        body, head = self.llm.get_decoder(), self.llm.get_output_embeddings()
        hidden = body(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                      position_ids=inputs.position_ids).last_hidden_state
        targets = inputs.labels[:, 1:]  # type: ignore[index]
        keep = targets != IGNORE_INDEX
        logits = head(hidden[:, :-1][keep]).float()
        if num_items_in_batch is None:
            return LossOutput(nn.functional.cross_entropy(logits, targets[keep]))
        return LossOutput(nn.functional.cross_entropy(logits, targets[keep], reduction="sum") / num_items_in_batch)


@dataclass
class LossOutput:
    loss: torch.Tensor
    image_embeds: torch.Tensor | None = None  # [N, T, D], the projector's output the loss was computed on


def _pad(samples: list[torch.Tensor], labels: list[torch.Tensor] | None, side: str) -> MultimodalInputs:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    batch, length, dim = len(samples), max(s.shape[0] for s in samples), samples[0].shape[1]
    embeds = samples[0].new_zeros((batch, length, dim))
    mask = torch.zeros((batch, length), dtype=torch.long, device=embeds.device)
    out_labels = None if labels is None else torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
    for b, sample in enumerate(samples):
        n = sample.shape[0]
        span = slice(length - n, length) if side == "left" else slice(0, n)
        embeds[b, span] = sample
        mask[b, span] = 1
        if out_labels is not None:
            out_labels[b, span] = labels[b]  # type: ignore[index]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return MultimodalInputs(embeds, mask, position_ids, out_labels)
