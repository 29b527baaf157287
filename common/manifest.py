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
hashes too (`vlm-run --verify`, `load(..., verify=True)`), which reads every byte. Every load also
reads the external-data file names each .onnx holds (common/onnx_wire.py): each must be one of
that component's own files, inside the directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .fsutil import atomic_write_json, read_json, sha256_file
from .onnx_wire import external_data_locations

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
        validate(manifest, where)
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


# An engine is untrusted input (it may come from anywhere): every field the runtime sizes memory
# or indexes with is checked for type and range before anything is allocated.
MODEL_INTS = {  # field -> (least, most)
    "hidden_size": (1, 1 << 16), "layers": (1, 1024), "heads": (1, 1024), "kv_heads": (1, 1024),
    "head_dim": (1, 4096), "vocab_size": (2, 1 << 21), "intermediate_size": (1, 1 << 18),
    "max_positions": (2, 1 << 22), "image_size": (1, 1 << 14), "num_image_tokens": (1, 1 << 16),
}
KINDS = ("vision", "decoder", "embeddings", "tokenizer", "projector")  # a component named "decoder.ort" is of kind decoder
PREPROCESSING_INTS = {"height": (1, 1 << 14), "width": (1, 1 << 14)}
TILINGS = ("none", "dynamic", "dynamic_s2", "s2")  # common/image.py: ImageProcessorConfig.tiling


def _int_field(d: dict[str, Any], key: str, bounds: tuple[int, int], where: str) -> int:
    value = d.get(key)
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CheckpointError(f"{where}: {key}={value!r} must be an integer from {lo} to {hi}; re-export the engine")
    return value


def validate(manifest: Manifest, where: str = "manifest") -> None:
    """Raise CheckpointError naming the first field of `manifest` that is missing, of the wrong
    type, out of range, inconsistent with the model dims, or a file path leaving the directory."""
    model = manifest.model
    if not isinstance(model, dict):
        raise CheckpointError(f"{where}: model must be an object; re-export the engine")
    dims = {key: _int_field(model, key, bounds, f"{where}: model") for key, bounds in MODEL_INTS.items()}
    if "num_video_frames" in model:  # engines from before video input have none (8 is used)
        _int_field(model, "num_video_frames", (1, 256), f"{where}: model")
    if "video_pool_sizes" in model:  # NVILA's temporal-spatial pooling of video frames
        sizes = model["video_pool_sizes"]
        if not (isinstance(sizes, list) and sizes and all(isinstance(s, list) and len(s) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256 for v in s) for s in sizes)):
            raise CheckpointError(f"{where}: model.video_pool_sizes={sizes!r} must be a list of [t, h, w] integers "
                                  "from 1 to 256; re-export the engine")
        frames = model.get("num_video_frames", 8)
        if any(frames % s[0] for s in sizes):
            raise CheckpointError(f"{where}: model.num_video_frames={frames} is not a multiple of every "
                                  f"video_pool_sizes t ({sizes}); re-export the engine")
    vocab = dims["vocab_size"]
    stops = model.get("stop_token_ids")
    if not (isinstance(stops, list) and stops and all(isinstance(t, int) and 0 <= t < vocab for t in stops)):
        raise CheckpointError(f"{where}: model.stop_token_ids={stops!r} must be a non-empty list of token ids "
                              f"below vocab_size {vocab}; re-export the engine")
    pre = manifest.preprocessing
    if not isinstance(pre, dict):
        raise CheckpointError(f"{where}: preprocessing must be an object; re-export the engine")
    for key, bounds in PREPROCESSING_INTS.items():
        _int_field(pre, key, bounds, f"{where}: preprocessing")
    if pre.get("tiling", "none") not in TILINGS:
        raise CheckpointError(f"{where}: preprocessing.tiling={pre.get('tiling')!r} is not one of {', '.join(TILINGS)}; "
                              "re-export the engine (or update vlm-edge)")
    for key in ("min_tiles", "max_tiles"):  # engines from before tiling have neither
        if key in pre:
            _int_field(pre, key, (1, 64), f"{where}: preprocessing")
    if pre.get("min_tiles", 1) > pre.get("max_tiles", 12):
        raise CheckpointError(f"{where}: preprocessing.min_tiles is above max_tiles; re-export the engine")
    if pre.get("tiling") in ("dynamic_s2", "s2"):
        scales, out = pre.get("s2_scales"), pre.get("s2_output_scale")
        if not (isinstance(scales, list) and 2 <= len(scales) <= 8 and all(isinstance(v, int) for v in scales)
                and scales[0] == pre.get("width") and all(b > a and b % scales[0] == 0 for a, b in zip(scales, scales[1:]))
                and isinstance(out, int) and -len(scales) <= out < len(scales)):
            raise CheckpointError(f"{where}: preprocessing.s2_scales={scales!r} / s2_output_scale={out!r} are not rising "
                                  "multiples of the tile size and a scale index; re-export the engine")
        if "projector" not in manifest.components:
            raise CheckpointError(f"{where}: a dynamic_s2 engine needs its projector component; re-export the engine")
    for key in ("mean", "std"):
        values = pre.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)
                and (key == "mean" or all(v > 0 for v in values))):
            raise CheckpointError(f"{where}: preprocessing.{key}={values!r} must be 3 numbers"
                                  f"{' above 0' if key == 'std' else ''}; re-export the engine")
    for name, component in manifest.components.items():
        kind = name.split(".")[0]
        if kind in KINDS and component.kind != kind:
            raise CheckpointError(f"{where}: component {name} has kind {component.kind!r}, expected {kind!r}; "
                                  "re-export the engine")
        if not component.files:
            raise CheckpointError(f"{where}: component {name} lists no files; re-export the engine")
        for rel, record in component.files.items():
            parts = Path(rel).parts
            if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
                raise CheckpointError(f"{where}: component {name} names the file {rel!r}, which is not a plain path "
                                      "inside the engine directory; this engine cannot be trusted")
            if not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                    and isinstance(record.get("bytes"), int) and record["bytes"] >= 0):
                raise CheckpointError(f"{where}: component {name}, file {rel}: expected "
                                      '{"sha256": ..., "bytes": ...}; re-export the engine')
        _check_specs(name, component, dims, where)


