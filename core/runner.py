"""The network-runner protocol: what the pipeline asks of a backend.

A runner maps a batch of network inputs to score maps:

    (N, 3, h, w) float32  ->  (N, 125, h', w') float32      (h' = ceil(h / 8) for "pytorch")

and declares what it can do in :attr:`NetworkRunner.capabilities`:

- ``device_io``: ``run`` takes a CUDA device array (any object with
  ``__cuda_array_interface__``, C-contiguous float32) and returns one, produced on the CUDA
  stream :attr:`NetworkRunner.stream`. The detector then keeps every stage on the device
  (CUDA resize, decode, NMS) and orders the streams with CUDA events; only boxes come back.
  Host runners take and return numpy arrays. The input's producer comes first: where the
  interface names its stream (version 3 ``stream``, :func:`producer_stream`: CuPy, Numba, the
  runtime's own ``DeviceArray``), the runner orders its stream after that one on the GPU, and
  that stream after the runner's reads (the producer may reuse the memory once ``run``
  returns, as the interface allows); where it names none (a torch tensor), the caller orders
  it before the runner's stream. The runner keeps the input alive until its next ``run``.
- ``batch``: ``run`` accepts N > 1 (``Detector.detect_batch`` runs each pyramid level once
  for all images); otherwise the detector runs images one by one. ``max_batch``: the most
  images one run takes (a TensorRT engine's profile), None for any; the detector splits a
  larger batch into runs of that many.
- ``device``: the CUDA device a device-I/O runner works on; None for the current one. The
  detector makes its CUDA stages on the current device and refuses a runner on another.
- ``gpu``: a host runner whose network runs on a GPU all the same (ONNX Runtime's CUDA
  provider fed host arrays, torch on ``cuda``); :attr:`RunnerCapabilities.on_gpu` is that or
  device I/O. The command lines show a bar of an image's pyramid levels only off the GPU.
- ``concurrent_levels``: the runner also has ``run_levels(net_inputs)``, which takes every
  pyramid level's input of one image (or batch) at once and may run them side by side on the
  device (torch-cuda: small levels on streams of their own); it returns one score map per
  input, all valid until the runner's next call. The detector then prepares every level,
  makes that one call, and decodes them in turn.
- ``input_buffers``: the runner also has ``input_buffer(shape)``, which gives the device array
  (C-contiguous float32 of exactly ``shape``) that ``run`` / ``run_levels`` read without a copy
  when it is the input given, or None (torch-cuda: a captured CUDA graph's static input). A
  preprocessor may then resize a level straight into it: its writes must come after the
  runner's earlier work (on the runner's stream, or ordered after it by an event), and no two
  inputs of one call may be the same buffer.

Every runner refuses another input with the same :class:`NetworkInputError`: a host array
through :func:`check_network_input`, a device array or tensor through
:func:`check_network_shape`.

The returned score map stays valid until the runner's next ``run`` (a runner may reuse the
memory); the detector finishes reading it first. ``warmup(shapes)`` readies input shapes
ahead of use (torch-cuda captures, or compiles, them; a runner whose first run of a shape
costs what later ones do does nothing). ``synchronize()`` waits for the runner's queued
device work (per-stage timings); ``close()`` releases the runner's memory (device buffers,
sessions); a closed runner may not run again.

Every member is required: the detector checks a runner once (:func:`require_runner`) and then
calls it without probing. :class:`RunnerBase` gives the defaults (host I/O, no batch, nothing
to check, prepare, wait for or close).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from tinyfaces_trt.core.errors import NetworkInputError, TinyFacesError, first_line
from tinyfaces_trt.core.pyramid import PyramidLevel


@dataclass(frozen=True)
class RunnerCapabilities:
    """What a runner can do (see the module docstring)."""

    device_io: bool = False
    batch: bool = False
    max_batch: int | None = None
    device: int | None = None
    gpu: bool = False
    concurrent_levels: bool = False
    input_buffers: bool = False

    @property
    def on_gpu(self) -> bool:
        """Whether the network runs on a GPU (device I/O, or ``gpu``)."""
        return self.device_io or self.gpu

    def __post_init__(self) -> None:
        if self.max_batch is not None and (isinstance(self.max_batch, bool)
                                           or not isinstance(self.max_batch, int)
                                           or self.max_batch < 1):
            raise ValueError(f"max_batch must be None or an integer >= 1, got {self.max_batch!r}")


HOST = RunnerCapabilities()


@runtime_checkable
class NetworkRunner(Protocol):
    """Runs the fully-convolutional network on one pyramid level's input batch."""

    capabilities: RunnerCapabilities

    @property
    def stream(self) -> int | None:
        """The ``cudaStream_t`` (as an int) a device-I/O runner works on; None for host runners."""

    def run(self, net_input: Any) -> Any:
        """(N, 3, h, w) float32 input -> (N, 125, h', w') float32 score map."""

    def check_levels(self, levels: Sequence[PyramidLevel]) -> None:
        """Raises a TinyFacesError for a level this runner cannot run (e.g. outside a TensorRT
        engine's profile); called before any work on an image."""

    def warmup(self, shapes: Iterable[Sequence[int]]) -> None:
        """Readies these (N, 3, h, w) input shapes ahead of use, so that their first run costs
        what later ones do (compiling, capturing); nothing to do for most runners."""

    def synchronize(self) -> None:
        """Waits until the runner's queued work is done (nothing to wait for on the host)."""

    def close(self) -> None:
        """Releases the runner's memory; idempotent."""


