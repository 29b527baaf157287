"""A small ONNX graph builder: nodes by op name, weights streamed to an external data file.

Weights never pile up in memory: `weight()` appends the array's bytes to `<model>.onnx.data` at
once and keeps only a TensorProto that points there (location, offset, length). A graph of
VILA1.5-3b size is built with one layer's arrays alive at a time. Small constants (shapes, axes)
stay inside the .onnx file.

    g = GraphBuilder("decoder", path)
    x = g.input("x", np.float32, ["batch", "seq", 64])
    y = g.op("MatMul", x, g.weight("w", w))
    g.output(y, "y", np.float32, ["batch", "seq", 32])
    g.save()        # writes path (atomically) next to path.data
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 21  # int4 DequantizeLinear with block_size (TensorRT's W4A16 path) needs 21
MS_DOMAIN = "com.microsoft"
_ALIGN = 64  # byte alignment of each weight in the data file

DTYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def onnx_dtype(dtype) -> int:
    return DTYPES[np.dtype(dtype)]


class GraphBuilder:
    def __init__(self, name: str, path: str | Path, *, ms_domain: bool = False):
        self.name = name
        self.path = Path(path)
        self.data_name = self.path.name + ".data"
        self._tmp_data = self.path.with_name(self.data_name + ".partial")
        self._data = open(self._tmp_data, "wb")
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.initializers: list[TensorProto] = []
        self.ms_domain = ms_domain
        self._names: dict[str, int] = {}  # value and initializer names
        self._node_names: dict[str, int] = {}  # node names (a separate namespace in ONNX)
        self.weight_bytes = 0

    # ---- names ---------------------------------------------------------------------------------
    def fresh(self, base: str, names: dict[str, int] | None = None) -> str:
        names = self._names if names is None else names
        n = names.get(base, 0)
        names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    # ---- graph I/O -----------------------------------------------------------------------------
    def input(self, name: str, dtype, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype), list(shape)))
        self._names[name] = 1
        return name

    def output(self, value: str, name: str, dtype, shape: Sequence[int | str]) -> None:
        """Expose `value` as graph output `name` (through an Identity when the names differ)."""
        if value != name:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=self.fresh(f"output_{name}", self._node_names)))
        self.outputs.append(helper.make_tensor_value_info(name, onnx_dtype(dtype), list(shape)))

    # ---- tensors -------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray, *, onnx_type: int | None = None) -> str:
        """A weight, written to the external data file now. `onnx_type` overrides the element type
        for packed sub-byte data (INT4: `array` holds the packed uint8 bytes, shape given below)."""
        array = np.ascontiguousarray(array)
        name = self.fresh(name)
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = onnx_type if onnx_type is not None else onnx_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        offset = self._data.tell()
        pad = (-offset) % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            offset += pad
        raw = array.tobytes()
        self._data.write(raw)
        self.weight_bytes += len(raw)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(tensor)
        return name

    def packed_weight(self, name: str, packed: np.ndarray, onnx_type: int, shape: Sequence[int]) -> str:
        """A sub-byte weight (e.g. INT4) given as its packed bytes, with its logical `shape`."""
        name = self.weight(name, packed.reshape(-1).view(np.uint8), onnx_type=onnx_type)
        tensor = self.initializers[-1]
        del tensor.dims[:]
        tensor.dims.extend(shape)
        return name

    def const(self, name: str, array: np.ndarray | Sequence[int] | float) -> str:
        """A small constant kept inside the .onnx file."""
        array = np.asarray(array)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh(name)
        self.initializers.append(onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, *values: int) -> str:
        return self.const("i64", np.array(values, dtype=np.int64))

    # ---- nodes ---------------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", name: str | None = None,
           out_names: Sequence[str | None] = (), **attrs) -> str | list[str]:
        """Add a node; its outputs get fresh names, or those of `out_names` (graph outputs written in place)."""
        base = name or op_type.lower()
        outs = [self.fresh(f"{base}_out{i}" if outputs > 1 else base) for i in range(outputs)]
        for i, given in enumerate(out_names):
            if given is not None:
                outs[i] = given
                self._names[given] = 1
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.fresh(base, self._node_names), domain=domain,
                                           **attrs))
        return outs if outputs > 1 else outs[0]

    # ---- save ----------------------------------------------------------------------------------
    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if self.ms_domain:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="vlm-edge")
        model.ir_version = 10  # opset 21 needs IR 10; ONNX Runtime 1.18+ reads it
        return model

    def save(self) -> list[str]:
        """Write the .onnx and its .data file next to each other; returns both file names."""
        self._data.close()
        data_path = self.path.with_name(self.data_name)
        os.replace(self._tmp_data, data_path)
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_bytes(self.model().SerializeToString())
        os.replace(tmp, self.path)
        return [self.path.name, self.data_name]

    def abort(self) -> None:
        self._data.close()
        self._tmp_data.unlink(missing_ok=True)
