"""Named model shapes for new checkpoints, as a table of dimensions.

`micro` is for tests. `tiny` is the embedded default: 2.6M parameters that train in about 9
minutes on 2 CPU cores. Its 28 px images make 4x4 patches of 7 px, downsampled to 2x2 = 4 image
tokens: exactly one token per cell of the training scenes' 2x2 layout, so each object is one
token and finding it by colour or shape is a choice among 4 keys. (56 px images with 16 tokens,
a 2x2 block per object, trained slower and learnt shape and OCR far worse: docs/training.md.)
`tiny16` is the same LLM and tower
width at 56 px with 14 px patches and VILA's `mlp2x_gelu` projector (no merge): 16 image tokens,
so a shape placed anywhere, and two shapes near each other, each have tokens of their own
(`vlm-train --preset tiny16` starts from the tower pretrained for it that ships in
train/pretrained/; docs/training.md). Odd patch grids
(VILA1.5-3b's 27x27 -> padded 28x28 -> 196 tokens) are exercised by the test
fixtures. `vila1.5-3b` has the published VILA1.5-3b dimensions (for benchmarks and memory
checks; random weights). `bench-qwen0.5b` is the runtime benchmark's model: VILA1.5-3b's SigLIP
so400m (384 px, 729 -> 196 tokens) with Qwen2.5-0.5B's LLM dimensions (tied embeddings, 151936
rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from vlm_edge.common.errors import CheckpointError, UnsupportedFeatureError
from vlm_edge.common.fsutil import read_json
from vlm_edge.common.tokenizer import TextTokenizer
from vlm_edge.common.vila_config import VilaConfig


@dataclass(frozen=True)
class ModelDims:
    # LLM (Llama)
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    max_positions: int
    # vision tower (SigLIP)
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    projector_type: str = "mlp_downsample"
    token_order: str = "column_major"
    chat_template: str = "plain"
    llm_family: str = "llama"  # llama | qwen2 (biases on q/k/v)
    vocab: int | None = None  # None: the tokenizer's vocabulary; a release's size otherwise (rows past the tokenizer are unused)
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5


PRESETS: dict[str, ModelDims] = {
    "micro": ModelDims(  # for tests: trains a step in milliseconds
        hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, max_positions=512,
        image_size=28, patch_size=7, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2,
    ),
    "tiny": ModelDims(
        hidden=192, intermediate=512, layers=4, heads=4, kv_heads=2, max_positions=1024,
        image_size=28, patch_size=7, vision_hidden=128, vision_intermediate=256, vision_layers=4, vision_heads=4,
    ),
    "tiny16": ModelDims(  # tiny's LLM and tower width at 56 px, 14 px patches, no merge: 16 image tokens
        hidden=192, intermediate=512, layers=4, heads=4, kv_heads=2, max_positions=1024,
        image_size=56, patch_size=14, vision_hidden=128, vision_intermediate=256, vision_layers=4, vision_heads=4,
        projector_type="mlp2x_gelu",
    ),
    "vila1.5-3b": ModelDims(
        hidden=2560, intermediate=6912, layers=32, heads=20, kv_heads=20, max_positions=4096,
        image_size=384, patch_size=14, vision_hidden=1152, vision_intermediate=4304, vision_layers=27, vision_heads=16,
        chat_template="vicuna_v1",
    ),
    "bench-qwen0.5b": ModelDims(  # the runtime benchmark: Qwen2.5-0.5B's LLM, VILA1.5-3b's SigLIP
        hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, max_positions=4096,
        image_size=384, patch_size=14, vision_hidden=1152, vision_intermediate=4304, vision_layers=27, vision_heads=16,
        chat_template="vicuna_v1", llm_family="qwen2", vocab=151936, tie_embeddings=True, rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
}


def preset_config(name: str, tokenizer: TextTokenizer) -> VilaConfig:
    """A VILA1.5-layout config for preset `name`, sized to `tokenizer`'s vocabulary."""
    if name not in PRESETS:
        raise UnsupportedFeatureError(f"preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    d = PRESETS[name]
    if d.vocab is not None and d.vocab < tokenizer.vocab_size:
        raise UnsupportedFeatureError(f"preset {name!r} has {d.vocab} embedding rows, fewer than the tokenizer's "
                                      f"{tokenizer.vocab_size} tokens")
    llm = {
        "architectures": ["Qwen2ForCausalLM" if d.llm_family == "qwen2" else "LlamaForCausalLM"],
        "model_type": d.llm_family,
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "max_position_embeddings": d.max_positions,
        "vocab_size": d.vocab or tokenizer.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": d.rms_norm_eps,
        "rope_theta": d.rope_theta,
        "tie_word_embeddings": d.tie_embeddings,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    vision = {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": d.vision_hidden,
        "intermediate_size": d.vision_intermediate,
        "num_hidden_layers": d.vision_layers,
        "num_attention_heads": d.vision_heads,
        "image_size": d.image_size,
        "patch_size": d.patch_size,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    }
    projector = {
        "architectures": ["MultimodalProjector"],
        "model_type": "v2l_projector",
        "mm_projector_type": d.projector_type,
        "downsample_token_order": d.token_order,
    }
    preprocessor = {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True,
        "size": {"height": d.image_size, "width": d.image_size},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    top = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "hidden_size": d.hidden,
        "mm_hidden_size": d.vision_hidden,
        "image_aspect_ratio": "resize",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "s2": False,
        "num_video_frames": 8,
        "chat_template": d.chat_template,
    }
    config = VilaConfig(top=top, llm=llm, vision_tower=vision, mm_projector=projector, preprocessor=preprocessor)
    config.validate()
    return config


def byte_level_tokenizer() -> TextTokenizer:
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials): needs no corpus.

    For untrained models; the training module replaces it with a BPE trained on its data.
    """
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials)}  # <unk>=0 <s>=1 </s>=2 <pad>=3
    vocab.update({ch: len(specials) + i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.add_special_tokens(specials)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}
    return TextTokenizer(tokenizer, config)



def checkpoint_with_llm(name: str, llm_dir: str | Path, seed: int = 0):
    """Preset `name`'s vision tower and a new projector (random weights, `seed`) around the
    transformers LLM folder `llm_dir` (config.json, safetensors weights, tokenizer), loaded as it
    is: a VILA-layout Checkpoint whose LLM is that model, for benchmarks on real LLM weights."""
    import torch

    from vlm_edge.common.tokenizer import default_chat_template

    from .checkpoint import Checkpoint, load_tokenizer, load_weights
    from .vila import VilaModel

    llm_dir = Path(llm_dir)
    if not (llm_dir / "config.json").is_file():
        raise CheckpointError(f"{llm_dir}: not a transformers model folder (no config.json); pass the folder "
                              "that holds config.json, the *.safetensors weights and the tokenizer")
    llm = read_json(llm_dir / "config.json", what="LLM config", error=CheckpointError)
    tokenizer = load_tokenizer(llm_dir)
    config = preset_config(name, tokenizer)
    if "quantization_config" in llm:
        raise UnsupportedFeatureError(f"{llm_dir}: the LLM is already quantized ({llm['quantization_config'].get('quant_method')}); "
                                      "pass its float (bf16/fp16/fp32) release")
    config.llm = llm
    config.top["hidden_size"] = llm.get("hidden_size")
    config.top["chat_template"] = default_chat_template(tokenizer)
    config.validate()
    torch.manual_seed(seed)
    model = VilaModel(config).eval()
    load_weights(model.llm, llm_dir)
    return Checkpoint(model, tokenizer)
