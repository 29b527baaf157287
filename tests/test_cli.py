"""`vlm-model`: the installed console script end to end, and its error handling."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vlm_edge.model.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"


def test_console_script_init_and_generate(tmp_path):
    exe = shutil.which("vlm-model")
    assert exe, "vlm-model is not on PATH: is the package installed?"
    subprocess.run([exe, "init", "--preset", "tiny", "-o", str(tmp_path / "ckpt")], check=True, capture_output=True)
    out = subprocess.run(
        [exe, "generate", str(tmp_path / "ckpt"), "--image", str(EXAMPLE), "--prompt", "What shapes are there?",
         "--max-new-tokens", "4"], check=True, capture_output=True, text=True,
    )
    assert out.returncode == 0


def test_info_describes_the_checkpoint(tiny, tmp_path, capsys):
    tiny.save(tmp_path / "ckpt")
    assert main(["info", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "mlp_downsample, column_major token order" in out and "image tokens   4" in out and "plain" in out


@pytest.mark.parametrize(
    "argv,phrase",
    [(["generate", "{ckpt}", "--prompt", "hi", "--image", "missing.png"], "missing.png does not exist"),
     (["generate", "{tmp}/nowhere", "--prompt", "hi"], "does not exist"),
     (["generate", "{ckpt}", "--prompt", "hi", "--chat-template", "alpaca"], "chat template 'alpaca' is unknown"),
     (["init", "-o", "{ckpt}"], "not empty"),
     (["init", "--preset", "huge", "-o", "{tmp}/new"], "preset 'huge' is unknown")],
)
def test_errors_are_one_clear_line(tiny, tmp_path, capsys, argv, phrase):
    tiny.save(tmp_path / "ckpt")
    argv = [a.format(ckpt=tmp_path / "ckpt", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err
