"""Samples -> token ids, labels and pixel values.

Conversations are rendered with the chat template into (text, is_answer) pieces; prompt pieces
are tokenized exactly as at inference (`tokenize_prompt`: BOS once, <image> -> -200) and carry
no loss; answer pieces (answer prefix + answer + end marker, e.g. " red</s>") carry the loss.
Documents (captions, interleaved text) carry loss on every text token and the closing EOS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vlm_edge.common.image import ImageProcessorConfig, preprocess_images
from vlm_edge.common.templates import ChatTemplate, render_segments
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX, TextTokenizer
from vlm_edge.model.vila import IGNORE_INDEX

from .datasets import Sample
from . import lookup as lookup_loss
from .lookup import LOOKUP_LAYER, NAMING_LAYER, Lookup
from .picture_stage import FIELDS, IGNORE, picture_targets


@dataclass
class Batch:
    input_ids: list[list[int]]
    labels: list[list[int]]
    pixel_values: np.ndarray  # float32 [N_images, 3, H, W], images in sample order
    # int64 [N_images, tokens, fields]: what each image token's cell holds (train/picture_stage.py),
    # IGNORE for images without a known scene (users' data); None when the probes are off
    picture_targets: np.ndarray | None = None
    # per sample: the look-ups of train/lookup.py (layer, query position, target positions); None when off
    lookups: list[list[Lookup]] | None = None

    @property
    def num_targets(self) -> int:
        """Tokens that carry loss (labels are predicted from the position before them)."""
        return sum(sum(1 for t in lab[1:] if t != IGNORE_INDEX) for lab in self.labels)


@functools.lru_cache(maxsize=1 << 14)
def _tokens(tokenizer: TextTokenizer, text: str, prompt: bool, add_special_tokens: bool) -> tuple[int, ...]:
    """tokenizer.tokenize_prompt (prompt) or tokenizer.encode of `text`, remembered: the synthetic
    conversations repeat a few hundred pieces of text, and tokenizing them was a tenth of a step's
    Python time."""
    if prompt:
        return tuple(tokenizer.tokenize_prompt(text, add_special_tokens=add_special_tokens))
    return tuple(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def encode(sample: Sample, tokenizer: TextTokenizer, template: ChatTemplate) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one sample; labels are IGNORE_INDEX where there is no loss."""
    ids, labels, _ = encode_with_lookups(sample, tokenizer, template)
    return ids, labels


def encode_with_lookups(sample: Sample, tokenizer: TextTokenizer, template: ChatTemplate, cells: list[int] | None = None
                        ) -> tuple[list[int], list[int], list[Lookup]]:
    """(input_ids, labels, lookups): with `cells` (the scene cell of each image token), the look-ups
    of train/lookup.py: each position that predicts the answer prefix and answer of a turn grounded
    on one object (Sample.grounding) looks at that object's image tokens; each image token of a
    picture named in the prompt (Sample.image_names) looks at the word that names it."""
    if sample.text is not None:
        ids = tokenizer.tokenize_prompt(sample.text) + [tokenizer.eos_id]
        labels = [IGNORE_INDEX if t == IMAGE_TOKEN_INDEX else t for t in ids]
        if tokenizer.bos_id is not None and ids[0] == tokenizer.bos_id:
            labels[0] = IGNORE_INDEX
        return ids, labels, _document_lookups(sample, ids, tokenizer, cells) + _naming_lookups(sample, ids, tokenizer, cells)
    ids, labels, lookups = [], [], []
    answers = iter(sample.grounding or [])
    for k, (text, is_answer) in enumerate(render_segments(template, sample.messages or [], add_generation_prompt=False)):
        if is_answer:
            piece = list(_tokens(tokenizer, text, False, False))
            labels += piece
            grounding = next(answers, ())
            if cells is not None and grounding:
                spoken = len(_tokens(tokenizer, text[: len(text) - len(_suffix(template, text))], False, False))
                tokens = tuple((image, cells.index(cell)) for image, cell in grounding)
                lookups += [(layer, len(ids) - 1 + j, tokens) for j in range(min(spoken, len(piece)))
                            for layer in (LOOKUP_LAYER, *lookup_loss.EXTRA_LOOKUP_LAYERS)]
            elif cells is not None and lookup_loss.COPY_LOOKUPS:
                lookups += _copy_lookups(ids, piece[:len(_tokens(tokenizer, text[: len(text) - len(_suffix(template, text))],
                                                               False, False))])
        else:
            piece = list(_tokens(tokenizer, text, True, k == 0))
            labels += [IGNORE_INDEX] * len(piece)
        ids += piece
    return ids, labels, lookups + _naming_lookups(sample, ids, tokenizer, cells)


def _copy_lookups(ids: list[int], spoken: list[int]) -> list[Lookup]:
    """An answer that repeats words of the prompt ("Repeat after me: red cat" -> "red cat"): each
    position that predicts one of its tokens looks at that token in the prompt (its last mention)."""
    starts = [i for i in range(len(ids) - len(spoken) + 1) if spoken and ids[i:i + len(spoken)] == spoken]
    if not starts:
        return []
    return [(LOOKUP_LAYER, len(ids) - 1 + j, (starts[-1] + j,)) for j in range(len(spoken))]


