"""Shared fixtures. Expensive ones (a trained SentencePiece model, the release-layout checkpoint)
are built once per session in a temporary directory."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_configure(config):
    """Pin PyTorch's CPU kernels before any test module imports torch (train/numerics.py): the
    models the fixtures train from scratch are then the same draw on every x86-64 host with AVX2
    of one vendor, whichever kernels its PyTorch would pick, and tests that ask them questions hold
    on every such host. (fixtures.py imports torch: it is imported inside the fixtures below.)"""
    from vlm_edge.train import numerics

    numerics.request("portable")



@pytest.fixture(scope="session")
def spm_model(tmp_path_factory):
    from fixtures import train_sentencepiece

    return train_sentencepiece(tmp_path_factory.mktemp("spm"))


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory, spm_model):
    """A VILA1.5-3b-layout checkpoint with tiny widths (see fixtures.write_release_fixture)."""
    from fixtures import write_release_fixture

    return write_release_fixture(tmp_path_factory.mktemp("release") / "VILA1.5-3b-tiny", spm_model=spm_model)


@pytest.fixture(scope="session")
def release(release_dir):
    from vlm_edge.model import load_checkpoint

    return load_checkpoint(release_dir)


@pytest.fixture
def tiny(request):
    """A random tiny Checkpoint (Llama + SigLIP + mlp_downsample, column-major) with the byte tokenizer."""
    import torch
    from fixtures import tiny_config

    from vlm_edge.model import Checkpoint, VilaModel
    from vlm_edge.model.presets import byte_level_tokenizer

    torch.manual_seed(0)
    return Checkpoint(VilaModel(tiny_config()).eval(), byte_level_tokenizer())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def micro_engine(tmp_path_factory):
    """A micro checkpoint trained by the training module (ckpt/), AWQ-quantized (awq/) and exported
    with 4-bit weights (engine/): the runtime's and the server's test engine."""
    from fixtures import train_micro

    from vlm_edge.export.api import export_checkpoint
    from vlm_edge.export.config import ExportConfig
    from vlm_edge.quant.api import quantize_checkpoint
    from vlm_edge.quant.config import QuantConfig

    root = tmp_path_factory.mktemp("edge")
    train_micro(root / "ckpt", (10, 50, 150))
    quantize_checkpoint(root / "ckpt", root / "awq", QuantConfig(group_size=32))
    # float compute (accuracy level 0): tests/test_edge.py holds the runtime to the PyTorch reference
    # token for token, which int8 activations (the default's level 4 where it validates) need not keep
    # on every host; test_export.py covers the default's choice
    export_checkpoint(root / "awq", root / "engine", ExportConfig(awq4=True, prompts=2, accuracy_level=0))
    return root
