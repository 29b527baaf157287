"""The trt vision graph: vision.onnx with the projector's downsample + LayerNorm fused into our plugin node.

    vision.onnx (plain ops: ONNX Runtime, validation)      vision.trt.onnx (TensorRT, with the plugin)

    features [images, S*S, C]                               features [images, S*S, C]
      Reshape [0, S, S, C]                                    Reshape [0, S, S, C]
      (Pad bottom/right to a multiple of r)                   vlm_edge.VlmEdgeDownsampleLayerNorm
      Reshape [0, S'/r, r, S'/r, r, C]                            (ratio, order, eps; the LayerNorm's
      Transpose (column- or row-major tokens)                      weight and bias as inputs 1 and 2)
      Reshape [0, T, r*r*C]                                  normed [images, T, r*r*C]
      LayerNormalization (weight, bias, eps)                  ... the rest of the projector, unchanged
    normed [images, T, r*r*C]

The two graphs share one weight file (vision.onnx.data): the rewrite keeps every other node and
initializer as it is, so the plain graph is the trt graph's exact twin, and what ONNX Runtime
validates is what TensorRT builds, up to the one node whose reference (gpu_kernels/schema.py) the
tests hold equal to the plain ops it replaces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vlm_edge.common.errors import VlmEdgeError
from vlm_edge.common.fsutil import atomic_write_bytes
from vlm_edge.kernels import schema
from vlm_edge.kernels.build import PLUGIN_LIBRARY, PLUGIN_VERSION, source_digest

from .vision import DownsampleSite

TRT_VISION_FILE = "vision.trt.onnx"


def plugin_record() -> dict:
    """What the manifest says a graph with the plugin node needs."""
    return {"library": PLUGIN_LIBRARY, "plugin": schema.OP_TYPE, "version": PLUGIN_VERSION,
            "op": f"{schema.DOMAIN}.{schema.OP_TYPE}", "sources": source_digest()}


def fuse_downsample(model: onnx.ModelProto, site: DownsampleSite) -> onnx.ModelProto:
    """A copy of `model` with the nodes from `site.start` to `site.end` replaced by the plugin node."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = fused.graph
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    if site.end not in producer or nodes[producer[site.end]].op_type != "LayerNormalization":
        raise VlmEdgeError(f"the vision graph has no LayerNormalization producing {site.end!r} to fuse")
    norm = nodes[producer[site.end]]
    initializers = {t.name for t in graph.initializer}
    if len(norm.input) != 3 or not set(norm.input[1:]) <= initializers:
        raise VlmEdgeError(f"LayerNormalization {norm.name} needs weight and bias initializers to become the plugin's "
                           "inputs; nothing was fused")

    # the region: every node on a path from start to end (walk back from the LayerNorm's input, stop at start)
    region, stack = {producer[site.end]}, [producer[norm.input[0]]] if norm.input[0] in producer else []
    while stack:
        i = stack.pop()
        if i in region:
            continue
        region.add(i)
        stack += [producer[name] for name in nodes[i].input if name != site.start and name in producer]
    inside = {out for i in region for out in nodes[i].output}
    for i, node in enumerate(nodes):
        if i not in region and any(name in inside - {site.end} for name in node.input):
            raise VlmEdgeError(f"node {node.name} reads a value inside the downsample; nothing was fused")
    if not any(site.start in nodes[i].input for i in region) or len(region) > 8:
        raise VlmEdgeError(f"the downsample between {site.start!r} and {site.end!r} is not the expected chain")

    grid_shape = f"{site.start}_grid_shape"
    grid = f"{site.start}_grid"
    graph.initializer.append(numpy_helper.from_array(np.array([0, site.side, site.side, site.channels], np.int64),
                                                     grid_shape))
    replacement = [
        helper.make_node("Reshape", [site.start, grid_shape], [grid], name="downsample_grid"),  # [images, S, S, C]
        schema.make_node(grid, norm.input[1], norm.input[2], site.end, ratio=site.ratio, order=site.order,
                         eps=site.eps),
    ]
    first = min(region)
    kept = [node for i, node in enumerate(nodes) if i not in region]
    kept[first:first] = replacement
    del graph.node[:]
    graph.node.extend(kept)

    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(op.domain == schema.DOMAIN for op in fused.opset_import):
        fused.opset_import.append(helper.make_opsetid(schema.DOMAIN, schema.DOMAIN_VERSION))
    return fused


def write_trt_vision(engine_dir: Path, plain_file: str, site: DownsampleSite) -> str:
    """Write vision.trt.onnx beside `plain_file`, sharing its weight file; returns the file name."""
    model = onnx.load(str(engine_dir / plain_file), load_external_data=False)
    atomic_write_bytes(engine_dir / TRT_VISION_FILE, fuse_downsample(model, site).SerializeToString())
    return TRT_VISION_FILE
