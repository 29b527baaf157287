"""Use NVIDIA's released AWQ weights: a TinyChat packed file beside the float checkpoint -> our
AWQ checkpoint (AutoAWQ GEMM layout), with the file's integers, scales and zeros as they are.

A `-AWQ` release's `*-w4-g128-awq-v2.pt` is a torch state dict of the whole quantized LLM: every
quantized linear as `<name>.qweight` / `.scales` / `.scaled_zeros` (common/tinychat_format.py),
and the other tensors (embeddings, norms with AWQ's scales folded in, lm_head) in float16. Keys
may carry the VILA wrapper's `llm.` prefix. Nothing is re-quantized; the vision tower and the
projector come from the float checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from vlm_edge.common import awq_format, tinychat_format
from vlm_edge.common.errors import InputError
from vlm_edge.common.fsutil import atomic_directory
from vlm_edge.common.vila_config import VilaConfig

from .api import copy_all_but_llm_weights, is_quantized
from .config import QUANT_CONFIG_FILE, QUANT_DIR

FORMAT = "tinychat"


def read_tinychat_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"TinyChat AWQ file {path} does not exist") from None
    except Exception:  # pickle, zip and torch errors all mean the same to a user
        raise InputError(f"{path} is not a TinyChat AWQ file: torch.load cannot read it as a state dict of "
                         "tensors; pass the *-w4-g128-awq-v2.pt of a -AWQ release") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} is not a TinyChat AWQ file: expected a state dict of tensors")
    prefix = "llm." if any(k.startswith("llm.") for k in state) else ""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert(state: dict[str, torch.Tensor], group_size: int, where: str) -> tuple[dict[str, torch.Tensor], int]:
    """TinyChat tensors -> our GEMM tensors (+ everything else in float16); and the linears converted."""
    out: dict[str, torch.Tensor] = {}
    linears = sorted(k[: -len(".qweight")] for k in state if k.endswith(".qweight"))
    if not linears:
        raise InputError(f"{where} holds no quantized linears (no <name>.qweight tensors)")
    for base in linears:
        missing = [s for s in ("scales", "scaled_zeros") if f"{base}.{s}" not in state]
        if missing:
            raise InputError(f"{where}: {base} has a qweight but no {', '.join(missing)}: not a TinyChat AWQ file")
        qweight = state[f"{base}.qweight"].numpy()
        scales = state[f"{base}.scales"].to(torch.float16).numpy()
        scaled = state[f"{base}.scaled_zeros"].to(torch.float16).numpy()
        try:
            q = tinychat_format.unpack_v2(qweight) if qweight.dtype == np.int16 else tinychat_format.unpack_v1(qweight)
            s, z = tinychat_format.group_params(scales, scaled, q.shape[0], q.shape[1], group_size)
            gemm = tinychat_format.to_gemm(q, s, z)
        except ValueError as e:
            raise InputError(f"{where}: {base}: {e}") from None
        out.update({f"{base}.{k}": torch.from_numpy(v) for k, v in gemm.items()})
    done = {f"{b}.{s}" for b in linears for s in ("qweight", "scales", "scaled_zeros")}
    for key, tensor in state.items():
        if key not in done and tensor.is_floating_point():
            out[key] = tensor.to(torch.float16).contiguous()
    return out, len(linears)


def import_tinychat(source: str | Path, awq_file: str | Path, output: str | Path, *, group_size: int = 128,
                    overwrite: bool = False) -> Path:
    """Write `output`: `source`'s vision tower and projector, and the LLM from the TinyChat file."""
    source, awq_file, output = Path(source), Path(awq_file), Path(output)
    vila_config = VilaConfig.read(source)
    if is_quantized(source):
        raise InputError(f"{source} is already quantized; pass the float checkpoint beside the TinyChat file")
    tensors, count = convert(read_tinychat_file(awq_file), group_size, str(awq_file))
    with atomic_directory(output, overwrite=overwrite) as tmp:
        llm_dir = copy_all_but_llm_weights(source, tmp)
        llm_config = {k: v for k, v in vila_config.llm.items() if k not in ("torch_dtype", "dtype")}
        llm_config["torch_dtype"] = "float16"
        llm_config["quantization_config"] = awq_format.quantization_config(4, group_size, symmetric=False)
        (llm_dir / "config.json").write_text(json.dumps(llm_config, indent=2) + "\n")
        save_file(tensors, str(llm_dir / "model.safetensors"), metadata={"format": "pt"})
        (tmp / QUANT_DIR).mkdir()
        (tmp / QUANT_DIR / QUANT_CONFIG_FILE).write_text(json.dumps(
            {"imported_from": FORMAT, "file": awq_file.name, "group_size": group_size, "quantized_linears": count},
            indent=2) + "\n")
    return output
