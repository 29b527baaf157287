"""Synthetic multimodal data (deterministic by seed and index) and the loader for users' own data.

Kinds of sample, by training stage:

    picture       one picture, no text: its scene is the target     vision (train/picture_stage.py)
    caption       <image> + one sentence describing it              align, pretrain
    interleaved   2-3 images, each followed by a sentence about it, pretrain
                  or two named images and which holds which object
    vqa           a question about one or two images, short answer  sft
    describe      "Describe the image." answered with the caption   sft
    text          a text-only instruction                           sft

Sample i of a stream is a pure function of (seed, split, kind, i), so a batch does not depend
on how many processes share the work or whether a run was resumed.

Held-out split: a scene belongs to "heldout" when a hash of its canonical key falls in the
held-out bucket (1 in 10); the "train" split redraws such scenes, so the two never overlap.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from PIL import Image

from vlm_edge.common.conversations import Conversation, read_conversations
from vlm_edge.common.errors import InputError
from vlm_edge.common.tokenizer import IMAGE_TOKEN

from .renderers import WORLDS, random_style
from .wordings import ONLY_REFERENCES, phrase, statement
from .scenes import CELLS, COLOURS, NUMBERS, SHAPES, WORDS, Scene, random_scene, render

DATA_KINDS_SYNTHETIC = ("caption", "interleaved", "vqa", "describe", "text")  # with text: the tokenizer learns from them
QUESTION_TYPES = ("colour", "shape", "count", "position", "size", "yes_no", "word", "multi_image")
SCENE_TYPES = QUESTION_TYPES[:6]  # the types about one picture of shapes
# Exact-match accuracy of a uniform guess among the possible answers, per question type.
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / 3, "position": 1 / len(CELLS),
          "size": 1 / 2, "yes_no": 1 / 2, "word": 1 / len(WORDS), "multi_image": 1 / 2}


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
    objects: int | None = None  # shapes in the picture of a single-picture object question (evaluation breakdown)
    scenes: list[Scene] | None = None  # what each image shows (synthetic data: the vision probes' targets)
    # per assistant turn, the (image, cell) pairs of the object its answer is about; () for answers about
    # no one object (count, word, descriptions): the look-up loss's targets (train/lookup.py)
    grounding: list[tuple[tuple[int, int], ...]] | None = None
    # of a document: (start, end, ((image, cell), ...)): the text in [start, end) is about that object
    # (a fact caption's "small and blue, at the top right"): look-up targets too
    text_grounding: list[tuple[int, int, tuple[tuple[int, int], ...]]] | None = None
    image_names: list[str] | None = None  # the word of the prompt that names each image ("The first image: <image>")


@dataclass(frozen=True)
class SyntheticData:
    """The procedural dataset; `image_size` is the model's input size.

    world    how pictures are drawn: "plain" (one grey, exact colours, Pillow without
             anti-aliasing: the tiny recipe's), "train" (several renderers, backgrounds, shades,
             lighting, blur and JPEG: train/renderers.py) or "heldout" (a renderer and backgrounds
             no training world has: evaluation only)
    wording  how questions are phrased (train/wordings.py): "plain" (one phrasing a type, no
             yes/no questions), "train" (many, US and UK spelling, yes/no questions) or "heldout"
             (phrasings no training data has); default: "plain" in the plain world, else "train"
    layout   where shapes sit (train/scenes.py): "cells", "grid" or "free"; default: "cells" in
             the plain world, else "grid"
    grid     image tokens a side of the model trained (2: 4 tokens, the tiny preset's; 4: 16): the
             regions the look-ups and probes read each shape off (Scene.grid)
    """

    image_size: int
    seed: int = 0
    world: str = "plain"
    wording: str | None = None
    layout: str | None = None
    draw: bool = True  # False: samples carry a blank 1x1 picture (text only, for the tokenizer's corpus)
    grid: int = 2

    def __post_init__(self) -> None:
        if self.world not in ("plain", *WORLDS):
            raise InputError(f"world {self.world!r} is unknown; choose plain, {', '.join(WORLDS)}")
        plain = self.world == "plain"
        object.__setattr__(self, "wording", self.wording or ("plain" if plain else "train"))
        object.__setattr__(self, "layout", self.layout or ("cells" if plain else "grid"))

    @property
    def question_types(self) -> tuple[str, ...]:
        """The question types this data asks (the plain wording has no yes/no questions)."""
        return tuple(t for t in QUESTION_TYPES if t != "yes_no" or self.wording != "plain")

    def sample(self, kind: str, index: int, split: str = "train") -> Sample:
        rng = random.Random(f"{self.seed}:{split}:{kind}:{index}")
        return _BUILDERS[kind](self, rng, split)

    def scene(self, rng: random.Random, split: str, **kwargs) -> Scene:
        kwargs.setdefault("layout", self.layout)
        while True:
            scene = random_scene(rng, **kwargs)
            if _is_heldout(scene) == (split == "heldout"):
                return scene if self.grid == 2 else replace(scene, grid=self.grid, _shares={})

    def image(self, scene: Scene, rng: random.Random) -> Image.Image:
        if self.world == "plain":
            return render(scene, self.image_size, rng)
        if not self.draw:
            return Image.new("RGB", (1, 1))
        return render(scene, self.image_size, rng, random_style(rng, self.world, self.image_size))


def _is_heldout(scene: Scene) -> bool:
    key = scene.key() + (f":{scene.background}" if scene.word is not None else "")
    return zlib.crc32(key.encode()) % 10 == 0


def looked_at(scene: Scene, o, image: int = 0) -> tuple[tuple[int, int], ...]:
    """((image, cell), ...): the quadrants that hold object `o`'s centre or a good share of it, the
    image tokens an answer about it looks at (train/lookup.py)."""
    return tuple((image, c) for c in scene.painted()[scene.objects.index(o)])


# ---- sentences ----------------------------------------------------------------------------------
def describe(scene: Scene) -> str:
    if scene.word is not None:
        return f"the word {scene.word} written in black"
    parts = [f"{o.describe()} at the {o.cell}" if o.clear else o.describe() for o in scene.objects]
    return " and ".join(parts)


# Share of pre-training captions written as facts about objects named by their shape, in random
# order ("The square is small and blue, at the top right. The circle is ..."): after "The circle is"
# the next words are found by shape, not read off in picture order as in a reading-order caption.
FACT_CAPTION_PROBABILITY = 0.5


def facts(scene: Scene, rng: random.Random) -> str | None:
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if scene.word is not None or not unique:
        return None
    rng.shuffle(unique)
    return " ".join(f"The {o.shape} is {o.size} and {o.colour}, at the {o.cell}." if o.clear
                    else f"The {o.shape} is {o.size} and {o.colour}." for o in unique)


def fact_spans(text: str, scene: Scene, offset: int = 0) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """Where each fact of a `facts` caption speaks of its object: from the space before its size to
    the end of its cell (" small and blue, at the top right"), as (start, end, ((0, cell),)),
    positions in `text` plus `offset`."""
    spans = []
    for o in scene.objects:
        head = f"The {o.shape} is"
        if head in text:
            start = text.index(head) + len(head)
            spans.append((offset + start, offset + text.index(".", start), looked_at(scene, o)))
    return sorted(spans)


# Pre-training fact captions carry look-ups (train/lookup.py): while the model says "The square is
# small and blue, at the top right", the look-up head attends to the square, so it has learnt to
# find an object named by its shape before the first question asks it to (docs/training.md,
# "Looking while describing").
FACT_LOOKUPS = True


# Objects in a caption's scene: None draws 1-3, equally likely; a tuple weights 1..n objects, n <= 4
# (scenes.random_scene). 1-4, equally likely: a quarter of the captions fill every cell, where no
# empty cell tells where the object a fact names is (docs/training.md, "Position questions").
CAPTION_COUNT_WEIGHTS: tuple[float, ...] | None = (1.0, 1.0, 1.0, 1.0)


# Pictures of the vision stage: 1-4 shapes, equally likely, or a word; four shapes fill every cell.
PICTURE_COUNT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
PICTURE_WORD_PROBABILITY = 0.2


def _picture(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    scene = data.scene(rng, split, word_probability=PICTURE_WORD_PROBABILITY, count_weights=PICTURE_COUNT_WEIGHTS)
    return Sample([data.image(scene, rng)], kind="picture", scenes=[scene])


# Share of pre-training captions, in the training wording only, written as plain statements in the
# words users' questions may use (wordings.STATEMENTS): "There are three things in the picture. The
# circle is in the top left corner. ..." (docs/training.md, "Questions in other words").
STATEMENT_CAPTION_PROBABILITY = 0.3


def statements(scene: Scene, rng: random.Random) -> str:
    """A count statement and one statement about each object the scene has only one of in its
    shape and its colour (or two about a word), in random order."""
    if scene.word is not None:
        return " ".join(statement("word", rng, word=scene.word) for _ in range(2))
    parts = [statement("count", rng, len(scene.objects))]
    parts += [statement("object", rng, shape=o.shape, colour=o.colour, size=o.size, cell=o.cell)
              for o in scene.objects if o.clear and sum(p.shape == o.shape for p in scene.objects) == 1
              and sum(p.colour == o.colour for p in scene.objects) == 1]
    rng.shuffle(parts)
    return " ".join(parts)


def _caption(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    scene = data.scene(rng, split, count_weights=CAPTION_COUNT_WEIGHTS)
    if data.wording != "plain" and rng.random() < STATEMENT_CAPTION_PROBABILITY:  # the plain wording draws nothing here
        return Sample([data.image(scene, rng)], text=f"{IMAGE_TOKEN}\n{statements(scene, rng)}", kind="caption",
                      scenes=[scene])
    text = facts(scene, rng) if rng.random() < FACT_CAPTION_PROBABILITY else None
    spans = fact_spans(text, scene, len(IMAGE_TOKEN) + 1) if text is not None and FACT_LOOKUPS else None
    if text is None:
        text = describe(scene)
        text = f"{text[0].upper()}{text[1:]}."
    return Sample([data.image(scene, rng)], text=f"{IMAGE_TOKEN}\n{text}", kind="caption", scenes=[scene],
                  text_grounding=spans)


def _describe(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    """A conversation whose answer is the caption: long answers in chat format for SFT."""
    scene = data.scene(rng, split)
    text = describe(scene)
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{phrase('describe', rng, data.wording)}"},
                {"role": "assistant", "content": f"{text[0].upper()}{text[1:]}."}]
    return Sample([data.image(scene, rng)], messages=messages, kind="describe", question_type="describe",
                  scenes=[scene])


# Share of pre-training interleaved documents that say which picture holds which object: two
# pictures named as multi-image prompts name them, then "The red circle is in the second image."
# for each colour and shape that exactly one of them has, in random order. The words after "is in
# the" carry the look-up on that object (FACT_LOOKUPS), and each picture's tokens the naming
# look-up, so the readout a multi-image question needs is learnt before the first question asks it
# (docs/training.md, "Which picture").
WHICH_PICTURE_PROBABILITY = 1.0


def two_pictures(data: SyntheticData, rng: random.Random, split: str) -> tuple[list[Scene], list[tuple[str, str, int]]]:
    """Two scenes and, shuffled, (colour, shape, picture) for each colour and shape that exactly one
    of them has (redrawn until there is one): what multi-image questions and documents are about."""
    while True:
        scenes = [data.scene(rng, split, word_probability=0.0) for _ in range(2)]
        kinds = [{(o.colour, o.shape) for o in s.objects} for s in scenes]
        only = [(colour, shape, i) for i in range(2) for colour, shape in sorted(kinds[i] - kinds[1 - i])]
        if only:
            rng.shuffle(only)
            return scenes, only


def _which_picture_document(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    scenes, only = two_pictures(data, rng, split)
    ordinals = ("first", "second")
    head = f"The first image: {IMAGE_TOKEN}\nThe second image: {IMAGE_TOKEN}\n"
    text, spans = head, []
    for k, (colour, shape, picture) in enumerate(only):
        sentence = f"The {colour} {shape} is in the"
        text += ("" if k == 0 else " ") + sentence
        start = len(text)
        text += f" {ordinals[picture]} image."
        cells = tuple(at for o in scenes[picture].objects if (o.colour, o.shape) == (colour, shape)
                      for at in looked_at(scenes[picture], o, picture))
        spans.append((start, len(text) - 1, cells))
    return Sample([data.image(s, rng) for s in scenes], text=text, kind="interleaved", scenes=scenes,
                  text_grounding=spans if FACT_LOOKUPS else None, image_names=list(ordinals))


def _interleaved(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    if WHICH_PICTURE_PROBABILITY and rng.random() < WHICH_PICTURE_PROBABILITY:
        return _which_picture_document(data, rng, split)
    count = rng.randint(2, 3)
    scenes = [data.scene(rng, split) for _ in range(count)]
    ordinals = ("first", "second", "third")
    lines = [f"{IMAGE_TOKEN}\nThe {ordinals[i]} picture shows {describe(s)}." for i, s in enumerate(scenes)]
    return Sample([data.image(s, rng) for s in scenes], text="\n".join(lines), kind="interleaved", scenes=scenes)


# ---- questions ----------------------------------------------------------------------------------
# Ways a question may name the object it is about: (attributes that must pick it out, the words).
# A name is used only when it picks out exactly one object in the scene ("only": the scene has one
# object, named "the shape", "the object" or "it"). Naming objects by shape as well as by colour
# matters: finding an object by its shape is what colour questions need, and position and size
# questions train it too.
REFERENCES = {
    "shape": (("shape",), "the {o.shape}"),
    "colour": (("colour",), "the {o.colour} object"),
    "colour+shape": (("colour", "shape"), "the {o.colour} {o.shape}"),
    "only": ((), None),
}
# question type -> (attribute answered, ways the question may name the object); phrasings: train/wordings.py
OBJECT_QUESTIONS = {
    "colour": ("colour", ("shape", "only")),
    "shape": ("shape", ("colour", "only")),
    "position": ("cell", ("shape", "colour", "colour+shape", "only")),
    "size": ("size", ("shape", "colour", "colour+shape", "only")),
}


Question = tuple[str, str, tuple[tuple[int, int], ...]]  # (question, answer, grounding: ((image, cell), ...))


def _question(scene: Scene, qtype: str, rng: random.Random, wording: str = "train") -> Question | None:
    """(question, answer, grounding) about one scene in a phrasing of set `wording`, or None if this
    scene cannot answer that type. The grounding is the object's ((0, cell), ...) for a question
    about one object, () otherwise."""
    if qtype == "word":
        return (phrase("word", rng, wording), scene.word, ()) if scene.word is not None else None
    if scene.word is not None:
        return None
    if qtype == "count":
        return phrase("count", rng, wording), NUMBERS[len(scene.objects)], ()
    if qtype == "yes_no":
        return _yes_no(scene, rng, wording)
    answer, styles = OBJECT_QUESTIONS[qtype]
    options = []
    for style in styles:
        keys, ref = REFERENCES[style]
        if ref is None and wording == "plain":  # the plain wording names objects by colour or shape only
            continue
        for o in scene.objects:
            if answer == "cell" and not o.clear:  # a centre near the middle lines has no position answer
                continue
            if sum(all(getattr(p, k) == getattr(o, k) for k in keys) for p in scene.objects) == 1:
                options.append((o, ref))
    if not options:
        return None
    o, ref = rng.choice(options)
    name = ref.format(o=o) if ref is not None else rng.choice(ONLY_REFERENCES)
    return phrase(qtype, rng, wording, ref=name), getattr(o, answer), looked_at(scene, o)


def _yes_no(scene: Scene, rng: random.Random, wording: str) -> Question:
    """Is there a (colour) (shape) / (colour) object? or Is the (shape) (colour)?: yes or no, even odds.
    A yes looks at the object it is about; a no about a thing that is not there looks at nothing."""
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if unique and rng.random() < 0.3:
        o = rng.choice(unique)
        colour = o.colour if rng.random() < 0.5 else rng.choice([c for c in COLOURS if c != o.colour])
        return (phrase("is_colour", rng, wording, shape=o.shape, colour=colour), "yes" if colour == o.colour else "no",
                looked_at(scene, o))
    keys = rng.choice((("colour", "shape"), ("shape",), ("colour",)))
    name = {("colour", "shape"): "{colour} {shape}", ("shape",): "{shape}", ("colour",): "{colour} object"}[keys]
    present = {tuple(getattr(p, k) for k in keys) for p in scene.objects}
    absent = [(c, sh) for c in COLOURS for sh in SHAPES
              if tuple({"colour": c, "shape": sh}[k] for k in keys) not in present]
    if rng.random() < 0.5 or not absent:
        o = rng.choice(scene.objects)
        matches = [p for p in scene.objects if all(getattr(p, k) == getattr(o, k) for k in keys)]
        thing = name.format(colour=o.colour, shape=o.shape)
        return (phrase("exists", rng, wording, thing=thing), "yes",
                tuple(at for p in matches for at in looked_at(scene, p)))
    colour, shape = rng.choice(absent)
    return phrase("exists", rng, wording, thing=name.format(colour=colour, shape=shape)), "no", ()


def _vqa(data: SyntheticData, rng: random.Random, split: str, qtype: str | None = None) -> Sample:
    """One question of type `qtype` (evaluation), or for training (`qtype` None) a conversation of
    up to MAX_TURNS questions about the same picture(s): every answer carries loss, so one image
    encoding teaches several answers (VILA's SFT data is multi-turn too)."""
    if qtype is None:
        return _vqa_conversation(data, rng, split)
    if qtype == "multi_image":
        return _multi_image(data, rng, split)
    while True:
        scene = data.scene(rng, split, word_probability=1.0 if qtype == "word" else 0.0)
        qa = _question(scene, qtype, rng, data.wording)
        if qa is not None:
            break
    question, answer, grounding = qa
    messages = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}, {"role": "assistant", "content": answer}]
    return Sample([data.image(scene, rng)], messages=messages, kind="vqa", question_type=qtype, answer=answer,
                  objects=len(scene.objects) if scene.word is None else None, scenes=[scene], grounding=[grounding])


