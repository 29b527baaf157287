"""The training configuration: VILA's three-stage recipe as data, saved with every checkpoint.

    vision   (towers trained from scratch) vision tower + projector, pictures alone: each image
                       token learns to tell what its cell holds (train/picture_stage.py)
    stage 0  align     projector only (vision tower and LLM frozen), image-caption pairs
    stage 1  pretrain  + the LLM (and, for models trained from scratch, the vision tower),
                       interleaved documents and caption pairs
    stage 2  sft       everything, VQA conversations mixed with text-only instructions;
                       loss on answer tokens only

Each stage sets its steps, learning rate, global batch, trained modules and data mix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vlm_edge.common.errors import InputError

MODULES = ("vision_tower", "mm_projector", "llm")
DATA_KINDS = ("picture", "caption", "interleaved", "vqa", "describe", "text", "user")


@dataclass
class StageConfig:
    name: str
    steps: int
    lr: float
    batch_size: int  # global: split across processes
    train: tuple[str, ...]  # modules that learn in this stage (MODULES)
    mix: dict[str, float]  # data kind -> sampling weight (DATA_KINDS)
    warmup_steps: int = 20

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise InputError(f"stage {self.name}: steps must be >= 0, batch_size >= 1 and lr > 0")
        unknown = set(self.train) - set(MODULES)
        if unknown:
            raise InputError(f"stage {self.name}: unknown modules {sorted(unknown)}; choose from {', '.join(MODULES)}")
        bad = set(self.mix) - set(DATA_KINDS)
        if bad or not self.mix or min(self.mix.values()) < 0:
            raise InputError(f"stage {self.name}: data mix {self.mix} must weight kinds from {', '.join(DATA_KINDS)}")
        if "picture" in self.mix and (set(self.mix) != {"picture"} or "llm" in self.train):
            raise InputError(f"stage {self.name}: pictures (no text) cannot be mixed with other kinds or train the llm")

    @property
    def pictures_only(self) -> bool:
        """A vision stage: pictures without text, the loss is train/picture_stage.py's."""
        return set(self.mix) == {"picture"}


