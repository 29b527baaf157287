"""The training module: data, freezing, data-parallel equivalence, kill-and-resume, user data.

All runs use the `micro` preset (a step takes milliseconds) and skip the final evaluation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_edge.common.errors import InputError
from vlm_edge.common.templates import get_template
from vlm_edge.model import load_checkpoint
from vlm_edge.model.vila import IGNORE_INDEX
from vlm_edge.train.batching import encode
from vlm_edge.train.datasets import QUESTION_TYPES, SFT_COUNT_WEIGHTS, SyntheticData, heldout_vqa, load_conversations
from vlm_edge.train.scenes import random_scene
from vlm_edge.train.recipe import StageConfig, TrainConfig
from vlm_edge.train.tokenizer import train_tokenizer
from vlm_edge.train.trainer import Trainer, corpus

MICRO = ["--preset", "micro", "--eval-per-type", "0", "--device", "cpu"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def _assert_close(a: dict, b: dict, atol: float) -> float:
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, f"max abs difference {worst:g} > {atol:g}"
    return worst


# ---- data ------------------------------------------------------------------------------------------
def test_samples_are_deterministic_and_splits_disjoint():
    data = SyntheticData(28, seed=3)
    a, b = data.sample("vqa", 17), data.sample("vqa", 17)
    assert a.messages == b.messages and np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    from vlm_edge.train.datasets import _is_heldout  # the split rule itself

    train_scenes = [data.scene(__import__("random").Random(i), "train") for i in range(500)]
    assert not any(_is_heldout(s) for s in train_scenes)
    held = heldout_vqa(data, 5)
    assert {s.question_type for s in held} == set(data.question_types) and len(held) == 5 * len(data.question_types)
    assert set(QUESTION_TYPES) - set(data.question_types) == {"yes_no"}  # the plain wording asks no yes/no


def test_fact_captions_and_sft_scene_sizes():
    data = SyntheticData(28, seed=3)
    captions = [data.sample("caption", i).text for i in range(300)]
    fact_texts = [c for c in captions if c.startswith("<image>\nThe ") and " is " in c and "word" not in c]
    assert 0.25 < len(fact_texts) / len(captions) < 0.6  # half the captions, when the scene has a unique shape
    for text in fact_texts:
        shapes = [part.split(" is ")[0].removeprefix("The ") for part in text.split("\n")[1].split(". ") if part]
        assert len(shapes) == len(set(shapes))  # each fact names a shape the picture holds once
    rng = random.Random(0)
    weighted = [len(random_scene(rng, word_probability=0.0, count_weights=SFT_COUNT_WEIGHTS).objects) for _ in range(3000)]
    for k, weight in enumerate(SFT_COUNT_WEIGHTS, start=1):
        assert abs(weighted.count(k) / 3000 - weight / sum(SFT_COUNT_WEIGHTS)) < 0.03
    full = [len(random_scene(rng, word_probability=0.0, count_weights=(0.0, 0.0, 0.0, 1.0)).objects) for _ in range(20)]
    assert full == [4] * 20  # a fourth weight fills every cell (benchmarks/train_sweep.py's variants)
    heldout = [s.objects for s in heldout_vqa(data, 60) if s.question_type == "count"]
    share_one = heldout.count(1) / len(heldout)
    assert 0.2 < share_one < 0.5 and max(heldout) == 3  # evaluation keeps 1-3, equally likely
    with pytest.raises(ValueError, match="count_weights"):
        random_scene(rng, word_probability=0.0, count_weights=(1.0,) * 5)


def test_encoding_puts_loss_on_the_answer_only():
    data = SyntheticData(28)
    tokenizer = train_tokenizer(corpus(data, "plain", per_kind=200), vocab_size=300)
    template = get_template("plain")
    sample = data.sample("vqa", 5)
    ids, labels = encode(sample, tokenizer, template)
    answer = [t for t in labels if t != IGNORE_INDEX]
    answers = [m["content"] for m in sample.messages if m["role"] == "assistant"]  # every turn's answer
    assert tokenizer.decode(answer, skip_special_tokens=False) == "".join(f" {a}</s>" for a in answers)
    # the prompt part is tokenized exactly as at inference
    from vlm_edge.common.templates import render

    prompt = tokenizer.tokenize_prompt(render(template, sample.messages[:1]))
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    doc_ids, doc_labels = encode(data.sample("caption", 1), tokenizer, template)
    assert doc_labels[0] == IGNORE_INDEX and doc_ids[-1] == tokenizer.eos_id and doc_labels[-1] == tokenizer.eos_id


def test_tokenizer_can_keep_cell_names_whole(monkeypatch):
    """With WHOLE_WORDS (benchmarks/train_sweep.py's wholecells variant) a position answer is one
    token, as a colour is; text around it tokenizes and decodes as before."""
    from vlm_edge.train import tokenizer as tokenizer_module
    from vlm_edge.train.scenes import CELLS

    plain = train_tokenizer(corpus(SyntheticData(28), "plain", per_kind=200), vocab_size=300)
    assert len(plain.encode(" top left")) > 1  # the recipe's tokenizer: BPE does not merge across a space
    monkeypatch.setattr(tokenizer_module, "WHOLE_WORDS", tokenizer_module.WHOLE_CELLS)
    tokenizer = train_tokenizer(corpus(SyntheticData(28), "plain", per_kind=200), vocab_size=300)
    for cell in CELLS:
        ids = tokenizer.encode(f"ASSISTANT: {cell}</s>")
        assert tokenizer.decode(ids[-2:-1]) == f" {cell}" and tokenizer.decode(ids) == f"ASSISTANT: {cell}"
    words = tokenizer.encode("A red circle at the top left and a cat at the bottom right.")
    assert [tokenizer.decode([t]) for t in words].count(" top left") == 1
    assert tokenizer.decode(words) == "A red circle at the top left and a cat at the bottom right."


def test_loss_on_target_positions_equals_the_full_loss(tmp_path):
    """The trainer's loss (LM head only where a label follows) is transformers' causal-LM loss,
    in value and in every gradient."""
    from vlm_edge.train.batching import collate
    from vlm_edge.train.recipe import default_config

    trainer = Trainer(default_config("micro", eval_per_type=0, device="cpu"), tmp_path / "ckpt")
    model, tokenizer = trainer.model, trainer.checkpoint.tokenizer
    samples = [trainer.data.sample(kind, i) for i, kind in enumerate(["vqa", "describe", "text", "caption", "interleaved"])]
    batch = collate(samples, tokenizer, trainer.checkpoint.template, model.image_processor_config)
    pixels = torch.from_numpy(batch.pixel_values)
    for items in (None, torch.tensor(7.0)):
        kwargs = {} if items is None else {"num_items_in_batch": items}
        model.zero_grad()
        full = model(batch.input_ids, pixels, batch.labels, **kwargs).loss
        full.backward()
        reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        fast = model(batch.input_ids, pixels, batch.labels, loss_only=True, **kwargs).loss
        fast.backward()
        fast_value, full_value = fast.item(), full.item()
        assert abs(fast_value - full_value) <= 1e-5 * max(1.0, abs(full_value))
        for name, grad in reference.items():
            assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-4), name


# ---- the look-up loss ------------------------------------------------------------------------------
def test_lookup_targets_are_the_object_each_answer_is_about():
    """Every grounded answer is an attribute of the object it points at (or, multi-image, names the
    picture that object is in); the queried positions are the ones that predict the answer; each
    token of a named picture looks at the word naming it, just before the picture."""
    from vlm_edge.train.batching import encode_with_lookups
    from vlm_edge.train.lookup import LOOKUP_LAYER, NAMING_LAYER
    from vlm_edge.train.scenes import CELLS

    data = SyntheticData(28)
    tokenizer = train_tokenizer(corpus(data, "plain", per_kind=200), vocab_size=300)
    template, cells = get_template("plain"), [0, 2, 1, 3]  # column-major tokens
    grounded = multi = 0
    for i in range(300):
        sample = data.sample("vqa", i)
        answers = [m["content"] for m in sample.messages if m["role"] == "assistant"]
        questions = [m["content"] for m in sample.messages if m["role"] == "user"]
        assert len(sample.grounding) == len(answers)
        for question, answer, targets in zip(questions, answers, sample.grounding):
            if question.endswith(("written?", "there?")):
                assert targets == ()
                continue
            assert targets, question
            for image, cell in targets:
                o = next(o for o in sample.scenes[image].objects if o.cell == CELLS[cell])
                if sample.question_type == "multi_image":
                    assert answer == ("first", "second")[image] and f" {o.colour} {o.shape}?" in question
                    multi += 1
                else:
                    assert answer in (o.colour, o.shape, o.size, o.cell)
                    assert f" {o.shape}" in question or f" {o.colour} " in question
            grounded += 1
        ids, labels, all_lookups = encode_with_lookups(sample, tokenizer, template, cells)
        assert encode(sample, tokenizer, template) == (ids, labels)
        lookups = [(q, t) for layer, q, t in all_lookups if layer == LOOKUP_LAYER]
        predicted = tokenizer.decode([ids[q + 1] for q, _ in lookups])
        assert predicted.split() == [w for a, g in zip(answers, sample.grounding) if g for w in a.split()]
        assert all(labels[q + 1] != IGNORE_INDEX for q, _ in lookups)
        assert {(image, cells[t]) for _, tokens in lookups for image, t in tokens} == {
            pair for g in sample.grounding for pair in g}  # image tokens back to the objects' cells
        naming = [(q, t) for layer, q, t in all_lookups if layer == NAMING_LAYER]
        if sample.question_type == "multi_image":
            assert sorted(q for q, _ in naming) == [(k, t) for k in range(2) for t in range(4)]
            placeholders = [j for j, t in enumerate(ids) if t == -200]
            for (k, _), span in naming:
                assert tokenizer.decode([ids[j] for j in span]) == (" first", " second")[k]
                assert (placeholders[k - 1] if k else 0) < span[0] and span[-1] < placeholders[k]
        else:
            assert naming == []
    assert grounded > 300 and multi > 10


CELLS_COLUMN_MAJOR = [0, 2, 1, 3]  # the scene cell of each image token of the tiny models


def _samples_with_lookups(kind: str, count: int):
    """(sample, tokenizer, ids, labels, lookups) of the first `count` samples of `kind`, encoded
    with their look-ups (and the same ids and labels as without)."""
    from vlm_edge.train.batching import encode_with_lookups

    data = SyntheticData(28)
    tokenizer = train_tokenizer(corpus(data, "plain", per_kind=200), vocab_size=300)
    template = get_template("plain")
    for i in range(count):
        sample = data.sample(kind, i)
        ids, labels, lookups = encode_with_lookups(sample, tokenizer, template, CELLS_COLUMN_MAJOR)
        assert encode(sample, tokenizer, template) == (ids, labels)
        yield sample, tokenizer, ids, labels, lookups


def test_fact_captions_look_at_the_object_each_fact_is_about(monkeypatch):
    """With FACT_LOOKUPS, the positions that predict a fact caption's " small and blue, at the top
    right" look at the object named before it ("The square is"); reading-order captions and
    documents that describe pictures in order have no look-ups."""
    from vlm_edge.train import datasets
    from vlm_edge.train.lookup import LOOKUP_LAYER
    from vlm_edge.train.scenes import CELLS

    monkeypatch.setattr(datasets, "FACT_LOOKUPS", True)
    facts = 0
    for sample, tokenizer, ids, labels, lookups in _samples_with_lookups("caption", 200):
        if not sample.text_grounding:
            assert lookups == []
            continue
        sentences = sample.text.split("\n", 1)[1].rstrip(".").split(". ")
        assert len(lookups) == sum(len(tokenizer.encode(s.split(" is", 1)[1])) for s in sentences)
        for layer, query, targets in lookups:
            assert layer == LOOKUP_LAYER and labels[query + 1] != IGNORE_INDEX
            said = tokenizer.decode(ids[:query + 2])  # the caption up to the token predicted
            scene = sample.scenes[0]
            o = next(o for o in scene.objects if o.shape == said.rsplit("The ", 1)[1].split(" is ")[0])
            # the fact being said is about o: it looks at o's tokens (its centre's and those it covers a share of)
            assert sorted(CELLS_COLUMN_MAJOR[token] for _, token in targets) == list(scene.painted()[scene.objects.index(o)])
            assert CELLS.index(o.cell) in [CELLS_COLUMN_MAJOR[token] for _, token in targets]
            facts += 1
    assert facts > 500
    monkeypatch.setattr(datasets, "WHICH_PICTURE_PROBABILITY", 0.0)  # documents describing 2-3 pictures in order
    assert all(datasets.SyntheticData(28).sample("interleaved", i).text_grounding is None for i in range(20))


def test_which_picture_documents_look_at_the_object_and_name_each_picture(monkeypatch):
    """A pre-training document "The first image: <image>\nThe second image: <image>\nThe red circle
    is in the second image. ..." says, for each colour and shape only one picture has, which picture
    it is in: the positions predicting " second image" look at that object's tokens in that picture,
    and each picture's tokens look at the word that names it."""
    from vlm_edge.common.tokenizer import IMAGE_TOKEN
    from vlm_edge.train import datasets
    from vlm_edge.train.lookup import LOOKUP_LAYER, NAMING_LAYER
    from vlm_edge.train.scenes import CELLS

    monkeypatch.setattr(datasets, "WHICH_PICTURE_PROBABILITY", 1.0)
    statements = 0
    for sample, tokenizer, ids, labels, lookups in _samples_with_lookups("interleaved", 100):
        assert sample.text.startswith(f"The first image: {IMAGE_TOKEN}\nThe second image: {IMAGE_TOKEN}\n")
        named = [lk for lk in lookups if lk[0] == NAMING_LAYER]
        assert len(named) == 2 * len(CELLS_COLUMN_MAJOR)
        for _, (image, _), span in named:
            assert tokenizer.decode([ids[t] for t in span]).strip() == ("first", "second")[image]
        for layer, query, targets in (lk for lk in lookups if lk[0] != NAMING_LAYER):
            assert layer == LOOKUP_LAYER and labels[query + 1] != IGNORE_INDEX
            said = tokenizer.decode(ids[:query + 2]).rsplit(". ", 1)[-1].rsplit("\n", 1)[-1]
            colour, shape = said.split()[1:3]  # "The red circle is in the sec..."
            for image, token in targets:
                o = next(o for o in sample.scenes[image].objects if o.cell == CELLS[CELLS_COLUMN_MAJOR[token]])
                assert (o.colour, o.shape) == (colour, shape)
                assert all((o.colour, o.shape) != (colour, shape) for o in sample.scenes[1 - image].objects)
                assert f"The {colour} {shape} is in the {('first', 'second')[image]} image." in sample.text
            statements += 1
    assert statements > 300


def test_copy_lookups_look_at_the_words_an_answer_repeats(monkeypatch):
    """With COPY_LOOKUPS, each position that predicts a word of an answer that repeats its prompt
    ("Repeat after me: red cat" -> "red cat", "Which of these is a colour: cat or red?" -> "red")
    looks at that same word in the prompt; other text answers have no look-ups."""
    from vlm_edge.train import lookup
    from vlm_edge.train.lookup import LOOKUP_LAYER

    monkeypatch.setattr(lookup, "COPY_LOOKUPS", True)
    copied = 0
    for sample, tokenizer, ids, labels, lookups in _samples_with_lookups("text", 60):
        if sample.answer not in sample.messages[0]["content"]:
            assert lookups == []
            continue
        assert len(lookups) == len(tokenizer.encode(f" {sample.answer}"))
        for layer, query, (target,) in lookups:
            assert layer == LOOKUP_LAYER and labels[query + 1] == ids[query + 1] == ids[target] and target < query
            copied += 1
    assert copied > 40


def test_lookup_loss_is_minus_log_the_attention_the_model_computes(tmp_path):
    """The look-up loss's attention weights (computed beside the model from its layers' inputs) are
    the ones the LLM's own eager attention returns, at every queried position of both layers; its
    picture readout reads the model's own hidden state at the input of the layer after the look-up
    (multi-image answers: which picture holds the object); its gradient reaches the layers below,
    the projector and the readout."""
    from vlm_edge.train.batching import collate
    from vlm_edge.train.lookup import LOOKUP_HEAD, LOOKUP_LAYER, NAMING_LAYER, READOUT_LAYER, expanded_positions
    from vlm_edge.train.recipe import default_config

    trainer = Trainer(default_config("micro", eval_per_type=0, device="cpu", lookup_weight=1.0), tmp_path / "ckpt")
    model = trainer.model
    samples = [trainer.data.sample("vqa", i) for i in range(24)]
    batch = collate(samples, trainer.checkpoint.tokenizer, trainer.checkpoint.template, model.image_processor_config,
                    trainer.cells, targets=False, lookups=True)
    trainer.lookup.armed = True
    inputs = model.build_inputs(batch.input_ids, model.encode_images(torch.from_numpy(batch.pixel_values)))
    model.llm.config._attn_implementation = "eager"  # the reference: attention weights as the model computes them
    out = model.llm(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                    position_ids=inputs.position_ids, output_attentions=True, output_hidden_states=True)
    trainer.lookup.armed = False
    count = sum(len(s) for s in batch.lookups)
    loss, mean, read = trainer.lookup(batch.input_ids, batch.lookups, 4, torch.tensor(float(count)))
    decoder = model.llm.get_decoder()  # micro's LLM has two layers: the readout reads the final norm's output
    readout_input = (decoder.layers[READOUT_LAYER].input_layernorm(out.hidden_states[READOUT_LAYER])
                     if READOUT_LAYER < len(decoder.layers) else out.hidden_states[-1])
    token_input = decoder.layers[LOOKUP_LAYER].input_layernorm(out.hidden_states[LOOKUP_LAYER])
    want, layers, readout, named = [], set(), [], []
    for b, (ids, sample) in enumerate(zip(batch.input_ids, batch.lookups)):
        positions, images = expanded_positions(ids, 4)

        def at(ref):
            return positions[ref] if isinstance(ref, int) else images[ref[0]] + ref[1]

        for layer, query, targets in sample:
            want.append(sum(out.attentions[layer][b, LOOKUP_HEAD, at(query), at(t)] for t in targets))
            layers.add(layer)
            if layer == LOOKUP_LAYER and len(images) == 2:  # a multi-image answer: its object is in one picture
                (picture,) = {t[0] for t in targets}
                logits = trainer.probes.readout(readout_input[b, at(query)])
                readout.append((-logits.log_softmax(-1)[picture], logits.argmax() == picture))
            if layer == NAMING_LAYER:  # an image token of a named picture: which one it is
                named.append(-trainer.probes.readout(token_input[b, at(query)]).log_softmax(-1)[query[0]])
    want = torch.stack(want)
    assert count == len(want) > 10 and layers == {0, 1} and len(readout) > 2 and len(named) > 8
    expected = (-want.log().sum() + sum(ce for ce, _ in readout) + sum(named)) / count
    assert abs(loss.item() - expected.item()) < 1e-5 and abs(mean.item() - want.mean().item()) < 1e-6
    assert read.item() == pytest.approx(sum(float(r) for _, r in readout) / len(readout))
    loss.backward()
    assert model.llm.get_decoder().layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert next(model.mm_projector.parameters()).grad is not None
    assert trainer.probes.readout.weight.grad.abs().sum() > 0


def test_training_with_the_lookup_loss_gives_the_same_weights_every_time(tmp_path):
    """Two runs of the same recipe with the look-up loss end bit for bit equal (its rows are picked
    with one-hot products: the backward of an index with repeated rows summed in a varying order)."""
    from vlm_edge.train.recipe import default_config

    digests = []
    for run in range(2):
        config = default_config("tiny", eval_per_type=0, device="cpu", threads=2)  # micro is too small to show it
        for stage in config.stages:
            stage.steps = {"vision": 1, "align": 1, "pretrain": 1, "sft": 12}[stage.name]
        trainer = Trainer(config, tmp_path / f"run{run}")
        trainer.run()
        digests.append([v.clone() for _, v in sorted(trainer.model.state_dict().items())])
    assert all(torch.equal(a, b) for a, b in zip(*digests))


# ---- freezing --------------------------------------------------------------------------------------
def test_frozen_modules_do_not_change(tmp_path):
    config = TrainConfig(preset="micro", eval_per_type=0, device="cpu",
                         stages=[StageConfig("align", 3, 1e-2, 4, ("mm_projector",), {"caption": 1.0}, warmup_steps=1)])
    trainer = Trainer(config, tmp_path / "ckpt")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("mm_projector."), key


# ---- the vision stage --------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_vision_stage_targets_follow_the_projector_token_order(order):
    """Which cell each image token covers, as the 2x2 downsample itself moves the patches: a 4x4
    patch grid whose every patch carries its own cell, through DownSample, must give the cells
    token_cells names (and picture_targets fills those cells' fields)."""
    from vlm_edge.model.projector import DownSample
    from vlm_edge.train.picture_stage import FIELDS, IGNORE, picture_targets, token_cells
    from vlm_edge.train.scenes import CELLS, Scene, Shape

    patch_cell = torch.tensor([[(r // 2) * 2 + c // 2 for c in range(4)] for r in range(4)], dtype=torch.float32)
    tokens = DownSample(order)(patch_cell.reshape(1, 16, 1))[0]  # [4 tokens, 4 patches]
    assert all(bool((row == row[0]).all()) for row in tokens)  # each token covers one cell
    cells = token_cells(order, 4)
    assert cells == [int(row[0]) for row in tokens]

    scene = Scene(objects=(Shape("circle", "red", "big", "top right"), Shape("square", "blue", "small", "bottom left")))
    targets = picture_targets(scene, cells)
    names = [name for name, _ in FIELDS]
    for t, cell in enumerate(cells):
        row = dict(zip(names, targets[t].tolist()))
        assert row["cell"] == cell and row["word"] == IGNORE
        if CELLS[cell] == "top right":
            assert (row["kind"], row["colour"], row["shape"], row["size"]) == (1, 0, 0, 1)  # red circle, big
        elif CELLS[cell] == "bottom left":
            assert (row["kind"], row["colour"], row["shape"], row["size"]) == (1, 2, 1, 0)  # blue square, small
        else:
            assert row["kind"] == 0 and row["colour"] == row["shape"] == row["size"] == IGNORE
    word = picture_targets(Scene(word="cup"), cells)
    assert (word[:, 0] == 2).all() and (word[:, 5] == 4).all() and (word[:, 1:4] == IGNORE).all()
    with pytest.raises(InputError, match="2x2 or 4x4 image tokens.*--steps vision=0"):
        token_cells(order, 196)


def test_sixteen_tokens_read_each_shape_off_the_regions_it_covers(tmp_path):
    """On a 4x4 token grid (tiny16: 56 px, 14 px patches, no merge) a shape's region is where its
    centre is, its look-ups reach every region holding a sixteenth of it, the probes' cell field is
    the region's quadrant; and a few steps of every stage train with probes and look-ups on it."""
    from vlm_edge.train.cli import main
    from vlm_edge.train.picture_stage import IGNORE, picture_targets, token_cells
    from vlm_edge.train.scenes import Scene, Shape

    cells = token_cells(None, 16)
    assert cells == list(range(16)) and token_cells("column_major", 16)[1] == 4
    small = Scene(objects=(Shape("square", "red", "small", "top left", 0.36, 0.11, 0.06),), grid=4)
    assert small.region(small.objects[0]) == 1 and small.painted() == [(1,)]
    big = Scene(objects=(Shape("circle", "blue", "big", "bottom right", 0.5, 0.5, 0.2),
                         Shape("triangle", "green", "small", "top left", 0.12, 0.12, 0.08)), grid=4)
    assert np.allclose(big.shares().sum(1), 1.0) and big.painted()[0] == (5, 6, 9, 10) and big.region(big.objects[0]) == 10
    targets = picture_targets(big, cells)
    assert [t for t in range(16) if targets[t, 0] == 1] == [0, 10]  # kind SHAPE where a centre is
    assert list(targets[:, 4]) == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]  # each region's quadrant
    assert (targets[[5, 6, 9], 2] == 0).all() and targets[15, 1] == IGNORE  # the circle reaches over; a corner is empty
    data = SyntheticData(56, seed=1, world="train", layout="free", grid=4)
    assert all(s.grid == 4 for i in range(10) for s in data.sample("vqa", i).scenes)
    assert SyntheticData(56, seed=1, world="train", layout="free").sample("vqa", 3).scenes[0] == data.sample("vqa", 3).scenes[0]
    assert main(["--preset", "tiny16", "--eval-per-type", "0", "--device", "cpu", "--world", "train",
                 "--steps", "vision=2,align=1,pretrain=2,sft=2", "--batch-size", "4", "-o", str(tmp_path / "ckpt")]) == 0
    config = json.loads((tmp_path / "ckpt" / "mm_projector" / "config.json").read_text())
    assert config["mm_projector_type"] == "mlp2x_gelu"


def test_vision_stage_trains_tower_and_projector_to_see(tmp_path):
    """The probes read each cell's contents better and better; the LLM does not move."""
    config = TrainConfig(preset="micro", eval_per_type=0, device="cpu", log_every=20, stages=[
        StageConfig("vision", 120, 5e-3, 16, ("vision_tower", "mm_projector"), {"picture": 1.0}, warmup_steps=5)])
    trainer = Trainer(config, tmp_path / "ckpt")
    llm = {k: v.clone() for k, v in trainer.model.llm.state_dict().items()}
    trainer.run()
    assert all(torch.equal(llm[k], v) for k, v in trainer.model.llm.state_dict().items())
    history = json.loads((tmp_path / "ckpt" / "training" / "trainer_state.json").read_text())["history"]
    first, last = history[0], history[-1]
    assert last["loss"] < 0.65 * first["loss"] and "images_per_s" in last
    # the micro tower is 32 wide: empty / shape / word and the colour come first (the tiny tower's
    # 400 steps take every probe to about 99%: docs/training.md)
    assert last["probe_accuracy"]["kind"] > 0.9 and last["probe_accuracy"]["colour"] > 0.8
    assert not (tmp_path / "ckpt" / "training" / "probes.pt").exists()  # the probes go with the finished stage


def test_vision_stage_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped after its step-5 checkpoint and resumed, the vision stage (probes and optimizer
    restored) ends where an uninterrupted run ends."""
    from vlm_edge.train import trainer as trainer_module

    def config() -> TrainConfig:
        return TrainConfig(preset="micro", eval_per_type=0, device="cpu", checkpoint_every=5, stages=[
            StageConfig("vision", 9, 3e-3, 8, ("vision_tower", "mm_projector"), {"picture": 1.0}, warmup_steps=2),
            StageConfig("align", 2, 1e-3, 4, ("mm_projector",), {"caption": 1.0})])

    Trainer(config(), tmp_path / "full").run()
    batch = trainer_module.DataMix.batch

    def stop_at_step_7(self, stage_index, stage, step, par):
        if step == 7:
            raise KeyboardInterrupt
        return batch(self, stage_index, stage, step, par)

    monkeypatch.setattr(trainer_module.DataMix, "batch", stop_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tmp_path / "cut").run()
    assert _state(tmp_path / "cut")["step"] == 5 and (tmp_path / "cut" / "training" / "probes.pt").is_file()
    monkeypatch.setattr(trainer_module.DataMix, "batch", batch)
    Trainer(config(), tmp_path / "cut", resume=True).run()
    _assert_close(_weights(tmp_path / "full"), _weights(tmp_path / "cut"), atol=1e-6)


def test_vision_stage_is_skipped_for_a_tower_that_already_sees(tmp_path):
    from vlm_edge.train.cli import build_config, train_parser

    args = train_parser().parse_args(["-o", str(tmp_path), "--preset", "tiny", "--init-vision", str(tmp_path)])
    config = build_config(args)
    stages = {s.name: s.steps for s in config.stages}
    assert stages["vision"] == 0 and stages["sft"] > 0 and config.probe_weight == 0
    # a tower of the preset's own token grid, pretrained elsewhere: its vision stage and probes on request
    args = train_parser().parse_args(["-o", str(tmp_path), "--preset", "tiny", "--init-vision", str(tmp_path),
                                      "--steps", "vision=400"])
    config = build_config(args)
    assert {s.name: s.steps for s in config.stages}["vision"] == 400 and config.probe_weight == 1.0
    with pytest.raises(InputError, match="cannot be mixed"):
        StageConfig("odd", 1, 1e-3, 2, ("llm",), {"picture": 1.0}).validate()


def test_tiny16_starts_from_the_shipped_tower_and_refuses_an_altered_one(tmp_path):
    """tiny16's defaults: free scenes of the train world and the tower that ships with vlm-edge (its
    vision stage and probes kept); --init-vision none trains the tower from scratch; the shipped
    files are checked before use; a fine-tune draws its synthetic share as the checkpoint's run did."""
    import shutil

    from safetensors.torch import load_file

    from vlm_edge.common.errors import CheckpointError
    from vlm_edge.model.architectures import VISION_ARCHITECTURES
    from vlm_edge.train.cli import build_config, train_parser
    from vlm_edge.train.evaluate import training_layout
    from vlm_edge.train.towers import HERE, TOWERS, tower_folder

    config = build_config(train_parser().parse_args(["-o", str(tmp_path / "a"), "--preset", "tiny16"]))
    assert (config.init_vision, config.world, config.layout, config.probe_weight) == ("vlm-edge:tiny16", "train", "free", 1.0)
    assert {s.name: s.steps for s in config.stages}["vision"] == 400
    config = build_config(train_parser().parse_args(["-o", str(tmp_path / "a"), "--preset", "tiny16",
                                                     "--init-vision", "none", "--layout", "grid"]))
    assert config.init_vision is None and config.layout == "grid" and config.stages[0].steps == 400
    assert build_config(train_parser().parse_args(["-o", str(tmp_path / "a")])).init_vision is None  # tiny: none

    assert tower_folder("vlm-edge:tiny16") == HERE / "tiny16"
    trainer = Trainer(TrainConfig(preset="tiny16", init_vision="vlm-edge:tiny16", eval_per_type=0, device="cpu", stages=[
        StageConfig("align", 1, 1e-3, 2, ("mm_projector",), {"caption": 1.0})]), tmp_path / "b")
    shipped = load_file(str(HERE / "tiny16" / "model.safetensors"))
    tower = trainer.model.vision_tower.state_dict()
    prefix = VISION_ARCHITECTURES["SiglipVisionModel"].disk_prefix
    assert shipped and all(torch.equal(tower[k.removeprefix(prefix)], v) for k, v in shipped.items())
    copy = tmp_path / "shipped"
    shutil.copytree(HERE, copy)
    assert tower_folder("vlm-edge:tiny16", root=copy) == copy / "tiny16"
    weights = copy / "tiny16" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        tower_folder("vlm-edge:tiny16", root=copy)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing this file"):
        tower_folder("vlm-edge:tiny16", root=copy)
    with pytest.raises(CheckpointError, match="ships tiny16"):
        tower_folder("vlm-edge:other")
    assert set(TOWERS["tiny16"]) == {p.name for p in (HERE / "tiny16").iterdir()}

    ckpt = tmp_path / "ckpt"
    (ckpt / "training").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "training" / "train_config.json").write_text(json.dumps({"preset": "tiny", "world": "train", "layout": "free"}))
    config = build_config(train_parser().parse_args(["-o", str(tmp_path / "c"), "--init", str(ckpt), "--data", "x.json"]))
    assert (config.world, config.layout, [s.name for s in config.stages]) == ("train", "free", ["sft"])
    assert training_layout(ckpt, "heldout") == "free" and training_layout(ckpt, "plain") is None


# ---- data-parallel equivalence -----------------------------------------------------------------------
def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun with 2 gloo processes and a global batch of 8 == 1 process with a batch of 8."""
    args = MICRO + ["--steps", "align=2,pretrain=2,sft=3", "--batch-size", "8"]
    single = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", *args, "-o", str(tmp_path / "one")],
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vlm_edge.train.cli", *args, "-o", str(tmp_path / "two")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Same data, same loss normalisation; only the order of float32 gradient sums differs (~1e-7),
    # which Adam's per-parameter normalisation can amplify for near-zero gradients over 7 steps.
    _assert_close(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-4)
    one = json.loads((tmp_path / "one" / "training" / "trainer_state.json").read_text())["history"]
    two = json.loads((tmp_path / "two" / "training" / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in one] == [h["step"] for h in two]
    np.testing.assert_allclose([h["loss"] for h in one], [h["loss"] for h in two], rtol=1e-4)


# ---- kill and resume ---------------------------------------------------------------------------------
def _state(path: Path) -> dict | None:
    try:
        return json.loads((path / "training" / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_killed_run_resumes_to_the_same_state(tmp_path):
    args = MICRO + ["--steps", "align=2,pretrain=2,sft=120", "--checkpoint-every", "5", "--batch-size", "4"]
    full = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", *args, "-o", str(tmp_path / "full")],
                          capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    run = subprocess.Popen([sys.executable, "-m", "vlm_edge.train.cli", *args, "-o", str(tmp_path / "cut")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        state = _state(tmp_path / "cut")
        if state and state["stage"] == 3 and state["step"] >= 5:  # vision, align, pretrain, sft
            break
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)  # a real kill, mid-stage
    run.wait()
    state = _state(tmp_path / "cut")
    assert state is not None and state["stage"] == 3 and 5 <= state["step"] < 120, state
    # a kill leaves no half-written checkpoint behind: only the last complete one (and maybe a .partial)
    assert all(p.name == "cut" or p.name.startswith(".cut.") or p.name == "full" for p in tmp_path.iterdir())

    resumed = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", "-o", str(tmp_path / "cut"), "--resume"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    _assert_close(_weights(tmp_path / "full"), _weights(tmp_path / "cut"), atol=1e-6)


def test_output_directory_is_not_clobbered(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "mine.txt").write_text("keep")
    config = TrainConfig(preset="micro", eval_per_type=0, stages=[StageConfig("align", 1, 1e-3, 2, ("mm_projector",), {"caption": 1})])
    with pytest.raises(InputError, match="--resume .* or --force"):
        Trainer(config, tmp_path / "ckpt")
    with pytest.raises(InputError, match="no training state"):
        Trainer(config, tmp_path / "ckpt", resume=True)
    assert (tmp_path / "ckpt" / "mine.txt").read_text() == "keep"


def test_precision_option(tmp_path):
    stages = [StageConfig("sft", 2, 1e-3, 2, ("vision_tower", "mm_projector", "llm"), {"vqa": 1.0})]
    with pytest.raises(InputError, match="precision 'fp16' is unknown"):
        TrainConfig(preset="micro", precision="fp16", stages=stages).validate()
    # bf16 autocast is what a GPU run uses by default; on a CPU it is asked for explicitly
    Trainer(TrainConfig(preset="micro", eval_per_type=0, precision="bf16", device="cpu", stages=stages), tmp_path / "ckpt").run()
    saved = json.loads((tmp_path / "ckpt" / "training" / "train_config.json").read_text())
    assert saved["precision"] == "bf16"
    weights = _weights(tmp_path / "ckpt")
    assert all(torch.isfinite(w.float()).all() for w in weights.values())


# ---- users' own data ---------------------------------------------------------------------------------
GOOD = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]}


@pytest.mark.parametrize(
    "record,phrase",
    [("text", "must be a JSON object"),
     ({**GOOD, "conversations": []}, "'conversations' must be a non-empty list"),
     ({**GOOD, "image": 3}, "'image' must be a file name"),
     ({**GOOD, "image": "missing.png"}, "missing.png does not exist"),
     ({**GOOD, "conversations": [{"from": "robot", "value": "x"}, GOOD["conversations"][1]]}, "'from' must be one of"),
     ({**GOOD, "conversations": [GOOD["conversations"][0], {"from": "gpt", "value": 5}]}, "string 'value'"),
     ({**GOOD, "conversations": [GOOD["conversations"][0]]}, "last turn must be the assistant"),
     ({**GOOD, "conversations": [GOOD["conversations"][1], GOOD["conversations"][0]]}, "expected a user turn"),
     ({**GOOD, "image": ["a.png", "a.png"]}, "1 <image> placeholder(s) but 2 image(s)")],
)
def test_user_data_rejects_broken_records_with_their_index(tmp_path, record, phrase):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "data.json").write_text(json.dumps([GOOD, GOOD, record]))
    with pytest.raises(InputError) as info:
        load_conversations(tmp_path / "data.json")
    assert "record 2:" in str(info.value) and phrase in str(info.value), str(info.value)


def test_user_data_loads_multi_image_records(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    records = [GOOD, {"image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image> vs <image>: same?"}, {"from": "gpt", "value": "yes"},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    (tmp_path / "data.json").write_text(json.dumps(records))
    samples = load_conversations(tmp_path / "data.json")
    assert [len(s.images) for s in samples] == [1, 2, 0] and len(samples[1].messages) == 4


# ---- init from existing component folders -------------------------------------------------------------
def test_init_from_existing_llm_and_vision_folders(tmp_path):
    from vlm_edge.model import Checkpoint, VilaModel
    from vlm_edge.model.presets import byte_level_tokenizer, preset_config

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(5)
    source = Checkpoint(VilaModel(preset_config("micro", tokenizer)), tokenizer)
    source.save(tmp_path / "src")
    config = TrainConfig(preset="micro", eval_per_type=0, init_llm=str(tmp_path / "src" / "llm"),
                         init_vision=str(tmp_path / "src" / "vision_tower"),
                         stages=[StageConfig("align", 1, 1e-3, 2, ("mm_projector",), {"caption": 1.0})])
    trainer = Trainer(config, tmp_path / "out")
    for name in ("llm", "vision_tower"):
        want, got = getattr(source.model, name).state_dict(), getattr(trainer.model, name).state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert trainer.checkpoint.tokenizer.tokenizer.to_str() == tokenizer.tokenizer.to_str()
    assert trainer.checkpoint.config.chat_template == "vicuna_v1"  # judged from the LLM's vocabulary
    trainer.run()
    assert load_checkpoint(tmp_path / "out").config.llm == source.config.llm | {"torch_dtype": "float32"}



def test_vlm_eval_data_scores_a_users_test_set(tmp_path, capsys):
    """--data: every assistant turn is a question; the model's own answers score 100%, other answers
    0%; a broken record or picture stops with one line naming the record, exit 2."""
    from vlm_edge.common.conversations import read_conversations
    from vlm_edge.train.cli import eval_main
    from vlm_edge.train.datasets import write_calibration_set
    from vlm_edge.train.evaluate import evaluate_conversations, normalize_answer, question_word

    assert normalize_answer("  Red. ") == "red" and normalize_answer("top left") == "top left"
    assert question_word("<image>\nWhat colour is it?") == "what" and question_word("Is it red?") == "is"
    config = TrainConfig(preset="micro", eval_per_type=0, seed=4,
                         stages=[StageConfig("sft", 2, 1e-3, 4, ("mm_projector", "llm"), {"vqa": 1.0})])
    Trainer(config, tmp_path / "ckpt").run()
    data = tmp_path / "set"
    write_calibration_set(SyntheticData(load_checkpoint(tmp_path / "ckpt").config.image_size, 1), data, count=8)
    records = json.loads((data / "conversations.json").read_text())
    turns = sum(len(r["conversations"]) // 2 for r in records)
    assert eval_main([str(tmp_path / "ckpt"), "--data", str(data / "conversations.json"), "--json",
                      str(tmp_path / "first.json")]) == 0
    assert "exact match" in capsys.readouterr().out
    first = json.loads((tmp_path / "first.json").read_text())
    assert first["answers"] == turns and sum(g["count"] for g in first["by_question_word"].values()) == turns

    # first questions only, with the model's own answers (and a full stop) as references: every one
    # matches (a fixed budget: an untrained model never stops, and the default budget follows the reference)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    records = [{**r, "conversations": r["conversations"][:2]} for r in records]
    (data / "first.json").write_text(json.dumps(records))
    conversations = read_conversations(data / "first.json")
    for row in evaluate_conversations(ckpt, conversations, keep_rows=True, max_new_tokens=12)["rows"]:
        records[row["record"]]["conversations"][row["turn"]]["value"] = row["answer"] + "."
    (data / "own.json").write_text(json.dumps(records))
    own = evaluate_conversations(ckpt, read_conversations(data / "own.json"), max_new_tokens=12)
    assert own["exact_match"] == 1.0 and own["answers"] == len(records)
    for record in records:
        for turn in range(1, len(record["conversations"]), 2):
            record["conversations"][turn]["value"] = "nothing like it"
    (data / "wrong.json").write_text(json.dumps(records))
    assert evaluate_conversations(ckpt, read_conversations(data / "wrong.json"))["exact_match"] == 0.0
    assert evaluate_conversations(ckpt, conversations, limit=3)["answers"] == 3

    broken = [records[0], {"image": records[0]["image"], "conversations": [{"from": "human", "value": "hi"}]}]
    (data / "broken.json").write_text(json.dumps(broken))
    assert eval_main([str(tmp_path / "ckpt"), "--data", str(data / "broken.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 1" in err[0] and "assistant" in err[0], err
    picture = next(r for r in records if r.get("image"))
    (data / (picture["image"][0] if isinstance(picture["image"], list) else picture["image"])).write_bytes(b"not a png")
    (data / "picture.json").write_text(json.dumps([picture]))
    assert eval_main([str(tmp_path / "ckpt"), "--data", str(data / "picture.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 0" in err[0] and "could not be decoded" in err[0], err


def test_users_records_are_drawn_once_an_epoch_in_new_orders_and_pictures_reframed(tmp_path):
    """Every user record once an epoch, each epoch in an order of its own (seeded: the same on a
    resume); with augment, each draw's picture is a 90-100% crop scaled back: same size, colours kept."""
    from PIL import Image

    from vlm_edge.train.datasets import Sample, augment_picture
    from vlm_edge.train.trainer import DataMix, Distributed

    picture = np.zeros((40, 40, 3), np.uint8)
    picture[10:30, 10:30] = (200, 30, 30)
    path = tmp_path / "red.png"
    Image.fromarray(picture).save(path)
    user = [Sample([str(path)], messages=[{"role": "user", "content": f"<image>\n{i}"}], kind="user") for i in range(7)]
    mix = DataMix(SyntheticData(28, seed=3), user)
    first, second = [[mix.user_sample(g) for g in range(e * 7, e * 7 + 7)] for e in (0, 1)]
    assert sorted(map(id, first)) == sorted(map(id, user)) == sorted(map(id, second)) and first != second
    assert [s is t for s, t in zip(first, [DataMix(SyntheticData(28, seed=3), user).user_sample(g) for g in range(7)])] == [True] * 7
    mixed = DataMix(SyntheticData(28, seed=3), user, augment=True)
    draws = [np.asarray(mixed.user_sample(g).images[0]) for g in range(14)]
    assert all(d.shape == (40, 40, 3) for d in draws) and any((d != picture).any() for d in draws)
    assert all(abs(int(d[20, 20, 0]) - 200) <= 2 and d[20, 20, 2] <= 32 for d in draws)  # the middle stays red
    # in a fine-tune's mix, the steps that draw the synthetic share skip no user record
    stage = StageConfig("sft", 40, 1e-3, 3, ("llm",), {"user": 0.8, "vqa": 0.2})
    mix, seen = DataMix(SyntheticData(28, seed=3), user), []
    for step in range(40):
        if mix.kind(0, stage, step) == "user":
            seen += [id(s) for s in mix.batch(0, stage, step, Distributed())]
    assert 21 <= len(seen) < 40 * 3
    assert all(sorted(seen[k:k + 7]) == sorted(map(id, user)) for k in range(0, len(seen) - 6, 7))
    again = augment_picture(Image.fromarray(picture), random.Random(5))
    assert np.array_equal(np.asarray(again), np.asarray(augment_picture(Image.fromarray(picture), random.Random(5))))


def test_init_fine_tunes_a_trained_checkpoint_on_a_users_data(tmp_path, capsys):
    """vlm-train --init ckpt/ --data: the checkpoint's weights and tokenizer, one SFT stage with the
    user's data dominant, a tenth of the records held out, scored at the end and saved for vlm-eval."""
    from vlm_edge.train.cli import eval_main, main
    from vlm_edge.train.datasets import write_calibration_set
    from vlm_edge.train.recipe import FINETUNE_LR_SCALE, FINETUNE_SYNTHETIC, RECIPES, finetune_stages

    (stage,) = finetune_stages("micro")
    assert stage.name == "sft" and stage.mix["user"] == 1 - FINETUNE_SYNTHETIC
    recipe_sft = next(s for s in RECIPES["tiny16"] if s.name == "sft")
    assert finetune_stages("tiny16")[0].lr == recipe_sft.lr * FINETUNE_LR_SCALE == 3.5e-4  # the measured default
    assert abs(sum(w for k, w in stage.mix.items() if k != "user") - FINETUNE_SYNTHETIC) < 1e-9
    assert finetune_stages("tiny16")[0].steps == 1600 and stage.steps == 8  # micro keeps its recipe's SFT
    config = TrainConfig(preset="micro", eval_per_type=0, seed=4,
                         stages=[StageConfig("sft", 2, 1e-3, 4, ("mm_projector", "llm"), {"vqa": 1.0})])
    Trainer(config, tmp_path / "ckpt").run()
    write_calibration_set(SyntheticData(load_checkpoint(tmp_path / "ckpt").config.image_size, 9), tmp_path / "mine",
                          count=30)
    data = str(tmp_path / "mine" / "conversations.json")
    args = ["--init", str(tmp_path / "ckpt"), "--data", data, "-o", str(tmp_path / "out"), "--steps", "sft=2",
            "--eval-per-type", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "your held-out records (3)" in out and "exact match" in out
    saved = json.loads((tmp_path / "out" / "training" / "train_config.json").read_text())
    assert saved["init"] == str(tmp_path / "ckpt") and saved["stages"][0]["mix"]["user"] == 1 - FINETUNE_SYNTHETIC
    held = json.loads((tmp_path / "out" / "training" / "heldout.json").read_text())
    assert len(held) == 3 and all(Path(i).is_absolute() for r in held for i in r.get("image", []))
    result = json.loads((tmp_path / "out" / "training" / "eval.json").read_text())["user_data"]
    assert result["answers"] == sum(len(r["conversations"]) // 2 for r in held)
    assert load_checkpoint(tmp_path / "out").tokenizer.tokenizer.to_str() == \
        load_checkpoint(tmp_path / "ckpt").tokenizer.tokenizer.to_str()  # the checkpoint's own tokenizer
    assert eval_main([str(tmp_path / "out"), "--data", str(tmp_path / "out" / "training" / "heldout.json")]) == 0
    capsys.readouterr()

    # misuse: one line, exit 2
    for bad, phrase in ((["--init", str(tmp_path / "ckpt"), "-o", str(tmp_path / "x")], "add --data"),
                        (["--init", str(tmp_path / "mine"), "--data", data, "-o", str(tmp_path / "y")], "config.json"),
                        (["--init", str(tmp_path / "ckpt"), "--data", data, "-o", str(tmp_path / "ckpt"), "--force"],
                         "same directory")):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err


def test_the_example_data_set_is_a_valid_users_set(tmp_path):
    """examples/shapes_dataset.py writes LLaVA-format records that --data reads, one 64x64 picture and
    one question each, with answers from its vocabulary."""
    from PIL import Image

    from vlm_edge.common.conversations import read_conversations

    script = Path(__file__).resolve().parents[1] / "examples" / "shapes_dataset.py"
    subprocess.run([sys.executable, str(script), "-o", str(tmp_path), "--train", "12", "--test", "5", "--seed", "3"],
                   check=True, capture_output=True)
    answers = {"red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "yes", "no"}
    for split, count in (("train", 12), ("test", 5)):
        conversations = read_conversations(tmp_path / f"{split}.json")
        assert len(conversations) == count
        for c in conversations:
            assert len(c.images) == 1 and Image.open(c.images[0]).size == (64, 64)
            assert len(c.messages) == 2 and c.messages[1]["content"] in answers

@pytest.mark.parametrize("std", [1.0, None])
def test_vision_position_embeddings_start_at_the_configured_spread(tmp_path, std):
    config = TrainConfig(preset="micro", eval_per_type=0, vision_position_std=std,
                         stages=[StageConfig("align", 1, 1e-3, 2, ("mm_projector",), {"caption": 1.0})])
    trainer = Trainer(config, tmp_path / "out")
    positions = trainer.model.vision_tower.embeddings.position_embedding.weight
    want = std if std is not None else positions.shape[1] ** -0.5  # transformers' SigLIP init otherwise
    assert abs(float(positions.detach().std()) - want) < 0.25 * want


def test_vlm_eval_prints_and_saves_the_table(tmp_path, capsys):
    from vlm_edge.train.cli import eval_main

    config = TrainConfig(preset="micro", eval_per_type=0, seed=4,
                         stages=[StageConfig("sft", 2, 1e-3, 4, ("mm_projector", "llm"), {"vqa": 1.0})])
    Trainer(config, tmp_path / "ckpt").run()
    assert eval_main([str(tmp_path / "ckpt"), "--per-type", "2", "--json", str(tmp_path / "eval.json")]) == 0
    assert "question type" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["accuracy"]) == set(QUESTION_TYPES) - {"yes_no"} and result["data"]["seed"] == 4
    assert result["data"]["world"] == "plain" and result["perplexity"] > 1  # the world it was trained in
    assert eval_main([str(tmp_path / "ckpt"), "--per-type", "1", "--world", "heldout", "--wording", "heldout",
                      "--layout", "free", "--json", str(tmp_path / "held.json")]) == 0
    held = json.loads((tmp_path / "held.json").read_text())
    assert set(held["accuracy"]) == set(QUESTION_TYPES)
    assert (held["data"]["world"], held["data"]["wording"], held["data"]["layout"]) == ("heldout", "heldout", "free")
    assert eval_main([str(tmp_path / "nowhere")]) == 2
