"""cuda-python's runtime API over host memory, so that ``cuda_device`` runs for real without a GPU.

:class:`HostCudart` takes the place of ``cuda.bindings.runtime`` in
``runtime.backends.cuda_device`` (:func:`install`). With it, the product's own
``DeviceBuffer``, ``PinnedBuffer``, ``Stream``, ``Event``, ``StreamOrder`` and
``DeviceArray.download`` run unchanged, and the CPU build of the kernels
(``make -C kernels cpu``) reads and writes the "device" memory, which is host memory.

Every call goes first to the real ``cuda.bindings.runtime`` with the same arguments. With no
driver it answers cudaErrorInsufficientDriver (or NoDevice), but only after converting every
argument, so a wrong argument type or count raises here as it would on a GPU. The call is
then carried out on the host, with return values of the real types (``cudaError_t``,
``cudaStream_t``, ``cudaEvent_t``, ``cudaDeviceProp``).

What it checks beyond that, answering with the error code the CUDA runtime gives or, where
a GPU's behaviour is undefined, cudaErrorInvalidValue (stricter than a GPU):
- a free of memory that is not live (cudaErrorInvalidValue);
- a copy whose ``cudaMemcpyKind`` does not match where its pointers lie (undefined on a
  GPU), or that runs past the end of a device allocation (cudaErrorInvalidValue);
- a destroyed or unknown stream or event (cudaErrorInvalidResourceHandle);
- ``cudaStreamWaitEvent`` flags other than default / external (cudaErrorInvalidValue);
- stream capture, always refused (cudaErrorStreamCaptureUnsupported: nothing can be deferred).
Stream and event handles are unique in the process, across doubles: an object of an earlier
test that is destroyed late cannot hit a later test's handle.
:meth:`HostCudart.live` counts what is still allocated or created.

What it cannot show: every call completes before it returns, so nothing here tests
asynchrony, stream order on a GPU, or timing.

Device memory comes from posix_memalign at its exact size, filled with 0xFF bytes (cudaMalloc
does not zero memory). It is looked up in the process's global symbols, so under a preloaded
AddressSanitizer an access past the end of a buffer is reported.
"""

from __future__ import annotations

import ctypes
import importlib
import itertools
import threading
from collections import Counter
from typing import Any

_LIBC = ctypes.CDLL(None)  # global lookup: AddressSanitizer's allocator when it is preloaded
_LIBC.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
_LIBC.free.argtypes = [ctypes.c_void_p]

#: What the real runtime answers on a machine without a usable driver or device.
_NO_DRIVER = {"cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorStubLibrary"}
_HOST_TO_DEVICE, _DEVICE_TO_HOST, _DEVICE_TO_DEVICE, _HOST_TO_HOST, _DEFAULT = 1, 2, 3, 0, 4
_HANDLES = itertools.count(0x5000, 0x10)  # shared by every double of the process


def real_runtime() -> Any:
    """``cuda.bindings.runtime`` (cuda-bindings >= 12), else ImportError."""
    return importlib.import_module("cuda.bindings.runtime")


