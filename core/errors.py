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
    """A backend's optional dependency (onnxruntime, tensorrt, cuda-python, a GPU) is missing.

    ``problem``: the failure in a few words, without purpose or install hint, where the
    raiser knows it ("NVIDIA TensorRT is not installed"); else None.
    """

    problem: str | None = None


class ScoreMapError(TinyFacesError, ValueError):
    """A network's score map breaks the contract: wrong shape or dtype, non-finite values,
    more candidates than the pyramid can make."""


class NonFiniteScoresError(ScoreMapError):
    """The network produced NaN or infinite scores: broken weights, an fp16 overflow, or a
    faulty backend. An anonymiser must not treat that as an image without faces."""


class NetworkInputError(TinyFacesError, ValueError):
    """A network input breaks the contract: not an (N, 3, h, w) float32 array."""


class NetworkRunError(TinyFacesError, RuntimeError):
    """The network runner failed on an input: out of memory, a provider error. The runner
    and its detector stay usable (a smaller input may run); the runner's own exception is
    the ``__cause__``."""


class StageOrderError(TinyFacesError, RuntimeError):
    """A pipeline stage was called out of order (e.g. ``add_level`` before ``reset``)."""


class OutOfMemoryError(TinyFacesError):
    """Processing a file needed more memory than this process could get (a
    :class:`MemoryError` of numpy, Pillow or PyAV): that file fails, the others go on
    (:func:`memory_message`)."""


def memory_message(exc: MemoryError, size: tuple[int, int] | None = None, *,
                   nothing_written: bool = False) -> str:
    """The error of a file this process ran out of memory on: ``size`` (width, height) where
    it is known (not while the file is read); ``nothing_written``: say that no output of it
    was written."""
    shown = f" ({size[0]}x{size[1]})" if size else ""
    written = "; nothing was written for it" if nothing_written else ""
    return (f"not enough memory to process it{shown}: {str(exc) or 'MemoryError'}{written} "
            f"(run it with more memory, or downscale it)")


class ConfigError(TinyFacesError, ValueError):
    """A :class:`~.config.DetectorConfig` argument is out of range or malformed."""


class TensorRTUnavailableError(BackendUnavailableError):
    """The ``tensorrt`` package does not import (not installed, libraries missing, or older
    than TensorRT 10)."""


def reraise_interrupt(exc: BaseException) -> None:
    """Raises the KeyboardInterrupt ``exc`` was caused by, if any, before a fallback treats
    ``exc`` as an ordinary failure: libraries wrap an interrupt (torch.export raised an
    AttributeError while handling one, then its own error), and a Ctrl-C answered by "trying
    the other exporter" would finish the job it was to stop."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            raise e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line warning or error quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
