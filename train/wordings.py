"""How questions are worded: several phrasings of every question type, and phrasings kept out.

A user asks "What color is the shape in this photo?", not the one sentence the data was written
with. Three sets:

    plain    one phrasing a type ("What colour is the circle?"), no yes/no questions: the tiny
             recipe's (the plain world's) data
    train    several phrasings of every type, US and UK spelling, yes/no questions
    heldout  phrasings that never occur in training data, asked only by evaluation
             (`vlm-eval --wording heldout`): the table on them says whether the model understood
             the question or learnt a sentence

Placeholders: {ref} names one object ("the circle", "the red object", "it", ...), {noun} is
picture / image / photo / scene, {thing} is what a yes/no question asks about ("red circle",
"square", "blue object"), {colour} and {shape} are words. Any phrasing may come in US spelling
("color"): `spell` swaps it in for a share of the questions, in both sets.
"""

from __future__ import annotations

import random
import re

NOUNS = ("picture", "image", "photo", "scene")
US_SPELLING = 0.4  # share of questions written "color"

WORDINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {
        "train": ("What colour is {ref}?", "What is the colour of {ref}?", "Which colour is {ref}?",
                  "What colour is {ref} in the {noun}?", "Tell me the colour of {ref}.", "Say which colour {ref} is."),
        "heldout": ("What colour does {ref} have?", "Can you tell me the colour of {ref}?"),
    },
    "shape": {
        "train": ("What shape is {ref}?", "What is the shape of {ref}?", "Which shape is {ref}?",
                  "What kind of shape is {ref}?", "What shape is {ref} in the {noun}?", "Tell me the shape of {ref}.",
                  "Say which shape {ref} is."),
        "heldout": ("What shape does {ref} have?", "Name the shape of {ref}."),
    },
    "position": {
        "train": ("Where is {ref}?", "Where is {ref} in the {noun}?", "Where is {ref} located?",
                  "In which part of the {noun} is {ref}?", "Which part of the {noun} is {ref} in?",
                  "Tell me where {ref} is.", "What is the position of {ref}?"),
        "heldout": ("Where in the {noun} can you see {ref}?", "Which corner is {ref} in?"),
    },
    "size": {
        "train": ("Is {ref} big or small?", "Is {ref} small or big?", "What size is {ref}?", "How big is {ref}?",
                  "Tell me the size of {ref}.", "Which size is {ref}?"),
        "heldout": ("What is the size of {ref}?", "Would you say {ref} is big or small?"),
    },
    "count": {
        "train": ("How many objects are there?", "How many shapes are there?", "How many shapes are in the {noun}?",
                  "How many objects can you see?", "Count the shapes in the {noun}.", "Tell me the number of shapes.",
                  "How many shapes does the {noun} have?", "What is the count of shapes?"),
        "heldout": ("How many things are in the {noun}?", "What is the number of shapes in the {noun}?"),
    },
    "exists": {
        "train": ("Is there a {thing}?", "Is there a {thing} in the {noun}?", "Does the {noun} show a {thing}?",
                  "Can you see a {thing}?"),
        "heldout": ("Is a {thing} visible in the {noun}?", "Does this {noun} contain a {thing}?"),
    },
    "is_colour": {  # a yes/no question about one shape's colour
        "train": ("Is the {shape} {colour}?", "Is the {shape} in the {noun} {colour}?"),
        "heldout": ("Is the colour of the {shape} {colour}?",),
    },
    "word": {
        "train": ("What word is written?", "What word is in the {noun}?", "What does the text say?",
                  "Tell me the word in the {noun}.", "Which word is written?"),
        "heldout": ("Which word can you read?",),
    },
    "describe": {
        "train": ("Describe the image.", "Describe the picture.", "What is in the image?", "What do you see?"),
        "heldout": ("What does this {noun} show?",),
    },
}
# Plain statements about a scene, for pre-training captions of the training wording: the words a
# user's question may use ("things", "corner", "visible", "contains", "read", "number", "have") in
# sentences that tell, never ask. No question phrasing of either set occurs here; a held-out
# question is then new as a question, as a user's is, while its words are not. Placeholders:
# {n} a number word and {things} a plural noun (or, with one object, "one" and a singular noun),
# {noun} picture / image / photo / scene, {colour} {shape} {size} {cell} {word} of one object or word.
STATEMENTS: dict[str, tuple[str, ...]] = {
    "count": ("There are {n} {things} in the {noun}.", "The {noun} has {n} {things}.",
              "The number of {things} is {n}.", "I can see {n} {things}.", "The {noun} contains {n} {things}."),
    "object": ("The {shape} is in the {cell} corner.", "The {colour} {shape} is visible at the {cell}.",
               "The {noun} contains a {colour} {shape}.", "The {shape} has the colour {colour}.",
               "The {shape} is {size} in size.", "You can see a {size} {colour} {shape} in the {noun}.",
               "The {colour} thing is a {shape}.", "The {shape} sits in the {cell} part of the {noun}."),
    "word": ("You can read the word {word}.", "The text in the {noun} reads {word}.",
             "The {noun} shows the word {word}.", "The word {word} is written in black."),
}
THINGS = (("shape", "shapes"), ("object", "objects"), ("thing", "things"), ("item", "items"))
PLAIN = {"colour": "What colour is {ref}?", "shape": "What shape is {ref}?", "position": "Where is {ref}?",
         "size": "Is {ref} big or small?", "count": "How many objects are there?", "word": "What word is written?",
         "describe": "Describe the image."}
# Ways of naming the only object of a scene (any question about one object may use them there)
ONLY_REFERENCES = ("the shape", "the object", "it")
WORDING_SETS = ("plain", "train", "heldout")


def phrase(qtype: str, rng: random.Random, wording: str = "train", **fields: str) -> str:
    """One question of type `qtype` in a phrasing of set `wording`, placeholders filled, the first
    letter capitalised, in UK or (US_SPELLING of the time) US spelling. The plain set draws nothing
    from `rng`."""
    if wording not in WORDING_SETS:
        raise ValueError(f"wording {wording!r} is unknown; choose plain, train or heldout")
    if wording == "plain":
        text = PLAIN[qtype].format(**fields)
        return text[0].upper() + text[1:]
    template = rng.choice(WORDINGS[qtype][wording])
    text = template.format(noun=rng.choice(NOUNS), **fields)
    return spell(text[0].upper() + text[1:], rng)


def statement(kind: str, rng: random.Random, count: int = 0, **fields: str) -> str:
    """One STATEMENTS sentence of `kind` with its placeholders filled (count: the number of objects
    for {n} and {things}), in UK or US spelling."""
    from .scenes import NUMBERS

    singular, plural = rng.choice(THINGS)
    text = rng.choice(STATEMENTS[kind]).format(noun=rng.choice(NOUNS), n=NUMBERS[count],
                                               things=singular if count == 1 else plural, **fields)
    if count == 1:
        text = text.replace("There are", "There is")
    return spell(text, rng)


def spell(text: str, rng: random.Random) -> str:
    return text.replace("colour", "color").replace("Colour", "Color") if rng.random() < US_SPELLING else text


def matcher(template: str) -> re.Pattern:
    """A regular expression matching every question written from `template` (any filling, either spelling)."""
    return re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template)).replace("colour", "colou?r"), re.IGNORECASE)


def all_phrasings(wording: str) -> set[str]:
    """Every template of a set (train and heldout must not share one)."""
    if wording == "plain":
        return set(PLAIN.values())
    return {t for sets in WORDINGS.values() for t in sets[wording]}
