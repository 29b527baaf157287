"""Test fixtures: tiny VILA-class configs and a structurally exact VILA1.5-3b release layout.

`write_release_fixture` writes a checkpoint the way the public VILA1.5-3b release is laid out:
the published config.json with every key kept (dimensions shrunk), `llm/` in two safetensors
shards with an index, a SentencePiece `tokenizer.model` (no tokenizer.json), transformers-4.x
state-dict keys (`vision_model.*`), and no vlm-edge settings (no downsample_token_order, no
chat_template). It deliberately does not use `vlm_edge.model.save_checkpoint`, so loading it
tests our loader against the release layout, not against our own writer.
"""

from __future__ import annotations

import contextlib

import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

PUBLISHED_CONFIG = Path(__file__).resolve().parent / "data" / "vila1.5-3b.config.json"  # the public release's, verbatim

# Tiny widths (2 layers, 32-64 wide) replacing the published dimensions.
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=42, patch_size=14)

SPM_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What colour is the circle? ASSISTANT: The circle is red.",
    "How many squares are there in the image? There are three blue squares.",
    "Which image has a green triangle? The second image has a green triangle.",
]


def published_config() -> dict:
    return json.loads(PUBLISHED_CONFIG.read_text())


def train_sentencepiece(directory: Path, vocab_size: int = 320) -> Path:
    """A tiny Llama-style SentencePiece BPE model (<unk>=0, <s>=1, </s>=2, byte fallback)."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(SPM_CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(directory / "spm"), vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2,
    )
    corpus.unlink()
    return directory / "spm.model"


def _save_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True))


def write_release_fixture(root: Path, *, seed: int = 0, spm_model: Path | None = None, s2: bool = False) -> Path:
    """Write a VILA1.5-3b-layout checkpoint with tiny widths into `root` and return it. s2=True: the
    layout of VILA1.5's S2 releases (`...-s2`: s2 true, s2_scales of 1x, 2x and 3x the tower's size,
    s2_max_split_size the tower's size, the projector on 3 x the tower's width)."""
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    top = published_config()
    spm_model = spm_model or train_sentencepiece(root.parent / f"{root.name}-spm")
    import sentencepiece as spm

    vocab_size = spm.SentencePieceProcessor(model_file=str(spm_model)).get_piece_size()

    llm_cfg = copy.deepcopy(top["llm_cfg"])
    llm_cfg.update(TINY_LLM, vocab_size=vocab_size, max_position_embeddings=512, model_max_length=512,
                   tokenizer_model_max_length=512)
    vision_cfg = copy.deepcopy(top["vision_tower_cfg"])
    vision_cfg.update(TINY_VISION)
    projector_cfg = copy.deepcopy(top["mm_projector_cfg"])
    scales = 3 if s2 else 1
    top.update(llm_cfg=llm_cfg, vision_tower_cfg=vision_cfg, mm_projector_cfg=projector_cfg,
               hidden_size=TINY_LLM["hidden_size"], mm_hidden_size=scales * TINY_VISION["hidden_size"])
    if s2:
        size = TINY_VISION["image_size"]
        top.update(s2=True, s2_scales=f"{size},{2 * size},{3 * size}", s2_max_split_size=size)
    _save_json(root / "config.json", top)

    # llm/: transformers-4.36 style files, two shards
    _save_json(root / "llm" / "config.json", dict(llm_cfg, _name_or_path="./llm"))
    _save_json(root / "llm" / "generation_config.json",
               {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_length": 512, "transformers_version": "4.36.2"})
    llm_kwargs = {k: v for k, v in llm_cfg.items() if k not in ("_name_or_path", "torch_dtype", "architectures")}
    llm = LlamaForCausalLM(LlamaConfig(**llm_kwargs))
    state = {k: v.contiguous() for k, v in llm.state_dict().items()}
    keys = list(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(root / "llm" / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard_keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    _save_json(root / "llm" / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    (root / "llm" / "tokenizer.model").write_bytes(spm_model.read_bytes())
    _save_json(root / "llm" / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "legacy": False, "model_max_length": 512, "padding_side": "right",
        "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False,
    })
    _save_json(root / "llm" / "special_tokens_map.json",
               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})

    # vision_tower/: SiglipVisionModel with transformers-4.x keys (vision_model.*)
    vision_file_cfg = dict(vision_cfg, _name_or_path="./vision_tower")
    _save_json(root / "vision_tower" / "config.json", vision_file_cfg)
    vision_kwargs = {k: v for k, v in vision_cfg.items() if k not in ("_name_or_path", "torch_dtype", "architectures")}
    vision = SiglipVisionModel(SiglipVisionConfig(**vision_kwargs))
    save_file({f"vision_model.{k}": v.contiguous() for k, v in vision.state_dict().items()},
              str(root / "vision_tower" / "model.safetensors"), metadata={"format": "pt"})
    size = TINY_VISION["image_size"]
    _save_json(root / "vision_tower" / "preprocessor_config.json", {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": size, "width": size},
    })

    # mm_projector/: mlp_downsample, keys layers.1 (LayerNorm 4C), layers.2 (4C -> H), layers.4 (H -> H)
    _save_json(root / "mm_projector" / "config.json", dict(projector_cfg, _name_or_path="./mm_projector"))
    projector = downsample_projector_weights(scales * TINY_VISION["hidden_size"], TINY_LLM["hidden_size"])
    save_file(projector, str(root / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    return root


def downsample_projector_weights(c: int, h: int) -> dict:
    """Random mlp_downsample (2x2) weights: layers.1 LayerNorm(4C), layers.2 4C -> H, layers.4 H -> H."""
    c4 = 4 * c
    return {
        "layers.1.weight": 1 + 0.1 * torch.randn(c4), "layers.1.bias": 0.1 * torch.randn(c4),
        "layers.2.weight": torch.randn(h, c4) / c4**0.5, "layers.2.bias": 0.1 * torch.randn(h),
        "layers.4.weight": torch.randn(h, h) / h**0.5, "layers.4.bias": 0.1 * torch.randn(h),
    }


def tiny_config(*, llm: str = "llama", vision: str = "siglip", projector: str = "mlp_downsample",
                token_order: str | None = "column_major", image_size: int = 42, patch_size: int = 14,
                vocab_size: int = 260, tie_embeddings: bool = False, select_feature: str = "cls_patch"):
    """A small VilaConfig for any supported combination (2 layers, widths 32-64)."""
    from vlm_edge.common.vila_config import VilaConfig

    llm_cfg = {
        "architectures": ["LlamaForCausalLM" if llm == "llama" else "Qwen2ForCausalLM"],
        "model_type": llm if llm == "llama" else "qwen2",
        **TINY_LLM, "vocab_size": vocab_size, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": tie_embeddings, "bos_token_id": 1, "eos_token_id": 2,
    }
    vision_cfg = {
        "architectures": ["SiglipVisionModel" if vision == "siglip" else "CLIPVisionModel"],
        "model_type": "siglip_vision_model" if vision == "siglip" else "clip_vision_model",
        **TINY_VISION, "image_size": image_size, "patch_size": patch_size,
    }
    projector_cfg = {"architectures": ["MultimodalProjector"], "model_type": "v2l_projector", "mm_projector_type": projector}
    if token_order is not None and projector.startswith("mlp_downsample"):
        projector_cfg["downsample_token_order"] = token_order
    if vision == "siglip":
        preprocessor = {"size": {"height": image_size, "width": image_size}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 3}
    else:
        preprocessor = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
                        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                        "resample": 3}
    top = {"architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": select_feature, "image_aspect_ratio": "resize", "s2": False, "chat_template": "plain"}
    config = VilaConfig(top=top, llm=llm_cfg, vision_tower=vision_cfg, mm_projector=projector_cfg, preprocessor=preprocessor)
    config.resolve_token_order()
    return config


# The synthetic data the micro fixtures were sized against (module knobs of train/datasets.py): their
# SFT questions, and through them the corpus their tokenizer is trained on. The tiny recipe's own
# data is the training module's business (docs/training.md); a fixture that answers in 150 steps
# is a draw of its data, so it keeps the data it was checked with.
FIXTURE_DATA = {
    "FIRST_QUESTIONS": ("colour", "shape", "count", "position", "size", "word", "multi_image", "colour"),
    "NAME_IMAGES": False,
    "POSITION_MIN_OBJECTS": 3,
    "POSITION_COUNT_WEIGHTS": (0.0, 0.0, 1.0, 2.0),
    "WHICH_PICTURE_PROBABILITY": 0.0,  # pre-training's interleaved documents describe 2-3 pictures in order
}


@contextlib.contextmanager
def fixture_data(**more):
    """Training data as FIXTURE_DATA (and `more`) says, for the duration of the block."""
    from vlm_edge.train import datasets

    knobs = {**FIXTURE_DATA, **more}
    kept = {name: getattr(datasets, name) for name in knobs}
    for name, value in knobs.items():
        setattr(datasets, name, value)
    try:
        yield
    finally:
        for name, value in kept.items():
            setattr(datasets, name, value)


def train_micro(out: Path, steps: tuple[int, int, int] = (10, 50, 100)) -> Path:
    """The `micro` preset trained by the training module (seconds), with its calibration/ set;
    `steps` are align, pretrain and sft's (the vision stage keeps the recipe's)."""
    from vlm_edge.train.recipe import default_config
    from vlm_edge.train.trainer import Trainer

    config = default_config("micro", eval_per_type=0, device="cpu")
    for stage in config.stages:
        stage.steps = dict(zip(("align", "pretrain", "sft"), steps)).get(stage.name, stage.steps)
    with fixture_data():
        Trainer(config, out).run()
    return out


# ---- video for the camera sources: our own scene renderer, objects appearing and moving ------------------
VIDEO_SEGMENTS = (("red", "circle"), ("blue", "square"), ("green", "triangle"))


def scene_frames(segments=VIDEO_SEGMENTS, seconds: float = 2.0, fps: int = 10, size: int = 224, seed: int = 0):
    """(frames, colours): one big shape per segment moving through the 2x2 cells, `seconds` each."""
    import random

    from vlm_edge.train.scenes import CELLS, Scene, Shape, render

    rng = random.Random(seed)
    frames, colours = [], []
    for colour, shape in segments:
        for i in range(int(seconds * fps)):
            cell = CELLS[(i * len(CELLS)) // int(seconds * fps)]  # it moves: a cell per quarter of the segment
            frames.append(np.asarray(render(Scene(objects=(Shape(shape, colour, "big", cell),), background=240),
                                            size, rng)))
            colours.append(colour)
    return frames, colours


def write_video(path: Path, frames, fps: int = 10) -> Path:
    """An MPEG-4 file (OpenCV's mp4v encoder), as a phone or a camera recorder would leave one."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _train_micro_on(root: Path, name: str, records: list, images: Path, steps: int) -> Path:
    """The micro preset trained on LLaVA-format `records` alone in SFT (written to root/name, images in
    `images`), then exported with 4-bit weights: root/ckpt and root/engine."""
    import json

    from vlm_edge.export.api import export_checkpoint
    from vlm_edge.export.config import ExportConfig
    from vlm_edge.train.recipe import default_config
    from vlm_edge.train.trainer import Trainer

    (root / name).write_text(json.dumps(records))
    config = default_config("micro", eval_per_type=0, device="cpu", user_data=str(root / name), image_folder=str(images),
                            probe_weight=0.0)
    # VILA's three stages only, no probes: these pictures are not the synthetic scenes the probes name
    config.stages = [s for s in config.stages if not s.pictures_only]
    for stage, n in zip(config.stages, (10, 30, steps)):
        stage.steps = n
    config.stages[2].mix, config.stages[2].batch_size = {"user": 1.0}, 16
    with fixture_data(CAPTION_COUNT_WEIGHTS=None):  # and the captions they were sized against (1-3 shapes)
        Trainer(config, root / "ckpt").run()
    export_checkpoint(root / "ckpt", root / "engine", ExportConfig(awq4=True, prompts=2))
    return root / "engine"


def train_colour_model(root: Path, steps: int = 400) -> Path:
    """The micro preset trained by the training module on one question, "What colour is the shape?",
    over one-shape scenes (seconds), then exported with 4-bit weights: root/engine."""
    import random

    from vlm_edge.train.scenes import CELLS, COLOURS, SHAPES, Scene, Shape, render

    rng = random.Random(0)
    images = root / "images"
    images.mkdir(parents=True)
    records = []
    for i in range(600):
        colour = rng.choice(list(COLOURS))
        scene = Scene(objects=(Shape(rng.choice(SHAPES), colour, "big", rng.choice(CELLS)),),
                      background=rng.randint(225, 255))
        render(scene, 28, rng).save(images / f"{i}.png")
        records.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": colour}]})
    return _train_micro_on(root, "colours.json", records, images, steps)


VIDEO_QUESTIONS = {"first": "Which colour appears first?", "last": "Which colour appears last?"}


def train_video_model(root: Path, steps: int = 1000, frames: int = 8) -> Path:
    """The micro preset trained by the training module on two video questions, "Which colour appears
    first?" and "... last?", over `frames`-frame clips of 2-3 segments, each segment one colour (the
    shape and its cell change from frame to frame), then exported with 4-bit weights: root/engine.
    The frames are rendered by our scene renderer; a record is a LLaVA-format multi-image
    conversation with the frames as its images, in the prompt the runtime builds for a video."""
    import random

    from vlm_edge.common.video import video_prompt
    from vlm_edge.train.scenes import CELLS, COLOURS, SHAPES, Scene, Shape, render

    rng = random.Random(0)
    images = root / "images"
    images.mkdir(parents=True)
    pool: dict[str, list[str]] = {}
    for colour in COLOURS:  # a few renderings of every (colour, shape, cell): the frames' pool
        for k in range(3 * len(SHAPES) * len(CELLS)):
            scene = Scene(objects=(Shape(SHAPES[k % len(SHAPES)], colour, "big", CELLS[k // len(SHAPES) % len(CELLS)]),),
                          background=rng.randint(225, 255))
            name = f"{colour}-{k}.png"
            render(scene, 28, rng).save(images / name)
            pool.setdefault(colour, []).append(name)
    records = []
    for _ in range(2000):
        colours = rng.sample(list(COLOURS), rng.randint(2, 3))
        cuts = sorted(rng.sample(range(1, frames), len(colours) - 1))
        spans = [b - a for a, b in zip([0, *cuts], [*cuts, frames])]
        clip = [rng.choice(pool[c]) for c, n in zip(colours, spans) for _ in range(n)]
        which = rng.choice(list(VIDEO_QUESTIONS))
        records.append({"image": clip, "conversations": [
            {"from": "human", "value": video_prompt(VIDEO_QUESTIONS[which], frames)},
            {"from": "gpt", "value": colours[0] if which == "first" else colours[-1]}]})
    return _train_micro_on(root, "videos.json", records, images, steps)


NVILA_CONFIG = Path(__file__).resolve().parent / "data" / "nvila-8b.config.json"  # the public release's, verbatim
NVILA_TILE = 98  # tiny tower: 98-pixel tiles of 14-pixel patches, a 7x7 grid (odd, not a multiple of 3)


def qwen2_tokenizer_files(directory: Path) -> int:
    """A Qwen2-style fast tokenizer (byte-level BPE, no merges, ChatML specials) as a release ships it:
    tokenizer.json + tokenizer_config.json with <|endoftext|>, <|im_start|>, <|im_end|>. Returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.add_special_tokens(specials)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    _save_json(directory / "tokenizer_config.json", {
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "add_bos_token": False,
        "model_max_length": 512, "tokenizer_class": "Qwen2Tokenizer", "padding_side": "right",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    })
    return tokenizer.get_vocab_size()


def write_nvila_fixture(root: Path, *, lite: bool = True, seed: int = 0) -> Path:
    """A checkpoint laid out like an NVILA release, from NVILA-8B's published config.json with the
    widths shrunk (every key kept), written without vlm_edge's checkpoint writer.

    lite=False: NVILA-8B itself (dynamic_s2, scales 448/896/1344 -> 3 x 1152 channels, mlp_downsample).
    lite=True:  NVILA-Lite: the same with one scale (image_aspect_ratio "dynamic": tiles + thumbnail),
                mm_hidden_size = the tower's width, and the 3x3 projector (mlp_downsample_3x3_fix). NVILA-Lite's
                own config.json is not at hand: these are the fields its model code shows to differ.
    Tokenizer: Qwen2-style (ChatML specials), no chat template recorded (as the release's top config)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    top = json.loads(NVILA_CONFIG.read_text())
    vocab_size = qwen2_tokenizer_files(root / "llm")
    llm_cfg = copy.deepcopy(top["llm_cfg"])
    llm_cfg.update(TINY_LLM, vocab_size=vocab_size, max_position_embeddings=1024, model_max_length=1024,
                   tokenizer_model_max_length=1024, max_window_layers=2, bos_token_id=None,
                   eos_token_id=vocab_size - 1)  # <|im_end|>
    vision_cfg = copy.deepcopy(top["vision_tower_cfg"])
    vision_cfg.update(TINY_VISION, image_size=NVILA_TILE, num_image_tokens=(NVILA_TILE // 14) ** 2)
    projector_cfg = copy.deepcopy(top["mm_projector_cfg"])
    scales = 1 if lite else len(top["s2_scales"].split(","))
    top.update(llm_cfg=llm_cfg, vision_tower_cfg=vision_cfg, mm_projector_cfg=projector_cfg,
               hidden_size=TINY_LLM["hidden_size"], mm_hidden_size=scales * TINY_VISION["hidden_size"],
               s2_scales=",".join(str(NVILA_TILE * k) for k in (1, 2, 3)), s2_max_split_size=NVILA_TILE)
    if lite:
        top.update(image_aspect_ratio="dynamic", dynamic_s2=False)
        projector_cfg["mm_projector_type"] = "mlp_downsample_3x3_fix"
    _save_json(root / "config.json", top)

    _save_json(root / "llm" / "config.json", dict(llm_cfg, _name_or_path="./llm"))
    llm_kwargs = {k: v for k, v in llm_cfg.items() if k not in ("_name_or_path", "torch_dtype", "architectures")}
    llm = Qwen2ForCausalLM(Qwen2Config(**llm_kwargs))
    with torch.no_grad():  # larger than the init, so that greedy tokens are decided
        for p in llm.parameters():
            p.mul_(3.0)
    save_file({k: v.contiguous() for k, v in llm.state_dict().items()}, str(root / "llm" / "model.safetensors"),
              metadata={"format": "pt"})

    _save_json(root / "vision_tower" / "config.json", dict(vision_cfg, _name_or_path="./vision_tower"))
    vision_kwargs = {k: v for k, v in vision_cfg.items() if k not in ("_name_or_path", "torch_dtype", "architectures")}
    vision = SiglipVisionModel(SiglipVisionConfig(**vision_kwargs))
    save_file({f"vision_model.{k}": v.contiguous() for k, v in vision.state_dict().items()},
              str(root / "vision_tower" / "model.safetensors"), metadata={"format": "pt"})
    _save_json(root / "vision_tower" / "preprocessor_config.json", {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": NVILA_TILE, "width": NVILA_TILE},
    })

    _save_json(root / "mm_projector" / "config.json", dict(projector_cfg, _name_or_path="./mm_projector"))
    c, h = scales * TINY_VISION["hidden_size"], TINY_LLM["hidden_size"]
    if lite:  # layers.1 LN(9C), .2 9C -> 3C, .4 LN(3C), .5 3C -> H, .7 H -> H
        c9, c3 = 9 * c, 3 * c
        projector = {
            "layers.1.weight": 1 + 0.1 * torch.randn(c9), "layers.1.bias": 0.1 * torch.randn(c9),
            "layers.2.weight": torch.randn(c3, c9) / c9**0.5, "layers.2.bias": 0.1 * torch.randn(c3),
            "layers.4.weight": 1 + 0.1 * torch.randn(c3), "layers.4.bias": 0.1 * torch.randn(c3),
            "layers.5.weight": torch.randn(h, c3) / c3**0.5, "layers.5.bias": 0.1 * torch.randn(h),
            "layers.7.weight": torch.randn(h, h) / h**0.5, "layers.7.bias": 0.1 * torch.randn(h),
        }
    else:
        projector = downsample_projector_weights(c, h)
    save_file(projector, str(root / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    return root
