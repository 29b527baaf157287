"""Calibration data for AWQ: where it comes from, and how it becomes LLM input embeddings.

Sources, in order of precedence:

    --calib FILE.txt     plain text
    --calib FILE.jsonl   one {"text": ...} object per line
    --calib FILE.json    LLaVA conversations with images: images go through the vision tower and
                         projector, so image-token activations are part of the statistics
    (default)            the checkpoint's own calibration/ set (written by vlm-train: held-out
                         synthetic conversations with their images)
    (default, online)    pile-val through the `datasets` library, as the published recipe; offline
                         this is an error that says to pass --calib

Every sample becomes embeddings (text tokens, with image features spliced in at <image>); all
samples are concatenated and cut into blocks of `seq_len` positions, at most `samples` blocks,
as the published recipe does with text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlm_edge.common.conversations import read_conversations
from vlm_edge.common.errors import InputError
from vlm_edge.common.fsutil import loads_json
from vlm_edge.common.image import load_image, preprocess_tiled
from vlm_edge.common.log import get_logger
from vlm_edge.common.templates import render
from vlm_edge.model.checkpoint import Checkpoint

log = get_logger(__name__)
CALIBRATION_DIR = "calibration"  # inside a checkpoint written by vlm-train
CALIBRATION_FILE = "conversations.json"


@dataclass
class CalibrationSet:
    texts: list[str] = field(default_factory=list)  # text-only samples
    conversations: list = field(default_factory=list)  # vlm_edge.common.conversations.Conversation
    source: str = ""

    def __len__(self) -> int:
        return len(self.texts) + len(self.conversations)

    def text_only(self) -> "CalibrationSet":
        """The same set without images: conversations become their text with <image> removed."""
        texts = list(self.texts)
        for c in self.conversations:
            texts.append("\n".join(m["content"].replace("<image>\n", "").replace("<image>", "") for m in c.messages))
        return CalibrationSet(texts=texts, source=f"{self.source} (text only)")


def load_calibration(source: str | Path | None, checkpoint_dir: str | Path) -> CalibrationSet:
    """The calibration set named by `source`, or the default for the checkpoint in `checkpoint_dir`."""
    if source is not None:
        return _from_file(Path(source))
    own = Path(checkpoint_dir) / CALIBRATION_DIR / CALIBRATION_FILE
    if own.is_file():
        return _from_file(own)
    return _public_text()


def _from_file(path: Path) -> CalibrationSet:
    if not path.is_file():
        raise InputError(f"calibration file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".json":
        conversations = read_conversations(path)
        if not conversations:
            raise InputError(f"calibration file {path} holds no records")
        return CalibrationSet(conversations=conversations, source=str(path))
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        texts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = loads_json(line, what=f"{path}: line {number}", error=InputError)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InputError(f'{path}: line {number} must be an object with a string "text"')
            texts.append(record["text"])
    elif suffix in (".txt", ".text", ".md", ""):
        texts = [t for t in text.split("\n\n") if t.strip()]
    else:
        raise InputError(f"calibration file {path}: use .txt (plain text), .jsonl ({{\"text\": ...}} lines) or .json (LLaVA conversations)")
    if not texts:
        raise InputError(f"calibration file {path} holds no text")
    return CalibrationSet(texts=texts, source=str(path))


def _public_text() -> CalibrationSet:
    """pile-val (the published AWQ calibration text), when `datasets` is installed and online."""
    hint = "pass --calib FILE (plain text, JSONL with \"text\", or LLaVA conversation JSON)"
    try:
        import datasets  # optional
    except ImportError:
        raise InputError("this checkpoint carries no calibration set and the `datasets` library (pile-val, "
                         f"pip install \"vlm-edge[calib]\") is not installed; {hint}") from None
    try:
        rows = datasets.load_dataset("mit-han-lab/pile-val-backup", split="validation")
    except Exception as e:  # offline, hub errors: all mean the same to the user
        raise InputError(f"this checkpoint carries no calibration set and the public one could not be fetched ({e}); {hint}") from None
    return CalibrationSet(texts=[r["text"] for r in rows.select(range(min(len(rows), 2000)))], source="pile-val")


def calibration_embeds(calib: CalibrationSet, checkpoint: Checkpoint, *, samples: int, seq_len: int) -> torch.Tensor:
    """[n <= samples, seq_len, D] LLM input embeddings of the calibration set."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    pieces: list[torch.Tensor] = []
    total, needed = 0, samples * seq_len
    with torch.no_grad():
        for conversation in calib.conversations:
            prompt = render(checkpoint.template, conversation.messages, add_generation_prompt=False)
            ids = tokenizer.tokenize_prompt(prompt)
            pixels, plans = preprocess_tiled([load_image(p) for p in conversation.images], model.image_processor_config)
            images = model.encode_images(torch.from_numpy(pixels), plans) if len(pixels) else None
            pieces.append(model.build_inputs([ids], images).inputs_embeds[0])
            total += len(pieces[-1])
            if total >= needed:
                break
        for text in calib.texts:
            if total >= needed:
                break
            ids = tokenizer.encode(text)
            if tokenizer.bos_id is not None:
                ids = [tokenizer.bos_id] + ids
            embeds = model.llm.get_input_embeddings()(torch.tensor(ids[: needed - total + 1]))
            pieces.append(embeds)
            total += len(embeds)
    stream = torch.cat(pieces) if pieces else torch.zeros(0)
    blocks = len(stream) // seq_len
    if blocks == 0:
        seq_len, blocks = len(stream), 1  # a small set: one block of everything
        if seq_len == 0:
            raise InputError(f"calibration set {calib.source} is empty after tokenization")
        log.warning("calibration set %s has only %d tokens; using them as one block", calib.source, seq_len)
    return stream[: blocks * seq_len].reshape(blocks, seq_len, -1)[:samples]
