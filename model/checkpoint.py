"""Load and save checkpoints in the VILA1.5 on-disk layout.

    ckpt/config.json
    ckpt/llm/{config.json, generation_config.json, model.safetensors | model-0000i-of-0000n.safetensors
              + model.safetensors.index.json, tokenizer.json, tokenizer_config.json, [tokenizer.model, ...]}
    ckpt/vision_tower/{config.json, preprocessor_config.json, model.safetensors}
    ckpt/mm_projector/{config.json, model.safetensors}

Before anything is allocated, the config is checked field by field (common/config_checks.py),
the model it describes is checked to fit in memory (common/footprint.py), and the safetensors
headers are checked against a weightless (meta-device) copy of the model: every expected tensor
present, no unknown tensor, every shape as the config implies. Errors name the file and the
tensor. Weights are then read tensor by tensor (no whole-file copies). Saves build the whole
directory aside and rename it into place.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from transformers import PretrainedConfig
from safetensors.torch import save_file

from vlm_edge.common import awq_format, config_checks
from vlm_edge.common.config_checks import check_fields
from vlm_edge.common.errors import CheckpointError
from vlm_edge.common.footprint import check_fits, weight_needs
from vlm_edge.common.fsutil import atomic_directory, read_json
from vlm_edge.common.log import get_logger
from vlm_edge.common.templates import ChatTemplate, get_template
from vlm_edge.common.tokenizer import TextTokenizer, default_chat_template, read_side_files, read_tokenizer_config
from vlm_edge.common.vila_config import LLM_DIR, PROJECTOR_DIR, VISION_DIR, VilaConfig

from .architectures import LLM_ARCHITECTURES, VISION_ARCHITECTURES, hf_config, tied_keys
from .vila import VilaModel

log = get_logger(__name__)

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3  # transformers' default; VILA1.5-3b's llm/ has two shards
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and its tokenizer. `model.config` holds every setting."""

    model: VilaModel
    tokenizer: TextTokenizer

    @property
    def config(self) -> VilaConfig:
        return self.model.config

    @property
    def template(self) -> ChatTemplate:
        return get_template(self.config.chat_template or "vicuna_v1")

    def save(self, out_dir: str | Path, **kwargs) -> None:
        save_checkpoint(self.model, self.tokenizer, out_dir, **kwargs)


def _components(model: VilaModel) -> list[tuple[str, torch.nn.Module, str]]:
    """(sub-folder, module, prefix of its keys on disk) for the three sub-models."""
    cfg = model.config
    return [
        (LLM_DIR, model.llm, LLM_ARCHITECTURES[cfg.llm_architecture].disk_prefix),
        (VISION_DIR, model.vision_tower, VISION_ARCHITECTURES[cfg.vision_architecture].disk_prefix),
        (PROJECTOR_DIR, model.mm_projector, ""),
    ]


# ---- loading ---------------------------------------------------------------------------------
def load_checkpoint(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    downsample_token_order: str | None = None,
    chat_template: str | None = None,
    attn_implementation: str = "sdpa",
) -> Checkpoint:
    """Load a VILA1.5-layout checkpoint.

    `downsample_token_order` overrides the saved order (or the documented default when none is
    saved); `chat_template` overrides the saved template (or the default judged from the vocabulary).
    """
    path = Path(path)
    config = VilaConfig.read(path)
    check_fits(weight_needs(config, dtype.itemsize), path, f"loading this model in {_DTYPE_NAMES.get(dtype, dtype)}")
    config.resolve_token_order(downsample_token_order)
    weightless = check_checkpoint_files(path, config, attn_implementation=attn_implementation)
    tokenizer = load_tokenizer(path / LLM_DIR, weightless.llm.config)
    if chat_template is not None:
        config.set_chat_template(chat_template)
    elif config.chat_template is None:
        name = default_chat_template(tokenizer, config.llm_architecture)
        log.info("checkpoint does not record a chat template; using %s (override with chat_template=...)", name)
        config.set_chat_template(name)
    else:
        get_template(config.chat_template)  # an unknown saved name fails here, clearly
    with _default_dtype(dtype):
        model = VilaModel(config, attn_implementation=attn_implementation, init_weights=False)
    awq_group = awq_group_size(config.llm, path / LLM_DIR)
    for sub, module, prefix in _components(model):
        load_weights(module, path / sub, prefix, awq_group_size=awq_group if sub == LLM_DIR else None)
    model.eval()
    return Checkpoint(model, tokenizer)


