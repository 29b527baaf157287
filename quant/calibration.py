"""Calibration data for AWQ: where it comes from, and how it becomes LLM input embeddings.

Sources, in order of precedence:

    --calib FILE.txt     plain text
    --calib FILE.jsonl   one {"text": ...} object per line
    --calib FILE.json    LLaVA conversations with images: images go through the vision tower and
                         projector, so image-token activations are part of the statistics
    --calib pile-val     pile-val through the `datasets` library, the published recipe's text
                         (online; needs `pip install "vlm-edge[calib]"`)
    (default)            the checkpoint's own calibration/ set (written by vlm-train: held-out
                         synthetic conversations with their images)
    (default, any other checkpoint)  vlm-edge:offline, which needs nothing from the network:
                         Python's own reference documentation (the running interpreter's
                         pydoc_data.topics, Python Software Foundation License 2.0) as text, and
                         conversations about pictures drawn here (shapes on plain, gradient and
                         noisy grounds) for the image positions, about OFFLINE_PICTURE_SHARE of
                         the positions; seeded, so every run calibrates on the same data

Every sample becomes embeddings (text tokens, with image features spliced in at <image>); all
samples are concatenated and cut into blocks of `seq_len` positions, at most `samples` blocks,
as the published recipe does with text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

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
PILE_VAL = "pile-val"  # --calib names these two sets; anything else is a file
OFFLINE = "vlm-edge:offline"
OFFLINE_PICTURE_SHARE = 0.25  # of the calibration positions, about (a conversation is whole), from conversations about pictures
OFFLINE_PICTURES = 64
OFFLINE_SEED = 0


@dataclass
class CalibrationSet:
    texts: list[str] = field(default_factory=list)  # text-only samples
    conversations: list = field(default_factory=list)  # vlm_edge.common.conversations.Conversation
    source: str = ""
    conversation_share: float = 1.0  # of the positions the conversations may fill (the last one whole)

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
    if source == PILE_VAL:
        return _public_text()
    if source == OFFLINE:
        return offline_calibration()
    if source is not None:
        return _from_file(Path(source))
    own = Path(checkpoint_dir) / CALIBRATION_DIR / CALIBRATION_FILE
    if own.is_file():
        return _from_file(own)
    return offline_calibration()


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
    hint = (f"leave --calib out for the offline set ({OFFLINE}), or pass --calib FILE (plain text, JSONL with "
            "\"text\", or LLaVA conversation JSON)")
    try:
        import datasets  # optional
    except ImportError:
        raise InputError("--calib pile-val needs the `datasets` library (pip install \"vlm-edge[calib]\") and the "
                         f"network; {hint}") from None
    try:
        rows = datasets.load_dataset("mit-han-lab/pile-val-backup", split="validation")
    except Exception as e:  # offline, hub errors: all mean the same to the user
        raise InputError(f"--calib pile-val could not be fetched ({e}); {hint}") from None
    return CalibrationSet(texts=[r["text"] for r in rows.select(range(min(len(rows), 2000)))], source="pile-val")


def offline_calibration(pictures: int = OFFLINE_PICTURES, seed: int = OFFLINE_SEED) -> CalibrationSet:
    """vlm-edge:offline: Python's reference documentation, topics in a seeded order, and `pictures`
    conversations about drawn pictures (see the module docstring)."""
    try:
        from pydoc_data.topics import topics  # part of CPython's standard library
    except ImportError:
        raise InputError(f"the offline calibration set ({OFFLINE}) reads Python's documentation topics "
                         "(pydoc_data), which this Python lacks; pass --calib FILE (plain text, JSONL with "
                         "\"text\", or LLaVA conversation JSON)") from None
    texts = [topics[name].strip() for name in sorted(topics) if topics[name].strip()]
    rng = random.Random(seed)
    rng.shuffle(texts)
    conversations = [drawn_conversation(np.random.default_rng([seed, i])) for i in range(pictures)]
    return CalibrationSet(texts=texts, conversations=conversations, conversation_share=OFFLINE_PICTURE_SHARE,
                          source=f"{OFFLINE} (Python's documentation, PSF License 2.0; {pictures} drawn pictures)")


# What drawn_conversation paints and how it names it
_COLOURS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (235, 200, 40),
            "orange": (240, 130, 30), "purple": (130, 60, 170), "black": (20, 20, 20), "white": (250, 250, 250),
            "grey": (128, 128, 128), "brown": (120, 75, 40), "pink": (240, 140, 180), "teal": (30, 140, 140)}
_SHAPES = ("circle", "square", "triangle", "rectangle", "ellipse", "star")
_PLACES = (("top left", "top", "top right"), ("left", "middle", "right"), ("bottom left", "bottom", "bottom right"))
_QUESTIONS = ("Describe the picture.", "What do you see in this image?", "Describe the image in detail.",
              "What shapes are in the photo, and where are they?")


def drawn_conversation(rng: np.random.Generator, size: int = 336):
    """One picture drawn here (1-4 shapes on a plain, gradient or noisy ground) with a question and
    the picture's description as its answer, for image positions in calibration."""
    from vlm_edge.common.conversations import Conversation

    names = list(_COLOURS)
    ground = names[rng.integers(len(names))]
    base = np.array(_COLOURS[ground], dtype=np.float32)
    kind = ("plain", "gradient", "noisy")[rng.integers(3)]
    pixels = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "gradient":
        other = np.array(_COLOURS[names[rng.integers(len(names))]], dtype=np.float32)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        pixels = (1 - t) * base + t * other + np.zeros((1, size, 1), np.float32)
    elif kind == "noisy":
        pixels += rng.normal(0.0, 30.0, pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    parts = []
    for _ in range(int(rng.integers(1, 5))):
        colour = names[rng.integers(len(names))]
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        r = float(rng.uniform(0.08, 0.25)) * size
        cx, cy = (float(v) for v in rng.uniform(r, size - r, 2))
        box = [cx - r, cy - r, cx + r, cy + r]
        fill = _COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "ellipse":
            draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        elif shape == "rectangle":
            draw.rectangle([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=fill)
        else:
            turn = float(rng.uniform(0, 2 * np.pi))
            points = 3 if shape == "triangle" else 10
            radii = [r if shape == "triangle" or k % 2 == 0 else r / 2.5 for k in range(points)]
            draw.polygon([(cx + rr * np.cos(turn + 2 * np.pi * k / points), cy + rr * np.sin(turn + 2 * np.pi * k / points))
                          for k, rr in enumerate(radii)], fill=fill)
        place = _PLACES[min(int(3 * cy / size), 2)][min(int(3 * cx / size), 2)]
        size_word = "large" if r > 0.17 * size else "small"
        parts.append(f"a {size_word} {colour} {shape} at the {place}")
    ground_words = {"plain": f"a plain {ground}", "gradient": f"a {ground} gradient", "noisy": f"a noisy {ground}"}
    answer = f"The picture shows {', '.join(parts[:-1]) + ' and ' if len(parts) > 1 else ''}{parts[-1]}, on " \
             f"{ground_words[kind]} background."
    question = _QUESTIONS[rng.integers(len(_QUESTIONS))]
    return Conversation(images=[image], messages=[{"role": "user", "content": f"<image>\n{question}"},
                                                  {"role": "assistant", "content": answer}])


def calibration_embeds(calib: CalibrationSet, checkpoint: Checkpoint, *, samples: int, seq_len: int) -> torch.Tensor:
    """[n <= samples, seq_len, D] LLM input embeddings of the calibration set."""
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    pieces: list[torch.Tensor] = []
    total, needed = 0, samples * seq_len
    with torch.no_grad():
        for conversation in calib.conversations:
            if total >= calib.conversation_share * needed:
                break
            prompt = render(checkpoint.template, conversation.messages, add_generation_prompt=False)
            ids = tokenizer.tokenize_prompt(prompt)
            pixels, plans = preprocess_tiled([load_image(p) for p in conversation.images], model.image_processor_config)
            images = model.encode_images(torch.from_numpy(pixels), plans) if len(pixels) else None
            pieces.append(model.build_inputs([ids], images).inputs_embeds[0])
            total += len(pieces[-1])
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