def _check_specs(name: str, component: Component, dims: dict[str, int], where: str) -> None:
    """The I/O shapes a component records agree with the model dims (int axes only)."""
    want: dict[str, list[int | None]] = {}  # tensor -> expected axes (None: any)
    if component.kind in ("vision", "projector"):
        want["image_embeds"] = [None, dims["num_image_tokens"], dims["hidden_size"]]
    elif component.kind == "embeddings":
        want["embeddings"] = [dims["vocab_size"], dims["hidden_size"]]
    elif component.kind == "decoder":
        want["inputs_embeds"] = [None, None, dims["hidden_size"]]
        want["logits"] = [None, dims["vocab_size"]]
        kv = [None, dims["kv_heads"], None, dims["head_dim"]]
        keys = [t.name for t in component.inputs if t.name.startswith("past_key_values.")]
        if keys and len(keys) != 2 * dims["layers"]:
            raise CheckpointError(f"{where}: component {name} has {len(keys) // 2} layers of KV cache inputs, but "
                                  f"model.layers is {dims['layers']}; re-export the engine")
        want.update({k: kv for k in keys})
    for spec in component.inputs + component.outputs:
        expected = want.get(spec.name)
        if expected is None:
            continue
        shape = list(spec.shape)
        if len(shape) != len(expected) or any(e is not None and isinstance(a, int) and a != e
                                              for a, e in zip(shape, expected)):
            raise CheckpointError(f"{where}: component {name}, tensor {spec.name} has shape {shape}, which does not "
                                  f"fit the model dims (expected {['*' if e is None else e for e in expected]}); "
                                  "re-export the engine")


def check_graph(component: Component, name: str, args: dict[str, list[Any]], where: str) -> None:
    """The graph's own inputs and outputs (`args`: tensor name -> shape as the runtime reports it,
    an int or a name/None for a dynamic axis) hold every tensor the manifest records, with the same
    int axes: a manifest edited to other dims than its graph is refused before any allocation."""
    for spec in component.inputs + component.outputs:
        if spec.name not in args:
            raise CheckpointError(f"{where}: component {name}: the graph has no tensor {spec.name!r} that the "
                                  "manifest records; re-export the engine")
        actual = args[spec.name]
        if len(actual) != len(spec.shape) or any(isinstance(a, int) and isinstance(m, int) and a != m
                                                 for a, m in zip(actual, spec.shape)):
            raise CheckpointError(f"{where}: component {name}: tensor {spec.name} is {list(actual)} in the graph but "
                                  f"{spec.shape} in the manifest; re-export the engine")


def file_records(engine_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} for the files of one component, in the given order."""
    return {name: {"sha256": sha256_file(engine_dir / name), "bytes": (engine_dir / name).stat().st_size}
            for name in names}


def check_files(engine_dir: str | Path, manifest: Manifest, components: list[str] | None = None, *,
                hashes: bool = False) -> None:
    """Raise CheckpointError naming the first missing, resized (or, with `hashes`, changed) file
    of the chosen components (default: all), or a graph of theirs that names external data
    outside its component (check_external_data)."""
    engine_dir = Path(engine_dir)
    root = engine_dir.resolve()
    for name in list(manifest.components) if components is None else components:
        for rel, record in manifest.components[name].files.items():
            path = engine_dir / rel
            if not path.resolve().is_relative_to(root):  # a symlink that leaves the directory
                raise CheckpointError(f"{path} (component {name}) leads outside the engine directory {engine_dir}; "
                                      "this engine cannot be trusted")
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
        check_external_data(engine_dir, manifest.components[name], name)


def check_external_data(engine_dir: str | Path, component: Component, name: str) -> None:
    """Every external-data file the component's .onnx graphs name (common/onnx_wire.py) must be a
    relative path that stays inside the engine directory once symlinks are resolved, and one of the
    component's own files (so its size and hash were checked). ONNX Runtime resolves these names
    itself and, in some versions, opens files anywhere; this runs before any graph is opened."""
    engine_dir = Path(engine_dir)
    root = engine_dir.resolve()
    own = {(engine_dir / rel).resolve() for rel in component.files}
    for rel in component.files:
        if not rel.endswith(".onnx"):
            continue
        graph = engine_dir / rel
        for location in external_data_locations(graph):
            loc = Path(location)
            try:
                target = None if "\x00" in location else (graph.parent / loc).resolve()
            except (OSError, RuntimeError, ValueError):  # a symlink loop
                target = None
            if target is None or loc.is_absolute() or ".." in loc.parts or not target.is_relative_to(root):
                raise CheckpointError(f"{graph} names external data {location!r} outside the engine directory; refused")
            if target not in own:
                raise CheckpointError(f"{graph} names external data {location!r}, which {MANIFEST_FILE} does not list "
                                      f"among component {name}'s files; refused (re-export the engine)")


def verify_files(engine_dir: str | Path, manifest: Manifest, components: list[str] | None = None) -> None:
    """Sizes and SHA-256 of every file of the chosen components (reads every byte)."""
    check_files(engine_dir, manifest, components, hashes=True)
