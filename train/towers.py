"""Vision towers that ship with vlm-edge, pretrained once, as VILA starts from a pretrained SigLIP.

    pretrained/tiny16/  the tiny16 preset's SigLIP tower (width 128, 4 layers, 56 px pictures,
        14 px patches: 16 image tokens), pretrained on 1,024,000 pictures of 1-3 free shapes (the
        training world's renderers and backgrounds, grey or of any hue) to tell each shape's form
        and colour from the tokens it covers. Built by

            python benchmarks/tower_samples.py --objects 3 --downsample 1 --init mimetic \\
                --steps 4000 --pool 100000 --every 800 --save train/pretrained/tiny16

        (about 22 minutes on 2 CPU cores; native kernels, so another host builds a slightly
        different tower). Shape read off its tokens: 89.3% on the training world, 83.1% on the
        held-out world (docs/training.md).

`vlm-train --preset tiny16` starts from it unless --init-vision names another tower (or `none`).
Each file's SHA-256 is checked before the tower is used: an altered or half-copied file is refused.
"""

from __future__ import annotations

from pathlib import Path

from vlm_edge.common.errors import CheckpointError
from vlm_edge.common.fsutil import sha256_file

SHIPPED_PREFIX = "vlm-edge:"  # TrainConfig.init_vision names a shipped tower as vlm-edge:<name>
HERE = Path(__file__).resolve().parent / "pretrained"  # installed as package data (setup.py)

# tower name -> {file: SHA-256}
TOWERS: dict[str, dict[str, str]] = {
    "tiny16": {
        "config.json": "0b138c90a60bb25b5e5e9892a7c869d5c0856ca43b870620b15e37d503368328",
        "model.safetensors": "d26fee307b43bb5c6c975bd5c609f6b97ee6e60b25244f859b1220bff4e47d15",
        "preprocessor_config.json": "dc25f77eccb5899404c73d929a96241d6441b102f360e966e8b0019962ea2f07",
    },
}


def is_shipped(name: str | None) -> bool:
    return bool(name) and name.startswith(SHIPPED_PREFIX)


def tower_folder(name: str, root: Path = HERE) -> Path:
    """The folder of `name`: a path as given, or a shipped tower (vlm-edge:<tower>) after its files'
    hashes are checked."""
    if not is_shipped(name):
        return Path(name)
    tower = name[len(SHIPPED_PREFIX):]
    if tower not in TOWERS:
        raise CheckpointError(f"{name}: no such shipped vision tower; vlm-edge ships {', '.join(TOWERS)}")
    folder = root / tower
    for file, digest in TOWERS[tower].items():
        path = folder / file
        if not path.is_file():
            raise CheckpointError(f"{path}: the shipped {tower} tower is missing this file; reinstall vlm-edge "
                                  "or pass --init-vision none")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: the shipped {tower} tower's file does not match its SHA-256 (altered "
                                  "or half-copied); reinstall vlm-edge or pass --init-vision none")
    return folder
