"""The training data's pictures and words from more than one world: renderers, backgrounds, free
layouts, and the phrasings kept out of training (train/renderers.py, train/scenes.py,
train/wordings.py)."""

from __future__ import annotations

import colorsys
import random
import re
from collections import Counter

import numpy as np
import pytest

from vlm_edge.train.datasets import QUESTION_TYPES, SyntheticData, heldout_vqa
from vlm_edge.train.renderers import (COLOURED_GROUNDS, HELDOUT_BACKGROUNDS, HELDOUT_RENDERERS, MIN_CONTRAST,
                                      SHADES, TRAIN_BACKGROUNDS, TRAIN_RENDERERS, Style, background, draw, fills,
                                      random_style)
from vlm_edge.train.scenes import CELLS, GRID_RADIUS, Scene, Shape, random_scene
from vlm_edge.train.wordings import WORDINGS, all_phrasings, matcher


def test_worlds_keep_their_renderers_and_backgrounds_apart():
    rng = random.Random(0)
    train = [random_style(rng, "train", 56) for _ in range(400)]
    held = [random_style(rng, "heldout", 56) for _ in range(100)]
    assert {s.renderer for s in train} == set(TRAIN_RENDERERS) and {s.background for s in train} == set(TRAIN_BACKGROUNDS)
    assert {s.renderer for s in held} == set(HELDOUT_RENDERERS) and {s.background for s in held} == set(HELDOUT_BACKGROUNDS)
    assert not set(TRAIN_RENDERERS) & set(HELDOUT_RENDERERS) and not set(TRAIN_BACKGROUNDS) & set(HELDOUT_BACKGROUNDS)
    assert any(s.jpeg for s in train) and any(s.blur for s in train) and any(s.light for s in train)
    assert len({(s.width, s.height) for s in train}) > 50  # canvases of many sizes and aspects
    with pytest.raises(ValueError, match="world"):
        random_style(rng, "mars", 56)


def test_grounds_are_greys_or_any_hue_but_the_scenes_own_colours():
    """A user's shapes sit on coloured grounds (a blue circle on teal): COLOURED_GROUNDS of the
    backgrounds are a hue, never one of the scene's own colour names, and every fill stands clear."""
    rng = random.Random(1)
    coloured = light = 0
    for k in range(1200):
        scene = random_scene(rng, word_probability=0.0, count_weights=(1, 1, 1), layout="free")
        style = Style("pillow", "plain", 8, 8)
        names = tuple({o.colour for o in scene.objects})
        ground = background(style, rng, light=k % 2 == 0, avoid=names)
        mean = ground.reshape(-1, 3).mean(0)
        assert all(np.linalg.norm(np.array(f, np.float32) - mean) >= MIN_CONTRAST
                   for f in fills(scene, style, rng, ground))
        if k % 2:
            continue
        light += 1  # on light grounds a grey's +-12 tint spans under 25 levels, a colour over 45
        if np.ptp(ground[0, 0]) > 35:
            coloured += 1
            hue = colorsys.rgb_to_hsv(*(ground[0, 0] / 255))[0]
            for name in names:  # the hue keeps clear of each of the scene's colours
                low, high = SHADES[name][0]
                assert abs((hue - (low + high) / 2 + 0.5) % 1.0 - 0.5) > (high - low) / 2, (name, hue)
    assert abs(coloured / light - COLOURED_GROUNDS) < 0.07


def test_pictures_are_a_pure_function_of_the_seed():
    for world in ("train", "heldout", "plain"):
        data = SyntheticData(56, seed=5, world=world)
        a, b = data.sample("vqa", 3), data.sample("vqa", 3)
        assert a.messages == b.messages
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))


def _coverage(image, ground: int) -> np.ndarray:
    """Per pixel, how far from the background towards full ink (0..1), from the red channel."""
    red = np.asarray(image, dtype=np.float32)[..., 0]
    return np.clip((ground - red) / ground, 0, 1)


@pytest.mark.parametrize("renderer", ["pillow", "pillow-aa", "opencv"])
def test_renderers_agree_with_the_numpy_coverage_raster(renderer):
    """The numpy raster (4x4 samples a pixel) is the reference: each renderer puts the same shapes
    in the same places, to within its edge handling (mean coverage difference <= 0.06, and the
    painted area within 6%; Pillow without anti-aliasing and OpenCV fill the pixels their outline touches: within 12%)."""
    rng = random.Random(1)
    for k in range(20):
        scene = random_scene(rng, word_probability=0.0)
        scene = Scene(objects=tuple(Shape(o.shape, "blue", o.size, o.cell, o.x, o.y, o.r, o.angle)
                                    for o in scene.objects))
        style = Style(renderer, "plain", 96, 96, shades=False, grey=255)
        reference = _coverage(draw(scene, 96, random.Random(k), Style("numpy", "plain", 96, 96, shades=False, grey=255)), 255)
        drawn = _coverage(draw(scene, 96, random.Random(k), style), 255)
        assert np.abs(drawn - reference).mean() <= 0.06
        assert abs(drawn.sum() - reference.sum()) <= (0.06 if renderer == "pillow-aa" else 0.12) * reference.sum()


