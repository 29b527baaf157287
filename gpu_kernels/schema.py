"""The ONNX op of the fused downsample: our own domain, its contract, its reference, its checks.

    vlm_edge.VlmEdgeDownsampleLayerNorm  (domain "vlm_edge", opset 1)
        inputs   x [B, S, S, C], weight [r*r*C], bias [r*r*C]        T in float, float16, bfloat16
        output   y [B, ceil(S/r)^2, r*r*C]                           T
        attrs    ratio (int, 2 or 3), order ("column_major" | "row_major"), eps (float, > 0),
                 plugin_version ("1"), plugin_namespace ("")

The op type is the TensorRT plugin's name: TensorRT's ONNX parser builds a node it does not know
as the registered plugin of that name, with the version and namespace in `plugin_version` and
`plugin_namespace`, the other attributes as the plugin's fields and the inputs as its inputs.
ONNX Runtime has no such op; an engine directory keeps the plain-op graph beside it (its
"twin", which ONNX Runtime runs and validation checks), and `reference` says what the node
computes, so that a test can hold the two together.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .build import PLUGIN_LIBRARY, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from .reference import ORDERS, downsample_layernorm

DOMAIN = "vlm_edge"
DOMAIN_VERSION = 1
OP_TYPE = PLUGIN_NAME  # TensorRT's parser looks the plugin up by the node's op type
__all__ = ["DOMAIN", "OP_TYPE", "PLUGIN_LIBRARY", "PLUGIN_VERSION", "make_node", "check_node", "reference"]
RATIOS = (2, 3)


def make_node(x: str, weight: str, bias: str, y: str, *, ratio: int, order: str, eps: float,
              name: str = "downsample_layernorm") -> onnx.NodeProto:
    """The plugin node: x [B, S, S, C] -> y [B, ceil(S/r)^2, r*r*C]."""
    if ratio not in RATIOS or order not in ORDERS or not eps > 0:
        raise ValueError(f"ratio {ratio} (2 or 3), order {order!r} ({' or '.join(ORDERS)}), eps {eps} (> 0)")
    return helper.make_node(OP_TYPE, [x, weight, bias], [y], name=name, domain=DOMAIN, ratio=int(ratio), order=order,
                            eps=float(eps), plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


def is_plugin_node(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def attributes(node: onnx.NodeProto) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def check_node(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> list[str]:
    """What would stop TensorRT from building this node as our plugin (attributes, weight shapes)."""
    where = f"node {node.name} ({DOMAIN}.{OP_TYPE})"
    attrs = attributes(node)
    problems = []
    if attrs.get("ratio") not in RATIOS:
        problems.append(f"{where}: ratio {attrs.get('ratio')!r} must be 2 or 3")
    if attrs.get("order") not in ORDERS:
        problems.append(f"{where}: order {attrs.get('order')!r} must be {' or '.join(ORDERS)}")
    if not isinstance(attrs.get("eps"), float) or not attrs["eps"] > 0:
        problems.append(f"{where}: eps {attrs.get('eps')!r} must be a positive float")
    if attrs.get("plugin_version") != PLUGIN_VERSION or attrs.get("plugin_namespace", "") != PLUGIN_NAMESPACE:
        problems.append(f"{where}: plugin_version {attrs.get('plugin_version')!r} / namespace "
                        f"{attrs.get('plugin_namespace')!r}; the library provides version {PLUGIN_VERSION!r} in the "
                        "empty namespace")
    if len(node.input) != 3 or len(node.output) != 1:
        return problems + [f"{where}: takes x, weight, bias and gives one output"]
    widths = set()
    for role, name in zip(("weight", "bias"), node.input[1:]):
        init = initializers.get(name)
        if init is None or len(init.dims) != 1:
            problems.append(f"{where}: {role} must be a rank-1 initializer")
        else:
            widths.add(int(init.dims[0]))
    ratio = attrs.get("ratio")
    if len(widths) > 1 or (widths and ratio in RATIOS and next(iter(widths)) % (ratio * ratio)):
        problems.append(f"{where}: weight and bias must both be ratio*ratio*C long, got {sorted(widths)}")
    return problems


def reference(node: onnx.NodeProto, x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What the node computes, by gpu_kernels/reference.py: x [B, S, S, C] -> [B, ceil(S/r)^2, r*r*C]."""
    attrs = attributes(node)
    batch, side, side2, channels = x.shape
    if side != side2:
        raise ValueError(f"x must be [B, S, S, C], got {list(x.shape)}")
    return downsample_layernorm(x.reshape(batch, side * side, channels), weight, bias, ratio=attrs["ratio"],
                                order=attrs["order"], eps=attrs["eps"])
