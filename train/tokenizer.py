"""Train a small byte-level BPE tokenizer on the synthetic corpus (for models trained from scratch).

Same shape as `vlm_edge.model.presets.byte_level_tokenizer` (specials <unk>=0 <s>=1 </s>=2
<pad>=3, BOS added by the post-processor), plus merges learnt from text the model will see, plus
WHOLE_WORDS as single tokens. BPE never merges across a space, so a cell name ("top left") is two
tokens; whole cell names (`WHOLE_CELLS`) made a position answer one look-up instead of two, and
were tried and not kept: one run of three learnt position questions from them, two never did
(docs/training.md, "Seeing first").
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vlm_edge.common.tokenizer import IMAGE_TOKEN, TextTokenizer

from .scenes import CELLS

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
WHOLE_CELLS = tuple(f" {cell}" for cell in CELLS)  # after a space, as in answers and captions
WHOLE_WORDS: tuple[str, ...] = ()  # multi-word strings kept as one token each (WHOLE_CELLS: tried, not kept)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> TextTokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((t.replace(IMAGE_TOKEN, "") for t in texts), trainer=trainer)
    if WHOLE_WORDS:
        tokenizer.add_tokens([AddedToken(word, normalized=False) for word in WHOLE_WORDS])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}
    return TextTokenizer(tokenizer, config)
