"""The external-data files an ONNX graph names, read from the protobuf wire format (no `onnx` package).

    external_data_locations(path) -> ["vision.onnx.data", ...]

An ONNX file's tensors may keep their bytes in other files ("external data"): a TensorProto
lists key/value entries, and the one keyed "location" is a path that ONNX Runtime (and
TensorRT's parser) resolves against the graph's folder and opens. Before a runtime opens a graph
of an untrusted engine, every such location must be checked; this module finds them all.

Where tensors can sit (field numbers from onnx.proto, ONNX 1.x; the same in onnx-ml.proto):

    ModelProto      graph=7 (GraphProto), training_info=20 (TrainingInfoProto), functions=25 (FunctionProto)
    TrainingInfoProto  initialization=1, algorithm=2 (GraphProto)
    GraphProto      node=1 (NodeProto), initializer=5 (TensorProto), sparse_initializer=15 (SparseTensorProto)
    FunctionProto   node=7 (NodeProto), attribute_proto=11 (AttributeProto: default values)
    NodeProto       attribute=5 (AttributeProto)
    AttributeProto  t=5, tensors=10 (TensorProto); g=6, graphs=11 (GraphProto: If/Loop/Scan bodies);
                    sparse_tensor=22, sparse_tensors=23 (SparseTensorProto)
    SparseTensorProto  values=1, indices=2 (TensorProto)
    TensorProto     external_data=13 (StringStringEntryProto)
    StringStringEntryProto  key=1, value=2 (bytes)

Wire format: a message is a run of fields; each starts with a varint tag = field_number << 3 |
wire_type; wire type 0 is a varint, 1 eight bytes, 5 four bytes, 2 a varint length and that many
bytes (strings, bytes, packed arrays and sub-messages). Every other field (names, shapes, raw
weight bytes) is skipped by its length without being read. A field that protobuf would reject
(truncated, a wire type ONNX never writes) makes the whole file refused rather than skipped: a
reader more lenient than ONNX Runtime's could miss a location that ONNX Runtime then opens.
The walk is iterative (subgraphs nest without bound) and the file is memory-mapped (a graph
without external data holds its weights inline).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from .errors import CheckpointError

# message -> {field number: the message that field holds}; "entry" is StringStringEntryProto
FIELDS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 10: "tensor", 6: "graph", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
ENTRY_KEY, ENTRY_VALUE = 1, 2
LOCATION = b"location"
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a protobuf message ONNX would write."""


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the base-128 varint at `pos` (7 bits a byte, low first)."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("a varint runs past its message or over 10 bytes")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _entry_locations(buf, pos: int, end: int) -> list[bytes]:
    """The values of one StringStringEntryProto if any of its keys is "location" (protobuf keeps the
    last occurrence of a field; every one is returned, so no reading of a repeated key is missed)."""
    keys, values = [], []
    while pos < end:
        number, wire, start, pos = _field(buf, pos, end)
        if wire == LENGTH and number in (ENTRY_KEY, ENTRY_VALUE):
            (keys if number == ENTRY_KEY else values).append(bytes(buf[start:pos]))
    return values if LOCATION in keys else []


def _field(buf, pos: int, end: int) -> tuple[int, int, int, int]:
    """(field number, wire type, start of its payload, position after it) of the field at `pos`."""
    tag, pos = _varint(buf, pos, end)
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise WireError("a field numbered 0")
    if wire == VARINT:
        _, after = _varint(buf, pos, end)
        return number, wire, pos, after
    if wire in (FIXED64, FIXED32):
        after = pos + (8 if wire == FIXED64 else 4)
    elif wire == LENGTH:
        size, pos = _varint(buf, pos, end)
        after = pos + size
    else:  # 3/4: protobuf groups, which ONNX never writes; 6/7 do not exist
        raise WireError(f"wire type {wire}, which ONNX files never hold")
    if after > end:
        raise WireError("a field runs past the end of its message")
    return number, wire, pos, after


def locations_in(buf) -> list[bytes]:
    """Every external-data location in a serialized ModelProto `buf` (bytes, memoryview or mmap),
    in file order, as raw bytes (protobuf strings need not be UTF-8). Raises WireError."""
    found: list[bytes] = []
    stack = [["model", 0, len(buf)]]  # frames: [message, next position, end]
    while stack:
        frame = stack[-1]
        message, pos, end = frame
        if pos >= end:
            stack.pop()
            continue
        number, wire, start, frame[1] = _field(buf, pos, end)
        child = FIELDS[message].get(number)
        if child is None or wire != LENGTH:  # protobuf skips a known field of the wrong wire type, too
            continue
        if child == "entry":
            found += _entry_locations(buf, start, frame[1])
        else:
            stack.append([child, start, frame[1]])
    return found


def external_data_locations(path: str | os.PathLike) -> list[str]:
    """The external-data locations the ONNX file at `path` names, as file-system strings (bytes
    that are not UTF-8 are kept, as `os.fsdecode` does). A file that is not a protobuf message is
    refused with a CheckpointError naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise CheckpointError(f"{path} is empty, not an ONNX graph; re-export the engine")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                raw = locations_in(buf)
            except WireError as e:
                raise CheckpointError(f"{path} is not a valid ONNX file ({e}); re-export the engine") from None
    return [os.fsdecode(loc) for loc in raw]
