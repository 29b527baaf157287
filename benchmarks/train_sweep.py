"""Seed sweep of the `tiny` training recipe and variants of it: how much of a quality change is the
change, and how much is the seed?

One run of the tiny recipe moves colour and shape accuracy by 20-30 points with the random
initialisation (docs/training.md), so a recipe change is judged on several seeds. This script runs
(variant, seed) pairs as separate processes, several at a time, each with its own thread budget,
and prints per question type the mean, minimum and maximum exact match over the seeds, and per
seed how many of the README's four questions about examples/shapes.png the float model answers
right, with its probability of "red" for the first ("What colour is the circle?").

    python benchmarks/train_sweep.py --variants base,heads8 --seeds 0-3 --jobs 4 --threads 2 --work /tmp/sweep
    python benchmarks/train_sweep.py ... --device cuda --jobs 12 --precision fp32   # many at once on one GPU

A variant is a named change to the tiny preset's dimensions or recipe (VARIANTS below). Results go
to WORK/<variant>-s<seed>/result.json and the table to WORK/sweep.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# name -> {"dims": ModelDims field overrides, "stages": {stage: StageConfig overrides}, "all_stages": {...},
#          "data": {train.datasets module constant: value}, "config": {TrainConfig field: value},
#          "lookup": {train.lookup module constant: value},
#          "patch": a name in PATCHES (a function that changes the data generators or the trainer)}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # the current tiny recipe
    # the previous recipe (before 2026-11-22): equally likely shape counts in SFT, reading-order captions only
    "previous": {"data": {"SFT_COUNT_WEIGHTS": None, "FACT_CAPTION_PROBABILITY": 0.0}},
    "heads8": {"dims": {"heads": 8, "kv_heads": 4}},
    "vision192x6": {"dims": {"vision_hidden": 192, "vision_intermediate": 384, "vision_layers": 6, "vision_heads": 4}},
    "llm6x160": {"dims": {"hidden": 160, "intermediate": 448, "layers": 6, "heads": 4, "kv_heads": 2}},
    "lr1e-3": {"all_stages": {"lr": 1e-3}},
    "lr5e-4": {"all_stages": {"lr": 5e-4}},
    "sft2900": {"stages": {"sft": {"steps": 2900}}},  # twice the SFT budget (over 10 minutes on 2 cores)
    "pretrain700": {"stages": {"pretrain": {"steps": 700}}},
    "counts123": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 2.0, 3.0)}},
    "counts111": {"data": {"SFT_COUNT_WEIGHTS": None}},  # equally likely counts, fact captions kept
    "nofacts": {"data": {"FACT_CAPTION_PROBABILITY": 0.0}},
    "posinit1": {"config": {"vision_position_std": 1.0}},  # vision position embeddings at init: std 1, not 1/sqrt(width)
    "smoke": {"stages": {"vision": {"steps": 2}, "align": {"steps": 2}, "pretrain": {"steps": 2}, "sft": {"steps": 4}}},
    # scenes that fill all four cells: SFT 1:2:2:2 or 1:1:2:4 shapes, and captions of 1-4 shapes
    "sft1222": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 2.0, 2.0, 2.0)}},
    "sft1124": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 1.0, 2.0, 4.0)}},
    "four": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 1.0, 2.0, 4.0), "CAPTION_COUNT_WEIGHTS": (1.0, 1.0, 1.0, 1.0)}},
    "posdefault": {"config": {"vision_position_std": None}},  # transformers' position-embedding init
    "four-posdefault": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 1.0, 2.0, 4.0)}, "config": {"vision_position_std": None}},
    # generator changes (PATCHES below)
    "grid": {"patch": "grid"},  # the board's centre cross drawn, so an object's cell shows in its pixels
    "markers": {"patch": "markers"},  # multi-image prompts "Image 1: <image>\nImage 2: <image>\n..." (before NAME_IMAGES)
    "multi3": {"patch": "multi3"},  # training multi-image questions name the object by colour, shape or both
    "four-markers": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 1.0, 2.0, 4.0)}, "patch": "markers"},
    "mimetic": {"patch": "mimetic"},  # mimetic attention init of the LLM (W_q ~ W_k, W_o ~ W_v^T)
    "pos05": {"config": {"vision_position_std": 0.5}},
    "pos2": {"config": {"vision_position_std": 2.0}},
    "four-multi3": {"data": {"SFT_COUNT_WEIGHTS": (1.0, 1.0, 2.0, 4.0), "CAPTION_COUNT_WEIGHTS": (1.0, 1.0, 1.0, 1.0)},
                    "patch": "multi3"},
    # the parts of the recipe of 2026-12-05, each taken away (docs/training.md, "Seeing first")
    "novision": {"stages": {"vision": {"steps": 0}}},  # no vision stage (the probes still train beside the LM loss)
    "noprobes": {"config": {"probe_weight": 0.0}},  # the vision stage, then no probe loss in later stages
    "noseeing": {"stages": {"vision": {"steps": 0}}, "config": {"probe_weight": 0.0}},  # neither
    "wholecells": {"patch": "wholecells"},  # cell names as one token each ("top left"), not two
    "caption123": {"data": {"CAPTION_COUNT_WEIGHTS": None}},  # captions of 1-3 shapes
    # the parts of the look-up recipe (docs/training.md, "Looking things up"), each taken away
    "nolookup": {"config": {"lookup_weight": 0.0}},  # no look-up loss
    "unnamed": {"data": {"NAME_IMAGES": False}},  # multi-image prompts "<image>\n<image>\n...", nothing to name them
    "multi1": {"data": {"FIRST_QUESTIONS": ("colour", "shape", "count", "position", "size", "word", "multi_image",
                                            "colour")}},  # multi-image conversations 1 in 8, not 3 in 10
    "pos34": {"data": {"POSITION_MIN_OBJECTS": 3, "POSITION_COUNT_WEIGHTS": (0.0, 0.0, 1.0, 2.0)}},  # position: 3-4 shapes only
    "sft1450": {"stages": {"pretrain": {"steps": 350}, "sft": {"steps": 1450}}},  # the steps before (over 10 minutes)
    # how much SFT the recipe needs (docs/training.md, "How much SFT the recipe needs")
    "lookup2": {"lookup": {"EXTRA_LOOKUP_LAYERS": (2,)}},  # answers' look-ups learnt by head 0 of layer 2 too
    "sftlr1e-3": {"stages": {"sft": {"lr": 1e-3}}},
    "sft24x1000": {"stages": {"sft": {"batch_size": 24, "steps": 1000}}},  # more, smaller steps; 6% fewer samples
    "sft24x875": {"stages": {"sft": {"batch_size": 24, "steps": 875}}},
    "sft16x1070": {"stages": {"sft": {"batch_size": 16, "steps": 1070}}},
    "frozen24x1000": {"stages": {"sft": {"batch_size": 24, "steps": 1000}}, "patch": "sftfrozen"},
    "lookup3": {"config": {"lookup_weight": 3.0}},
    "lookup03": {"config": {"lookup_weight": 0.3}},
    "nofactlookups": {"data": {"FACT_LOOKUPS": False}},  # no look-ups in pre-training fact captions
    "sft720": {"stages": {"sft": {"steps": 720}}},  # 10% fewer SFT steps
    "multi3in10": {"data": {"FIRST_QUESTIONS": ("colour", "shape", "count", "position", "size", "word", "multi_image",
                                                "colour", "multi_image", "multi_image")}},  # multi-image 3 in 10, not 4 in 11
    # which picture holds which object: said in pre-training documents, and read out beside the look-up
    # (docs/training.md, "Which picture"); all with SFT 720
    "which50noread": {"data": {"WHICH_PICTURE_PROBABILITY": 0.5}, "lookup": {"PICTURE_READOUT": False},
                      "stages": {"sft": {"steps": 720}}},
    "which100noread": {"data": {"WHICH_PICTURE_PROBABILITY": 1.0}, "lookup": {"PICTURE_READOUT": False},
                       "stages": {"sft": {"steps": 720}}},
    "read720ans": {"data": {"WHICH_PICTURE_PROBABILITY": 0.0}, "lookup": {"NAMING_READOUT": False},
                   "stages": {"sft": {"steps": 720}}},  # the readout on answers only
    "which100ans": {"data": {"WHICH_PICTURE_PROBABILITY": 1.0}, "lookup": {"NAMING_READOUT": False},
                    "stages": {"sft": {"steps": 720}}},
    "read720": {"data": {"WHICH_PICTURE_PROBABILITY": 0.0}, "stages": {"sft": {"steps": 720}}},
    "which100": {"data": {"WHICH_PICTURE_PROBABILITY": 1.0}, "stages": {"sft": {"steps": 720}}},
    "which640": {"data": {"WHICH_PICTURE_PROBABILITY": 1.0}, "stages": {"sft": {"steps": 640}}},
    # answers that repeat words of the prompt look at them (train/lookup.py COPY_LOOKUPS; not in the recipe)
    "copy": {"lookup": {"COPY_LOOKUPS": True}},
    "fit2": {"stages": {"vision": {"steps": 250}, "pretrain": {"steps": 120},
                        "sft": {"batch_size": 24, "steps": 1000}}},
}


def _patch_grid(datasets: Any) -> None:
    from PIL import ImageDraw

    render = datasets.render

    def with_grid(scene: Any, size: int, rng: Any) -> Any:
        image = render(scene, size, rng)
        if scene.word is None:
            draw, half, grey = ImageDraw.Draw(image), size // 2, (scene.background - 90,) * 3
            draw.rectangle((half - 1, 0, half, size - 1), fill=grey)
            draw.rectangle((0, half - 1, size - 1, half), fill=grey)
        return image

    datasets.render = with_grid


def _patch_markers(datasets: Any) -> None:
    image, multi = datasets.IMAGE_TOKEN, datasets._multi_image
    datasets.NAME_IMAGES = False  # the prompt this patch rewrites: "<image>\n<image>\n..."

    def labelled(data: Any, rng: Any, split: str, turns: int = 1) -> Any:
        sample = multi(data, rng, split, turns)
        text = sample.messages[0]["content"]
        sample.messages[0]["content"] = f"Image 1: {image}\nImage 2: {image}\n" + text[2 * (len(image) + 1):]
        return sample

    def interleaved(data: Any, rng: Any, split: str) -> Any:
        scenes = [data.scene(rng, split) for _ in range(rng.randint(2, 3))]
        lines = [f"Image {i + 1}: {image}\nThe {('first', 'second', 'third')[i]} picture shows {datasets.describe(s)}."
                 for i, s in enumerate(scenes)]
        return datasets.Sample([data.image(s, rng) for s in scenes], text="\n".join(lines), kind="interleaved")

    datasets._multi_image = labelled
    datasets._BUILDERS["interleaved"] = interleaved


def _patch_multi3(datasets: Any) -> None:
    image = datasets.IMAGE_TOKEN

    def multi(data: Any, rng: Any, split: str, turns: int = 1) -> Any:
        while True:
            scenes = [data.scene(rng, split, word_probability=0.0) for _ in range(2)]
            pairs = [{(o.colour, o.shape) for o in s.objects} for s in scenes]
            refs = [(f"a {c} {sh}", i) for i in range(2) for c, sh in sorted(pairs[i] - pairs[1 - i])]
            if split == "train":
                for attr, name in (("colour", "a {} object"), ("shape", "a {}")):
                    values = [{getattr(o, attr) for o in s.objects} for s in scenes]
                    refs += [(name.format(v), i) for i in range(2) for v in sorted(values[i] - values[1 - i])]
            if refs:
                break
        rng.shuffle(refs)
        messages = []
        for k, (ref, target) in enumerate(refs[:turns]):
            question = f"Which image has {ref}? Answer first or second."
            messages += [{"role": "user", "content": f"{image}\n{image}\n{question}" if k == 0 else question},
                         {"role": "assistant", "content": ("first", "second")[target]}]
        return datasets.Sample([data.image(s, rng) for s in scenes], messages=messages, kind="vqa",
                               question_type="multi_image", answer=messages[1]["content"])

    datasets._multi_image = multi


def _patch_mimetic(datasets: Any) -> None:
    """Mimetic attention init for the from-scratch LLM: each head's key weights start as its query
    weights plus noise (W_q W_k^T close to a projection: a token attends to tokens like itself), and
    each head's output weights as its value weights transposed (W_o W_v close to +a projection)."""
    import torch

    from vlm_edge.train import trainer

    new_model = trainer.Trainer._new_model

    def mimetic(self: Any, config: Any) -> Any:
        checkpoint = new_model(self, config)
        llm = checkpoint.model.llm
        heads, kv_heads = llm.config.num_attention_heads, llm.config.num_key_value_heads
        with torch.no_grad():
            for layer in llm.model.layers:
                a = layer.self_attn
                d = a.q_proj.weight.shape[0] // heads
                q = a.q_proj.weight.view(heads, d, -1)
                k = a.k_proj.weight.view(kv_heads, d, -1)
                for g in range(kv_heads):
                    group = q[g * (heads // kv_heads):(g + 1) * (heads // kv_heads)]
                    base = k[g].clone()
                    for h in range(group.shape[0]):
                        group[h].copy_(base + 0.3 * torch.randn_like(base) * base.std())
                v = a.v_proj.weight.view(kv_heads, d, -1)
                o = a.o_proj.weight.view(-1, heads, d)
                for h in range(heads):
                    o[:, h, :].copy_(v[h // (heads // kv_heads)].t() * (o.std() / v.std()))
        return checkpoint

    trainer.Trainer._new_model = mimetic


def _patch_wholecells(datasets: Any) -> None:
    from vlm_edge.train import tokenizer

    tokenizer.WHOLE_WORDS = tokenizer.WHOLE_CELLS


def _patch_sftfrozen(datasets: Any) -> None:
    """SFT with the vision tower frozen and without the probes (they only keep the tower's
    training from washing out what it learnt to see): less work per SFT step."""
    from vlm_edge.train import trainer

    run_stage = trainer.Trainer._run_stage

    def frozen(self: Any, index: int, stage: Any) -> None:
        if stage.name != "sft":
            return run_stage(self, index, stage)
        stage.train = tuple(m for m in stage.train if m != "vision_tower")
        probes, self.probes = self.probes, None
        try:
            run_stage(self, index, stage)
        finally:
            self.probes = probes

    trainer.Trainer._run_stage = frozen


PATCHES = {"grid": _patch_grid, "markers": _patch_markers, "multi3": _patch_multi3, "mimetic": _patch_mimetic,
           "wholecells": _patch_wholecells, "sftfrozen": _patch_sftfrozen}


def _seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def run_one(variant: str, seed: int, out: Path, device: str, precision: str, per_type: int,
            numerics: str = "native") -> dict[str, Any]:
    """Train and evaluate one (variant, seed) in this process."""
    from vlm_edge.model import presets
    from vlm_edge.train.recipe import default_config
    from vlm_edge.train.trainer import Trainer

    from vlm_edge.train import datasets

    change = VARIANTS[variant]
    for name, value in change.get("data", {}).items():  # module-level knobs of the synthetic data
        assert hasattr(datasets, name), name
        setattr(datasets, name, value)
    from vlm_edge.train import lookup

    for name, value in change.get("lookup", {}).items():  # the look-up loss's layers
        assert hasattr(lookup, name), name
        setattr(lookup, name, value)
    if "patch" in change:
        PATCHES[change["patch"]](datasets)
    presets.PRESETS["tiny"] = dataclasses.replace(presets.PRESETS["tiny"], **change.get("dims", {}))
    config = default_config("tiny", seed=seed, device=device, precision=precision, numerics=numerics,
                            **change.get("config", {}))
    config.eval_per_type = per_type
    config.checkpoint_every = 10**9  # only at the end of each stage
    for stage in config.stages:
        for key, value in {**change.get("all_stages", {}), **change.get("stages", {}).get(stage.name, {})}.items():
            setattr(stage, key, value)
    start = time.time()
    trainer = Trainer(config, out / "ckpt", force=True)
    result = trainer.run()
    record = {"variant": variant, "seed": seed, "seconds": time.time() - start, **result,
              "readme": readme_answers(trainer.checkpoint)}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# The README's questions about examples/shapes.png and their right answers
README_QUESTIONS = {"What colour is the circle?": "red", "Where is the red circle?": "top left",
                    "What shape is the blue object?": "square", "How many objects are there?": "three"}


def readme_answers(checkpoint: Any, renders: int = 20) -> dict[str, Any]:
    """The trained float model's greedy answers to the README's questions about examples/shapes.png,
    its probability of " red" for the first, and its answers to that question about `renders` fresh
    renders of the same scene (the renderer jitters shapes by a pixel or two): a margin, not one draw."""
    import random

    import torch
    from PIL import Image

    from vlm_edge.common.image import preprocess_images
    from vlm_edge.common.templates import render
    from vlm_edge.model.generate import GenerationConfig, generate
    from vlm_edge.train.scenes import Scene, Shape
    from vlm_edge.train.scenes import render as draw

    model, tokenizer, template = checkpoint.model.eval(), checkpoint.tokenizer, checkpoint.template
    config = GenerationConfig(max_new_tokens=8, stop_token_ids=tokenizer.stop_token_ids(template))
    example = Image.open(Path(__file__).resolve().parents[1] / "examples" / "shapes.png").convert("RGB")
    scene = Scene(objects=(Shape("circle", "red", "big", "top left"), Shape("square", "blue", "small", "top right"),
                           Shape("triangle", "green", "big", "bottom right")))

    def ask(question: str, image: Any) -> str:
        prompt = tokenizer.tokenize_prompt(render(template, [{"role": "user", "content": f"<image>\n{question}"}]))
        pixels = preprocess_images([image], model.image_processor_config)
        return tokenizer.decode(generate(model, prompt, pixels, config).token_ids).strip()

    first = next(iter(README_QUESTIONS))
    with torch.no_grad():
        answers = {q: ask(q, example) for q in README_QUESTIONS}
        prompt = tokenizer.tokenize_prompt(render(template, [{"role": "user", "content": f"<image>\n{first}"}]))
        logits = model([prompt], torch.from_numpy(preprocess_images([example], model.image_processor_config))).logits
        p_red = float(logits[0, -1].softmax(-1)[tokenizer.encode(" red")[0]])
        size = model.image_processor_config.width
        fresh = [ask(first, draw(scene, size, random.Random(i))) for i in range(renders)]
    return {"answers": answers, "right": sum(answers[q] == a for q, a in README_QUESTIONS.items()),
            "p_red": round(p_red, 3), "renders_red": sum(a == "red" for a in fresh), "renders": renders}


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == variant]
        types = list(runs[0]["accuracy"])
        table[variant] = {
            "seeds": [r["seed"] for r in runs],
            "accuracy": {t: {"mean": statistics.mean(r["accuracy"][t] for r in runs),
                             "min": min(r["accuracy"][t] for r in runs),
                             "max": max(r["accuracy"][t] for r in runs),
                             "runs": [r["accuracy"][t] for r in runs]} for t in types},
            "perplexity": statistics.mean(r["perplexity"] for r in runs),
            "seconds": statistics.mean(r["seconds"] for r in runs),
            # README questions answered right (of 4) and p(" red") for the first, per seed
            "readme": [(r["readme"]["right"], r["readme"]["p_red"]) for r in runs if "readme" in r],
        }
    return table


def format_summary(table: dict[str, dict[str, Any]]) -> str:
    types = list(next(iter(table.values()))["accuracy"])
    lines = [f"{'variant':<14} {'seeds':>5} " + " ".join(f"{t[:11]:>17}" for t in types)
             + f" {'ppl':>6} {'min.':>5}  README right/4, p(red)",
             f"{'':<14} {'':>5} " + " ".join(f"{'mean (min-max)':>17}" for _ in types)]
    for variant, row in table.items():
        cells = [f"{a['mean']:>6.1%} ({a['min']:.0%}-{a['max']:.0%})" for a in row["accuracy"].values()]
        lines.append(f"{variant:<14} {len(row['seeds']):>5} " + " ".join(f"{c:>17}" for c in cells)
                     + f" {row['perplexity']:>6.3f} {row['seconds'] / 60:>5.1f}  "
                     + " ".join(f"{right}/{p:.2f}" for right, p in row["readme"]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="base", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0-3", help="e.g. 0-3 or 0,5,7 (default 0-3)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="fp32 (default) matches a CPU run's arithmetic")
    p.add_argument("--numerics", default="native", choices=("native", "portable"),
                   help="CPU kernels: native (default, each host's fastest) or portable (vlm-train's default)")
    p.add_argument("--per-type", type=int, default=200, help="held-out questions per type (default 200)")
    p.add_argument("--work", required=True, help="folder for the runs' checkpoints and results")
    p.add_argument("--summarize", action="store_true", help="only print the table of the runs already in --work")
    p.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args()
    work = Path(args.work)

    if args.one:
        variant, seed = args.one[0], int(args.one[1])
        out = work / f"{variant}-s{seed}"
        out.mkdir(parents=True, exist_ok=True)
        from vlm_edge.train import numerics

        numerics.request(args.numerics)  # before torch is imported
        import torch

        from vlm_edge.common.log import setup_logging

        setup_logging(False)  # the trainer's progress lines go to the run's log
        torch.set_num_threads(args.threads)
        run_one(variant, seed, out, args.device, args.precision, args.per_type, args.numerics)
        return 0

    if args.summarize:
        records = [json.loads(f.read_text()) for f in sorted(work.glob("*/result.json"))]
        if not records:
            p.error(f"no finished runs in {work}")
        print(format_summary(summarize(records)))
        return 0

    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    pairs = [(v, s) for v in variants for s in _seeds(args.seeds)]
    work.mkdir(parents=True, exist_ok=True)

    def launch(pair: tuple[str, int]) -> dict[str, Any] | None:
        variant, seed = pair
        log = work / f"{variant}-s{seed}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, __file__, "--work", str(work), "--device", args.device, "--precision",
                   args.precision, "--numerics", args.numerics, "--per-type", str(args.per_type), "--threads", str(args.threads), "--one", variant, str(seed)]
        with open(log, "w") as f:
            code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        result = work / f"{variant}-s{seed}" / "result.json"
        if code or not result.is_file():
            print(f"{variant} seed {seed}: failed (exit {code}); see {log}", flush=True)
            return None
        record = json.loads(result.read_text())
        acc = " ".join(f"{t} {a:.0%}" for t, a in record["accuracy"].items())
        print(f"{variant} seed {seed}: {record['seconds'] / 60:.1f} min  {acc}", flush=True)
        return record

    with ThreadPoolExecutor(args.jobs) as pool:
        records = [r for r in pool.map(launch, pairs) if r is not None]
    if not records:
        return 1
    table = summarize(records)
    (work / "sweep.json").write_text(json.dumps(table, indent=2) + "\n")
    print(format_summary(table))
    return 0 if len(records) == len(pairs) else 1


if __name__ == "__main__":
    sys.exit(main())
