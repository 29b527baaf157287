"""CUDA kernels, TensorRT plugins, ONNX op schemas and their numpy references. Not built yet."""
