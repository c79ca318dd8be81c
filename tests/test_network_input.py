"""One network-input contract for every runner (tinyfaces_trt.core.runner): the same bad input
is refused by each with the same NetworkInputError, word for word.

The runners that run on the CPU here: ONNX Runtime over a tiny hand-made model (batch 1, and a
dynamic batch axis), torch and torch-cuda (``device="cpu"``, eager) over the stand-in network,
and the device paths of onnxruntime-cuda (tests/helpers_ort_gpu.py) and TensorRT (an injected
engine) over ``cuda_device`` on host memory (tests/host_cudart.py). A device input is an object
with only a ``__cuda_array_interface__``: refused before its memory is read.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

import host_cudart
from helpers_tensorrt import FakeEngine
from helpers_torch_cuda import stand_in
from tinyfaces_trt.core.errors import NetworkInputError
from tinyfaces_trt.core.runner import check_network_input, check_network_shape
from tinyfaces_trt.export.torch_cuda import TorchCudaRunner
from tinyfaces_trt.export.torch_runner import TorchRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import helpers_ort_gpu  # noqa: E402
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import OnnxRuntimeCudaRunner  # noqa: E402
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner  # noqa: E402
from tinyfaces_trt.runtime.backends.tensorrt_runner import TensorRTRunner  # noqa: E402


def _expected(batch: bool, got: str) -> str:
    n = "N" if batch else "1"
    return f"network input must be a ({n}, 3, h, w) float32 array, got {got}"


#: (case, input, what every runner says: of a batch-1 runner, of a batch runner (None: it runs)).
CASES = [
    ("three dimensions", np.zeros((3, 16, 16), np.float32),
     _expected(False, "(3, 16, 16) float32"), _expected(True, "(3, 16, 16) float32")),
    ("four channels", np.zeros((1, 4, 16, 16), np.float32),
     _expected(False, "(1, 4, 16, 16) float32"), _expected(True, "(1, 4, 16, 16) float32")),
    ("float64", np.zeros((1, 3, 16, 16), np.float64),
     _expected(False, "(1, 3, 16, 16) float64"), _expected(True, "(1, 3, 16, 16) float64")),
    ("batch of 2", np.zeros((2, 3, 16, 16), np.float32),
     _expected(False, "(2, 3, 16, 16) float32"), None),
    ("empty rows", np.zeros((1, 3, 0, 16), np.float32),
     _expected(False, "(1, 3, 0, 16) float32"), _expected(True, "(1, 3, 0, 16) float32")),
    ("empty batch", np.zeros((0, 3, 16, 16), np.float32),
     _expected(False, "(0, 3, 16, 16) float32"), _expected(True, "(0, 3, 16, 16) float32")),
]
#: A host input that is no numpy array.
NOT_AN_ARRAY = [[[[0.0]]]]


class Interface:
    """Device memory as another library hands it: only the CUDA Array Interface (the pointer
    is never read: the input is refused first)."""

    def __init__(self, like: np.ndarray) -> None:
        self.__cuda_array_interface__ = {"shape": like.shape, "typestr": like.dtype.str,
                                         "data": (0x5000, False), "strides": None, "version": 3}


def _tiny_onnx(path, batch: int | str) -> None:
    """A 1x1 convolution 3 -> 125 with stride 8 (as tests/test_backends.py's), input
    (batch, 3, h, w)."""
    weight = np.ones((125, 3, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["scores"], strides=[8, 8])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 125, "h8", "w8"])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[bool, Any]:
    """The tiny model with a batch of 1 (False) and a dynamic batch axis (True)."""
    folder = tmp_path_factory.mktemp("network-input")
    paths = {False: folder / "one.onnx", True: folder / "batch.onnx"}
    _tiny_onnx(paths[False], 1)
    _tiny_onnx(paths[True], "N")
    return paths


def _host_cuda(monkeypatch) -> None:
    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    host_cudart.install(monkeypatch)


def _onnxruntime(monkeypatch, models, batch):
    return OnnxRuntimeRunner(models[batch]), lambda x: x


def _onnxruntime_cuda_device(monkeypatch, models, batch):
    _host_cuda(monkeypatch)
    helpers_ort_gpu.install(monkeypatch)
    return OnnxRuntimeCudaRunner(models[batch]), Interface


def _onnxruntime_cuda_host(monkeypatch, models, batch):
    return _onnxruntime_cuda_device(monkeypatch, models, batch)[0], lambda x: x


def _tensorrt(monkeypatch, batch: bool) -> TensorRTRunner:
    _host_cuda(monkeypatch)
    trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), __version__="10.9.0")
    return TensorRTRunner(engine=FakeEngine((1, 3, 8, 8), (1, 3, 64, 64),
                                         (4 if batch else 1, 3, 128, 128)), trt=trt)


def _tensorrt_device(monkeypatch, models, batch):
    return _tensorrt(monkeypatch, batch), Interface


def _tensorrt_host(monkeypatch, models, batch):
    return _tensorrt(monkeypatch, batch), lambda x: x


def _torch(monkeypatch, models, batch):
    return TorchRunner(stand_in()), lambda x: x


def _torch_cuda(monkeypatch, models, batch):
    return TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager"), lambda x: x


Make = Callable[[Any, Any, bool], tuple[Any, Callable[[np.ndarray], Any]]]
#: name -> (makes (runner, what a numpy input is fed as), the batch flavours it comes in).
RUNNERS: dict[str, tuple[Make, tuple[bool, ...]]] = {
    "onnxruntime": (_onnxruntime, (False, True)),
    "onnxruntime-cuda device": (_onnxruntime_cuda_device, (False, True)),
    "onnxruntime-cuda host": (_onnxruntime_cuda_host, (False, True)),
    "tensorrt device": (_tensorrt_device, (False, True)),
    "tensorrt host": (_tensorrt_host, (False, True)),
    "torch": (_torch, (True,)),
    "torch-cuda": (_torch_cuda, (True,)),
}


@pytest.mark.parametrize("name, batch", [(name, batch) for name, (_, batches) in RUNNERS.items()
                                         for batch in batches])
def test_every_runner_refuses_a_bad_input_in_the_same_words(name, batch, models, monkeypatch):
    make, _ = RUNNERS[name]
    runner, feed = make(monkeypatch, models, batch)
    assert runner.capabilities.batch == batch
    try:
        for case, x, one, many in CASES:
            message = many if batch else one
            if message is None:
                continue
            with pytest.raises(NetworkInputError) as refused:
                runner.run(feed(x))
            assert str(refused.value) == message, (name, case)
        if feed is not Interface:  # a host path
            with pytest.raises(NetworkInputError) as refused:
                runner.run(NOT_AN_ARRAY)
            assert str(refused.value) == "network input must be a numpy array, got list"
            good = np.zeros((2 if batch else 1, 3, 16, 16), np.float32)
            scores = runner.run(good)  # the contract's own input runs
            assert scores.shape == (good.shape[0], 125, 2, 2) and scores.dtype == np.float32
    finally:
        runner.close()


def test_the_contract_in_one_place():
    """What every runner calls: a host array is returned C-contiguous; a device array's or a
    tensor's layout is checked from its shape and dtype name."""
    x = np.zeros((1, 3, 16, 8), np.float32).transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    same = check_network_input(x, batch=False)
    assert same.flags.c_contiguous and np.array_equal(same, x)
    assert check_network_shape([np.int64(2), 3, 4, 5], "float32", batch=True) == (2, 3, 4, 5)
    for shape, dtype, batch in [((2, 3, 4, 5), "float32", False), ((1, 3, 4, 5), "float16", True),
                                ((1, 3, 4, 5), ">f4", True), ((1, 3, 4), "float32", True)]:
        with pytest.raises(NetworkInputError, match=r"^network input must be a \((N|1), 3, h, w\) "
                                                    r"float32 array, got \("):
            check_network_shape(shape, dtype, batch)
    with pytest.raises(NetworkInputError, match=r"^network input must be C-contiguous, got a "
                                                r"\(1, 3, 4, 5\) array with other strides$"):
        check_network_shape((1, 3, 4, 5), "float32", batch=False, contiguous=False)
    big_endian = np.zeros((1, 3, 4, 5), ">f4")  # float32 by name, not by layout
    with pytest.raises(NetworkInputError, match=r"got \(1, 3, 4, 5\) >f4$"):
        check_network_input(big_endian, batch=False)
