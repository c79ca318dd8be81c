"""Exceptions the toolkit raises for user-facing problems.

CLIs catch :class:`TinyFacesError` and print its message (no traceback) with a
non-zero exit code; anything else is a bug and keeps its traceback.
"""


class TinyFacesError(Exception):
    """A problem with the user's input, files or environment, with a clear message."""


class ImageError(TinyFacesError):
    """An image file is missing, unreadable or not an image."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than allowed (a possible decompression bomb)."""


class WeightsError(TinyFacesError):
    """A checkpoint is missing, corrupt, or does not match the model structure."""


class ManifestError(TinyFacesError):
    """An export folder's manifest is missing, invalid, or disagrees with its engine/model."""


class BackendUnavailableError(TinyFacesError):
    """A backend's optional dependency (onnxruntime, tensorrt, cuda-python, a GPU) is missing."""
