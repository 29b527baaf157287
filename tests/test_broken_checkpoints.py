"""Broken or unsupported checkpoints fail with a clear message that names the file or field.

Table-driven: each case damages a fresh copy of a valid checkpoint and states the error type
and a phrase the message must contain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from vlm_edge.common.errors import CheckpointError, UnsupportedFeatureError, VlmEdgeError
from vlm_edge.model import load_checkpoint


def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_shape(root: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = root / "mm_projector" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["layers.2.weight"] = tensors["layers.2.weight"][:, :-1].contiguous()
    save_file(tensors, str(path))


def _drop_tensor(root: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = root / "mm_projector" / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["layers.4.bias"]
    save_file(tensors, str(path))


def _extra_tensor(root: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = root / "mm_projector" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["layers.9.weight"] = torch.zeros(3)
    save_file(tensors, str(path))


CASES: dict[str, tuple[Callable[[Path], None], type, str]] = {
    "missing llm folder": (lambda r: shutil.rmtree(r / "llm"), CheckpointError, "no llm/ sub-folder"),
    "missing vision folder": (lambda r: shutil.rmtree(r / "vision_tower"), CheckpointError, "no vision_tower/ sub-folder"),
    "missing config.json": (lambda r: (r / "config.json").unlink(), CheckpointError, "config.json is missing"),
    "malformed config.json": (lambda r: (r / "config.json").write_text("{nope"), CheckpointError, "not valid JSON"),
    "not a VILA checkpoint": (lambda r: _edit_json(r / "config.json", model_type="llama"), CheckpointError, "model_type 'llama'"),
    "unknown projector type": (
        lambda r: _edit_json(r / "mm_projector" / "config.json", mm_projector_type="ldpv2"),
        UnsupportedFeatureError, "mm_projector_type='ldpv2'"),
    # VILA1.5-3b's own s2_scales (336,...) do not start at this tower's size: S2 cannot cut its tiles
    "s2 scales off the tower": (lambda r: _edit_json(r / "config.json", s2=True), CheckpointError,
                                "s2_scales='336,672,1008' must rise in multiples"),
    "unknown aspect ratio": (lambda r: _edit_json(r / "config.json", image_aspect_ratio="anyres"), UnsupportedFeatureError,
                             "image_aspect_ratio='anyres'"),
    # VILA1.5's s2_scales (336,...) do not start at this tower's size: dynamic_s2 cannot tile with them
    "dynamic_s2 scales off the tower": (lambda r: _edit_json(r / "config.json", image_aspect_ratio="dynamic_s2"),
                                        CheckpointError, "s2_scales='336,672,1008' must rise in multiples"),
    "unknown LLM architecture": (lambda r: _edit_json(r / "llm" / "config.json", architectures=["MistralForCausalLM"]),
                                 UnsupportedFeatureError, "MistralForCausalLM"),
    "bad token order": (lambda r: _edit_json(r / "mm_projector" / "config.json", downsample_token_order="diagonal"),
                        CheckpointError, "downsample_token_order='diagonal'"),
    "mm_hidden_size mismatch": (lambda r: _edit_json(r / "config.json", mm_hidden_size=1152), CheckpointError, "mm_hidden_size=1152"),
    "wrong tensor shape": (_wrong_shape, CheckpointError, "layers.2.weight has shape"),
    "missing tensor": (_drop_tensor, CheckpointError, "lacks 1 tensor(s)"),
    "unknown tensor": (_extra_tensor, CheckpointError, "layers.9.weight"),
    "truncated safetensors": (lambda r: _truncate(r / "vision_tower" / "model.safetensors"), CheckpointError,
                              "not a readable safetensors file"),
    "truncated shard": (lambda r: _truncate(r / "llm" / "model-00002-of-00002.safetensors"), CheckpointError,
                        "model-00002-of-00002.safetensors is not a readable"),
    "missing shard": (lambda r: (r / "llm" / "model-00001-of-00002.safetensors").unlink(), CheckpointError,
                      "names model-00001-of-00002.safetensors, which is missing"),
    "missing tokenizer": (lambda r: [(r / "llm" / n).unlink() for n in ("tokenizer.model",)], CheckpointError, "has no tokenizer"),
    "unknown chat template": (lambda r: _edit_json(r / "config.json", chat_template="alpaca"), UnsupportedFeatureError,
                              "chat template 'alpaca' is unknown"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_checkpoint_fails_clearly(case, release_dir, tmp_path):
    damage, error, phrase = CASES[case]
    root = tmp_path / "ckpt"
    shutil.copytree(release_dir, root)
    damage(root)
    with pytest.raises(error) as info:
        load_checkpoint(root)
    assert phrase in str(info.value), str(info.value)
    assert isinstance(info.value, VlmEdgeError)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
