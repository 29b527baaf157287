"""AWQ (activation-aware weight quantization) and RTN over a transformers decoder LLM.

The LLM is processed one decoder layer at a time (the published AWQ recipe):

    inputs of layer 0  <- captured from one forward pass over the calibration embeddings
    for each layer:
        run it once in float32 with hooks: the input of every linear and of every inspected module
        outputs = the FP layer's outputs (the next layer's inputs, as in the published recipe)
        per scale group: x_mean = mean |x| per input channel; for a in 0, 1/n, ..., (n-1)/n:
            s = x_mean^a / sqrt(max * min); W <- Q(W * s) / s; error = MSE(inspected output)
            keep the best s; fold 1/s into the previous op, scale the linears' columns by s
        per linear (not q/k): clip search over max |w| * (1 - i/n), i < n/2, per output group
        quantize; the layer's weights become their dequantized values

Only one layer's activations are alive at a time, so memory is the model plus one layer's worth.
RTN is the same without calibration, scales or clipping.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from vlm_edge.common.log import get_logger

from .mappings import Family
from .quantize import QuantFormat, Quantized, fake_quantize, quantize

log = get_logger(__name__)
CLIP_TOKENS = 512  # tokens the clip search measures on
_CLIP_CHUNK_ELEMENTS = 2**25  # output channels x tokens x K per chunk of the clip search


@dataclass
class QuantResult:
    """Quantized linears by their LLM module name, and what AWQ searched (for re-packing)."""

    linears: dict[str, Quantized] = field(default_factory=dict)
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # "<layer>.<prev>" -> s [K]
    clips: dict[str, torch.Tensor] = field(default_factory=dict)  # "<layer>.<linear>" -> max |w| [N, K/G]


class _Captured(Exception):
    pass


def _module(root: nn.Module, name: str) -> nn.Module:
    return root.get_submodule(name)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def layer_inputs(llm: nn.Module, family: Family, embeds: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The hidden states entering decoder layer 0, and the keyword arguments the model passes to
    every layer (rotary embeddings, mask, positions), from one forward pass cut short there."""
    first_layer = _module(llm, family.layers)[0]
    seen: dict[str, Any] = {}

    def grab(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured

    handle = first_layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        llm(inputs_embeds=embeds, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    kwargs = seen["kwargs"]
    kwargs["use_cache"] = False
    kwargs.pop("past_key_values", None)
    kwargs.pop("past_key_value", None)
    return seen["hidden"], kwargs


def quantize_llm(
    llm: nn.Module,
    family: Family,
    fmt: QuantFormat,
    *,
    method: str = "awq",
    embeds: torch.Tensor | None = None,
    n_grid: int = 20,
    clip: bool = True,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> QuantResult:
    """Quantize every linear of `family`'s decoder layers in place (weights become their
    dequantized values) and return the integers. `embeds` [n, L, D]: calibration inputs (AWQ)."""
    layers = _module(llm, family.layers)
    device = device or torch.device("cpu")
    result = QuantResult()
    for prefix_index, layer in enumerate(layers):
        name = f"{family.layers}.{prefix_index}"
        for linear in family.linears:
            fmt.check(f"{name}.{linear}", _module(layer, linear).weight)
    hidden = kwargs = None
    if method == "awq":
        if embeds is None:
            raise ValueError("AWQ needs calibration inputs")
        with torch.no_grad():
            hidden, kwargs = layer_inputs(llm, family, embeds.to(device))
        kwargs = {k: _to(v, device) for k, v in kwargs.items()}
    if progress:
        progress(0, len(layers))
    for index, layer in enumerate(layers):
        name = f"{family.layers}.{index}"
        original_dtype = next(layer.parameters()).dtype
        original_device = next(layer.parameters()).device
        layer.to(device=device, dtype=torch.float32)
        with torch.no_grad():
            if method == "awq":
                hidden = _awq_layer(layer, name, family, fmt, hidden.float(), kwargs, n_grid, clip, result)
            for linear in family.linears:
                module = _module(layer, linear)
                q = quantize(module.weight.data, fmt)
                result.linears[f"{name}.{linear}"] = q
                module.weight.data = q.dequantize(fmt.group_size)
        layer.to(device=original_device, dtype=original_dtype)
        gc.collect()  # hook closures and captured frames form cycles: free this layer's activations now
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if progress:
            progress(index + 1, len(layers))
    return result


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _awq_layer(
    layer: nn.Module, name: str, family: Family, fmt: QuantFormat, hidden: torch.Tensor, kwargs: dict[str, Any],
    n_grid: int, clip: bool, result: QuantResult,
) -> torch.Tensor:
    """Search and apply AWQ scales and clips for one layer; returns the FP layer's outputs."""
    inputs: dict[str, torch.Tensor] = {}  # linear -> its input
    calls: dict[str, tuple[tuple, dict]] = {}  # inspected module -> its (args, kwargs)
    wanted_inputs = {group.linears[0] for group in family.groups} | {n for n in family.linears if n not in family.no_clip}
    wanted_calls = {group.inspect for group in family.groups}
    handles = []
    for module_name in wanted_inputs | wanted_calls:
        def hook(module, args, kw, module_name=module_name):
            if module_name in wanted_inputs:
                inputs[module_name] = args[0] if args else kw["hidden_states"]
            if module_name in wanted_calls:
                calls[module_name] = (args, kw)
        handles.append(_module(layer, module_name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        outputs = _first(layer(hidden, **kwargs))
    finally:
        for handle in handles:
            handle.remove()

    for group in family.groups:
        prev = _module(layer, group.prev)
        linears = [_module(layer, n) for n in group.linears]
        if group.needs_same_width and prev.weight.shape[0] != linears[0].weight.shape[1]:
            continue  # e.g. v -> o under grouped-query attention
        x = inputs[group.linears[0]]
        s = _search_scale(x, linears, _module(layer, group.inspect), calls[group.inspect], fmt, n_grid)
        _fold(prev, linears, s)
        for linear in group.linears:
            if linear in inputs:
                inputs[linear] = inputs[linear] / s
        result.scales[f"{name}.{group.prev}"] = s.cpu()
    if clip:
        for linear in family.linears:
            if linear in family.no_clip:
                continue
            module = _module(layer, linear)
            x = inputs.get(linear)
            if x is None:  # shares its input with the group's first linear
                group = next(g for g in family.groups if linear in g.linears)
                x = inputs[group.linears[0]]
            max_val = _search_clip(module.weight.data, x, fmt, n_grid)
            result.clips[f"{name}.{linear}"] = max_val.cpu()
            _apply_clip(module, max_val, fmt.group_size)
    return outputs


def _search_scale(
    x: torch.Tensor, linears: list[nn.Linear], inspect: nn.Module, call: tuple[tuple, dict], fmt: QuantFormat, n_grid: int
) -> torch.Tensor:
    """The per-input-channel scale s [K] that minimises the inspected module's output error."""
    x_mean = x.reshape(-1, x.shape[-1]).abs().float().mean(0)
    args, kwargs = call
    reference = _first(inspect(*args, **kwargs))
    originals = [linear.weight.data.clone() for linear in linears]
    best_error, best = float("inf"), torch.ones_like(x_mean)
    try:
        for i in range(n_grid):
            s = x_mean.pow(i / n_grid).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for linear, w in zip(linears, originals):
                linear.weight.data = fake_quantize(w * s, fmt) / s
            error = (_first(inspect(*args, **kwargs)) - reference).float().pow(2).mean().item()
            if error < best_error:
                best_error, best = error, s.clone()
    finally:
        for linear, w in zip(linears, originals):
            linear.weight.data = w
    return best


def _fold(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """y = linear(prev(x)) is unchanged: prev's outputs are divided by s, the linears' inputs times s."""
    if isinstance(prev, nn.Linear):
        prev.weight.data.div_(s.view(-1, 1))
        if prev.bias is not None:
            prev.bias.data.div_(s)
    else:  # an RMSNorm / LayerNorm: output = normalized(x) * weight (+ bias)
        prev.weight.data.div_(s)
        if getattr(prev, "bias", None) is not None:
            prev.bias.data.div_(s)
    for linear in linears:
        linear.weight.data.mul_(s.view(1, -1))


def _search_clip(w: torch.Tensor, x: torch.Tensor, fmt: QuantFormat, n_grid: int) -> torch.Tensor:
    """max |w| per (output channel, group) [N, K/G] minimising the group-wise partial products' error."""
    n, k = w.shape
    g = fmt.group_size
    x = x.reshape(-1, k)
    step = max(1, x.shape[0] // CLIP_TOKENS)
    x = x[::step][:CLIP_TOKENS].float()  # [T, K], evenly spaced tokens
    xg = x.view(1, x.shape[0], k // g, g)
    chunk = max(1, _CLIP_CHUNK_ELEMENTS // (x.shape[0] * k))
    best_all = []
    for start in range(0, n, chunk):
        wg = w[start : start + chunk].view(-1, 1, k // g, g)  # [c, 1, ng, G]
        reference = (xg * wg).sum(-1)  # [c, T, ng]
        original_max = wg.abs().amax(dim=-1, keepdim=True)  # [c, 1, ng, 1]
        best_max = original_max.clone()
        best_error = torch.full(original_max.shape, float("inf"))
        for i in range(n_grid // 2):
            max_val = original_max * (1 - i / n_grid)
            clipped = torch.maximum(torch.minimum(wg, max_val), -max_val)
            q = fake_quantize(clipped.reshape(-1, k), fmt).view_as(wg)
            error = ((xg * q).sum(-1) - reference).pow(2).mean(dim=1).view(original_max.shape)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_max = torch.where(better, max_val, best_max)
        best_all.append(best_max.view(-1, k // g))
    return torch.cat(best_all)


def _apply_clip(module: nn.Linear, max_val: torch.Tensor, group_size: int) -> None:
    n, k = module.weight.shape
    w = module.weight.data.view(n, k // group_size, group_size)
    limit = max_val.view(n, k // group_size, 1)
    module.weight.data = torch.maximum(torch.minimum(w, limit), -limit).view(n, k)