def cuda_array_interface(obj: Any) -> dict[str, Any] | None:
    """``obj.__cuda_array_interface__``; None where ``obj`` has none (a numpy array, a torch
    tensor on the CPU).

    Raises:
        NetworkInputError: ``obj`` has the interface but refuses to give it (torch: a CUDA
            tensor that requires grad; its message says to detach it).
    """
    try:
        return getattr(obj, "__cuda_array_interface__", None)
    except Exception as exc:  # torch raises RuntimeError, not AttributeError, for that case
        raise NetworkInputError(f"cannot read the {type(obj).__name__}'s "
                                f"__cuda_array_interface__: {first_line(exc)}") from None


def producer_stream(device_input: Any) -> int | None:
    """The CUDA stream a device array was produced on, as its ``__cuda_array_interface__``
    names it (version 3 ``stream``: 1 is the legacy default stream, 2 the per-thread default
    stream, the very values of the runtime's ``cudaStreamLegacy`` and ``cudaStreamPerThread``
    handles; any other value a ``cudaStream_t``); None where it names none (torch tensors,
    version 2): the caller then orders the producer.

    Raises:
        NetworkInputError: the interface names stream 0, which it disallows (ambiguous between
            the legacy and the per-thread default stream), or something else than an integer.
    """
    return interface_stream(cuda_array_interface(device_input))


def interface_stream(interface: Any) -> int | None:
    """:func:`producer_stream` of an interface already read (the dict
    ``__cuda_array_interface__`` gave; anything else names no stream)."""
    stream = interface.get("stream") if isinstance(interface, dict) else None
    if stream is None:
        return None
    try:
        if isinstance(stream, bool):
            raise TypeError
        stream = operator.index(stream)  # numpy integers too
    except TypeError:
        raise NetworkInputError(f"__cuda_array_interface__ names stream {stream!r}; the interface "
                                f"takes None or an integer") from None
    if stream == 0:
        raise NetworkInputError("__cuda_array_interface__ names stream 0, which the interface "
                                "disallows: 1 is the legacy default stream, 2 the per-thread one")
    return stream


def check_network_shape(shape: Sequence[int], dtype: str, batch: bool, *,
                        contiguous: bool = True) -> tuple[int, ...]:
    """The input contract of every runner's ``run``, for any array (a device array's interface,
    a torch tensor): returns ``shape`` as a tuple of ints.

    Args:
        shape, dtype: the input's, the dtype by numpy's name (``"float32"``; a torch dtype
            without its ``torch.`` prefix).
        batch: the runner takes N > 1 (``capabilities.batch``); else N must be 1.
        contiguous: whether the input is C-contiguous (a runner reading it in place needs it).

    Raises:
        NetworkInputError: "network input must be a (N, 3, h, w) float32 array, got <shape>
            <dtype>" (``(1, 3, h, w)`` without ``batch``) unless ``shape`` is four dimensions
            of at least 1, 3 channels, N = 1 without ``batch``, and ``dtype`` float32; "network
            input must be C-contiguous" unless ``contiguous``.
    """
    got = tuple(int(d) for d in shape)
    if len(got) != 4 or got[1] != 3 or min(got) < 1 or (not batch and got[0] != 1) or \
            dtype != "float32":
        raise NetworkInputError(f"network input must be a ({'N' if batch else '1'}, 3, h, w) "
                                f"float32 array, got {got} {dtype}")
    if not contiguous:
        raise NetworkInputError(f"network input must be C-contiguous, got a {got} array with "
                                f"other strides")
    return got


