"""Checkpoint (+ quantization) -> ONNX graphs -> TensorRT engines. Not built yet: see issue 5."""
