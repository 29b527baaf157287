"""The training loop: stages, data-parallel processes (torchrun), checkpoints and resume.

Determinism: step s of stage k draws its data kind from (seed, k, s) and uses samples
[s*B, (s+1)*B) of that kind, each a pure function of (seed, kind, index). Process r of W takes the
r-th contiguous slice of that global batch. So a batch does not depend on the number of
processes or on a resume.

Loss: summed cross-entropy over the answer/text tokens of the process's slice, divided by the
number of such tokens in the whole global batch, times W. DDP averages gradients over the W
processes, so the update equals a single process's over the global batch.

Checkpoints (every `checkpoint_every` steps and at the end of each stage, by process 0): the
output directory is replaced atomically by a VILA-layout checkpoint plus `training/`:

    training/train_config.json   the TrainConfig
    training/trainer_state.json  stage, step, metrics history
    training/optimizer.pt        AdamW state (for --resume)
    training/eval.json           the final evaluation
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from vlm_edge.common.conversations import read_conversations
from vlm_edge.common.errors import CheckpointError, InputError
from vlm_edge.common.fsutil import atomic_directory, recover_directory
from vlm_edge.common.log import get_logger
from vlm_edge.common.templates import get_template, render
from vlm_edge.common.fsutil import read_json
from vlm_edge.common.image import load_image, preprocess_images
from vlm_edge.common.tokenizer import default_chat_template
from vlm_edge.common.vila_config import PREPROCESSOR_FILE
from vlm_edge.model.architectures import LLM_ARCHITECTURES, VISION_ARCHITECTURES
from vlm_edge.model.checkpoint import Checkpoint, load_checkpoint, load_tokenizer, load_weights, write_checkpoint
from vlm_edge.model.presets import PRESETS, ModelDims, preset_config
from vlm_edge.model.vila import VilaModel

from . import numerics
from .batching import by_length, collate
from .datasets import (DATA_KINDS_SYNTHETIC, Sample, SyntheticData, augment_picture, conversation_records,
                       conversation_samples, split_heldout, write_calibration_set)
from .evaluate import evaluate, evaluate_conversations, format_conversation_table, format_table
from . import lookup as lookup_module
from .lookup import LookupLoss, lookup_count
from .picture_stage import FIELDS, PictureProbes, ProbedModel, picture_targets, target_counts, token_cells
from .towers import tower_folder
from .recipe import HELDOUT_MAX, HELDOUT_SHARE, StageConfig, TrainConfig
from .tokenizer import train_tokenizer

log = get_logger(__name__)
TRAINING_DIR = "training"
CALIBRATION_DIR = "calibration"  # held-out conversations + images that vlm-quant calibrates on
HELDOUT_FILE = "heldout.json"  # with --init and no --eval-data: the records held out of the user's data
PROBES_FILE = "probes.pt"  # the vision stage's linear probes, kept while that stage is unfinished (resume)


@dataclass
class TrainerState:
    stage: int = 0  # index of the current stage
    step: int = 0  # steps completed in it
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: torch.device) -> Distributed:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but torch sees no CUDA GPU")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# ---- data ----------------------------------------------------------------------------------------
class DataMix:
    """Step s of stage k draws one data kind by the stage's mix weights; its batch is samples
    [s*B, (s+1)*B) of that kind. One kind per batch keeps sequence lengths alike, so short
    caption batches are not padded to the length of an interleaved document."""

    def __init__(self, data: SyntheticData, user: list[Sample] | None, augment: bool = False):
        self.data, self.user, self.augment = data, user or [], augment
        self._orders: dict[int, list[int]] = {}  # epoch -> the order the user's records are drawn in
        self._user_steps: dict[int, list[int]] = {}  # stage -> user batches drawn before each step

    def kind(self, stage_index: int, stage: StageConfig, step: int) -> str:
        rng = random.Random(f"{self.data.seed}:mix:{stage_index}:{step}")
        kinds, weights = zip(*sorted(stage.mix.items()))
        return rng.choices(kinds, weights)[0]

    def batch(self, stage_index: int, stage: StageConfig, step: int, par: Distributed) -> list[Sample]:
        kind = self.kind(stage_index, stage, step)
        per_rank = stage.batch_size // par.world
        start = step * stage.batch_size + par.rank * per_rank
        if kind == "user":  # the user's draws run on through the steps that drew synthetic data
            start = self.user_steps_before(stage_index, stage, step) * stage.batch_size + par.rank * per_rank
            return [self.user_sample(g) for g in range(start, start + per_rank)]
        return [self.data.sample(kind, stage_index * 10**9 + g) for g in range(start, start + per_rank)]

    def user_steps_before(self, stage_index: int, stage: StageConfig, step: int) -> int:
        """How many of the stage's steps before `step` drew the user's records (a pure function of
        the seed: a resumed run counts the same)."""
        counts = self._user_steps.setdefault(stage_index, [0])
        while len(counts) <= step:
            counts.append(counts[-1] + (self.kind(stage_index, stage, len(counts) - 1) == "user"))
        return counts[step]

    def user_sample(self, g: int) -> Sample:
        """The user's g-th draw: every record once an epoch, in a seeded order of its own each epoch;
        with `augment`, each picture cropped and scaled a little (augment_picture), anew each draw."""
        epoch, index = divmod(g, len(self.user))
        if epoch not in self._orders:
            order = list(range(len(self.user)))
            random.Random(f"{self.data.seed}:user:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # draws go forward: one epoch's order is all a step needs
        sample = self.user[self._orders[epoch][index]]
        if not self.augment or not sample.images:
            return sample
        rng = random.Random(f"{self.data.seed}:augment:{g}")
        return dataclasses.replace(sample, images=[augment_picture(load_image(i), rng) for i in sample.images])


def prefetched(make: Callable[[int], list[Sample]], steps: range) -> Iterator[tuple[int, list[Sample]]]:
    """(step, make(step)) for each step, with make(step + 1) drawn in a thread meanwhile: drawing
    pictures overlaps the step's arithmetic (torch releases the GIL while it computes). A batch is
    a pure function of its step, so the data are the same as drawn in turn."""
    with ThreadPoolExecutor(1, thread_name_prefix="batches") as pool:
        ahead = None
        for step in steps:
            current = ahead.result() if ahead is not None else make(step)
            ahead = pool.submit(make, step + 1) if step + 1 < steps.stop else None
            yield step, current


def corpus(data: SyntheticData, template_name: str, per_kind: int = 2000) -> list[str]:
    """Text the BPE tokenizer learns from: every synthetic kind, rendered as the model will see it."""
    template = get_template(template_name)
    if data.world != "plain":  # the words are what it needs (plain pictures cost nothing and keep the corpus as it was)
        data = dataclasses.replace(data, draw=False)
    texts = []
    for i in range(per_kind):
        for kind in DATA_KINDS_SYNTHETIC:
            s = data.sample(kind, i)
            texts.append(s.text if s.text is not None else render(template, s.messages or [], add_generation_prompt=False))
    return texts


# ---- the trainer ---------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, output: str | Path, *, resume: bool = False, force: bool = False):
        self.output = Path(output)
        self.device = pick_device(config.device)
        self.par = setup_distributed(self.device)
        mode, threads = (numerics.saved_settings(self.output) if resume else None) or (config.numerics, config.threads)
        self.numerics = numerics.apply(mode, threads, self.device.type, self.par.world)
        if self.par.main:
            detail = ", ".join(f"{k} {v}" for k, v in self.numerics.items() if k not in ("mode", "why"))
            if mode == "portable" and self.numerics["mode"] != "portable":
                log.warning("numerics: native, not portable (%s): this run's weights will differ from other hosts'",
                            self.numerics.get("why"))
            else:
                log.info("numerics: %s (%s)", self.numerics["mode"], self.numerics.get("why") or detail)
        if resume:
            config, self.state, self.checkpoint = self._resume()
            config.validate()
        else:
            config.validate()
            if self.output.is_dir() and any(self.output.iterdir()) and not force:
                raise InputError(
                    f"output directory {self.output} is not empty; pass --resume to continue its training "
                    "or --force to start over (the old directory is replaced only at the first checkpoint)"
                )
            self.state = TrainerState()
            self.checkpoint = self._init_checkpoint(config) if config.init else self._new_model(config)
        for stage in config.stages:
            if stage.batch_size % self.par.world:
                raise InputError(f"stage {stage.name}: batch size {stage.batch_size} does not split over {self.par.world} processes")
        self.config = config
        self.model = self.checkpoint.model.to(self.device)
        # the probes on the image tokens (train/picture_stage.py): trained in the vision stage, and
        # with probe_weight > 0 beside the LM loss in every later stage; never part of the checkpoint
        self.probes: PictureProbes | None = None
        self.cells: list[int] | None = None  # the scene cell of each image token, where probes or look-ups are on
        if config.probe_weight > 0 or any(s.pictures_only and s.steps > 0 for s in config.stages):
            self.cells = token_cells(self.model.config.downsample_token_order, self.model.config.num_image_tokens)
            self.probes = PictureProbes(self.model.config.hidden_size, config.seed).to(self.device)
            saved = self.output / TRAINING_DIR / PROBES_FILE
            if resume and saved.is_file():
                self.probes.load_state_dict(torch.load(saved, map_location=self.device))
        # the look-up loss (train/lookup.py): one head learns to attend to the object an answer is about
        self.lookup: LookupLoss | None = None
        self.looking = True  # look-ups only in stages that train the LLM (whose head they teach)
        if config.lookup_weight > 0:
            self.cells = token_cells(self.model.config.downsample_token_order, self.model.config.num_image_tokens)
            readout = self.probes.readout if self.probes is not None and lookup_module.PICTURE_READOUT else None
            self.lookup = LookupLoss(self.model.llm, readout=readout)
        image_size = self.model.config.image_size
        self.heldout: list | None = None  # the user's test set, scored at the end (and saved beside the checkpoint)
        user = None
        if config.user_data:
            conversations = read_conversations(config.user_data, config.image_folder)
            if config.eval_data:
                self.heldout = read_conversations(config.eval_data)
            elif config.init:
                conversations, self.heldout = split_heldout(conversations, config.seed, HELDOUT_SHARE, HELDOUT_MAX)
                if self.par.main:
                    if self.heldout:
                        log.info("held out %d of %d records of %s for the final score (--eval-data to give your own)",
                                 len(self.heldout), len(self.heldout) + len(conversations), config.user_data)
                    else:
                        log.warning("%s has fewer than 10 records: none held out, so no score at the end",
                                    config.user_data)
            if not conversations:
                raise InputError(f"{config.user_data} holds no training records")
            user = conversation_samples(conversations)
        grid = int(round(len(self.cells) ** 0.5)) if self.cells is not None else 2  # the regions shapes are read off
        self.data = SyntheticData(image_size, config.seed, config.world, layout=config.layout, grid=grid)
        self.mix = DataMix(self.data, user, augment=config.augment)

    # ---- model init / resume
    def _init_checkpoint(self, config: TrainConfig) -> Checkpoint:
        """A trained checkpoint to fine-tune (`--init`): its weights and tokenizer, as they are."""
        source = Path(config.init)
        if source.resolve() == self.output.resolve():
            raise InputError(f"--init {source} and the output are the same directory; write the fine-tune elsewhere")
        if self.par.main:
            log.info("fine-tuning %s", source)
        return load_checkpoint(source)

    def _new_model(self, config: TrainConfig) -> Checkpoint:
        """The preset's model with a BPE tokenizer trained on the corpus, or existing components."""
        torch.manual_seed(config.seed)
        if config.init_llm:
            tokenizer = load_tokenizer(Path(config.init_llm))
        else:
            dims = preset_dims(config.preset)
            data = SyntheticData(dims.image_size, config.seed, config.world, layout=config.layout)
            # deterministic, so every rank trains the same tokenizer
            tokenizer = train_tokenizer(corpus(data, dims.chat_template), config.vocab_size)
        vila_config = preset_config(config.preset, tokenizer)
        if config.init_llm:
            vila_config.llm = read_json(Path(config.init_llm) / "config.json", what="LLM config", error=InputError)
            vila_config.top["hidden_size"] = vila_config.hidden_size
            vila_config.set_chat_template(default_chat_template(tokenizer))
        vision_folder = tower_folder(config.init_vision) if config.init_vision else None
        if vision_folder:
            folder = vision_folder
            vila_config.vision_tower = read_json(folder / "config.json", what="vision tower config", error=InputError)
            vila_config.preprocessor = read_json(folder / PREPROCESSOR_FILE, what="image preprocessor config", error=InputError)
            vila_config.top["mm_hidden_size"] = vila_config.mm_hidden_size
        vila_config.validate()
        model = VilaModel(vila_config)
        if config.init_llm:
            load_weights(model.llm, Path(config.init_llm), LLM_ARCHITECTURES[vila_config.llm_architecture].disk_prefix)
        if vision_folder:
            load_weights(model.vision_tower, vision_folder,
                         VISION_ARCHITECTURES[vila_config.vision_architecture].disk_prefix)
        elif config.vision_position_std is not None:
            positions = getattr(getattr(model.vision_tower, "embeddings", None), "position_embedding", None)
            if positions is not None:  # SigLIP; CLIP towers keep their own init
                with torch.no_grad():
                    positions.weight.normal_(0.0, config.vision_position_std)
        return Checkpoint(model, tokenizer)

    def _resume(self) -> tuple[TrainConfig, TrainerState, Checkpoint]:
        recover_directory(self.output)  # a checkpoint swap a kill interrupted (systems without an atomic exchange)
        state_dir = self.output / TRAINING_DIR
        if not (state_dir / "trainer_state.json").is_file():
            raise InputError(f"{self.output} holds no training state to resume (no {TRAINING_DIR}/trainer_state.json)")
        config = TrainConfig.from_dict(read_json(state_dir / "train_config.json", what="training config",
                                                 error=CheckpointError))
        state = TrainerState(**read_json(state_dir / "trainer_state.json", what="trainer state", error=CheckpointError))
        if self.par.main:
            log.info("resuming %s at stage %d, step %d (the saved training config is used)", self.output, state.stage, state.step)
        return config, state, load_checkpoint(self.output)

    # ---- stages
    def run(self) -> dict[str, Any]:
        for index in range(self.state.stage, len(self.config.stages)):
            self.state.stage = index
            self._run_stage(index, self.config.stages[index])
            self.state.step = 0
        self.state.stage = len(self.config.stages)
        result: dict[str, Any] = {}
        if self.par.main and self.config.eval_per_type > 0:
            result = evaluate(Checkpoint(self.model, self.checkpoint.tokenizer), self.data, self.config.eval_per_type)
            print(format_table(result), flush=True)
        if self.par.main and self.heldout:
            result["user_data"] = evaluate_conversations(Checkpoint(self.model, self.checkpoint.tokenizer), self.heldout)
            print(f"your held-out records ({len(self.heldout)}):", flush=True)
            print(format_conversation_table(result["user_data"]), flush=True)
        self._save(None, evaluation=result or None)
        self.par.barrier()
        return result

    def _run_stage(self, index: int, stage: StageConfig) -> None:
        model = self.model
        for name in ("vision_tower", "mm_projector", "llm"):
            getattr(model, name).requires_grad_(name in stage.train)
        model.train()
        self.looking = "llm" in stage.train
        # with probes (train/picture_stage.py), a step differentiates the model and them as one module
        trained: torch.nn.Module = (model if self.probes is None and self.lookup is None
                                    else ProbedModel(model, self.probes, self.config.probe_weight, self.lookup,
                                                     self.config.lookup_weight))
        params = [p for p in trained.parameters() if p.requires_grad]
        # fused: one kernel over all parameters instead of a loop of small ops (about 10% of a CPU step)
        optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.98), weight_decay=self.config.weight_decay,
                                      fused=True)
        if self.state.step:
            optimizer.load_state_dict(torch.load(self.output / TRAINING_DIR / "optimizer.pt", map_location=self.device))
        wrapped = trained
        if self.par.world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(trained, find_unused_parameters=True)
        bf16 = self.config.precision == "bf16" or (self.config.precision == "auto" and self.device.type == "cuda")
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        train_step = self._picture_step if stage.pictures_only else self._text_step
        unit = "img" if stage.pictures_only else "tok"
        start, seen, losses, probed = time.time(), 0, [], []
        first = self.state.step
        steps = range(self.state.step, stage.steps)
        make = lambda s: self.mix.batch(index, stage, s, self.par)  # noqa: E731
        # a thread drawing the next batch pays where pictures cost (the training world's renderers:
        # the vision stage 1.5x faster); the plain world's cost next to nothing, and the thread's
        # share of two cores made steps about 8% slower there
        batches = prefetched(make, steps) if self.data.world != "plain" else ((s, make(s)) for s in steps)
        for step, samples in batches:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(stage, step)
            loss, count, accuracy = train_step(wrapped, samples, autocast)
            if self.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if self.par.world > 1:
                dist.all_reduce(loss)
                loss /= self.par.world
            losses.append(float(loss))
            if accuracy is not None:
                probed.append(accuracy)
            seen += count * self.par.world
            self.state.step = step + 1
            done = self.state.step == stage.steps
            if self.state.step % self.config.log_every == 0 or done:
                elapsed = time.time() - start
                rate = (self.state.step - first) / max(elapsed, 1e-9)
                record = {"stage": stage.name, "step": self.state.step, "loss": sum(losses) / len(losses),
                          ("images_per_s" if stage.pictures_only else "tokens_per_s"): seen / max(elapsed, 1e-9)}
                note = ""
                if probed:  # each probe's accuracy over the steps since the last line (process 0's share)
                    mean = torch.stack(probed).nanmean(0).tolist()
                    record["probe_accuracy"] = {name: round(a, 4) for (name, _), a in zip(FIELDS, mean) if a == a}
                    if record["probe_accuracy"]:
                        note = "  probes " + " ".join(f"{name} {a:.0%}" for name, a in record["probe_accuracy"].items())
                    if mean[-2] == mean[-2]:  # the look-up head's attention on its targets
                        record["lookup_attention"] = round(mean[-2], 4)
                        note += f"  look-up {mean[-2]:.0%}"
                    if mean[-1] == mean[-1]:  # the picture readout's accuracy
                        record["readout_accuracy"] = round(mean[-1], 4)
                        note += f"  readout {mean[-1]:.0%}"
                self.state.history.append(record)
                losses, probed = [], []
                if self.par.main:
                    eta = (stage.steps - self.state.step) / max(rate, 1e-9)
                    log.info("%s %d/%d  loss %.4f  %.0f %s/s%s  eta %s", stage.name, self.state.step, stage.steps,
                             record["loss"], seen / max(elapsed, 1e-9), unit, note, _duration(eta))
            if done or self.state.step % self.config.checkpoint_every == 0:
                self._save(optimizer)

    def _counts(self, targets: np.ndarray | None) -> torch.Tensor | None:
        """The probes' denominators for the whole global batch (target_counts summed over processes), per process."""
        if targets is None:
            return None
        counts = torch.from_numpy(target_counts(targets)).to(self.device)
        if self.par.world > 1:
            dist.all_reduce(counts)
        return counts / self.par.world  # DDP averages the processes' gradients, as num_items_in_batch

    def _text_step(self, wrapped: torch.nn.Module, samples: list[Sample], autocast
                   ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Forward and backward over one global batch of text (with images): (loss, tokens, probe accuracy)."""
        model = self.model
        batch = collate(samples, self.checkpoint.tokenizer, self.checkpoint.template, model.image_processor_config,
                        self.cells, targets=self.probes is not None, lookups=self.lookup is not None and self.looking)
        image_tokens = model.config.num_image_tokens  # each <image> placeholder becomes this many positions
        targets = torch.tensor(float(batch.num_targets), device=self.device)
        if self.par.world > 1:
            dist.all_reduce(targets)
        counts = self._counts(batch.picture_targets)
        lookups = None
        if self.lookup is not None:  # the look-up loss's denominator: queried positions in the global batch
            lookups = torch.tensor(float(lookup_count(batch.lookups)), device=self.device)
            if self.par.world > 1:
                dist.all_reduce(lookups)
            lookups /= self.par.world
        micro = by_length(batch, image_tokens)
        loss = torch.zeros((), device=self.device)
        accuracy = []
        for k, part in enumerate(micro):  # gradients add up; DDP syncs on the last backward only
            sync = wrapped.no_sync() if self.par.world > 1 and k < len(micro) - 1 else contextlib.nullcontext()
            pixels = torch.from_numpy(part.pixel_values).to(self.device)
            probes = {} if counts is None else {
                "picture_targets": torch.from_numpy(part.picture_targets).to(self.device), "target_counts": counts}
            if lookups is not None:
                probes.update(lookups=part.lookups, lookup_count=lookups)
            with sync:
                with autocast:
                    out = wrapped(part.input_ids, pixels, part.labels, loss_only=True,
                                  num_items_in_batch=targets / self.par.world, **probes)
                out.loss.backward()
            loss += out.loss.detach()
            if getattr(out, "probe_accuracy", None) is not None or getattr(out, "lookup_attention", None) is not None:
                accuracy.append(_reported(out.probe_accuracy, out.lookup_attention, out.readout_accuracy))
        images = len(batch.pixel_values)
        return (loss, sum(len(ids) for ids in batch.input_ids) + images * (image_tokens - 1),
                torch.stack(accuracy).nanmean(0) if accuracy else None)

    def _picture_step(self, wrapped: torch.nn.Module, samples: list[Sample], autocast
                      ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """Forward and backward of the vision stage over pictures alone: (probe loss, pictures, accuracy)."""
        if self.cells is None:
            raise InputError("the vision stage needs its probes: set probe_weight > 0 or give the stage steps")
        pixels = torch.from_numpy(preprocess_images([s.images[0] for s in samples], self.model.image_processor_config))
        targets = np.stack([picture_targets(s.scenes[0], self.cells) for s in samples])  # type: ignore[index]
        with autocast:
            out = wrapped(None, pixels.to(self.device), picture_targets=torch.from_numpy(targets).to(self.device),
                          target_counts=self._counts(targets))
        out.loss.backward()
        return out.loss.detach(), len(samples), _reported(out.probe_accuracy, None)

    # ---- checkpoints
    def _save(self, optimizer: torch.optim.Optimizer | None, evaluation: dict | None = None) -> None:
        if self.par.main:
            with atomic_directory(self.output, overwrite=True) as tmp:
                write_checkpoint(self.model, self.checkpoint.tokenizer, tmp)
                write_calibration_set(self.data, tmp / CALIBRATION_DIR)
                state_dir = tmp / TRAINING_DIR
                state_dir.mkdir()
                (state_dir / "train_config.json").write_text(json.dumps({**self.config.to_dict(), "numerics_in_effect": self.numerics}, indent=2) + "\n")
                (state_dir / "trainer_state.json").write_text(json.dumps(asdict(self.state), indent=2) + "\n")
                if optimizer is not None and self.state.stage < len(self.config.stages):
                    torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
                    if self.probes is not None:
                        torch.save(self.probes.state_dict(), state_dir / PROBES_FILE)
                if evaluation is not None:
                    (state_dir / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
                if self.heldout:  # `vlm-eval ckpt --data ckpt/training/heldout.json` scores it again
                    (state_dir / HELDOUT_FILE).write_text(json.dumps(conversation_records(self.heldout), indent=1) + "\n")
        self.par.barrier()


def _reported(probe_accuracy: torch.Tensor | None, lookup_attention: torch.Tensor | None,
              readout_accuracy: torch.Tensor | None = None) -> torch.Tensor:
    """[fields + 2]: each probe's accuracy, the look-up head's attention on its targets, the picture
    readout's accuracy (NaN: none)."""
    nan = torch.tensor(float("nan"))
    fields = probe_accuracy if probe_accuracy is not None else nan.repeat(len(FIELDS))
    extra = [nan if x is None else x for x in (lookup_attention, readout_accuracy)]
    return torch.cat([fields.float().cpu(), torch.stack([x.reshape(()).float().cpu() for x in extra])])


def lr_at(stage: StageConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def preset_dims(preset: str) -> ModelDims:
    if preset not in PRESETS:
        raise InputError(f"preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"

