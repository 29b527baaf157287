"""Our assembled model reproduces transformers' own modules, loaded by transformers' own loader.

Each sub-folder of a checkpoint is also loaded with `<Class>.from_pretrained(sub_folder)`: that
checks our key mapping and file layout independently, and that tools reading the release layout
can read what we write. Same weights and the same attention kernel: outputs are expected to be
bit-identical; where our path adds work (splicing) the tolerance is float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2ForCausalLM, SiglipVisionModel

from fixtures import tiny_config
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX
from vlm_edge.model import Checkpoint, VilaModel, load_checkpoint
from vlm_edge.model.presets import byte_level_tokenizer


def _hf(cls, path):
    return cls.from_pretrained(str(path), attn_implementation="sdpa", dtype=torch.float32).eval()


@torch.no_grad()
def test_release_layout_matches_transformers(release, release_dir, rng):
    model = release.model
    hf_vision = _hf(SiglipVisionModel, release_dir / "vision_tower")
    hf_llm = _hf(LlamaForCausalLM, release_dir / "llm")

    pixels = torch.from_numpy(rng.standard_normal((2, 3, 42, 42)).astype(np.float32))
    want = hf_vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # select layer -2, all tokens
    assert torch.equal(model.vision_features(pixels), want)

    ids = torch.from_numpy(rng.integers(3, release.tokenizer.vocab_size, (1, 20)))
    assert torch.equal(model.llm(input_ids=ids).logits, hf_llm(input_ids=ids).logits)

    # splicing: text, image 0, text, image 1, text  ==  the same embeddings concatenated by hand
    text = [rng.integers(3, 100, n).tolist() for n in (5, 4, 3)]
    prompt = text[0] + [IMAGE_TOKEN_INDEX] + text[1] + [IMAGE_TOKEN_INDEX] + text[2]
    ours = model([prompt], pixels).logits
    image_embeds = model.mm_projector(want)
    embed = hf_llm.get_input_embeddings()
    manual = torch.cat([embed(torch.tensor(text[0])), image_embeds[0], embed(torch.tensor(text[1])), image_embeds[1],
                        embed(torch.tensor(text[2]))])[None]
    np.testing.assert_allclose(ours.numpy(), hf_llm(inputs_embeds=manual).logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "llm,vision,projector,select_feature,tied,image_size",
    [("qwen2", "clip", "mlp2x_gelu", "patch", True, 42),
     ("qwen2", "siglip", "linear", "cls_patch", False, 42),
     # CLIP + downsample: 4x4 patches + CLS; "patch" drops the CLS so the grid is square (-> 2x2 tokens)
     ("llama", "clip", "mlp_downsample_2x2_fix", "patch", False, 56),
     # NVILA-Lite's parts: Qwen2 + SigLIP + the 3x3 downsample (7x7 patches, padded to 9x9 -> 3x3 tokens)
     ("qwen2", "siglip", "mlp_downsample_3x3_fix", "cls_patch", False, 98)],
)
@torch.no_grad()
def test_other_families_round_trip_through_transformers(tmp_path, rng, llm, vision, projector, select_feature, tied, image_size):
    config = tiny_config(llm=llm, vision=vision, projector=projector, tie_embeddings=tied, select_feature=select_feature,
                         image_size=image_size)
    torch.manual_seed(0)
    Checkpoint(VilaModel(config).eval(), byte_level_tokenizer()).save(tmp_path / "ckpt")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    hf_vision = _hf(CLIPVisionModel if vision == "clip" else SiglipVisionModel, tmp_path / "ckpt" / "vision_tower")
    hf_llm = _hf(Qwen2ForCausalLM if llm == "qwen2" else LlamaForCausalLM, tmp_path / "ckpt" / "llm")

    pixels = torch.from_numpy(rng.standard_normal((1, 3, image_size, image_size)).astype(np.float32))
    want = hf_vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    if ckpt.config.select_feature == "patch":
        want = want[:, 1:]
    assert torch.equal(ckpt.model.vision_features(pixels), want)
    assert ckpt.model.encode_images(pixels).shape[1] == ckpt.config.num_image_tokens

    ids = torch.from_numpy(rng.integers(3, 260, (2, 9)))
    assert torch.equal(ckpt.model.llm(input_ids=ids).logits, hf_llm(input_ids=ids).logits)
    if tied:
        assert ckpt.model.llm.lm_head.weight.data_ptr() == ckpt.model.llm.get_input_embeddings().weight.data_ptr()
