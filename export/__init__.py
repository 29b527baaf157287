"""Checkpoint (+ 4-bit AWQ) -> validated ONNX graphs -> TensorRT engines: `vlm-export`.

    api.py       export_checkpoint: the stages, atomically into one engine directory
    graph.py     the ONNX graph builder (weights streamed to external data)
    linear.py    linear layers per flavour (fp / ort MatMulNBits / trt int4 DequantizeLinear) and their packing
    decoder.py   the Llama/Qwen2 decoder graph with KV cache
    vision.py    the SigLIP/CLIP tower + projector graph
    validate.py  ONNX Runtime against the PyTorch reference
    tensorrt.py  the TensorRT constraint check and engine builds
"""
