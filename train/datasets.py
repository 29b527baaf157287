"""Synthetic multimodal data (deterministic by seed and index) and the loader for users' own data.

Kinds of sample, by training stage:

    caption       <image> + one sentence describing it              stage 0 (alignment), stage 1
    interleaved   2-3 images, each followed by a sentence about it  stage 1 (pre-training)
    vqa           a question about one or two images, short answer  stage 2 (SFT)
    describe      "Describe the image." answered with the caption   stage 2 (SFT)
    text          a text-only instruction                           stage 2 (SFT)

Sample i of a stream is a pure function of (seed, split, kind, i), so a batch does not depend
on how many processes share the work or whether a run was resumed.

Held-out split: a scene belongs to "heldout" when a hash of its canonical key falls in the
held-out bucket (1 in 10); the "train" split redraws such scenes, so the two never overlap.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from vlm_edge.common.errors import InputError
from vlm_edge.common.tokenizer import IMAGE_TOKEN

from .scenes import CELLS, COLOURS, NUMBERS, SHAPES, WORDS, Scene, random_scene, render

DATA_KINDS_SYNTHETIC = ("caption", "interleaved", "vqa", "describe", "text")
QUESTION_TYPES = ("colour", "shape", "count", "position", "size", "word", "multi_image")
# Exact-match accuracy of a uniform guess among the possible answers, per question type.
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / 3, "position": 1 / len(CELLS),
          "size": 1 / 2, "word": 1 / len(WORDS), "multi_image": 1 / 2}


@dataclass
class Sample:
    """One training or evaluation example.

    `messages` (a conversation rendered with the chat template; loss on the answers) or `text`
    (a document with <image> placeholders; loss on all text), never both. Images in order.
    """

    images: list[Image.Image] = field(default_factory=list)
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    kind: str = "vqa"
    question_type: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class SyntheticData:
    """The procedural dataset; `image_size` is the model's input size."""

    image_size: int
    seed: int = 0

    def sample(self, kind: str, index: int, split: str = "train") -> Sample:
        rng = random.Random(f"{self.seed}:{split}:{kind}:{index}")
        return _BUILDERS[kind](self, rng, split)

    def scene(self, rng: random.Random, split: str, **kwargs) -> Scene:
        while True:
            scene = random_scene(rng, **kwargs)
            if _is_heldout(scene) == (split == "heldout"):
                return scene

    def image(self, scene: Scene, rng: random.Random) -> Image.Image:
        return render(scene, self.image_size, rng)


def _is_heldout(scene: Scene) -> bool:
    key = scene.key() + (f":{scene.background}" if scene.word is not None else "")
    return zlib.crc32(key.encode()) % 10 == 0


# ---- sentences ----------------------------------------------------------------------------------
def describe(scene: Scene) -> str:
    if scene.word is not None:
        return f"the word {scene.word} written in black"
    parts = [f"{o.describe()} at the {o.cell}" for o in scene.objects]
    return " and ".join(parts)


def _caption(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    scene = data.scene(rng, split)
    text = describe(scene)
    return Sample([data.image(scene, rng)], text=f"{IMAGE_TOKEN}\n{text[0].upper()}{text[1:]}.", kind="caption")


def _describe(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    """A conversation whose answer is the caption: long answers in chat format for SFT."""
    scene = data.scene(rng, split)
    text = describe(scene)
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\nDescribe the image."},
                {"role": "assistant", "content": f"{text[0].upper()}{text[1:]}."}]
    return Sample([data.image(scene, rng)], messages=messages, kind="describe", question_type="describe")


def _interleaved(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    count = rng.randint(2, 3)
    scenes = [data.scene(rng, split) for _ in range(count)]
    ordinals = ("first", "second", "third")
    lines = [f"{IMAGE_TOKEN}\nThe {ordinals[i]} picture shows {describe(s)}." for i, s in enumerate(scenes)]
    return Sample([data.image(s, rng) for s in scenes], text="\n".join(lines), kind="interleaved")


# ---- questions ----------------------------------------------------------------------------------
def _unique(objects, attribute):
    values = [getattr(o, attribute) for o in objects]
    return [o for o in objects if values.count(getattr(o, attribute)) == 1]


# Single-scene question types about one object, as data: the object must be the only one with its
# `key` attribute in the scene; the question names it with that attribute; `answer` is read off it.
OBJECT_QUESTIONS = {
    "colour": ("shape", "What colour is the {o.shape}?", "colour"),
    "shape": ("colour", "What shape is the {o.colour} object?", "shape"),
    "position": ("colour", "Where is the {o.colour} {o.shape}?", "cell"),
    "size": ("colour", "Is the {o.colour} {o.shape} big or small?", "size"),
}


def _question(scene: Scene, qtype: str, rng: random.Random) -> tuple[str, str] | None:
    """(question, answer) about one scene, or None if this scene cannot answer that type."""
    if qtype == "word":
        return ("What word is written?", scene.word) if scene.word is not None else None
    if scene.word is not None:
        return None
    if qtype == "count":
        return "How many objects are there?", NUMBERS[len(scene.objects)]
    key, question, answer = OBJECT_QUESTIONS[qtype]
    pick = _unique(scene.objects, key)
    if not pick:
        return None
    o = rng.choice(pick)
    return question.format(o=o), getattr(o, answer)


def _vqa(data: SyntheticData, rng: random.Random, split: str, qtype: str | None = None) -> Sample:
    qtype = qtype or rng.choice(QUESTION_TYPES)
    if qtype == "multi_image":
        return _multi_image(data, rng, split)
    while True:
        scene = data.scene(rng, split, word_probability=1.0 if qtype == "word" else 0.0)
        qa = _question(scene, qtype, rng)
        if qa is not None:
            break
    question, answer = qa
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}, {"role": "assistant", "content": answer}]
    return Sample([data.image(scene, rng)], messages=messages, kind="vqa", question_type=qtype, answer=answer)


