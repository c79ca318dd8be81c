"""A device array of another library (CuPy, Numba) as the runtime sees it: only its CUDA Array
Interface, version 3, naming the stream it was made on."""

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
