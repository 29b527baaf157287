"""Portable CPU numerics (train/numerics.py): what a run records, and that it repeats bit for bit.

Whether two different CPUs give the same weights cannot be shown on one machine. What can: a portable
run really runs the pinned kernels (AVX2 PyTorch kernels, MKL in CNR mode, no oneDNN, 2 threads),
records that in its checkpoint, and gives identical weights when repeated; and a run that cannot
be portable says so instead of claiming it. `python benchmarks/train_repro.py` prints a portable
run's weight hash, to compare between hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_edge.model import load_checkpoint
from vlm_edge.train import numerics
from vlm_edge.train.recipe import StageConfig, TrainConfig
from vlm_edge.train.trainer import Trainer

MICRO = ["--preset", "micro", "--eval-per-type", "0", "--device", "cpu", "--steps", "align=2,pretrain=2,sft=4"]
X86_AVX2 = numerics.cpu_supports_portable()


def _user_env() -> dict[str, str]:
    """This environment without the kernel pins the test session sets for itself (tests/conftest.py):
    what a user's shell has."""
    return {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}


def _train(out: Path, *extra: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", *MICRO, *extra, "-o", str(out)],
                         capture_output=True, text=True, env=_user_env())
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads((out / "training" / "train_config.json").read_text())["numerics_in_effect"]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(load_checkpoint(path).model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_cpu_check_reads_the_flags(tmp_path):
    (tmp_path / "yes").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n")
    (tmp_path / "no").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert numerics.cpu_supports_portable(tmp_path / "yes") is x86
    assert numerics.cpu_supports_portable(tmp_path / "no") is False
    assert numerics.cpu_supports_portable(tmp_path / "missing") is False


@pytest.mark.skipif(not X86_AVX2, reason="portable numerics need an x86-64 CPU with AVX2 and FMA")
def test_portable_run_records_its_kernels_and_repeats_bit_for_bit(tmp_path):
    first = _train(tmp_path / "a")
    assert first == {"mode": "portable", "capability": "AVX2", "mkl_cbwr": "AVX2,STRICT", "threads": 2}
    assert _train(tmp_path / "b") == first
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    native = _train(tmp_path / "n", "--numerics", "native", "--threads", "1")
    assert native["mode"] == "native" and native["threads"] == 1 and native["mkl_cbwr"] == ""


def test_resume_keeps_the_saved_numerics(tmp_path):
    _train(tmp_path / "run", "--numerics", "native", "--threads", "1")
    assert numerics.saved_settings(tmp_path / "run") == ("native", 1)
    assert numerics.saved_settings(tmp_path / "nothing") is None
    resumed = subprocess.run([sys.executable, "-m", "vlm_edge.train.cli", "-o", str(tmp_path / "run"), "--resume"],
                             capture_output=True, text=True, env=_user_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((tmp_path / "run" / "training" / "train_config.json").read_text())
    assert again["numerics"] == "native" and again["numerics_in_effect"]["threads"] == 1


def test_configs_saved_before_the_setting_read_as_native():
    config = TrainConfig.from_dict({"preset": "micro", "stages": []})
    assert config.numerics == "native" and config.threads is None
    with pytest.raises(Exception, match="numerics 'fast' is unknown"):
        TrainConfig(preset="micro", numerics="fast", stages=[StageConfig("align", 1, 1e-3, 2, ("mm_projector",), {"caption": 1})]).validate()


def test_portable_asked_too_late_says_native_and_why(tmp_path):
    """A process that loaded torch before anything could pin its kernels: the run must not claim to
    be portable. (Run apart: this test session pins its kernels at start, tests/conftest.py.)"""
    code = (
        "import torch, json, sys\n"
        "from pathlib import Path\n"
        "from vlm_edge.train.recipe import StageConfig, TrainConfig\n"
        "from vlm_edge.train.trainer import Trainer\n"
        "stages = [StageConfig('align', 1, 1e-3, 2, ('mm_projector',), {'caption': 1})]\n"
        "trainer = Trainer(TrainConfig(preset='micro', eval_per_type=0, device='cpu', stages=stages), Path(sys.argv[1]))\n"
        "print(json.dumps(trainer.numerics))\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt")], capture_output=True, text=True,
                         env=_user_env())
    assert run.returncode == 0, run.stderr[-2000:]
    effect = json.loads(run.stdout.strip().splitlines()[-1])
    if X86_AVX2 and effect["capability"] == "AVX2":  # an AVX2-only host: the kernels match, MKL's pin is missing
        assert "MKL_CBWR" in effect["why"]
    assert effect["mode"] == "native" and effect["why"]