MAX_TURNS = 4
# Object counts of SFT conversation scenes, 1:2:2. A question that names an object by its shape only
# teaches retrieval by shape when the scene holds other objects to choose from: with one object,
# "the colour of any object" is the right answer. Evaluation keeps equally likely counts. A fourth
# weight adds scenes that fill all four cells (tried, not kept: docs/training.md).
SFT_COUNT_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 2.0)
# Position questions are asked in SFT about scenes of POSITION_MIN_OBJECTS or more shapes, drawn
# 1:2:2:1 by shape count when the conversation starts with one. Without the look-up loss
# (train/lookup.py) the model answered them from the empty cells, not from the object named, and
# asking only about 3-4 shapes (where two shapes share a row) was what helped; with it, the answer
# is read off the object, and every count can be asked (docs/training.md, "Looking things up").
POSITION_MIN_OBJECTS = 1
POSITION_COUNT_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 2.0, 1.0)


# The type of an SFT conversation's first question, drawn uniformly from this pool: colour twice (the
# one question found by shape alone), multi-image four times (the last type the model learns to answer).
FIRST_QUESTIONS: tuple[str, ...] = QUESTION_TYPES + ("colour", "multi_image", "multi_image", "multi_image")
PLAIN_FIRST_QUESTIONS = tuple(t for t in FIRST_QUESTIONS if t != "yes_no")  # the plain wording asks no yes/no


