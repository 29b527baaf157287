"""The runtime: engine sessions, KV cache, sampling, pipeline. Never imports torch or transformers.

Not built yet (issue 6); the torch-free pieces it will use already live in `vlm_edge.common`
(image preprocessing, chat templates, prompt tokenization).
"""