@dataclass
class TrainConfig:
    preset: str = "tiny"
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=list)
    vocab_size: int = 512  # BPE trained on the synthetic corpus (models from scratch)
    checkpoint_every: int = 250  # steps; checkpoints are also written at the end of each stage
    log_every: int = 25
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_per_type: int = 50  # held-out questions per type in the final evaluation (0 = skip it)
    user_data: str | None = None  # LLaVA-format JSON for the "user" data kind
    image_folder: str | None = None
    init_llm: str | None = None  # start from an existing LLM folder (transformers layout + tokenizer)
    # and/or an existing vision tower folder (+ preprocessor_config.json), or vlm-edge:<name> for one
    # that ships with vlm-edge (train/towers.py)
    init_vision: str | None = None
    init: str | None = None  # fine-tune this trained checkpoint (its weights and tokenizer) instead of a new model
    # crop and scale the user's pictures a little, anew each draw (train/datasets.py augment_picture);
    # off by default: on a 4,000-picture set it moved exact match by 0.4 points (docs/training.md)
    augment: bool = False
    # the user's held-out test set (LLaVA JSON); None with user data: HELDOUT_SHARE of it is carved out
    eval_data: str | None = None
    # Std of a from-scratch vision tower's position embeddings at init; None keeps transformers'
    # SigLIP init (1/sqrt(width): 0.09 for the tiny tower, a tenth of the patch embeddings' spread).
    # The tiny recipe uses 1.0 (PRESET_OPTIONS): where an object is then weighs in its image token
    # (a fifth of the tokens' variance instead of a few percent), and position answers with two or
    # three shapes rise from chance to about 75% (docs/training.md).
    vision_position_std: float | None = None
    # Weight of the vision probes' loss (train/picture_stage.py) beside the LM loss in the stages after
    # the vision stage: it keeps what the tower learnt to see there from washing out. 0 turns it off.
    probe_weight: float = 0.0
    # Weight of the look-up loss (train/lookup.py) in the stages with questions about one object: one
    # attention head learns to attend to the object named. 0 turns it off.
    lookup_weight: float = 0.0
    # the synthetic data's world (train/datasets.py SyntheticData): "plain" (one grey, exact colours,
    # one phrasing a question: the tiny recipe's) or "train" (several renderers, backgrounds and
    # phrasings, yes/no questions: docs/training.md, "Pictures from other renderers")
    world: str = "plain"
    # where the synthetic scenes' shapes sit (train/scenes.py): cells, grid or free; None: the world's
    # default (cells in the plain world, grid in the train world)
    layout: str | None = None
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on a GPU, fp32 on a CPU) | fp32 | bf16
    # portable: the same weights on every x86-64 CPU (train/numerics.py) | native: each host's fastest kernels
    numerics: str = "portable"
    threads: int | None = None  # None: 2 in portable mode (one process), else torch's default

    def validate(self) -> None:
        if not self.stages:
            raise InputError("the training recipe has no stages")
        if self.eval_per_type < 0:
            raise InputError(f"eval_per_type {self.eval_per_type} must be >= 0 (0 skips the final evaluation)")
        if self.world not in ("train", "plain"):
            raise InputError(f"world {self.world!r} is unknown; choose train or plain (heldout is for evaluation only)")
        if self.layout not in (None, "cells", "grid", "free"):
            raise InputError(f"layout {self.layout!r} is unknown; choose cells, grid or free")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"precision {self.precision!r} is unknown; choose auto, fp32 or bf16")
        if self.numerics not in ("portable", "native"):
            raise InputError(f"numerics {self.numerics!r} is unknown; choose portable or native")
        if self.probe_weight < 0 or self.lookup_weight < 0:
            raise InputError(f"probe_weight {self.probe_weight} and lookup_weight {self.lookup_weight} must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads {self.threads} must be >= 1")
        for stage in self.stages:
            stage.validate()
            if "user" in stage.mix and stage.mix["user"] > 0 and not self.user_data:
                raise InputError(f"stage {stage.name} mixes in user data; pass --data FILE")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d.pop("numerics_in_effect", None)  # what the run had, recorded beside the settings
        d.setdefault("numerics", "native")  # runs saved before the field existed used each host's kernels
        d.setdefault("world", "plain")  # and, before worlds, drew the plain world's pictures
        d["stages"] = [StageConfig(**{**s, "train": tuple(s["train"])}) for s in d.get("stages", [])]
        return cls(**d)


def _recipe(align: int, pretrain: int, sft: int, lr: float, batch: int, from_scratch: bool,
            vision: tuple[int, float, int] | None = None) -> list[StageConfig]:
    """VILA's three stages; `vision` = (steps, peak lr, batch) puts the vision stage first."""
    llm_and_vision = ("vision_tower", "mm_projector", "llm") if from_scratch else ("mm_projector", "llm")
    first = [StageConfig("vision", vision[0], vision[1], vision[2], ("vision_tower", "mm_projector"), {"picture": 1.0})
             ] if vision else []
    return first + [
        StageConfig("align", align, lr, batch, ("mm_projector",), {"caption": 1.0}),
        StageConfig("pretrain", pretrain, lr, batch, llm_and_vision, {"interleaved": 0.15, "caption": 0.85}),
        StageConfig("sft", sft, lr, batch, ("vision_tower", "mm_projector", "llm"), {"vqa": 0.7, "describe": 0.15, "text": 0.15}),
    ]


