"""A device array of another library (CuPy, Numba) as the runtime sees it: only its CUDA Array
Interface, version 3, naming the stream it was made on; or a torch CUDA tensor that refuses to
give its interface."""

from __future__ import annotations

from typing import Any


class ForeignArray:
    """float32 ``shape`` at ``ptr`` (memory owned elsewhere), naming ``stream`` (left out of
    the interface when ``...``; None: names no stream)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], stream: Any = ...) -> None:
        self.ptr, self.shape, self.stream = ptr, tuple(shape), stream

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        interface = {"shape": self.shape, "typestr": "<f4", "data": (self.ptr, False),
                     "strides": None, "version": 3}
        if self.stream is not ...:
            interface["stream"] = self.stream
        return interface


class RequiresGrad:
    """A torch CUDA tensor that requires grad: its interface raises RuntimeError, not
    AttributeError (torch/_tensor.py), so ``hasattr`` would let that error through."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. "
                           "If gradients aren't required, use var.detach() to get Variable that "
                           "doesn't require grad.")
