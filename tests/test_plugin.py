"""The trt vision graph's plugin node: the rewrite that makes it, what it computes, and the checks.

The plugin node (vlm_edge.VlmEdgeDownsampleLayerNorm) replaces the projector's plain-op
downsample + LayerNorm in vision.trt.onnx. ONNX Runtime cannot run it, so these tests hold its
reference (gpu_kernels/schema.py) equal to the plain ops it replaces, run in ONNX Runtime: on small
synthetic graphs for ratios 2 and 3, both token orders, odd and even grids, and inside the
engine directories `vlm-export --flavour trt` writes for the tiny (Qwen2 + CLIP) and the
VILA1.5-3b-layout (Llama + SigLIP) fixtures. Tolerance 1e-5: both sides are float32 with the
same fp32 statistics; what differs is summation order.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from vlm_edge.common.manifest import Manifest, verify_files
from vlm_edge.export.api import export_checkpoint
from vlm_edge.export.config import ExportConfig
from vlm_edge.export.graph import GraphBuilder
from vlm_edge.export.plugins import TRT_VISION_FILE, fuse_downsample
from vlm_edge.export.tensorrt import check_trt_graph
from vlm_edge.export.vision import DownsampleSite, emit_space_to_depth
from vlm_edge.kernels import schema

CALIB = "\n".join(f"Line {i}: a small red circle at the top left and a big blue square below it." for i in range(64))


def _plain_graph(path, side: int, channels: int, ratio: int, order: str, rng) -> tuple[onnx.ModelProto, DownsampleSite]:
    """features -> Add (a node before the site) -> downsample + LayerNorm -> Mul (a node after)."""
    width = ratio * ratio * channels
    g = GraphBuilder("site", path)
    g.input("x", np.float32, ["images", side * side, channels])
    start = g.op("Add", "x", g.const("shift", np.float32(0.5)))
    y = emit_space_to_depth(g, start, side, channels, ratio, order)
    y = g.op("LayerNormalization", y, g.weight("ln.weight", rng.standard_normal(width).astype(np.float32)),
             g.weight("ln.bias", rng.standard_normal(width).astype(np.float32)), axis=-1, epsilon=1e-5)
    out = g.op("Mul", y, g.const("two", np.float32(2.0)))
    g.output(out, "y", np.float32, ["images", (-(-side // ratio)) ** 2, width])
    g.save()
    return onnx.load(str(path)), DownsampleSite(start, y, side, channels, ratio, order, 1e-5)


def _initializers(model: onnx.ModelProto, base) -> dict[str, np.ndarray]:
    onnx.external_data_helper.load_external_data_for_model(model, str(base))
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _run_with_outputs(path, feeds: dict, names: list[str]) -> list[np.ndarray]:
    """Run the plain graph in ONNX Runtime, exposing intermediate values as outputs."""
    model = onnx.load(str(path), load_external_data=False)
    for name in names:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
        model.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    probe = path.with_name(path.stem + ".probe.onnx")
    onnx.save(model, str(probe))
    return ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"]).run(names, feeds)


def _plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if schema.is_plugin_node(n)]


@pytest.mark.parametrize("ratio,side", [(2, 27), (2, 28), (3, 27), (3, 7)])
@pytest.mark.parametrize("order", ["column_major", "row_major"])
def test_plugin_node_computes_what_the_plain_ops_it_replaces_compute(tmp_path, ratio, side, order):
    rng = np.random.default_rng(ratio * 100 + side)
    channels = 6
    path = tmp_path / "plain.onnx"
    plain, site = _plain_graph(path, side, channels, ratio, order, rng)
    fused = fuse_downsample(onnx.load(str(path), load_external_data=False), site)

    # structure: before and after the site nothing changed; the site is Reshape + the plugin node
    ops = [(n.domain, n.op_type) for n in fused.graph.node]
    assert ops == [("", "Add"), ("", "Reshape"), (schema.DOMAIN, schema.OP_TYPE), ("", "Mul"), ("", "Identity")]
    assert check_trt_graph_nodes(fused) == []
    (node,) = _plugin_nodes(fused)
    assert schema.attributes(node)["ratio"] == ratio and schema.attributes(node)["order"] == order

    x = rng.standard_normal((2, side * side, channels)).astype(np.float32)
    start, end, y = _run_with_outputs(path, {"x": x}, [site.start, site.end, "y"])
    inits = _initializers(fused, tmp_path)
    got = schema.reference(node, start.reshape(2, side, side, channels), inits[node.input[1]], inits[node.input[2]])
    np.testing.assert_allclose(got, end, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got * 2.0, y, atol=2e-5, rtol=0)


def check_trt_graph_nodes(model: onnx.ModelProto) -> list[str]:
    inits = {t.name: t for t in model.graph.initializer}
    return [p for n in _plugin_nodes(model) for p in schema.check_node(n, inits)]


def test_fusion_refuses_a_site_it_does_not_recognise(tmp_path):
    from vlm_edge.common.errors import VlmEdgeError

    path = tmp_path / "plain.onnx"
    _, site = _plain_graph(path, 6, 4, 2, "column_major", np.random.default_rng(0))
    model = onnx.load(str(path), load_external_data=False)
    with pytest.raises(VlmEdgeError, match="no LayerNormalization"):
        fuse_downsample(model, DownsampleSite(site.start, "x", 6, 4, 2, "column_major", 1e-5))
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    model.graph.node.insert(0, helper.make_node("Identity", [norm.input[2]], ["computed_bias"]))
    norm.input[2] = "computed_bias"  # a bias computed in the graph cannot be the plugin's constant input
    with pytest.raises(VlmEdgeError, match="weight and bias initializers"):
        fuse_downsample(model, site)


@pytest.mark.parametrize("change,expected", [
    ({"ratio": 4}, "ratio 4 must be 2 or 3"),
    ({"order": "diagonal"}, "order 'diagonal'"),
    ({"eps": 0.0}, "eps 0.0 must be a positive float"),
    ({"plugin_version": "2"}, "plugin_version '2'"),
])
def test_constraint_check_knows_the_plugin_node(tmp_path, change, expected):
    path = tmp_path / "plain.onnx"
    _, site = _plain_graph(path, 6, 4, 2, "column_major", np.random.default_rng(1))
    fused = fuse_downsample(onnx.load(str(path), load_external_data=False), site)
    node = _plugin_nodes(fused)[0]
    for attr in node.attribute:
        if attr.name in change:
            value = change[attr.name]
            attr.CopyFrom(helper.make_attribute(attr.name, value))
    broken = tmp_path / "broken.onnx"
    onnx.save(fused, str(broken))
    problems = check_trt_graph(broken)
    assert any(expected in p for p in problems), problems


def test_constraint_check_wants_weights_as_wide_as_the_blocks(tmp_path):
    path = tmp_path / "plain.onnx"
    _, site = _plain_graph(path, 6, 4, 2, "column_major", np.random.default_rng(2))
    fused = fuse_downsample(onnx.load(str(path), load_external_data=False), site)
    node = _plugin_nodes(fused)[0]
    fused.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(15, np.float32), "short_bias"))
    node.input[2] = "short_bias"
    onnx.save(fused, str(tmp_path / "broken.onnx"))
    assert any("ratio*ratio*C" in p for p in check_trt_graph(tmp_path / "broken.onnx"))


# ---- in the engine directories vlm-export writes ---------------------------------------------------
@pytest.fixture(scope="module")
def qwen_clip(tmp_path_factory):
    """The tiny fixture: Qwen2 + CLIP (class token dropped) + mlp_downsample, random weights."""
    from fixtures import tiny_config

    from vlm_edge.model import Checkpoint, VilaModel
    from vlm_edge.model.presets import byte_level_tokenizer

    torch.manual_seed(5)
    model = VilaModel(tiny_config(llm="qwen2", vision="clip", select_feature="patch")).eval()
    out = tmp_path_factory.mktemp("qwen") / "ckpt"
    Checkpoint(model, byte_level_tokenizer()).save(out)
    return out


def _trt_export(source, out, tmp_path, **config) -> Manifest:
    calib = tmp_path / "calib.txt"
    calib.write_text(CALIB)
    return export_checkpoint(source, out, ExportConfig(awq4=True, flavours=("trt",), group_size=64, calib=str(calib),
                                                       prompts=2, **config))


@pytest.mark.parametrize("which", ["tiny", "vila15"])
def test_trt_export_writes_the_plugin_node(request, tmp_path, which):
    source = request.getfixturevalue("qwen_clip" if which == "tiny" else "release_dir")
    engine = tmp_path / "engine"
    manifest = _trt_export(source, engine, tmp_path)

    component = manifest.components["vision.trt"]
    assert component.kind == "vision" and component.flavour == "trt" and component.path == TRT_VISION_FILE
    assert component.info["plugin"]["library"] == "libvlm_edge_plugins.so"
    assert component.info["plugin"]["version"] == "1" and component.info["plain_twin"] == "vision.onnx"
    assert component.info["tensorrt_check"] == "passed" and "vision.onnx.data" in component.files
    verify_files(engine, Manifest.read(engine))  # the shared weight file is recorded and intact

    trt_graph = onnx.load(str(engine / TRT_VISION_FILE), load_external_data=False)
    plain = onnx.load(str(engine / "vision.onnx"), load_external_data=False)
    (node,) = _plugin_nodes(trt_graph)
    onnx.checker.check_model(str(engine / TRT_VISION_FILE))
    assert check_trt_graph(engine / TRT_VISION_FILE) == []
    assert {(o.domain, o.version) for o in trt_graph.opset_import} >= {(schema.DOMAIN, 1)}
    order = manifest.model["downsample_token_order"]
    attrs = schema.attributes(node)
    assert (attrs["ratio"], attrs["order"], attrs["plugin_version"], attrs["plugin_namespace"]) == (2, order, "1", "")
    assert abs(attrs["eps"] - 1e-5) < 1e-12
    # every node outside the site is the plain graph's own
    plain_ops = [(n.op_type, tuple(n.input), tuple(n.output)) for n in plain.graph.node]
    trt_ops = [(n.op_type, tuple(n.input), tuple(n.output)) for n in trt_graph.graph.node]
    assert len(plain_ops) - len(trt_ops) in (3, 4)  # 5 or 6 site nodes (Pad on odd grids) became 2
    assert set(trt_ops) - set(plain_ops) == {(n.op_type, tuple(n.input), tuple(n.output)) for n in trt_graph.graph.node
                                             if n.name in ("downsample_grid", node.name)}

    # the node's reference equals the plain ops on the exported graph's real values
    grid_in = next(n for n in trt_graph.graph.node if n.name == "downsample_grid").input[0]
    size = manifest.model["image_size"]
    pixels = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    start, end = _run_with_outputs(engine / "vision.onnx", {"pixel_values": pixels}, [grid_in, node.output[0]])
    inits = _initializers(trt_graph, engine)
    side = int(round(start.shape[1] ** 0.5))
    got = schema.reference(node, start.reshape(2, side, side, -1), inits[node.input[1]], inits[node.input[2]])
    np.testing.assert_allclose(got, end, atol=1e-5, rtol=0)


def test_no_plugin_keeps_plain_ops_in_the_trt_vision_graph(qwen_clip, tmp_path):
    manifest = _trt_export(qwen_clip, tmp_path / "engine", tmp_path, plugin=False)
    assert "vision.trt" not in manifest.components
    assert manifest.components["vision"].info["tensorrt_check"] == "passed"
    assert not (tmp_path / "engine" / TRT_VISION_FILE).exists()
