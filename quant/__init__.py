"""AWQ / RTN 4-bit quantization of the LLM: vlm-quant (see docs/quantization.md)."""