def check_network_input(net_input: Any, batch: bool) -> np.ndarray:
    """A host runner's input, checked by :func:`check_network_shape` (any layout in memory)
    and returned C-contiguous.

    Raises:
        NetworkInputError: ``net_input`` is not a numpy array, or breaks the contract.
    """
    if not isinstance(net_input, np.ndarray):
        raise NetworkInputError(f"network input must be a numpy array, got "
                                f"{type(net_input).__name__}")
    check_network_shape(net_input.shape, str(net_input.dtype), batch)
    return np.ascontiguousarray(net_input)


#: The members every runner has (:class:`NetworkRunner`).
RUNNER_MEMBERS = ("capabilities", "stream", "run", "check_levels", "warmup", "synchronize",
                  "close")
#: The member a runner declaring ``capabilities.concurrent_levels`` has too.
CONCURRENT_LEVELS_MEMBER = "run_levels"
INPUT_BUFFERS_MEMBER = "input_buffer"


_Held = TypeVar("_Held")


class RunnerBase:
    """Defaults of the :class:`NetworkRunner` protocol for a host runner; subclasses override."""

    capabilities: RunnerCapabilities = HOST

    @property
    def stream(self) -> int | None:
        return None

    def run(self, net_input: Any) -> Any:
        raise NotImplementedError

    def check_levels(self, levels: Sequence[PyramidLevel]) -> None:
        return None

    def warmup(self, shapes: Iterable[Sequence[int]]) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _require_open(self, held: _Held | None) -> _Held:
        """``held``, what the runner's :meth:`close` drops to free its memory (a session, a
        model); once dropped, raises :class:`~tinyfaces_trt.core.errors.TinyFacesError`: a
        closed runner may not run again."""
        if held is None:
            raise TinyFacesError(f"this {type(self).__name__} is closed: a closed runner "
                                 f"may not run again (create a new one)")
        return held

    def __enter__(self) -> "RunnerBase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_members(obj: object, names: Iterable[str], protocol: str, hint: str = "") -> None:
    """Checks that ``obj`` has every one of ``names`` (looked up on its class first, so that a
    property is not evaluated; then on the instance, for attributes set in ``__init__``).

    Raises:
        TypeError: "<class> is not a <protocol>: it has no <missing members><hint>".
    """
    missing = [name for name in names if not hasattr(type(obj), name) and not hasattr(obj, name)]
    if missing:
        raise TypeError(f"{type(obj).__name__} is not a {protocol}: it has no "
                        f"{', '.join(missing)}{hint}")


def require_runner(runner: object) -> NetworkRunner:
    """``runner``, checked to have every :class:`NetworkRunner` member and valid capabilities.

    Raises:
        TypeError: a member is missing (naming each, and :class:`RunnerBase` for defaults;
            ``run_levels`` where ``capabilities.concurrent_levels`` is declared, ``input_buffer``
            where ``input_buffers`` is), or
            ``capabilities`` is not a :class:`RunnerCapabilities`.
    """
    require_members(runner, RUNNER_MEMBERS, "NetworkRunner",
                    "; subclass tinyfaces_trt.core.runner.RunnerBase for the host defaults")
    caps = capabilities_of(runner)
    if caps.concurrent_levels:
        require_members(runner, (CONCURRENT_LEVELS_MEMBER,), "NetworkRunner",
                        " although its capabilities declare concurrent_levels")
    if caps.input_buffers:
        require_members(runner, (INPUT_BUFFERS_MEMBER,), "NetworkRunner",
                        " although its capabilities declare input_buffers")
    return runner  # type: ignore[return-value]


def close_all(parts: Iterable[Any]) -> None:
    """Closes every part (runners, stages), even when one fails; then raises the first
    failure."""
    failure: Exception | None = None
    for part in parts:
        try:
            part.close()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def capabilities_of(runner: object) -> RunnerCapabilities:
    """A runner's capabilities.

    Raises:
        TypeError: the runner declares none, or not a :class:`RunnerCapabilities`.
    """
    caps = getattr(runner, "capabilities", None)
    if caps is None:
        raise TypeError(f"{type(runner).__name__} declares no capabilities: it is not a "
                        "NetworkRunner (subclass tinyfaces_trt.core.runner.RunnerBase)")
    if not isinstance(caps, RunnerCapabilities):
        raise TypeError(f"{type(runner).__name__}.capabilities must be a RunnerCapabilities, "
                        f"got {type(caps).__name__}")
    return caps