def check_checkpoint_files(path: str | Path, config: VilaConfig, *, attn_implementation: str = "sdpa") -> VilaModel:
    """Compare the safetensors headers of every sub-model with the model `config` describes, built on
    the meta device (no memory, no tensor data read), and return that weightless model. A config
    that disagrees with its weights fails here, naming the tensor, before anything is allocated."""
    path = Path(path)
    if config.is_downsample and config.downsample_token_order is None:
        config = config.copy()
        config.resolve_token_order(quiet=True)  # the order does not change a shape
    awq_group = awq_group_size(config.llm, path / LLM_DIR)
    with torch.device("meta"):
        weightless = VilaModel(config, attn_implementation=attn_implementation, init_weights=False)
    for sub, module, prefix in _components(weightless):
        check_weight_files(module, path / sub, prefix, awq_group_size=awq_group if sub == LLM_DIR else None)
    return weightless


def awq_group_size(llm_config: dict, llm_dir: Path) -> int | None:
    """The group size of an AutoAWQ GEMM-quantized LLM (its weights are dequantized on load), or None."""
    quant = llm_config.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, dict) or quant.get("quant_method") != "awq" or quant.get("version", "gemm") != "gemm" \
            or quant.get("bits") != 4:
        raise CheckpointError(
            f"{llm_dir}/config.json: quantization_config {quant} is not supported; vlm-edge reads 4-bit AWQ in the "
            "GEMM layout (quant_method awq, bits 4, version gemm)"
        )
    group = quant.get("group_size")
    if not isinstance(group, int) or group <= 0:
        raise CheckpointError(f"{llm_dir}/config.json: quantization_config has no valid group_size ({group!r})")
    return group


def load_tokenizer(llm_dir: Path, llm_config: PretrainedConfig | None = None) -> TextTokenizer:
    """tokenizer.json when present; else convert a SentencePiece tokenizer.model (as in releases).

    `llm_config`: the LLM's transformers config (default: built from `llm_dir`/config.json's checked
    fields). The conversion is handed it so that transformers does not read config.json itself:
    every key of that file would reach it unchecked (num_labels=10**9 builds a label map of a
    billion entries)."""
    if (llm_dir / "tokenizer.json").is_file():
        return TextTokenizer.from_dir(llm_dir)
    if not (llm_dir / "tokenizer.model").is_file():
        raise CheckpointError(f"{llm_dir} has no tokenizer: expected tokenizer.json or tokenizer.model")
    from transformers import AutoTokenizer

    config = llm_config if llm_config is not None else _folder_config(llm_dir)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(str(llm_dir), local_files_only=True, config=config)
        backend = hf_tokenizer.backend_tokenizer
    except Exception as e:  # transformers/sentencepiece raise many types here
        raise CheckpointError(f"could not convert {llm_dir / 'tokenizer.model'} to a fast tokenizer: {e}") from None
    log.info("converted %s to the fast-tokenizer format", llm_dir / "tokenizer.model")
    return TextTokenizer(backend, read_tokenizer_config(llm_dir), read_side_files(llm_dir))


def _folder_config(llm_dir: Path) -> PretrainedConfig:
    """The transformers config of a transformers LLM folder, from its checked fields (an empty one
    when the folder has no config.json or an architecture we do not build)."""
    path = llm_dir / "config.json"
    if not path.is_file():
        return PretrainedConfig()
    cfg = read_json(path, what="LLM config", error=CheckpointError)
    check_fields(cfg, config_checks.LLM, str(path))
    arch = LLM_ARCHITECTURES.get(cfg["architectures"][0])
    return hf_config(arch, cfg, "sdpa") if arch else PretrainedConfig()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of one sub-model: model.safetensors, or the shards its index names."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, what="safetensors index", error=CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{index} names {file.name}, which is missing from {directory}")
        return files
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    if list(directory.glob("*.bin")):
        raise CheckpointError(
            f"{directory} holds PyTorch .bin weights; only safetensors are read. Re-save the sub-model with "
            "transformers' save_pretrained(safe_serialization=True)"
        )
    raise CheckpointError(f"{directory} has no {WEIGHTS_FILE} (or {INDEX_FILE} with shards)")


