"""The decoder graph with its KV cache, batch 1: one call appends positions and returns the logits.

Two cache layouts, by the graph's inputs (see export/decoder.py):

    SharedCacheDecoder   GroupQueryAttention graphs (flavours fp, ort). One buffer per layer and
                         K/V, [1, kv_heads, capacity, head_dim], allocated once and bound (IOBinding)
                         as both past and present: a step writes only its own positions in place.
                         The logits go to a preallocated buffer too: a decode step allocates nothing
                         but ONNX Runtime's scratch space.
    ConcatCacheDecoder   plain graphs (flavour trt run by ONNX Runtime): the graph returns the
                         grown cache, which is fed back next step (a copy of the cache per step).

Both keep the cache across calls; `truncate(n)` keeps the first n positions, so a request that
shares a prefix with the previous one prefills only the rest.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort

from vlm_edge.common.errors import InputError


def open_decoder(session: ort.InferenceSession, model: dict, capacity: int, device: str = "cpu"):
    names = {i.name for i in session.get_inputs()}
    if "seqlens_k" in names:
        return SharedCacheDecoder(session, model, capacity, device)
    return ConcatCacheDecoder(session, model, capacity)


class SharedCacheDecoder:
    def __init__(self, session: ort.InferenceSession, model: dict, capacity: int, device: str = "cpu"):
        self.session, self.capacity = session, capacity
        self.layers = model["layers"]
        shape = (1, model["kv_heads"], capacity, model["head_dim"])
        # np.zeros pages are mapped lazily: only positions written cost resident memory
        if device == "cpu":
            self.cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * self.layers)]
        else:
            self.cache = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
                          for _ in range(2 * self.layers)]
        self._logits = np.zeros((1, model["vocab_size"]), np.float32)
        self.binding = session.io_binding()
        for i in range(self.layers):
            for j, kv in enumerate(("key", "value")):
                buffer = self.cache[2 * i + j]
                self.binding.bind_ortvalue_input(f"past_key_values.{i}.{kv}", buffer)
                self.binding.bind_ortvalue_output(f"present.{i}.{kv}", buffer)
        self.binding.bind_output("logits", "cpu", 0, np.float32, list(self._logits.shape), self._logits.ctypes.data)
        self._seqlens = np.zeros(1, np.int32)
        self._total = np.zeros((), np.int32)
        self.length = 0
        self.run_seconds = 0.0  # time inside ONNX Runtime, for the benchmark's overhead figure

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def __call__(self, embeds: np.ndarray) -> np.ndarray:
        """embeds [seq, D] appended after the cached positions -> logits of the last one [vocab]
        (a view of a buffer the next call overwrites)."""
        total = self.length + embeds.shape[0]
        if total > self.capacity:
            raise InputError(f"{total} positions exceed the KV cache of {self.capacity}")
        self._seqlens[0] = total - 1
        self._total[...] = total
        self.binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, np.float32)[None])
        self.binding.bind_cpu_input("seqlens_k", self._seqlens)
        self.binding.bind_cpu_input("total_sequence_length", self._total)
        t0 = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        self.run_seconds += time.perf_counter() - t0
        self.length = total
        return self._logits[0]


class ConcatCacheDecoder:
    def __init__(self, session: ort.InferenceSession, model: dict, capacity: int):
        self.session, self.capacity = session, capacity
        self.layers, self.kv_heads, self.head_dim = model["layers"], model["kv_heads"], model["head_dim"]
        self.outputs = [o.name for o in session.get_outputs()]
        self.past = [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)] * (2 * self.layers)
        self.length = 0
        self.run_seconds = 0.0

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)
        self.past = [p[:, :, : self.length] for p in self.past]

    def __call__(self, embeds: np.ndarray) -> np.ndarray:
        seq = embeds.shape[0]
        total = self.length + seq
        if total > self.capacity:
            raise InputError(f"{total} positions exceed the context of {self.capacity}")
        feeds = {"inputs_embeds": np.ascontiguousarray(embeds, np.float32)[None],
                 "attention_mask": np.ones((1, total), np.int64),
                 "position_ids": np.arange(self.length, total, dtype=np.int64)[None]}
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"] = self.past[2 * i]
            feeds[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        t0 = time.perf_counter()
        out = dict(zip(self.outputs, self.session.run(None, feeds)))
        self.run_seconds += time.perf_counter() - t0
        self.past = [out[f"present.{i}.{kv}"] for i in range(self.layers) for kv in ("key", "value")]
        self.length = total
        return out["logits"][0]