def test_free_scenes_name_positions_by_centre_and_share_tokens_by_area():
    centred = Scene(objects=(Shape("circle", "red", "big", "bottom right", 0.5, 0.5, 0.2),))
    assert np.allclose(centred.shares(), 0.25, atol=0.01) and centred.painted() == [(0, 1, 2, 3)]
    assert not centred.objects[0].clear  # no position answer for a shape on the middle lines
    inside = Scene(objects=(Shape("square", "red", "small", "top left", 0.2, 0.25, 0.08, 0.3),))
    assert inside.painted() == [(0,)] and inside.objects[0].clear
    rng = random.Random(2)
    for _ in range(300):
        scene = random_scene(rng, word_probability=0.0, count_weights=(1, 1, 1, 1))
        assert np.allclose(scene.shares().sum(1), 1.0)
        assert len({o.cell for o in scene.objects}) == len(scene.objects)  # one centre per quadrant
        for o in scene.objects:
            x, y, r, _ = o.geometry()
            assert CELLS[(2 if y >= 0.5 else 0) + (1 if x >= 0.5 else 0)] == o.cell
            assert 0 < x - r * 0.99 and x + r * 0.99 < 1  # inside the picture
    for _ in range(100):  # the grid: upright, fixed sizes, moved within the quadrant, never over its edge
        grid = random_scene(rng, word_probability=0.0, layout="grid")
        assert np.allclose(grid.shares().max(1), 1.0)
        assert all(o.clear and o.angle == 0 and o.r == GRID_RADIUS[o.size] for o in grid.objects)


def test_heldout_phrasings_never_occur_in_training_data():
    assert not all_phrasings("train") & all_phrasings("heldout")
    held = [matcher(t) for t in all_phrasings("heldout")]
    data = SyntheticData(28, seed=0, world="train", draw=False)
    questions = [m["content"].split("\n")[-1] for i in range(1500) for kind in ("vqa", "describe")
                 for m in data.sample(kind, i).messages if m["role"] == "user"]
    assert not [q for q in questions if any(p.fullmatch(q) for p in held)]
    assert sum("color" in q for q in questions) > 50 and sum("colour" in q for q in questions) > 50
    asked = SyntheticData(28, seed=0, world="train", wording="heldout", draw=False)
    heldout = [s.messages[0]["content"].split("\n")[-1] for s in heldout_vqa(asked, 20)
               if s.question_type in WORDINGS or s.question_type == "yes_no"]
    assert heldout and all(any(p.fullmatch(q) for p in held) for q in heldout)


def test_yes_no_questions_are_answered_by_the_scene():
    data = SyntheticData(28, seed=4, world="train", draw=False)
    samples = [s for s in heldout_vqa(data, 200) if s.question_type == "yes_no"]
    answers = Counter(s.answer for s in samples)
    assert set(answers) == {"yes", "no"} and 0.35 < answers["yes"] / len(samples) < 0.65
    for s in samples:
        question, scene = s.messages[0]["content"].split("\n")[-1].lower().rstrip("?"), s.scenes[0]
        words = set(question.replace("color", "colour").split())
        mentioned = [o for o in scene.objects if o.shape in words or o.colour in words]
        if s.answer == "yes":
            assert mentioned
    assert "yes_no" in QUESTION_TYPES


def test_vlm_train_world_train_runs_and_records_its_world(tmp_path):
    """`vlm-train --world train`: the training world's pictures and words through every stage (a
    thread drawing the next batch), the world saved with the checkpoint and used by vlm-eval."""
    import json

    from vlm_edge.train.cli import eval_main, main

    out = tmp_path / "ckpt"
    assert main(["--preset", "micro", "--world", "train", "--steps", "vision=2,align=1,pretrain=1,sft=3",
                 "--eval-per-type", "0", "--device", "cpu", "-o", str(out)]) == 0
    assert json.loads((out / "training" / "train_config.json").read_text())["world"] == "train"
    assert eval_main([str(out), "--per-type", "1", "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["data"]["world"] == "train" and "yes_no" in result["accuracy"]


def test_statement_captions_tell_the_scene_and_ask_nothing():
    """The training wording's statement captions use a user's words ("things", "corner") in true
    sentences about the picture, and never a held-out question's phrasing (nor any question)."""
    from vlm_edge.train.datasets import statements
    from vlm_edge.train.scenes import NUMBERS

    held = [matcher(t) for t in all_phrasings("heldout")]
    rng = random.Random(5)
    words = Counter()
    for _ in range(400):
        scene = random_scene(rng, word_probability=0.2, count_weights=(1, 1, 1, 1))
        text = statements(scene, rng)
        sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
        assert sentences and "?" not in text and not [s for s in sentences if any(p.fullmatch(s) for p in held)]
        words.update(w.strip(".").lower() for w in text.split())
        if scene.word is not None:
            assert all(scene.word in s for s in sentences)
            continue
        counted = [s for s in sentences if set(NUMBERS[1:5]) & set(s.lower().rstrip(".").split())]
        assert counted and all(NUMBERS[len(scene.objects)] in s.lower() for s in counted)
        for s in sentences:
            if s not in counted:  # about one object, named by a shape (and colour) it alone has
                named = [o for o in scene.objects if o.shape in s]
                assert len(named) == 1 and (named[0].colour in s.replace("color", "colour")
                                            or named[0].cell in s or named[0].size in s)
    assert {"things", "corner", "visible", "contains", "read", "number"} <= set(words)