def _vqa_conversation(data: SyntheticData, rng: random.Random, split: str) -> Sample:
    first = rng.choice(PLAIN_FIRST_QUESTIONS if data.wording == "plain" else FIRST_QUESTIONS)
    if first == "multi_image":
        return _multi_image(data, rng, split, turns=rng.randint(1, MAX_TURNS))
    scene = data.scene(rng, split, word_probability=1.0 if first == "word" else 0.0,
                       count_weights=POSITION_COUNT_WEIGHTS if first == "position" else SFT_COUNT_WEIGHTS)
    if scene.word is not None:
        pairs = [_question(scene, "word", rng, data.wording)]
    else:
        types = [t for t in SCENE_TYPES if t in data.question_types
                 and (t != "position" or len(scene.objects) >= POSITION_MIN_OBJECTS)]
        pairs = [qa for t in types if (qa := _question(scene, t, rng, data.wording)) is not None]
        rng.shuffle(pairs)
        kept: list[Question] = []
        for question, answer, grounding in pairs:  # no answer may be read off an earlier turn's words
            if not any(answer in (q + " " + a).split() for q, a, _ in kept):
                kept.append((question, answer, grounding))
        pairs = kept[: rng.randint(1, MAX_TURNS)]
    messages = []
    for k, (question, answer, _) in enumerate(pairs):
        messages.append({"role": "user", "content": f"{IMAGE_TOKEN}\n{question}" if k == 0 else question})
        messages.append({"role": "assistant", "content": answer})
    return Sample([data.image(scene, rng)], messages=messages, kind="vqa", question_type=first, scenes=[scene],
                  answer=messages[1]["content"], grounding=[g for _, _, g in pairs])


