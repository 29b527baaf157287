"""Errors a user can cause. Each message names the input that is wrong and what to do about it.

CLIs catch `VlmEdgeError` and print its message without a traceback.
"""


class VlmEdgeError(Exception):
    """Base class: a problem with something the user gave us (a path, a file, an option)."""


class CheckpointError(VlmEdgeError):
    """A checkpoint directory is missing a part, has a broken file or an inconsistent config."""


class UnsupportedFeatureError(VlmEdgeError):
    """A checkpoint or request uses a setting vlm-edge does not support (yet)."""


class InputError(VlmEdgeError):
    """A prompt, image or option passed at run time is invalid."""
