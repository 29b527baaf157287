"""TensorRT: a static check of the `trt` graphs, and engine builds where TensorRT exists.

TensorRT cannot be installed on this project's own machines, so everything that can be checked
without the library is checked by `check_trt_graph` (it runs in CI on every export):

  - default-domain opset >= 21 (int4 DequantizeLinear with block_size) and no other domain
    (no com.microsoft ops: TensorRT has no MatMulNBits);
  - every op in TRT_OPS, the ONNX operators TensorRT 10's parser documents as supported
    (onnx-tensorrt docs/operators.md) that these graphs need, or our own plugin node
    (vlm_edge.VlmEdgeDownsampleLayerNorm, gpu_kernels/schema.py: attributes, weight shapes);
  - every DequantizeLinear: an INT4 initializer input of rank 2, block_size 64 or 128 on axis 0,
    constant float scales of shape [K / block, N], no zero point (TensorRT's int4 is symmetric),
    feeding a MatMul as its weight (input 1): the W4A16 pattern TensorRT fuses.

`build_engines` (lazy `import tensorrt`) loads our plugin library first when a graph has the
plugin node (built here once by gpu_kernels/build.py, or $VLM_EDGE_PLUGIN_LIBRARY), parses each graph, sets fp16, one optimization profile
per graph (images; prompt length; KV length), a timing cache in the engine directory, and
serializes plans to engines/ with a cache key (TensorRT version, SM, L4T release, precision).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from vlm_edge.common.errors import UnsupportedFeatureError, VlmEdgeError
from vlm_edge.common.log import get_logger
from vlm_edge.common.manifest import ENGINES_DIR

from vlm_edge.kernels import schema
from vlm_edge.quant.config import TRT_BLOCKS

log = get_logger(__name__)

MIN_OPSET = 21
TRT_OPS = frozenset({
    "Add", "And", "Cast", "Concat", "Conv", "DequantizeLinear", "Div", "Erf", "Expand", "Gather", "Identity",
    "LayerNormalization", "LessOrEqual", "MatMul", "Mul", "Neg", "Pad", "Range", "ReduceMean", "Reshape", "Shape",
    "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
})


def check_trt_graph(path: str | Path) -> list[str]:
    """Problems that would stop TensorRT 10 from parsing `path` or running its int4 weights natively."""
    model = onnx.load(str(path), load_external_data=False)
    problems = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < MIN_OPSET:
            problems.append(f"opset {opset.version} < {MIN_OPSET} (int4 DequantizeLinear needs block_size)")
        elif opset.domain == schema.DOMAIN and opset.version != schema.DOMAIN_VERSION:
            problems.append(f"imports {schema.DOMAIN} version {opset.version}; this vlm-edge knows version "
                            f"{schema.DOMAIN_VERSION}")
        elif opset.domain not in ("", "ai.onnx", schema.DOMAIN):
            problems.append(f"imports domain {opset.domain!r}, which TensorRT does not parse")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if schema.is_plugin_node(node):
            problems += schema.check_node(node, inits)
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type not in TRT_OPS:
            problems.append(f"node {node.name}: op {node.domain + '.' if node.domain else ''}{node.op_type} is not in "
                            "TensorRT's supported operator list")
            continue
        if node.op_type == "DequantizeLinear":
            problems += _check_dq(node, inits, consumers)
    return problems


def _check_dq(node: onnx.NodeProto, inits: dict[str, TensorProto], consumers) -> list[str]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    where = f"DequantizeLinear {node.name}"
    weight = inits.get(node.input[0])
    scale = inits.get(node.input[1]) if len(node.input) > 1 else None
    out = []
    if weight is None or weight.data_type != TensorProto.INT4 or len(weight.dims) != 2:
        return [f"{where}: input must be a rank-2 INT4 initializer"]
    block = attrs.get("block_size", 0)
    if block not in TRT_BLOCKS or attrs.get("axis", 1) != 0:
        out.append(f"{where}: block_size {block} on axis {attrs.get('axis', 1)}; TensorRT needs 64 or 128 on axis 0")
    k, n = weight.dims
    if scale is None or scale.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) \
            or list(scale.dims) != [k // max(block, 1), n]:
        out.append(f"{where}: scales must be a constant float initializer of shape [{k // max(block, 1)}, {n}]")
    if len(node.input) > 2 and node.input[2]:
        out.append(f"{where}: has a zero point; TensorRT's int4 weights are symmetric (export with --symmetric)")
    users = consumers.get(node.output[0], [])
    if not users or any(u.op_type != "MatMul" or list(u.input).index(node.output[0]) != 1 for u in users):
        out.append(f"{where}: output must feed MatMul weights (input 1) for TensorRT's W4A16 fusion")
    return out


# ---- engine builds (needs the tensorrt package and a GPU) ---------------------------------------------
@dataclass
class Profile:
    """Optimization profile bounds for the dynamic axes (min, opt, max)."""

    images: tuple[int, int, int] = (1, 1, 4)
    prompt: tuple[int, int, int] = (1, 256, 1024)
    past: tuple[int, int, int] = (0, 256, 2048)
    batch: tuple[int, int, int] = (1, 1, 4)


def require_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415  (lazy: the package exists only on GPU machines)
    except ImportError:
        raise UnsupportedFeatureError(
            "building TensorRT engines needs the `tensorrt` Python package (TensorRT 10+) and an NVIDIA GPU; "
            "install it on the target device (JetPack ships it) and run `vlm-build-engine ENGINE_DIR` there"
        ) from None
    return tensorrt


def l4t_release() -> str | None:
    """The Jetson Linux (L4T) release, e.g. 'R36.4.0', or None off Jetson."""
    path = Path("/etc/nv_tegra_release")
    if not path.is_file():
        return None
    head = path.read_text().split(",")
    major = head[0].replace("#", "").split()[0] if head else "?"
    revision = head[1].split(":")[-1].strip() if len(head) > 1 else "?"
    return f"{major}.{revision}"


def cache_key(trt_version: str, sm: str, l4t: str | None, precision: str) -> str:
    return f"trt{trt_version}-sm{sm}-{('l4t' + l4t) if l4t else platform.machine()}-{precision}"


def build_engines(engine_dir: Path, graphs: dict[str, dict], profile: Profile | None = None,
                  precision: str = "fp16", plugin_library: str | Path | None = None) -> list[dict]:
    """Build a plan per graph (`graphs`: component name -> manifest entry with file, inputs and the
    plugin it needs, if any). `plugin_library`: a prebuilt libvlm_edge_plugins.so (default: build
    or find it, gpu_kernels/build.py).

    Returns the manifest's `targets` entries. Raises UnsupportedFeatureError without TensorRT.
    """
    trt = require_tensorrt()
    profile = profile or Profile()
    logger = trt.Logger(trt.Logger.WARNING)
    library = None
    if any(component.get("plugin") for component in graphs.values()):
        from vlm_edge.kernels.build import plugin_library as find_library  # noqa: PLC0415

        library = Path(plugin_library).resolve() if plugin_library else find_library()
        load_plugin_library(trt, library)
    builder = trt.Builder(logger)
    sm = _sm()
    key = cache_key(trt.__version__, sm, l4t_release(), precision)
    out_dir = engine_dir / ENGINES_DIR / key
    out_dir.mkdir(parents=True, exist_ok=True)
    timing_path = engine_dir / ENGINES_DIR / f"timing-{key}.cache"
    targets = []
    for name, component in graphs.items():
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(engine_dir / component["file"])):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise VlmEdgeError(f"TensorRT could not parse {component['file']}: {errors}")
        config = builder.create_builder_config()
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        opt = builder.create_optimization_profile()
        for spec in component["inputs"]:
            lo, mid, hi = (_bound(spec["shape"], profile, i) for i in range(3))
            opt.set_shape(spec["name"], lo, mid, hi)
        config.add_optimization_profile(opt)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise VlmEdgeError(f"TensorRT failed to build {component['file']}; run with -v for the builder log")
        path = out_dir / f"{name}.plan"
        tmp = path.with_suffix(".plan.partial")
        tmp.write_bytes(bytes(plan))
        tmp.replace(path)
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        targets.append({"component": name, "file": str(path.relative_to(engine_dir)), "tensorrt": trt.__version__,
                        "sm": sm, "l4t": l4t_release(), "precision": precision, "cache_key": key,
                        **({"plugin_library": str(library)} if component.get("plugin") else {})})
        log.info("built %s", path)
    return targets


def load_plugin_library(trt, library: str | Path) -> None:
    """Register the creators of `library` with TensorRT (once per process)."""
    from vlm_edge.kernels.build import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION  # noqa: PLC0415

    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None:
        return
    if not Path(library).is_file() or registry.load_library(str(library)) is None:
        raise VlmEdgeError(f"TensorRT could not load the plugin library {library}; rebuild it with vlm-build-engine")


def _bound(shape: list, profile: Profile, which: int) -> tuple[int, ...]:
    """One corner (0 min, 1 opt, 2 max) of an input's shape from its named dynamic axes."""
    axes = {"images": profile.images, "batch": profile.batch, "seq": profile.prompt, "past": profile.past}
    dims = []
    for dim in shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif dim == "total":
            dims.append(profile.prompt[which] + profile.past[which])
        else:
            dims.append(axes[dim][which])
    return tuple(dims)


def _sm() -> str:
    from cuda.bindings import runtime  # noqa: PLC0415  (cuda-python, present where TensorRT is)

    err, props = runtime.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise VlmEdgeError(f"no CUDA device for the TensorRT build (cudaGetDeviceProperties: {err})")
    return f"{props.major}{props.minor}"
