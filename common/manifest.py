"""The engine directory's `manifest.json`: what `vlm-export` writes and the runtime reads.

    engine/
      manifest.json          this file's schema (FORMAT_VERSION)
      vision.onnx(.data)     pixel_values [N, 3, H, W] -> image_embeds [N, T, D]
      decoder.ort.onnx(.data)  inputs_embeds + KV cache -> last-position logits + KV cache
      decoder.trt.onnx(.data)  the same graph with TensorRT's int4 DequantizeLinear weights
      embeddings.npy         the LLM's input embedding table [vocab, D]
      tokenizer/             tokenizer.json (+ tokenizer_config.json): `tokenizers` only, no torch
      engines/               TensorRT plans, once built on the target (`vlm-build-engine`)

Every component records its I/O names, shapes (ints, or names of dynamic axes), dtypes, and the
size and SHA-256 of each of its files. Every load compares the sizes (a stat per file: a
truncated or partly copied engine is refused before anything runs); `verify_files` compares the
hashes too (`vlm-run --verify`, `load(..., verify=True)`), which reads every byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fsutil import atomic_write_json, read_json, sha256_file

FORMAT_VERSION = 2  # 2: files carry their size as well as their hash
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
ENGINES_DIR = "engines"


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: float32, int64, ...
    shape: list[int | str]  # a str is a dynamic axis ("batch", "past", ...)


@dataclass
class Component:
    """One graph or table of the engine: its files and its I/O."""

    kind: str  # vision | decoder | embeddings | tokenizer
    files: dict[str, dict[str, Any]]  # relative path -> {"sha256": hex digest, "bytes": size}
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    flavour: str | None = None  # decoders: fp | ort | trt
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The main file (the .onnx, or the .npy)."""
        return next(iter(self.files))


@dataclass
class Manifest:
    source: dict[str, Any]  # the checkpoint: path and hash of its config and weight files
    model: dict[str, Any]  # architecture, dims, image tokens, token order, select layer, ...
    quantization: dict[str, Any] | None  # None for a 16/32-bit export
    preprocessing: dict[str, Any]  # ImageProcessorConfig fields
    chat_template: str
    components: dict[str, Component]  # "vision", "embeddings", "decoder.ort", "decoder.trt", ...
    validation: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)  # TensorRT builds: version, SM, L4T, precision
    export: dict[str, Any] = field(default_factory=dict)  # the export config, tool version, seconds
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "manifest") -> "Manifest":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format_version {version!r} is not supported (this vlm-edge reads "
                                  f"{FORMAT_VERSION}); re-export the engine with this version of vlm-export")
        try:
            components = {
                name: Component(**{**c, "inputs": [TensorSpec(**t) for t in c.get("inputs", [])],
                                   "outputs": [TensorSpec(**t) for t in c.get("outputs", [])]})
                for name, c in d["components"].items()
            }
            manifest = cls(**{**d, "components": components})
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{where} is malformed ({e}); re-export the engine") from None
        for name, component in manifest.components.items():
            for rel, record in component.files.items():
                if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                        and isinstance(record.get("bytes"), int)):
                    raise CheckpointError(f"{where}: component {name}, file {rel}: expected "
                                          '{"sha256": ..., "bytes": ...}; re-export the engine')
        return manifest

    def write(self, engine_dir: str | Path) -> None:
        atomic_write_json(Path(engine_dir) / MANIFEST_FILE, self.to_dict())

    @classmethod
    def read(cls, engine_dir: str | Path) -> "Manifest":
        path = Path(engine_dir) / MANIFEST_FILE
        if Path(engine_dir).is_dir() and not path.exists():
            raise CheckpointError(f"{engine_dir} has no {MANIFEST_FILE}: it is not an engine directory written by "
                                  "vlm-export (or the export did not finish)")
        return cls.from_dict(read_json(path, what="engine manifest", error=CheckpointError), str(path))


def file_records(engine_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} for the files of one component, in the given order."""
    return {name: {"sha256": sha256_file(engine_dir / name), "bytes": (engine_dir / name).stat().st_size}
            for name in names}


def check_files(engine_dir: str | Path, manifest: Manifest, components: list[str] | None = None, *,
                hashes: bool = False) -> None:
    """Raise CheckpointError naming the first missing, resized (or, with `hashes`, changed) file
    of the chosen components (default: all)."""
    engine_dir = Path(engine_dir)
    for name in components or list(manifest.components):
        for rel, record in manifest.components[name].files.items():
            path = engine_dir / rel
            if not path.is_file():
                raise CheckpointError(f"{path} (component {name}) is missing; re-export the engine")
            size = path.stat().st_size
            if size != record["bytes"]:
                raise CheckpointError(f"{path} (component {name}) is {size} bytes, but {MANIFEST_FILE} says "
                                      f"{record['bytes']}: the file is truncated or was replaced; re-export the engine "
                                      "or copy it again")
            if hashes and sha256_file(path) != record["sha256"]:
                raise CheckpointError(f"{path} (component {name}) does not match its SHA-256 in {MANIFEST_FILE}: "
                                      "the file changed after export; re-export the engine or copy it again")


def verify_files(engine_dir: str | Path, manifest: Manifest, components: list[str] | None = None) -> None:
    """Sizes and SHA-256 of every file of the chosen components (reads every byte)."""
    check_files(engine_dir, manifest, components, hashes=True)