class HostCudart:
    """The part of ``cuda.bindings.runtime`` that ``cuda_device`` uses, on host memory.

    Anything else (types, enums, constants, ``cudaGetErrorString``) is the real module's.

    Attributes:
        device, pinned: live allocations, address -> size.
        foreign: device memory other libraries own (:meth:`adopt`), owner -> (address, size).
        streams, events: live handles.
        calls: how often each runtime function was called.
        log: (function, stream handle) of every stream operation, in call order.
        device_count: the GPUs it plays (1; each thread's current one set by cudaSetDevice).
    """

    def __init__(self, real: Any = None) -> None:
        self._real = real if real is not None else real_runtime()
        self.device: dict[int, int] = {}
        self.pinned: dict[int, int] = {}
        self.foreign: dict[Any, tuple[int, int]] = {}
        self.streams: set[int] = set()
        self.non_blocking: set[int] = set()  # of the streams: those made cudaStreamNonBlocking
        self.events: set[int] = set()
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, int]] = []
        self.device_count = 1  # set more to play a machine with several GPUs
        self._current = threading.local()  # each thread's current device (0 at first)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def live(self) -> dict[str, int]:
        """How many allocations, streams and events are still live."""
        return {"device": len(self.device), "pinned": len(self.pinned),
                "streams": len(self.streams), "events": len(self.events)}

    def adopt(self, owner: Any, ptr: int, nbytes: int) -> None:
        """Declares ``nbytes`` at ``ptr`` device memory of another library (a runner's
        output, as ONNX Runtime or torch allocate on a GPU), never freed here. It replaces
        what ``owner`` declared before (its previous output is gone)."""
        self.foreign[owner] = (int(ptr), int(nbytes))

    def disown(self, owner: Any) -> None:
        """``owner``'s memory is gone (the runner was closed): copies from it are refused."""
        self.foreign.pop(owner, None)

    def release_all(self) -> None:
        """Frees what is still allocated (test teardown)."""
        for ptr in list(self.device) + list(self.pinned):
            _LIBC.free(ptr)
        self.device.clear()
        self.pinned.clear()
        self.foreign.clear()
        self.streams.clear()
        self.non_blocking.clear()
        self.events.clear()

    # -- plumbing -----------------------------------------------------------------------------

    def _validate(self, name: str, *args: Any) -> None:
        """The real function converts the arguments (TypeError here on a wrong one) and
        answers that there is no driver."""
        result = getattr(self._real, name)(*args)
        err = result[0] if isinstance(result, tuple) else result
        if err.name not in _NO_DRIVER:
            raise AssertionError(f"cuda.bindings.runtime.{name} answered {err.name}, not a "
                                 "missing driver: this machine has one, run the GPU tests instead")
        self.calls[name] += 1

    def _ok(self, *values: Any) -> tuple[Any, ...]:
        return (self._real.cudaError_t.cudaSuccess, *values)

    def _error(self, name: str, values: int = 0) -> tuple[Any, ...]:
        return (getattr(self._real.cudaError_t, name), *([None] * values))

    def _handle(self) -> int:
        return next(_HANDLES)

    def _stream_known(self, stream: Any) -> bool:
        handle = int(stream) if stream is not None else 0
        # 0 the default stream, 1 and 2 cudaStreamLegacy and cudaStreamPerThread
        return handle in (0, 1, 2) or handle in self.streams

    def _on_device(self, ptr: int, nbytes: int) -> bool | None:
        """True: [ptr, ptr + nbytes) lies in one device allocation; False: in none; None: it
        starts in one and runs past its end."""
        for start, size in (*self.device.items(), *self.foreign.values()):
            if start <= ptr < start + size:
                return True if ptr + nbytes <= start + size else None
        return False

    def _copy(self, dst: Any, src: Any, count: int, kind: Any) -> bool:
        dst, src, count, kind = int(dst), int(src), int(count), int(kind)
        dst_dev, src_dev = self._on_device(dst, count), self._on_device(src, count)
        if dst_dev is None or src_dev is None:
            return False
        expected = {_HOST_TO_DEVICE: (True, False), _DEVICE_TO_HOST: (False, True),
                    _DEVICE_TO_DEVICE: (True, True), _HOST_TO_HOST: (False, False)}
        if kind != _DEFAULT and expected.get(kind) != (dst_dev, src_dev):
            return False
        if count:
            ctypes.memmove(dst, src, count)
        return True

    # -- devices ------------------------------------------------------------------------------

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:
        self._validate("cudaGetDeviceCount")
        return self._ok(self.device_count)

    def cudaGetDevice(self) -> tuple[Any, ...]:
        self._validate("cudaGetDevice")
        return self._ok(getattr(self._current, "device", 0))

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:
        self._validate("cudaSetDevice", device)
        if not 0 <= int(device) < self.device_count:
            return self._error("cudaErrorInvalidDevice")
        self._current.device = int(device)
        return self._ok()

    def cudaDeviceSynchronize(self) -> tuple[Any, ...]:
        self._validate("cudaDeviceSynchronize")
        self.log.append(("cudaDeviceSynchronize", None))
        return self._ok()

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:
        self._validate("cudaGetDeviceProperties", device)
        if int(device) != 0:
            return self._error("cudaErrorInvalidDevice", 1)
        props = self._real.cudaDeviceProp()
        props.name = b"host memory (tests/host_cudart.py)".ljust(256, b"\0")
        return self._ok(props)

    # -- memory -------------------------------------------------------------------------------

    def _malloc(self, table: dict[int, int], size: int) -> tuple[Any, ...]:
        """``size`` bytes, 256-byte aligned, filled with 0xFF, recorded in ``table``."""
        ptr = ctypes.c_void_p()
        if _LIBC.posix_memalign(ctypes.byref(ptr), 256, max(1, int(size))) != 0:
            raise MemoryError(f"posix_memalign({size})")
        ctypes.memset(ptr.value, 0xFF, max(1, int(size)))
        table[int(ptr.value)] = int(size)
        return self._ok(int(ptr.value))

    def _free(self, table: dict[int, int], ptr: Any) -> tuple[Any, ...]:
        """Frees ``ptr`` if ``table`` holds it; 0 is a no-op, as in CUDA."""
        if int(ptr) == 0:
            return self._ok()
        if table.pop(int(ptr), None) is None:
            return self._error("cudaErrorInvalidValue")
        _LIBC.free(int(ptr))
        return self._ok()

    def cudaMalloc(self, size: int) -> tuple[Any, ...]:
        self._validate("cudaMalloc", size)
        return self._malloc(self.device, size)

    def cudaFree(self, ptr: Any) -> tuple[Any, ...]:
        self._validate("cudaFree", ptr)
        return self._free(self.device, ptr)

    def cudaMallocHost(self, size: int) -> tuple[Any, ...]:
        self._validate("cudaMallocHost", size)
        return self._malloc(self.pinned, size)

    def cudaFreeHost(self, ptr: Any) -> tuple[Any, ...]:
        self._validate("cudaFreeHost", ptr)
        return self._free(self.pinned, ptr)

    def cudaPointerGetAttributes(self, ptr: Any) -> tuple[Any, ...]:
        """The memory type of ``ptr``: Host inside a pinned allocation, Device inside a device
        one (ours or adopted), Unregistered elsewhere (as CUDA 11+ answers for pageable
        memory)."""
        self._validate("cudaPointerGetAttributes", ptr)
        ptr, kinds = int(ptr), self._real.cudaMemoryType
        attributes = self._real.cudaPointerAttributes()
        if any(start <= ptr < start + size for start, size in self.pinned.items()):
            attributes.type = kinds.cudaMemoryTypeHost
        elif self._on_device(ptr, 1):
            attributes.type = kinds.cudaMemoryTypeDevice
        else:
            attributes.type = kinds.cudaMemoryTypeUnregistered
        return self._ok(attributes)

    def cudaMemcpy(self, dst: Any, src: Any, count: int, kind: Any) -> tuple[Any, ...]:
        self._validate("cudaMemcpy", dst, src, count, kind)
        return self._ok() if self._copy(dst, src, count, kind) else self._error("cudaErrorInvalidValue")

    def cudaMemcpyAsync(self, dst: Any, src: Any, count: int, kind: Any,
                        stream: Any) -> tuple[Any, ...]:
        self._validate("cudaMemcpyAsync", dst, src, count, kind, stream)
        if not self._stream_known(stream):
            return self._error("cudaErrorInvalidResourceHandle")
        self.log.append(("cudaMemcpyAsync", int(stream)))
        return self._ok() if self._copy(dst, src, count, kind) else self._error("cudaErrorInvalidValue")

    # -- streams and events ------------------------------------------------------------------

    def cudaStreamCreate(self) -> tuple[Any, ...]:
        self._validate("cudaStreamCreate")
        handle = self._handle()
        self.streams.add(handle)
        return self._ok(self._real.cudaStream_t(handle))

    def cudaStreamCreateWithFlags(self, flags: Any) -> tuple[Any, ...]:
        self._validate("cudaStreamCreateWithFlags", flags)
        if int(flags) not in (int(self._real.cudaStreamDefault), int(self._real.cudaStreamNonBlocking)):
            return self._error("cudaErrorInvalidValue")
        handle = self._handle()
        self.streams.add(handle)
        if int(flags):
            self.non_blocking.add(handle)
        return self._ok(self._real.cudaStream_t(handle))

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any, ...]:
        self._validate("cudaStreamDestroy", stream)
        if int(stream) not in self.streams:
            return self._error("cudaErrorInvalidResourceHandle")
        self.streams.discard(int(stream))
        self.non_blocking.discard(int(stream))
        return self._ok()

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any, ...]:
        self._validate("cudaStreamSynchronize", stream)
        if not self._stream_known(stream):
            return self._error("cudaErrorInvalidResourceHandle")
        self.log.append(("cudaStreamSynchronize", int(stream)))
        return self._ok()

    def cudaEventCreateWithFlags(self, flags: Any) -> tuple[Any, ...]:
        self._validate("cudaEventCreateWithFlags", flags)
        handle = self._handle()
        self.events.add(handle)
        return self._ok(self._real.cudaEvent_t(handle))

    def _event_call(self, name: str, event: Any, stream: Any = 0, *more: Any) -> tuple[Any, ...]:
        if int(event) not in self.events or not self._stream_known(stream):
            return self._error("cudaErrorInvalidResourceHandle")
        self.log.append((name, int(stream)))
        return self._ok()

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple[Any, ...]:
        self._validate("cudaEventRecord", event, stream)
        return self._event_call("cudaEventRecord", event, stream)

    def cudaStreamWaitEvent(self, stream: Any, event: Any, flags: Any) -> tuple[Any, ...]:
        self._validate("cudaStreamWaitEvent", stream, event, flags)
        if int(flags) not in (0, 1):  # cudaEventWaitDefault, cudaEventWaitExternal
            return self._error("cudaErrorInvalidValue")
        return self._event_call("cudaStreamWaitEvent", event, stream)

    def cudaEventSynchronize(self, event: Any) -> tuple[Any, ...]:
        self._validate("cudaEventSynchronize", event)
        return self._event_call("cudaEventSynchronize", event)

    def cudaEventDestroy(self, event: Any) -> tuple[Any, ...]:
        self._validate("cudaEventDestroy", event)
        if int(event) not in self.events:
            return self._error("cudaErrorInvalidResourceHandle")
        self.events.discard(int(event))
        return self._ok()


    # -- graphs -------------------------------------------------------------------------------

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[Any, ...]:
        """Refused (cudaErrorStreamCaptureUnsupported): every call here, the CPU build's
        kernels too, completes before it returns, so there is no work to defer into a graph.
        The CUDA stages then launch their kernels one by one, as they do where capture fails
        on a GPU."""
        self._validate("cudaStreamBeginCapture", stream, mode)
        if not self._stream_known(stream):
            return self._error("cudaErrorInvalidResourceHandle")
        self.log.append(("cudaStreamBeginCapture", int(stream)))
        return self._error("cudaErrorStreamCaptureUnsupported")