def _multi_image(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    """Two scenes; exactly one holds an object of the asked colour and shape."""
    while True:
        scenes = [data.scene(rng, split, word_probability=0.0) for _ in range(2)]
        target = rng.randrange(2)
        obj = rng.choice(scenes[target].objects)
        other = {(o.colour, o.shape) for o in scenes[1 - target].objects}
        if (obj.colour, obj.shape) not in other:
            break
    answer = ("first", "second")[target]
    question = f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\nWhich image has a {obj.colour} {obj.shape}? Answer first or second."
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Sample([data.image(s, rng) for s in scenes], messages=messages, kind="vqa", question_type="multi_image",
                  answer=answer)


def _text(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    task = rng.randrange(3)
    if task == 0:
        n = rng.randrange(len(NUMBERS) - 1)
        question, answer = f"What number comes after {NUMBERS[n]}?", NUMBERS[n + 1]
    elif task == 1:
        words = rng.sample(WORDS + tuple(COLOURS), rng.randint(1, 3))
        question, answer = f"Repeat after me: {' '.join(words)}", " ".join(words)
    else:
        colour, thing = rng.choice(list(COLOURS)), rng.choice(WORDS)
        first = rng.random() < 0.5
        options = f"{colour} or {thing}" if first else f"{thing} or {colour}"
        question, answer = f"Which of these is a colour: {options}?", colour
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Sample(messages=messages, kind="text", question_type="text", answer=answer)


_BUILDERS: dict[str, Callable[[SyntheticData, random.Random, str], Sample]] = {
    "caption": _caption,
    "interleaved": _interleaved,
    "vqa": _vqa,
    "describe": _describe,
    "text": _text,
}


def heldout_vqa(data: SyntheticData, per_type: int) -> list[Sample]:
    """The evaluation set: `per_type` held-out questions of every type, deterministic."""
    samples = []
    for qtype in QUESTION_TYPES:
        for i in range(per_type):
            rng = random.Random(f"{data.seed}:heldout:vqa-{qtype}:{i}")
            samples.append(_vqa(data, rng, "heldout", qtype))
    return samples


# ---- users' own data: LLaVA / VILA conversation JSON --------------------------------------------
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def load_conversations(path: str | Path, image_folder: str | Path | None = None) -> list[Sample]:
    """Read a LLaVA-format JSON list: {"image": str | [str], "conversations": [{"from", "value"}]}.

    Every record is checked; the first broken one stops loading with its index and what is wrong.
    Images are paths relative to `image_folder` (default: the JSON's folder), opened per batch.
    """
    path = Path(path)
    folder = Path(image_folder) if image_folder is not None else path.parent
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise InputError(f"data file {path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(records, list):
        raise InputError(f"data file {path} must hold a JSON list of records")
    return [_conversation(record, i, path, folder) for i, record in enumerate(records)]


def _conversation(record: Any, index: int, path: Path, folder: Path) -> Sample:
    def bad(why: str) -> InputError:
        return InputError(f"{path}: record {index}: {why}")

    if not isinstance(record, dict):
        raise bad("must be a JSON object")
    images = record.get("image", [])
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
        raise bad("'image' must be a file name or a list of file names")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise bad("'conversations' must be a non-empty list")
    messages = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise bad(f"turn {t} must be an object with a string 'value'")
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise bad(f"turn {t}: 'from' must be one of {', '.join(_ROLES)}, got {turn.get('from')!r}")
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise bad(f"turn {t}: expected a {expected} turn; turns alternate, starting with the human")
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] != "assistant":
        raise bad("the last turn must be the assistant's answer")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if images and placeholders == 0 and len(images) == 1:
        messages[0]["content"] = f"{IMAGE_TOKEN}\n{messages[0]['content']}"  # LLaVA convention
        placeholders = 1
    if placeholders != len(images):
        raise bad(f"{placeholders} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s)")
    loaded = []
    for name in images:
        image_path = folder / name
        if not image_path.is_file():
            raise bad(f"image {image_path} does not exist")
        loaded.append(image_path)  # opened when its batch is built (vlm_edge.common.image.load_image)
    return Sample(loaded, messages=messages, kind="user")  # type: ignore[arg-type]
