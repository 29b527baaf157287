"""Checkpoint I/O: save -> load is bit-exact, the release fixture loads, saves are atomic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fixtures import TINY_LLM, published_config
from vlm_edge.common.errors import VlmEdgeError
from vlm_edge.model import Checkpoint, load_checkpoint, save_checkpoint


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_bit_exact(tiny, tmp_path, dtype):
    model = tiny.model.to(dtype)
    save_checkpoint(model, tiny.tokenizer, tmp_path / "a")
    loaded = load_checkpoint(tmp_path / "a", dtype=dtype)
    _assert_same_weights(model, loaded.model)
    assert loaded.config.to_top_level_json() == json.loads((tmp_path / "a" / "config.json").read_text())
    assert loaded.config.downsample_token_order == "column_major" and loaded.config.chat_template == "plain"
    assert loaded.tokenizer.tokenizer.to_str() == tiny.tokenizer.tokenizer.to_str()
    # saving what was loaded reproduces every file byte for byte
    loaded.save(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_sharded_save_round_trip(tiny, tmp_path):
    save_checkpoint(tiny.model, tiny.tokenizer, tmp_path / "ckpt", max_shard_bytes=64 * 1024)
    llm_files = sorted(p.name for p in (tmp_path / "ckpt" / "llm").glob("*.safetensors"))
    assert len(llm_files) > 1 and llm_files[0] == f"model-00001-of-{len(llm_files):05d}.safetensors"
    assert (tmp_path / "ckpt" / "llm" / "model.safetensors.index.json").is_file()
    _assert_same_weights(tiny.model, load_checkpoint(tmp_path / "ckpt").model)


def test_release_fixture_is_structurally_exact_and_loads(release_dir, caplog):
    """Same config keys, file names and state-dict keys as the public VILA1.5-3b release."""
    top = json.loads((release_dir / "config.json").read_text())
    published = published_config()
    assert top.keys() == published.keys()
    for sub in ("llm_cfg", "vision_tower_cfg", "mm_projector_cfg"):
        assert top[sub].keys() == published[sub].keys()
    assert sorted(p.name for p in (release_dir / "llm").iterdir()) == [
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json",
    ]
    with caplog.at_level(logging.INFO, logger="vlm_edge"):
        ckpt = load_checkpoint(release_dir)
    assert ckpt.config.chat_template == "vicuna_v1"  # a Llama-2 vocabulary, no template recorded
    assert any("chat template" in r.getMessage() for r in caplog.records)
    assert ckpt.config.hidden_size == TINY_LLM["hidden_size"] and ckpt.config.num_image_tokens == 4
    assert ckpt.tokenizer.bos_id == 1 and ckpt.tokenizer.eos_id == 2


def test_release_fixture_save_keeps_every_file_and_key(release, release_dir, tmp_path):
    release.save(tmp_path / "resaved")
    out = tmp_path / "resaved"
    assert (out / "llm" / "tokenizer.model").read_bytes() == (release_dir / "llm" / "tokenizer.model").read_bytes()
    assert (out / "llm" / "generation_config.json").is_file() and (out / "llm" / "tokenizer.json").is_file()
    top = json.loads((out / "config.json").read_text())
    assert top.keys() - {"chat_template"} == published_config().keys()
    assert top["mm_projector_cfg"]["downsample_token_order"] == "column_major"  # now explicit
    from safetensors import safe_open

    with safe_open(str(out / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    _assert_same_weights(release.model, load_checkpoint(out).model)


def test_save_refuses_non_empty_directory_and_overwrites_only_when_asked(tiny, tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(VlmEdgeError, match="not empty"):
        tiny.save(out)
    assert (out / "notes.txt").read_text() == "mine"
    tiny.save(out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()


class _FailingTokenizer:
    """A tokenizer whose save fails, to interrupt a checkpoint save halfway (after the weights)."""

    def save(self, directory):
        raise OSError("disk full")


def test_interrupted_save_leaves_nothing_behind(tiny, tmp_path):
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny.model, _FailingTokenizer(), tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory

    tiny.save(tmp_path / "ckpt")
    before = _files(tmp_path / "ckpt")
    with pytest.raises(OSError):
        save_checkpoint(tiny.model, _FailingTokenizer(), tmp_path / "ckpt", overwrite=True)
    assert _files(tmp_path / "ckpt") == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_checkpoint_object_template(tiny):
    assert isinstance(tiny, Checkpoint) and tiny.template.name == "plain"


def test_a_transformers_llm_folder_becomes_the_checkpoints_llm(tmp_path):
    """`vlm-model init --preset P --llm FOLDER`: a folder saved by transformers (bf16, as releases
    are) is the LLM of the checkpoint, value for value, next to the preset's vision tower."""
    import subprocess
    import sys

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlm_edge.model import load_checkpoint
    from vlm_edge.model.presets import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(3)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=False)).to(torch.bfloat16).eval()
    folder = tmp_path / "my-llm"
    hf.save_pretrained(folder)
    tokenizer.save(folder)
    out = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "micro", "--llm",
                             str(folder), "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.config.llm["hidden_size"] == 64 and ckpt.config.top["hidden_size"] == 64
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    with torch.no_grad():
        ours = ckpt.model.llm(input_ids=ids).logits.float()
        theirs = hf.float()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)

    result = subprocess.run([sys.executable, "-m", "vlm_edge.model.cli", "init", "--preset", "micro", "--llm",
                             str(tmp_path), "-o", str(tmp_path / "other")], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "not a transformers model folder" in result.stderr