# Multi-image prompts name each picture before it ("The first image: <image>\nThe second image: ..."),
# as Qwen-VL's "Picture 1:" does: an image token's embedding is the same in either picture, and the
# word before it is what tells them apart (docs/training.md, "Looking things up").
NAME_IMAGES = True


def _multi_image(data: SyntheticData, rng: random.Random, split: str, turns: int = 1) -> Sample:
    """Two scenes; each question asks which one holds an object of a colour and shape that
    exactly one of them has."""
    scenes, only = two_pictures(data, rng, split)
    messages, grounding = [], []
    for k, (colour, shape, target) in enumerate(only[:turns]):
        question = f"Which image has a {colour} {shape}? Answer first or second."
        if k == 0:
            question = (f"The first image: {IMAGE_TOKEN}\nThe second image: {IMAGE_TOKEN}\n{question}" if NAME_IMAGES
                        else f"{IMAGE_TOKEN}\n{IMAGE_TOKEN}\n{question}")
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": ("first", "second")[target]}]
        grounding.append(tuple(at for o in scenes[target].objects if (o.colour, o.shape) == (colour, shape)
                               for at in looked_at(scenes[target], o, target)))
    return Sample([data.image(s, rng) for s in scenes], messages=messages, kind="vqa", question_type="multi_image",
                  answer=messages[1]["content"], scenes=scenes, grounding=grounding,
                  image_names=["first", "second"] if NAME_IMAGES else None)


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
    "picture": _picture,
    "caption": _caption,
    "interleaved": _interleaved,
    "vqa": _vqa,
    "describe": _describe,
    "text": _text,
}


