"""AWQ / RTN 4-bit quantization of the LLM. Not built yet: see issue 4."""