# preset -> its recipe. `tiny` fits the README's main job: under 10 minutes on 2 CPU cores.
RECIPES: dict[str, list[StageConfig]] = {
    "micro": _recipe(align=4, pretrain=4, sft=8, lr=2e-3, batch=8, from_scratch=True, vision=(4, 2e-3, 8)),  # tests
    "tiny": _recipe(align=50, pretrain=200, sft=640, lr=7e-4, batch=32, from_scratch=True, vision=(400, 2e-3, 64)),
    "tiny16": _recipe(align=50, pretrain=200, sft=640, lr=7e-4, batch=32, from_scratch=True, vision=(400, 2e-3, 64)),
    "vila1.5-3b": _recipe(align=2000, pretrain=4000, sft=8000, lr=2e-5, batch=128, from_scratch=False),
}


# preset -> TrainConfig fields its recipe sets (overridable like any other field)
PRESET_OPTIONS: dict[str, dict[str, Any]] = {
    "micro": {"probe_weight": 0.0},  # its 150-step test fixtures learn to talk too slowly beside the probe loss
    "tiny": {"vision_position_std": 1.0, "probe_weight": 1.0, "lookup_weight": 1.0},
    # 16 image tokens see a shape anywhere: free scenes from several renderers, and the shipped tower
    # pretrained on a million of them (train/towers.py) as the vision stage's start
    "tiny16": {"vision_position_std": 1.0, "probe_weight": 1.0, "lookup_weight": 1.0, "world": "train",
               "layout": "free", "init_vision": "vlm-edge:tiny16"},
}


# Fine-tuning a trained checkpoint on a user's data (`vlm-train --init ckpt/ --data ...`): the recipe's
# SFT stage with the user's conversations dominant and the synthetic SFT mix kept at FINETUNE_SYNTHETIC
# of the draws, enough that the model does not forget what it could do
FINETUNE_SYNTHETIC = 0.2
HELDOUT_SHARE = 0.1  # of the user's records, at most HELDOUT_MAX, when no --eval-data is given
HELDOUT_MAX = 500


# Steps of a fine-tune, where more than the recipe's SFT: on a 4,000-record set of another renderer's
# pictures (examples/shapes_dataset.py) the tiny16 model reached 86.8% at 640 steps and 90.4% at
# 1,600 (about 11 minutes on 2 cores; docs/training.md, "Your own data")
FINETUNE_STEPS = {"tiny": 1600, "tiny16": 1600}
# The fine-tune's peak learning rate, as a share of the recipe's SFT rate: on that set half of it
# reached 96.0% against 92.8% at the full rate (95.0% at 0.29x, 89.2% at twice), and forgot less
# of the synthetic set; on easy-VQA, never tuned on, it was measured once at each rate (docs)
FINETUNE_LR_SCALE = 0.5


def finetune_stages(preset: str) -> list[StageConfig]:
    """The one stage of a fine-tune: the preset's SFT (batch, modules; steps, or FINETUNE_STEPS;
    its learning rate times FINETUNE_LR_SCALE), its mix scaled to FINETUNE_SYNTHETIC beside the
    user's data."""
    if preset not in RECIPES:
        raise InputError(f"no training recipe for preset {preset!r}; choose one of {', '.join(RECIPES)}")
    sft = dataclasses.replace(next(s for s in RECIPES[preset] if s.name == "sft"))
    sft.steps = FINETUNE_STEPS.get(preset, sft.steps)
    sft.lr = sft.lr * FINETUNE_LR_SCALE
    total = sum(sft.mix.values())
    sft.mix = {**{k: FINETUNE_SYNTHETIC * w / total for k, w in sft.mix.items()}, "user": 1 - FINETUNE_SYNTHETIC}
    return [sft]


def default_config(preset: str, **overrides: Any) -> TrainConfig:
    if preset not in RECIPES:
        raise InputError(f"no training recipe for preset {preset!r}; choose one of {', '.join(RECIPES)}")
    stages = [dataclasses.replace(s) for s in RECIPES[preset]]
    return TrainConfig(preset=preset, stages=stages, **{**PRESET_OPTIONS.get(preset, {}), **overrides})
