"""vlm-edge: VILA-class vision-language models, from checkpoint to AWQ 4-bit engine to edge runtime.

Subpackages follow the data flow of docs/architecture.md:
common <- model <- train / quant <- export; kernels <- export, edge; edge <- server, jetson.
"""

__version__ = "0.1.0"