def heldout_vqa(data: SyntheticData, per_type: int) -> list[Sample]:
    """The evaluation set: `per_type` held-out questions of every type, deterministic."""
    samples = []
    for qtype in data.question_types:
        for i in range(per_type):
            rng = random.Random(f"{data.seed}:heldout:vqa-{qtype}:{i}")
            samples.append(_vqa(data, rng, "heldout", qtype))
    return samples


def write_calibration_set(data: SyntheticData, directory: Path, count: int = 64) -> None:
    """Held-out conversations with their images in the LLaVA format, for quantization calibration
    (`vlm-quant` uses a checkpoint's calibration/ by default): conversations.json + images/."""
    images_dir = directory / "images"
    images_dir.mkdir(parents=True)
    kinds = ("describe", "vqa", "vqa", "text")
    records = []
    for i in range(count):
        sample = data.sample(kinds[i % len(kinds)], i, split="heldout")
        names = []
        for k, image in enumerate(sample.images):
            names.append(f"images/{i:04d}_{k}.png")
            image.save(directory / names[-1])
        turns = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in sample.messages or []]
        records.append({"image": names, "conversations": turns} if names else {"conversations": turns})
    (directory / "conversations.json").write_text(json.dumps(records, indent=1) + "\n")


# ---- users' own data: LLaVA / VILA conversation JSON (read by vlm_edge.common.conversations) ----
def load_conversations(path: str | Path, image_folder: str | Path | None = None) -> list[Sample]:
    """Read a LLaVA-format JSON list as training samples; every record is checked (see
    `vlm_edge.common.conversations.read_conversations`). Images are opened per batch."""
    return conversation_samples(read_conversations(path, image_folder))


