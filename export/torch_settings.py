"""Process-wide torch settings the runners need while they work: float32 convolutions in IEEE
fp32 (not TF32) and cuDNN's algorithm timing.

torch keeps these as global flags. Each is held by count, not saved and restored by each
user: the first runner to enter sets it, the last to leave restores what the process had.
Runners working at once in several threads then never see it restored under them, and the
process is never left with a runner's value. (Other code of the process sees the runners'
value while any runner works.)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

Restore = Callable[[], None]


class SharedOverride:
    """A process-wide setting overridden while anyone holds it.

    Args:
        apply: sets the override and returns how to put back what was there; called by the
            first holder (under a lock), the returned function by the last one to leave.
    """

    def __init__(self, apply: Callable[[], Restore]) -> None:
        self._apply = apply
        self._lock = threading.RLock()  # a finalizer leaving on the same thread cannot deadlock
        self._holders = 0
        self._restore: Restore | None = None

    @property
    def holders(self) -> int:
        """How many are inside now."""
        return self._holders

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The override holds inside (for every thread of the process)."""
        with self._lock:
            if self._holders == 0:
                self._restore = self._apply()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    restore, self._restore = self._restore, None
                    assert restore is not None
                    restore()


def _ieee_fp32() -> Restore:
    cudnn = torch.backends.cudnn
    try:
        saved = cudnn.allow_tf32
    except RuntimeError:  # the per-op switches were set apart
        conv = cudnn.conv
        saved_precision, conv.fp32_precision = conv.fp32_precision, "ieee"

        def restore_precision() -> None:
            conv.fp32_precision = saved_precision

        return restore_precision
    cudnn.allow_tf32 = False
    conv, rnn = getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)
    if conv is not None and rnn is not None and conv.fp32_precision == "tf32":
        # the flag left cuDNN's switches inheriting a process-wide "tf32"
        # (torch.backends.fp32_precision or cuDNN's): both are set (one alone would make the
        # flag unreadable for torch.export); putting the flag back sets them again
        conv.fp32_precision = rnn.fp32_precision = "ieee"

    def restore_flag() -> None:
        cudnn.allow_tf32 = saved

    return restore_flag


def _autotuning() -> Restore:
    cudnn = torch.backends.cudnn
    saved, cudnn.benchmark = cudnn.benchmark, True

    def restore() -> None:
        cudnn.benchmark = saved

    return restore


IEEE_FP32 = SharedOverride(_ieee_fp32)
CUDNN_AUTOTUNING = SharedOverride(_autotuning)


@contextlib.contextmanager
def ieee_fp32_convolutions(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """float32 convolutions on a CUDA ``device`` in IEEE fp32 while inside, not TF32 (cuDNN's
    default in torch on Ampere and later: 10 mantissa bits, far outside the fp32 tolerances);
    the process's setting is restored when the last holder leaves. Other dtypes and devices
    touch nothing.

    The legacy ``cudnn.allow_tf32`` flag is the switch, as long as the process has not set
    torch's per-op precisions (torch >= 2.9) apart: then reading that flag raises, and the
    convolutions' own switch is used. (Setting the per-op switch here instead would make
    the legacy flag raise for torch itself: ``torch.export`` reads it.) Where the process set
    a wider precision to "tf32" (``torch.backends.fp32_precision``, cuDNN's), which cuDNN's
    convolutions (and RNNs) inherit once the flag is cleared, their own switches are set as
    well, both, so that the flag still reads False.
    """
    if device.type != "cuda" or dtype != torch.float32:
        yield
        return
    with IEEE_FP32.held():
        yield


def cudnn_autotuning() -> contextlib.AbstractContextManager[None]:
    """cuDNN picks its convolution algorithms by timing them while inside
    (``cudnn.benchmark``; for static shapes); restored when the last holder leaves."""
    return CUDNN_AUTOTUNING.held()


__all__ = ["CUDNN_AUTOTUNING", "IEEE_FP32", "SharedOverride", "cudnn_autotuning",
           "ieee_fp32_convolutions"]
