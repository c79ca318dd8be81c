"""A stand-in for the TensorRT engine surface the runner uses (TensorRT 10 and 11), so that
TensorRTRunner's logic runs on the CPU; TensorRT itself stays unverified here."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeEngine:
    """The TensorRT 10 engine surface the runner uses: one dynamic input, one output."""

    def __init__(self, lo: tuple, opt: tuple, hi: tuple) -> None:
        self.profile = (lo, opt, hi)
        self.num_io_tensors = 2
        self.num_optimization_profiles = 1

    def get_tensor_name(self, i: int) -> str:
        return ("image", "scores")[i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "image" else "out"

    def get_tensor_dtype(self, name: str) -> Any:
        return SimpleNamespace(name="FLOAT")

    def get_tensor_shape(self, name: str) -> tuple:
        return (1, 3, -1, -1) if name == "image" else (1, 125, -1, -1)

    def get_tensor_profile_shape(self, name: str, index: int) -> tuple:
        return self.profile

    def create_execution_context(self) -> "FakeContext":
        return FakeContext()


class FakeContext:
    """Returns what TensorRT 10/11 return: True on success, False when a shape or address is
    refused; a refused optimization profile raises RuntimeError, as TensorRT's binding does
    (here: ``refuse`` names what to refuse)."""

    def __init__(self, refuse: tuple = ()) -> None:
        self.calls: list[tuple] = []
        self.shape = (1, 3, 1, 1)
        self.refuse = refuse

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.calls.append(("profile", index, stream))
        if "profile" in self.refuse:
            raise RuntimeError("Error in set optimization profile async.")
        return True

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        self.shape = tuple(shape)
        return "shape" not in self.refuse

    def get_tensor_shape(self, name: str) -> tuple:
        n, _, h, w = self.shape
        return (n, 125, -(-h // 8), -(-w // 8))

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.calls.append(("address", name, ptr))
        return ("address", name) not in self.refuse

    def execute_async_v3(self, stream: int) -> bool:
        self.calls.append(("execute", stream))
        return True