def conversation_samples(conversations: list[Conversation]) -> list[Sample]:
    return [Sample(list(c.images), messages=c.messages, kind="user")  # type: ignore[arg-type]
            for c in conversations]


AUGMENT_SCALE = (0.9, 1.0)  # the side of a crop of a user's picture, as a share of the picture's


def augment_picture(image: Image.Image, rng: random.Random) -> Image.Image:
    """A user's picture as another draw might have framed it: a square-scaled crop of 90-100% of
    each side, anywhere inside, resized back. Colours, shapes and coarse positions stay as they
    were (nothing is flipped or recoloured); a few pixels of shift and scale are new each epoch
    (`vlm-train --augment`; docs/training.md, "Your own data")."""
    w, h = image.size
    scale = rng.uniform(*AUGMENT_SCALE)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)


def split_heldout(conversations: list[Conversation], seed: int, share: float, most: int,
                  ) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held out): a seeded draw of `share` of the records (at most `most`; none below 10)."""
    count = min(most, round(share * len(conversations))) if len(conversations) >= 10 else 0
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return ([c for i, c in enumerate(conversations) if i not in held],
            [c for i, c in enumerate(conversations) if i in held])


def conversation_records(conversations: list[Conversation]) -> list[dict]:
    """Conversations back as LLaVA-format records (absolute image paths): `vlm-eval --data` reads them."""
    roles = {"user": "human", "assistant": "gpt"}
    return [{**({"image": [str(Path(i).resolve()) for i in c.images]} if c.images else {}),
             "conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in c.messages]}
            for c in conversations]
