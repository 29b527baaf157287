"""Artifact formats, configs, errors and helpers shared by every stage.

Imports only the standard library, numpy, Pillow and tokenizers (the runtime's base install),
so the runtime can use the very same preprocessing and prompt code as the PyTorch reference.
"""
