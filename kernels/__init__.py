"""CUDA kernels, TensorRT plugins, ONNX op schemas and their numpy references.

So far: `reference.py`, the numpy ground truth of the fused visual-token downsample (space-to-depth
with ratio 2 or 3, then the projector's LayerNorm), held equal to the exporter's plain-op graph.
The CUDA kernel and the TensorRT plugin are not written yet.
"""