def _naming_lookups(sample: Sample, ids: list[int], tokenizer: TextTokenizer, cells: list[int] | None
                    ) -> list[Lookup]:
    """Each image token of a picture named before it (Sample.image_names: "The second image:
    <image>") looks at the last mention of its name before it."""
    if cells is None or not sample.image_names:
        return []
    lookups: list[Lookup] = []
    placeholders = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    for k, (name, at) in enumerate(zip(sample.image_names, placeholders)):
        word = tokenizer.encode(f" {name}")  # the pre-tokenizer splits at spaces: the same tokens in context
        starts = [i for i in range(at - len(word) + 1) if ids[i:i + len(word)] == word]
        if starts:  # the last mention before the picture
            span = tuple(range(starts[-1], starts[-1] + len(word)))
            lookups += [(NAMING_LAYER, (k, t), span) for t in range(len(cells))]
    return lookups


def _document_lookups(sample: Sample, ids: list[int], tokenizer: TextTokenizer, cells: list[int] | None
                      ) -> list[Lookup]:
    """The look-ups of a document's grounded text (Sample.text_grounding): each position that
    predicts a token of a span looks at the span's object. A span is found by tokenizing the text
    before its ends (the pre-tokenizer splits at spaces and punctuation, so a prefix tokenizes as in
    context; a span where it does not is left out)."""
    if cells is None or not sample.text_grounding or sample.text is None:
        return []
    lookups: list[Lookup] = []
    for start, end, grounding in sample.text_grounding:
        first = _tokens(tokenizer, sample.text[:start], True, True)
        last = _tokens(tokenizer, sample.text[:end], True, True)
        if tuple(ids[:len(last)]) != last or last[:len(first)] != first:
            continue
        tokens = tuple((image, cells.index(cell)) for image, cell in grounding)
        lookups += [(LOOKUP_LAYER, p - 1, tokens) for p in range(len(first), len(last))]
    return lookups


def _suffix(template: ChatTemplate, answer: str) -> str:
    """The end marker an answer piece ends with (the turn's or the conversation's)."""
    for suffix in (template.final_suffix, template.assistant_suffix):
        if suffix and answer.endswith(suffix):
            return suffix
    return ""


def collate(samples: list[Sample], tokenizer: TextTokenizer, template: ChatTemplate, image_cfg: ImageProcessorConfig,
            cells: list[int] | None = None, *, targets: bool = True, lookups: bool = False) -> Batch:
    """`cells` (the scene cell of each image token, picture_stage.token_cells) adds the probes' targets
    (unless `targets` is False) and with `lookups` the look-up loss's queries."""
    encoded = [encode_with_lookups(s, tokenizer, template, cells if lookups else None) for s in samples]
    images = [image for s in samples for image in s.images]
    picture = None
    if cells is not None and targets:
        unknown = np.full((len(cells), len(FIELDS)), IGNORE, dtype=np.int64)
        rows = [picture_targets(s.scenes[k], cells) if s.scenes else unknown
                for s in samples for k in range(len(s.images))]
        picture = np.stack(rows) if rows else np.empty((0, len(cells), len(FIELDS)), dtype=np.int64)
    return Batch([e[0] for e in encoded], [e[1] for e in encoded], preprocess_images(images, image_cfg), picture,
                 [e[2] for e in encoded] if lookups else None)


def by_length(batch: Batch, image_tokens: int, max_tokens: int = 768) -> list[Batch]:
    """Split `batch` into micro-batches of samples of similar length, each at most `max_tokens`
    padded positions (one sample always fits): the loss over all of them is the loss of the
    whole batch, with far less padding.

    A batch of SFT conversations holds 1-4 turns, 20-90 tokens each: padded to its longest sample,
    half of the positions computed were padding. Sorted and cut into runs, about a tenth are.
    """
    images = [sum(1 for t in ids if t == IMAGE_TOKEN_INDEX) for ids in batch.input_ids]
    lengths = [len(ids) + n * (image_tokens - 1) for ids, n in zip(batch.input_ids, images)]  # positions
    first_image = np.cumsum([0] + images)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = [[]]
    for i in order:  # ascending length: the sample added is the group's longest
        if groups[-1] and (len(groups[-1]) + 1) * lengths[i] > max_tokens:
            groups.append([])
        groups[-1].append(i)
    def images_of(group: list[int], per_image: np.ndarray | None) -> np.ndarray | None:
        if per_image is None or not len(batch.pixel_values):
            return per_image
        return np.concatenate([per_image[first_image[i]:first_image[i + 1]] for i in group])

    return [Batch([batch.input_ids[i] for i in g], [batch.labels[i] for i in g],
                  images_of(g, batch.pixel_values), images_of(g, batch.picture_targets),  # type: ignore[arg-type]
                  None if batch.lookups is None else [batch.lookups[i] for i in g])
            for g in groups]
