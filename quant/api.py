"""Quantize a VILA-layout checkpoint's LLM and write it in the AutoAWQ GEMM layout.

    ckpt-awq/
      config.json, vision_tower/, mm_projector/     copied unchanged (16/32-bit)
      llm/config.json                                + quantization_config (AutoAWQ's GEMM layout)
      llm/model.safetensors                          <linear>.qweight/.qzeros/.scales for every quantized
                                                     linear; embeddings, norms (with AWQ's folded scales)
                                                     and lm_head in float16
      llm/tokenizer files, generation_config.json    copied
      quant/quant_config.json                        the QuantConfig, versioned, with what was measured
      quant/awq_search.safetensors                   AWQ's scales and clip values, for re-packing
      calibration/                                   copied when the source has one

The output directory is built aside and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlm_edge.common import awq_format
from vlm_edge.common.errors import InputError
from vlm_edge.common.fsutil import atomic_directory
from vlm_edge.common.log import get_logger
from vlm_edge.common.vila_config import LLM_DIR, PROJECTOR_DIR, VISION_DIR, VilaConfig
from vlm_edge.model.checkpoint import Checkpoint, check_checkpoint_files, load_checkpoint

from .awq import QuantResult, quantize_llm
from .calibration import CALIBRATION_DIR, CalibrationSet, calibration_embeds, load_calibration
from .config import FORMAT_VERSION, QUANT_CONFIG_FILE, QUANT_DIR, SEARCH_FILE, QuantConfig, check_source
from .mappings import family

log = get_logger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def is_quantized(checkpoint_dir: str | Path) -> bool:
    """Whether the checkpoint's LLM is already in the AWQ layout."""
    config = VilaConfig.read(Path(checkpoint_dir))
    return isinstance(config.llm.get("quantization_config"), dict)


def quantize_model(checkpoint: Checkpoint, config: QuantConfig, checkpoint_dir: str | Path, *, progress=None,
                   calib: CalibrationSet | None = None) -> QuantResult:
    """Quantize `checkpoint.model.llm` in place (its weights become their dequantized values).
    `calib`: the calibration set when already loaded (default: `load_calibration` of the config)."""
    config = config.for_llm(checkpoint.config.llm)
    config.validate()
    fam = family(checkpoint.config.llm_architecture)
    device = pick_device(config.device)
    embeds = None
    if config.method == "awq":
        calib = calib if calib is not None else load_calibration(config.calib, checkpoint_dir)
        if config.text_only:
            calib = calib.text_only()
        embeds = calibration_embeds(calib, checkpoint, samples=config.samples, seq_len=config.seq_len)
        log.info("calibration: %s -> %d block(s) of %d positions", calib.source, embeds.shape[0], embeds.shape[1])
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    result = quantize_llm(checkpoint.model.llm, fam, config.format, method=config.method, embeds=embeds,
                          n_grid=config.n_grid, clip=config.clip, duo=config.duo, rounding=config.rounding,
                          device=device, dtype=dtype, progress=progress)
    if calib is not None:
        result.calibration = calib.source
    return result


def quantize_checkpoint(source: str | Path, output: str | Path, config: QuantConfig, *, overwrite: bool = False,
                        progress=None) -> Path:
    """`vlm-quant`: read `source`, quantize its LLM, write the AWQ checkpoint to `output`."""
    source, output = Path(source), Path(output)
    config.validate()
    vila = check_source(source, config)  # every config field, and whether the model fits in memory
    if source.resolve() == output.resolve():
        raise InputError(f"the output {output} is the input checkpoint; choose another directory")
    if isinstance(vila.llm.get("quantization_config"), dict):
        raise InputError(f"{source} is already AWQ-quantized (llm/config.json has a quantization_config); "
                         "use it as it is")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise InputError(f"output directory {output} is not empty; pass --force to replace it")
    config = config.for_llm(vila.llm)  # a group size that cannot work fails here
    check_checkpoint_files(source, vila)  # weights that disagree with the config fail before any allocation
    start = time.time()
    calib = load_calibration(config.calib, source) if config.method == "awq" else None  # fails before the load
    checkpoint = load_checkpoint(source)
    result = quantize_model(checkpoint, config, source, progress=progress, calib=calib)
    seconds = time.time() - start
    with atomic_directory(output, overwrite=overwrite) as tmp:
        write_quantized(checkpoint, result, config, source, tmp, seconds=seconds)
    log.info("wrote %s (%s, %d-bit, group %d, %s) in %.1f s", output, config.method.upper(), config.bits,
             config.group_size, "symmetric" if config.symmetric else "zero point", seconds)
    return output


def copy_all_but_llm_weights(source: Path, directory: Path) -> Path:
    """Vision tower, projector, top config, calibration set and the LLM's tokenizer files; returns
    the new llm/ folder, which still needs its config.json and weights."""
    for sub in (VISION_DIR, PROJECTOR_DIR):
        shutil.copytree(source / sub, directory / sub)
    shutil.copy2(source / "config.json", directory / "config.json")
    if (source / CALIBRATION_DIR).is_dir():
        shutil.copytree(source / CALIBRATION_DIR, directory / CALIBRATION_DIR)
    llm_dir = directory / LLM_DIR
    llm_dir.mkdir()
    for file in (source / LLM_DIR).iterdir():  # tokenizer and generation config
        if file.is_file() and not file.name.startswith("model") and file.name != "config.json":
            shutil.copy2(file, llm_dir / file.name)
    return llm_dir


def write_quantized(checkpoint: Checkpoint, result: QuantResult, config: QuantConfig, source: Path, directory: Path,
                    *, seconds: float = 0.0) -> None:
    llm_dir = copy_all_but_llm_weights(source, directory)

    llm_config = dict(checkpoint.config.llm)
    for key in ("torch_dtype", "dtype"):
        llm_config.pop(key, None)
    llm_config["torch_dtype"] = "float16"
    llm_config["quantization_config"] = awq_format.quantization_config(config.bits, config.group_size, config.symmetric)
    (llm_dir / "config.json").write_text(json.dumps(llm_config, indent=2) + "\n")
    save_file(packed_state_dict(checkpoint.model.llm, result), str(llm_dir / "model.safetensors"), metadata={"format": "pt"})

    quant_dir = directory / QUANT_DIR
    quant_dir.mkdir()
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": config.to_dict(),
                                "quantized_linears": len(result.linears), "seconds": round(seconds, 2)}
    if result.calibration:
        manifest["calibration"] = result.calibration
    (quant_dir / QUANT_CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    search = {f"scale.{k}": v.contiguous() for k, v in result.scales.items()}
    search.update({f"clip.{k}": v.contiguous() for k, v in result.clips.items()})
    if search:
        save_file(search, str(quant_dir / SEARCH_FILE))


def packed_state_dict(llm: torch.nn.Module, result: QuantResult) -> dict[str, torch.Tensor]:
    """The LLM's tensors: quantized linears in the AutoAWQ GEMM layout, the rest in float16."""
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in llm.state_dict().items():
        base = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and base in result.linears:
            q = result.linears[base]
            tensors[f"{base}.qweight"] = torch.from_numpy(awq_format.pack(q.q.T.numpy()))
            tensors[f"{base}.qzeros"] = torch.from_numpy(awq_format.pack(q.zeros.T.numpy()))
            tensors[f"{base}.scales"] = q.scales.T.contiguous()
        else:
            tensors[key] = tensor.detach().to(torch.float16).contiguous()
    if getattr(llm.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    return tensors
