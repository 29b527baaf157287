"""The runtime: engine directories on ONNX Runtime (and TensorRT), without torch or transformers.

    pipe = vlm_edge.edge.load("engine/")
    print(pipe.generate("What colour is the circle?", ["shapes.png"]).text)
"""

from .pipeline import Generation, Pipeline, load
from .sampling import SamplingConfig

__all__ = ["Generation", "Pipeline", "SamplingConfig", "load"]