def install(monkeypatch: Any, finalizers: bool = True) -> HostCudart:
    """Makes ``cuda_device`` use a new :class:`HostCudart` for the rest of the test.

    ``finalizers=False`` turns off the ``__del__`` of cuda_device's streams, events and
    buffers, so that only an explicit ``close()`` / ``free()`` releases anything: a leak check
    then tests what ``close()`` does, not what the garbage collector does later.
    """
    from tinyfaces_trt.runtime.backends import cuda_device

    host = HostCudart()
    monkeypatch.setattr(cuda_device, "_runtime_module", host)
    if not finalizers:
        for cls in (cuda_device.Stream, cuda_device.Event, cuda_device.DeviceBuffer,
                    cuda_device.PinnedBuffer):
            monkeypatch.setattr(cls, "__del__", lambda self: None)
    return host


def missing() -> str:
    """Why :class:`HostCudart` cannot run here ("" when it can): cuda-bindings is not
    installed, or a driver answers (then the GPU tests run these cases on the device)."""
    try:
        rt = real_runtime()
    except ImportError as exc:
        return f"needs cuda-bindings (the test extra installs it): {exc}"
    try:
        err = rt.cudaGetDeviceCount()[0]
    except Exception as exc:  # cuda-bindings 12.8 raises where later ones answer an error code
        return f"this cuda-bindings raises without a driver instead of answering: {exc}"
    if err.name not in _NO_DRIVER:
        return (f"a CUDA driver answers here ({err.name}): the GPU tests run these cases on the "
                "device")
    return ""
