"""CUDA kernels, TensorRT plugins, ONNX op schemas and their numpy references (docs/kernels.md).

The fused visual-token downsample (space-to-depth with ratio 2 or 3, then the projector's
LayerNorm), in the ladder the style guide asks for:

    reference.py                 numpy ground truth
    cuda/downsample.cu(h)        the CUDA kernel (fp32/fp16/bf16), no TensorRT in it
    trt/downsample_plugin.cpp    the TensorRT 10 IPluginV3 plugin over the kernel
    schema.py                    the ONNX op vlm_edge.VlmEdgeDownsampleLayerNorm (needs onnx)
    loader.py                    the kernel through cuda-python (the runtime may import it)
    build.py, CMakeLists.txt     nvcc / CMake builds, cached per sources

Nothing is imported here: the runtime takes only what it needs.
"""