def _broken(file: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{file} is not a readable safetensors file ({error}); it may be truncated or corrupt: "
        "re-download or re-save the checkpoint"
    )


_AWQ_PARTS = ("qweight", "qzeros", "scales")


def _awq_shapes(weight_shape: tuple[int, ...], group_size: int) -> dict[str, tuple[int, int]]:
    """AutoAWQ GEMM parts of a linear whose float weight is [N, K]: qweight int32 [K, N/8],
    qzeros int32 [K/G, N/8], scales [K/G, N]."""
    n, k = weight_shape
    return {"qweight": (k, n // 8), "qzeros": (k // group_size, n // 8), "scales": (k // group_size, n)}


def check_weight_files(module: torch.nn.Module, directory: Path, prefix: str = "", *,
                       awq_group_size: int | None = None) -> None:
    """Compare the safetensors headers of `directory` with `module`'s state dict, reading no tensor
    data: every tensor present, none unknown, every shape as the config implies. `module` may
    live on the meta device (no memory), so a config that disagrees with its weights fails before
    the model is allocated."""
    expected = {key: tuple(t.shape) for key, t in module.state_dict(keep_vars=True).items()}
    first: dict[int, str] = {}
    optional = set()  # keys that alias another (lm_head.weight under tied embeddings): not stored
    for key, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            optional.add(key)
        first.setdefault(id(tensor), key)
    found: set[str] = set()
    unexpected: list[str] = []
    packed: dict[str, set[str]] = {}  # linear -> the AWQ parts seen
    for file, f, disk_key, key, base, part, awq in _stored_tensors(directory, prefix, awq_group_size, expected):
        if not awq and key not in expected:
            if not key.endswith("position_ids"):  # persistent in old transformers, a buffer now
                unexpected.append(disk_key)
            continue
        try:
            shape = tuple(f.get_slice(disk_key).get_shape())
        except Exception as e:
            raise _broken(file, e) from None
        want = _awq_shapes(expected[f"{base}.weight"], awq_group_size)[part] if awq else expected[key]
        if shape != want:
            group = f" with group size {awq_group_size}" if awq else ""
            raise CheckpointError(
                f"{file}: tensor {disk_key} has shape {list(shape)}, but {directory.name}/config.json "
                f"implies {list(want)}{group}; the weights do not belong to this config"
            )
        if awq:
            packed.setdefault(base, set()).add(part)
        else:
            found.add(key)
    for base, parts in packed.items():
        if len(parts) < len(_AWQ_PARTS):
            raise CheckpointError(f"{directory}: AWQ layer {prefix}{base} lacks "
                                  f"{', '.join(sorted(set(_AWQ_PARTS) - parts))}")
        found.add(f"{base}.weight")
    if unexpected:
        raise CheckpointError(
            f"{directory} holds {len(unexpected)} tensor(s) its config.json does not describe, e.g. "
            f"{', '.join(unexpected[:5])}; the weights do not belong to this config"
        )
    missing = sorted(set(expected) - found - optional)
    if missing:
        raise CheckpointError(
            f"{directory} lacks {len(missing)} tensor(s) its config.json needs, e.g. "
            f"{', '.join(prefix + k for k in missing[:5])}"
        )


def load_weights(module: torch.nn.Module, directory: Path, prefix: str = "", *, awq_group_size: int | None = None) -> None:
    """Copy every tensor of `directory` into `module`, strictly, one tensor at a time, after
    `check_weight_files` has compared the headers with the module.

    With `awq_group_size`, a linear stored as AutoAWQ `qweight`/`qzeros`/`scales` is dequantized
    into its float `weight`.
    """
    check_weight_files(module, directory, prefix, awq_group_size=awq_group_size)
    expected = module.state_dict(keep_vars=True)
    packed: dict[str, dict[str, torch.Tensor]] = {}  # linear -> its AWQ parts, until all three are read
    for file, f, disk_key, key, base, part, awq in _stored_tensors(directory, prefix, awq_group_size, expected):
        if not awq and key not in expected:
            continue  # position_ids of old transformers (anything else was refused above)
        try:
            tensor = f.get_tensor(disk_key)
        except Exception as e:
            raise _broken(file, e) from None
        if awq:
            packed.setdefault(base, {})[part] = tensor
            if len(packed[base]) == len(_AWQ_PARTS):
                _load_awq(expected[f"{base}.weight"], packed.pop(base), awq_group_size, file, base)
            continue
        with torch.no_grad():
            expected[key].copy_(tensor)


def _stored_tensors(directory: Path, prefix: str, awq_group_size: int | None, expected: dict):
    """(file, its open handle, key on disk, key in the module, key's base, last part, whether it is an
    AutoAWQ part of a linear in `expected`) for each tensor of the weight files, in file order."""
    for file in weight_files(directory):
        try:
            handle = safe_open(str(file), framework="pt")
        except Exception as e:  # safetensors raises SafetensorError / OSError
            raise _broken(file, e) from None
        with handle as f:
            for disk_key in f.keys():
                key = disk_key[len(prefix):] if prefix and disk_key.startswith(prefix) else disk_key
                base, _, part = key.rpartition(".")
                awq = bool(awq_group_size) and part in _AWQ_PARTS and f"{base}.weight" in expected
                yield file, f, disk_key, key, base, part, awq


def _load_awq(target: torch.Tensor, parts: dict[str, torch.Tensor], group_size: int, file: Path, name: str) -> None:
    try:
        weight = awq_format.dequantize(
            parts["qweight"].numpy(), parts["qzeros"].numpy(), parts["scales"].float().numpy(), group_size
        )
    except ValueError as e:
        raise CheckpointError(f"{file}: AWQ layer {name}: {e}") from None
    if tuple(weight.shape) != tuple(target.shape):
        raise CheckpointError(
            f"{file}: AWQ layer {name} dequantizes to shape {list(weight.shape)}, but the config implies "
            f"{list(target.shape)}; the weights do not belong to this config"
        )
    with torch.no_grad():
        target.copy_(torch.from_numpy(weight))


# ---- saving ----------------------------------------------------------------------------------
def save_checkpoint(
    model: VilaModel,
    tokenizer: TextTokenizer,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write `model` and `tokenizer` as a VILA1.5-layout checkpoint, atomically.

    A non-empty `out_dir` is refused unless `overwrite`; the old directory is replaced only once
    the new one is complete. Tensors are written in the model's dtype.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        write_checkpoint(model, tokenizer, tmp, max_shard_bytes=max_shard_bytes)
    log.info("saved checkpoint to %s", out_dir)
    return out_dir


def write_checkpoint(model: VilaModel, tokenizer: TextTokenizer, directory: Path, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Write the checkpoint files into `directory` (not atomic: callers wrap it in atomic_directory,
    possibly together with files of their own, as the trainer does with its resume state)."""
    config = model.config.copy()
    _record_dtype(config, model.dtype)
    config.write(directory)
    for sub, module, prefix in _components(model):
        _save_weights(module, directory / sub, prefix, max_shard_bytes)
    tokenizer.save(directory / LLM_DIR)


def _record_dtype(config: VilaConfig, dtype: torch.dtype) -> None:
    """Make the configs say the dtype the tensors are stored in."""
    name = _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
    for cfg in (config.llm, config.vision_tower, config.mm_projector):
        cfg["dtype" if "dtype" in cfg and "torch_dtype" not in cfg else "torch_dtype"] = name
    config.top["model_dtype"] = f"torch.{name}"


def _save_weights(module: torch.nn.Module, directory: Path, prefix: str, max_shard_bytes: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    skip = tied_keys(module)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in module.state_dict().items():
        if key in skip:
            continue
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][prefix + key] = tensor.detach().contiguous()
        shard_bytes += size
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        for key, tensor in shard.items():
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
