"""CUDA streams and memory through cuda-python: the host side of the GPU stages, and of the
device-I/O runners (:class:`DeviceIoRunner`: their stream and device inputs).

cuda-python (``pip install "tinyfaces-trt[gpu]"``) is imported on first use:
``cuda.bindings.runtime`` (cuda-python >= 12.x), else the legacy ``cuda.cudart``. Without it,
every constructor raises :class:`BackendUnavailableError`; :func:`gpu_available` never raises.

Device memory from other libraries is accepted wherever a pointer is taken: an ``int``
(``cupy_array.data.ptr``, ``torch_tensor.data_ptr()``), a :class:`DeviceBuffer` or
:class:`DeviceArray`, or any object with ``__cuda_array_interface__`` (CuPy, torch, Numba).
"""

from __future__ import annotations

import ctypes
import operator
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.optional import import_cuda_runtime
from tinyfaces_trt.core.runner import (RunnerBase, check_network_shape, cuda_array_interface,
                                       interface_stream)
from tinyfaces_trt.core.threads import no_cycle_collection

_runtime_module: Any = None


class CudaError(TinyFacesError):
    """A CUDA runtime call failed; ``code`` is the cudaError_t value."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def runtime() -> Any:
    """cuda-python's runtime API module, imported on first use.

    Raises:
        BackendUnavailableError: cuda-python is not installed.
    """
    global _runtime_module
    if _runtime_module is None:
        _runtime_module = import_cuda_runtime()
    return _runtime_module


def error_string(code: Any) -> str:
    """``cudaGetErrorString`` of an error code, e.g. "no CUDA-capable device is detected"."""
    rt = runtime()
    try:
        _, text = rt.cudaGetErrorString(rt.cudaError_t(int(code)))
        return text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # an unknown code
        return f"CUDA error {int(code)}"


def check(result: Any, what: str = "CUDA call") -> Any:
    """Unpacks a cuda-python result ``(err, *values)``; raises :class:`CudaError` on failure.

    Returns None, the single value, or a tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    code = int(err)
    if code != 0:
        name = getattr(err, "name", f"error {code}")
        raise CudaError(f"{what} failed: {error_string(code)} ({name})", code)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_available() -> bool:
    """True when cuda-python imports, a driver answers and at least one GPU is visible."""
    try:
        count = check(runtime().cudaGetDeviceCount(), "cudaGetDeviceCount")
        return int(count) > 0
    except Exception:
        return False


def current_device() -> int:
    """The calling thread's current CUDA device: where new streams and buffers are made."""
    return int(check(runtime().cudaGetDevice(), "cudaGetDevice"))


def device_name(device: int = 0) -> str:
    """The name of a CUDA device, e.g. "NVIDIA H100 80GB HBM3"."""
    props = check(runtime().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    return (name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)).strip()


class Stream:
    """A CUDA stream: a new one, or a wrapped handle owned elsewhere.

    Args:
        handle: an existing ``cudaStream_t`` as an int (``torch.cuda.current_stream().cuda_stream``,
            ``cupy.cuda.Stream().ptr``); not destroyed by :meth:`close`. None creates a stream.
        non_blocking: a created stream does not synchronise with the legacy default stream
            (``cudaStreamNonBlocking``).
    """

    def __init__(self, handle: int | None = None, non_blocking: bool = False) -> None:
        self._rt = rt = runtime()
        if handle is None:
            self._stream = (check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking),
                                  "cudaStreamCreateWithFlags") if non_blocking
                            else check(rt.cudaStreamCreate(), "cudaStreamCreate"))
            self._owned = True
        else:
            self._stream = rt.cudaStream_t(int(handle))
            self._owned = False

    @property
    def handle(self) -> int:
        """The ``cudaStream_t`` as an int (0 only for the legacy default stream)."""
        return int(self._live())

    @property
    def live(self) -> bool:
        """False once closed."""
        return self._stream is not None

    def synchronize(self) -> None:
        """Waits until every operation queued on the stream has finished."""
        check(self._rt.cudaStreamSynchronize(self._live()), "cudaStreamSynchronize")

    def _live(self) -> Any:
        if self._stream is None:  # None would reach CUDA as the legacy default stream
            raise TinyFacesError("this CUDA stream is closed (its detector or runner was closed)")
        return self._stream

    def close(self) -> None:
        """Destroys the stream if this object created it."""
        if self._owned and self._stream is not None:
            check(self._rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or the context is already gone
            pass

    def __repr__(self) -> str:
        return f"Stream(0x{self.handle:x})" if self._stream is not None else "Stream(closed)"


def as_stream(stream: Stream | int | None, stream_type: Any = None) -> Stream:
    """``stream`` as a :class:`Stream`: itself where it is one, a new stream for None (its
    :meth:`~Stream.close` destroys it: the caller owns it), else the handle wrapped (owned
    elsewhere, never destroyed here). ``stream_type`` replaces :class:`Stream` (an injected
    CUDA layer's)."""
    stream_type = Stream if stream_type is None else stream_type
    return stream if isinstance(stream, stream_type) else stream_type(stream)


class Event:
    """A CUDA event without timing, to order one stream after another without the host."""

    def __init__(self) -> None:
        self._rt = rt = runtime()
        self._event = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming),
                            "cudaEventCreateWithFlags")

    def record(self, stream: Stream | int | None) -> None:
        """Marks the current end of ``stream``'s queued work."""
        check(self._rt.cudaEventRecord(self._live(), _stream_handle(stream)), "cudaEventRecord")

    def make_wait(self, stream: Stream | int | None) -> None:
        """Queues on ``stream`` a wait for the work recorded before (the host does not wait)."""
        check(self._rt.cudaStreamWaitEvent(_stream_handle(stream), self._live(), 0),
              "cudaStreamWaitEvent")

    def synchronize(self) -> None:
        """Waits on the host until the recorded work has finished."""
        check(self._rt.cudaEventSynchronize(self._live()), "cudaEventSynchronize")

    def _live(self) -> Any:
        if self._event is None:  # None would reach CUDA as a NULL event
            raise TinyFacesError("this CUDA event is closed (its detector or runner was closed)")
        return self._event

    def close(self) -> None:
        """Destroys the event (idempotent)."""
        if self._event is not None:
            event, self._event = self._event, None
            check(self._rt.cudaEventDestroy(event), "cudaEventDestroy")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or the context is already gone
            pass


class CapturedWork:
    """The work one call queues on a stream, captured once into a CUDA graph and replayed by
    :meth:`launch` with one launch: for a fixed sequence of many small kernels whose launches
    cost the host more than the kernels take (NMS: about 40 launches for 200 us of GPU work at
    10k candidates on an H200). A replay reads and writes the very buffers, and takes the very
    arguments, of the captured call: whoever keeps one must key it by them.

    The capture is thread-local (``cudaStreamCaptureModeThreadLocal``: other threads' CUDA
    calls go on) and on a stream of the capture's own, non-blocking: while a blocking stream
    captures, no thread may use the legacy default stream. Nothing of ``enqueue`` runs until
    the first :meth:`launch`, which may be on any stream. Python's cyclic garbage collector is
    off during the capture (a buffer it collected would be freed, which a capture forbids;
    :func:`~tinyfaces_trt.core.threads.no_cycle_collection`).

    Args:
        capture_stream: a non-blocking stream of the caller's that nothing else uses (made
            with ``Stream(non_blocking=True)``).
        enqueue: queues the work on the stream it is given; it must neither wait for the
            stream nor allocate.

    Raises:
        CudaError: the stream could not be captured (it is capturing already, or this
            runtime cannot), or the graph could not be made; the stream has left capture.
        Whatever ``enqueue`` raised, after the capture is ended and dropped.
    """

    def __init__(self, capture_stream: Stream, enqueue: Any) -> None:
        self._rt = rt = runtime()
        self._exec: Any = None
        handle = capture_stream._live()
        with no_cycle_collection():
            check(rt.cudaStreamBeginCapture(
                handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                "cudaStreamBeginCapture")
            try:
                enqueue(capture_stream)
            except BaseException:
                result = rt.cudaStreamEndCapture(handle)  # leave capture mode, drop its graph
                if int(result[0]) == 0 and result[1] is not None:
                    rt.cudaGraphDestroy(result[1])
                raise
            graph = check(rt.cudaStreamEndCapture(handle), "cudaStreamEndCapture")
        try:
            self._exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, stream: Stream | int | None) -> None:
        """Queues the captured work on ``stream`` (asynchronous, like the calls it replaces)."""
        if self._exec is None:
            raise TinyFacesError("this captured CUDA work is closed")
        check(self._rt.cudaGraphLaunch(self._exec, _stream_handle(stream)), "cudaGraphLaunch")

    def close(self) -> None:
        """Destroys the graph (idempotent); a launch still running completes first."""
        if self._exec is not None:
            graph_exec, self._exec = self._exec, None
            check(self._rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or the context is already gone
            pass


class StreamOrder:
    """Orders a ``consumer`` stream after a ``producer`` stream with one reusable event.

    ``after()`` records the producer's queued work and makes the consumer wait for it, on the
    GPU: nothing blocks the host. When both are the same stream, work is already in order and
    nothing is recorded. ``event`` is injectable for tests.
    """

    def __init__(self, producer: Stream | int | None, consumer: Stream | int | None,
                 event: Any = None) -> None:
        self.producer, self.consumer = producer, consumer
        self.same = _stream_handle(producer) == _stream_handle(consumer)
        self._event = event if event is not None or self.same else Event()

    def after(self) -> None:
        """The consumer's next work starts after the producer's work queued so far."""
        if not self.same:
            self._event.record(self.producer)
            self._event.make_wait(self.consumer)

    def close(self) -> None:
        close = getattr(self._event, "close", None)
        if close is not None:
            close()


class ProducerOrder:
    """Orders a ``consumer`` stream and the stream each device input was produced on (its
    :attr:`DeviceArray.stream`, from the CUDA Array Interface's ``stream``) both ways, with one
    reusable event, on the GPU: :meth:`after` before the consumer reads the input,
    :meth:`release` once its reads are queued. Nothing for an input that names no stream or
    was made on ``consumer``. ``event`` is injectable for tests."""

    def __init__(self, consumer: Stream | int | None, event: Any = None) -> None:
        self.consumer = consumer
        self._event = event

    def _named(self, array: "DeviceArray") -> bool:
        return array.stream is not None and \
            _stream_handle(array.stream) != _stream_handle(self.consumer)

    def _order(self, first: Stream | int | None, then: Stream | int | None) -> None:
        if self._event is None:
            self._event = Event()
        self._event.record(first)
        self._event.make_wait(then)

    def after(self, array: "DeviceArray") -> None:
        """The consumer's next work starts after the work queued so far on ``array``'s stream."""
        if self._named(array):
            self._order(array.stream, self.consumer)

    def release(self, array: "DeviceArray") -> None:
        """``array``'s stream waits for the consumer's work queued so far (its reads of
        ``array``): its producer may then overwrite or free it right away, as the CUDA Array
        Interface allows a producer once the consumer has returned."""
        if self._named(array):
            self._order(self.consumer, array.stream)

    def close(self) -> None:
        close = getattr(self._event, "close", None)
        if close is not None:
            close()


class DeviceIoRunner(RunnerBase):
    """What every device-I/O runner (TensorRT, onnxruntime-cuda) does with its stream and its
    device inputs; a runner implements only what differs: how it runs (:meth:`_run_host`,
    :meth:`_run_device`, and :meth:`_check_device_input`), whether it holds anything
    (:meth:`_is_open`) and how it lets that go (:meth:`_release`).

    - The stream (:meth:`_take_stream`): a given :class:`Stream` or handle is used as it is
      and never destroyed; without one the runner makes one, which :meth:`close` destroys.
    - :meth:`run`: a host input takes the runner's host path (which waits for its work). A
      device input is checked against the network-input contract, :attr:`stream` and the
      stream its CUDA Array Interface names are ordered both ways (:class:`ProducerOrder`),
      and it is kept alive until the next run: the work queued on :attr:`stream` may still
      read it when :meth:`run` returns.
    - :meth:`close`: waits for the queued work while the runner holds anything, lets go of
      the last input, of the runner's own (:meth:`_release`), of the ordering event, and of
      the stream if the runner made it; idempotent.
    """

    #: The CUDA layer: this module, or a stand-in with the same names (tests).
    _cuda: Any = None
    cuda_stream: Stream
    _own_stream = False
    _after_producer: Any = None  # the ProducerOrder of device inputs and the runner's stream
    _last_input: Any = None  # read by the queued work until the next run

    def _take_stream(self, stream: Stream | int | None, cuda: Any) -> None:
        """Runs on ``stream`` (:func:`as_stream`; made here when None: :meth:`close` destroys
        it) through the CUDA layer ``cuda``."""
        self._cuda = cuda
        self.cuda_stream = as_stream(stream, cuda.Stream)
        self._own_stream = stream is None  # made here: close() destroys it
        self._after_producer = cuda.ProducerOrder(self.cuda_stream)
        self._last_input = None

    @property
    def stream(self) -> int:
        """The ``cudaStream_t`` the runner runs on, as an int."""
        return self.cuda_stream.handle

    def run(self, net_input: Any) -> Any:
        """Runs the network on one (N, 3, h, w) float32 input (N > 1 only where
        ``capabilities.batch``).

        Args:
            net_input: a host numpy array (the host path: numpy scores, the work waited
                for), or device memory (a :class:`DeviceArray` or any object with
                ``__cuda_array_interface__``, read in place; :attr:`stream` waits for the
                stream the interface names, and that stream for the runner's reads after,
                else the caller orders its producer before :attr:`stream` and
                ``record_stream``-s a torch tensor on it: keeping it alive until the next run
                does not stop torch's allocator reusing it).

        Returns:
            For a host input, the score map as a numpy array. For a device input, a
            :class:`DeviceArray` made on :attr:`stream`: valid until the next :meth:`run`
            (consume it on the same stream).

        Raises:
            NetworkInputError: another input, host or device.
            TinyFacesError: the runner is closed (checked before a device input is read or
                ordered), or its network refused the run.
            ManifestError: a shape the runner does not take (outside its TensorRT profiles),
                or a network that returned another shape.
            NetworkRunError: ONNX Runtime failed on the input (its exception is the cause);
                the runner can run again.
        """
        if isinstance(net_input, np.ndarray) or cuda_array_interface(net_input) is None:
            scores = self._run_host(net_input)
            self._last_input = None  # that run waited for its work: nothing reads the last input
            return scores
        if not self._is_open():
            self._require_open(None)  # raises: a closed runner leaves its stream and event alone
        x = self._cuda.as_device_array(net_input)
        check_network_shape(x.shape, str(x.dtype), self.capabilities.batch)
        self._check_device_input(x)
        self._after_producer.after(x)  # the stream its interface names, if any
        try:
            return self._run_device(x, net_input)
        finally:  # what was queued reads the input until its producer's stream waits for it
            self._after_producer.release(x)
            self._last_input = net_input

    def synchronize(self) -> None:
        """Waits for the runner's stream (used by the pipeline's per-stage timing)."""
        self.cuda_stream.synchronize()

    def close(self) -> None:
        """Waits for the work queued on :attr:`stream` while the runner holds anything, drops
        the last input, releases the runner's own memory (:meth:`_release`) and the ordering
        event, and destroys the stream if the runner made it (idempotent). A closed runner
        may not run again."""
        if self._is_open():
            self.cuda_stream.synchronize()
        self._last_input = None
        self._release()
        if self._after_producer is not None:
            self._after_producer.close()
        if self._own_stream:
            self.cuda_stream.close()

    # -- what each runner implements -----------------------------------------------------------

    def _is_open(self) -> bool:
        """Whether the runner holds what it runs with and its queued work reads (a session,
        device buffers): False once closed."""
        raise NotImplementedError

    def _release(self) -> None:
        """Lets go of what :meth:`_is_open` reports (the stream's work has finished)."""
        raise NotImplementedError

    def _run_host(self, net_input: Any) -> Any:
        """The host path: checks ``net_input``, runs, waits, returns numpy scores."""
        raise NotImplementedError

    def _check_device_input(self, x: DeviceArray) -> None:
        """Refuses a checked device input the runner cannot take, before it is ordered."""

    def _run_device(self, x: DeviceArray, net_input: Any) -> Any:
        """Queues the network on :attr:`stream` over ``x`` (``net_input`` wrapped, already
        ordered after its producer) and returns the device scores."""
        raise NotImplementedError


def _stream_handle(stream: Stream | int | None) -> int:
    if stream is None:
        return 0
    return stream.handle if isinstance(stream, Stream) else int(stream)


def _host_view(array: np.ndarray, writable: bool) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TinyFacesError(f"expected a numpy array, got {type(array).__name__}")
    if not array.flags.c_contiguous:
        raise TinyFacesError("host array must be C-contiguous")
    if writable and not array.flags.writeable:
        raise TinyFacesError("destination array is read-only")
    return array


class DeviceBuffer:
    """``nbytes`` of device memory (``cudaMalloc``); freed by :meth:`free` or garbage collection.

    Copies are queued on ``stream`` (the legacy default stream when None); a download into
    pageable numpy memory returns once the data is there, otherwise synchronise the stream.
    """

    def __init__(self, nbytes: int) -> None:
        if int(nbytes) < 1:
            raise TinyFacesError(f"device buffer size must be >= 1 byte, got {nbytes}")
        self._rt = runtime()
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(self._rt.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def _check_size(self, nbytes: int, what: str) -> None:
        if self.ptr == 0:
            raise TinyFacesError(f"{what}: the device buffer has been freed")
        if nbytes > self.nbytes:
            raise TinyFacesError(f"{what}: {nbytes} bytes do not fit a {self.nbytes}-byte device buffer")

    def upload(self, array: np.ndarray, stream: Stream | int | None = None,
               offset: int = 0) -> None:
        """Copies a C-contiguous host array into the buffer, ``offset`` bytes from its start."""
        host = _host_view(array, writable=False)
        if int(offset) < 0:
            raise TinyFacesError(f"upload: offset {int(offset)} is negative")
        self.upload_from(host.ctypes.data, host.nbytes, stream, offset)

    def upload_from(self, host_ptr: int, nbytes: int, stream: Stream | int | None = None,
                    offset: int = 0) -> None:
        """Copies ``nbytes`` from the host address ``host_ptr`` (page-locked memory, for a
        copy that is asynchronous) into the buffer, ``offset`` bytes from its start."""
        offset, nbytes = int(offset), int(nbytes)
        if offset < 0 or nbytes < 0:
            raise TinyFacesError(f"upload: offset {offset} and size {nbytes} must be >= 0")
        self._check_size(offset + nbytes, "upload")
        check(self._rt.cudaMemcpyAsync(self.ptr + offset, int(host_ptr), nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                       _stream_handle(stream)), "cudaMemcpyAsync (host to device)")

    def download(self, array: np.ndarray, stream: Stream | int | None = None,
                 offset: int = 0) -> np.ndarray:
        """Copies the buffer's bytes from ``offset`` on into a C-contiguous host array;
        returns ``array``."""
        host = _host_view(array, writable=True)
        offset = int(offset)
        if offset < 0:
            raise TinyFacesError(f"download: offset {offset} is negative")
        self._check_size(offset + host.nbytes, "download")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self._rt.cudaMemcpyAsync(host.ctypes.data, self.ptr + offset, host.nbytes, kind,
                                       _stream_handle(stream)), "cudaMemcpyAsync (device to host)")
        return array

    def copy_from_device(self, ptr: int, nbytes: int, stream: Stream | int | None = None) -> None:
        """Copies ``nbytes`` of device memory at ``ptr`` to the start of the buffer."""
        self._check_size(int(nbytes), "device copy")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        check(self._rt.cudaMemcpyAsync(self.ptr, int(ptr), int(nbytes), kind,
                                       _stream_handle(stream)), "cudaMemcpyAsync (device to device)")

    def free(self) -> None:
        """Releases the memory (idempotent)."""
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(self._rt.cudaFree(ptr), "cudaFree")

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown, or the context is already gone
            pass

    def __enter__(self) -> "DeviceBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"DeviceBuffer(0x{self.ptr:x}, {self.nbytes} bytes)"


class PinnedBuffer:
    """``nbytes`` of page-locked host memory (``cudaMallocHost``) for truly async copies."""

    def __init__(self, nbytes: int) -> None:
        if int(nbytes) < 1:
            raise TinyFacesError(f"pinned buffer size must be >= 1 byte, got {nbytes}")
        self._rt = runtime()
        self.nbytes = int(nbytes)
        self.ptr: int = int(check(self._rt.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes} bytes)"))

    def array(self, shape: tuple[int, ...] | int, dtype: Any = np.uint8) -> np.ndarray:
        """A numpy view of the start of the buffer (valid until :meth:`free`)."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.ptr == 0 or nbytes > self.nbytes:
            raise TinyFacesError(f"a {shape} {dtype} view does not fit this {self.nbytes}-byte pinned buffer")
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)

    def free(self) -> None:
        """Releases the memory (idempotent); views from :meth:`array` become invalid."""
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"PinnedBuffer(0x{self.ptr:x}, {self.nbytes} bytes)"


def page_locked_array(shape: tuple[int, ...] | int, dtype: Any = np.uint8) -> np.ndarray:
    """A new, uninitialised numpy array in page-locked host memory of its own
    (``cudaMallocHost``), freed once the array and every view of it are gone.

    A GPU upload reads it without a staging copy (:class:`~.cuda_stages.CudaPreprocessor`
    checks :func:`is_page_locked`). Making one takes far longer than a copy: keep it and
    refill it (a frame buffer), rather than one per image.

    Raises:
        TinyFacesError: an empty shape (0 bytes).
        CudaError: page-locked memory cannot be had.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    shape = tuple(operator.index(d) for d in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < 1 or min(shape, default=1) < 0:
        raise TinyFacesError(f"a page-locked array needs at least one element, got shape {shape}")
    buffer = PinnedBuffer(nbytes)
    raw = (ctypes.c_uint8 * nbytes).from_address(buffer.ptr)
    raw._owner = buffer  # the array's base chain ends here: the last view gone frees the memory
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def is_page_locked(ptr: int, nbytes: int) -> bool:
    """Whether the ``nbytes`` of host memory at ``ptr`` are page-locked memory CUDA knows
    (``cudaMallocHost`` / ``cudaHostAlloc`` / ``cudaHostRegister``: :func:`page_locked_array`,
    torch's ``pin_memory()``, CuPy's pinned pools), judged by their first and last byte (an
    array lies in one allocation). False for pageable memory, device memory, ``nbytes`` < 1,
    and wherever the runtime cannot say."""
    if int(nbytes) < 1 or not int(ptr):
        return False
    rt = runtime()
    host = rt.cudaMemoryType.cudaMemoryTypeHost
    for address in (int(ptr), int(ptr) + int(nbytes) - 1):
        result = rt.cudaPointerGetAttributes(address)
        if int(result[0]) != 0:
            rt.cudaGetLastError()  # older runtimes answer an error for pageable memory; not kept
            return False
        if getattr(result[1], "type", None) != host:
            return False
    return True


class DeviceArray:
    """A typed, C-contiguous view of device memory (what the CUDA stages hand around).

    Exposes ``__cuda_array_interface__`` (CuPy / torch / Numba can wrap it without a copy),
    version 3 with the producing ``stream`` where it is known, so that a consumer following
    the interface waits for it (CuPy and Numba synchronise it on the host, unless
    ``CUPY_CUDA_ARRAY_INTERFACE_SYNC=0`` / ``NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0``; torch reads
    only the pointer). Nothing downloads silently:
    ``np.asarray(device_array)`` is a TypeError; :meth:`download` is the explicit copy.

    Args:
        ptr: device address.
        shape, dtype: the array's layout (C order).
        owner: keeps the memory alive (e.g. the :class:`DeviceBuffer`).
        stream: the stream whose work produces the data; downloads synchronise it. Without
            one (memory wrapped by :func:`as_device_array` whose interface names no stream:
            its producer is unknown) a download synchronises the whole device first.
    """

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: Any = np.float32,
                 owner: Any = None, stream: Stream | None = None) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.owner = owner
        self.stream = stream

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        interface = {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                     "strides": None, "version": 3}
        if self.stream is not None:  # cuda-python's 0 is the legacy default stream: 1 here
            interface["stream"] = _stream_handle(self.stream) or 1
        return interface

    def download(self, out: np.ndarray | None = None) -> np.ndarray:
        """Copies the array to the host (after the producing stream's work) and returns it."""
        out = np.empty(self.shape, self.dtype) if out is None else out
        if out.shape != self.shape or out.dtype != self.dtype:
            raise TinyFacesError(f"download target {out.shape} {out.dtype} does not match "
                                 f"{self.shape} {self.dtype}")
        rt = runtime()
        if self.stream is not None:
            self.stream.synchronize()
        else:  # cudaMemcpy's legacy stream does not wait for non-blocking streams (torch's)
            check(rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        host = _host_view(out, writable=True)
        check(rt.cudaMemcpy(host.ctypes.data, self.ptr, self.nbytes,
                            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)")
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError("a DeviceArray lives on the GPU and is never copied to the host "
                        "implicitly; call .download() where a host copy is intended")

    def __repr__(self) -> str:
        return f"DeviceArray(0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype})"


def device_pointer(obj: Any) -> int:
    """The device address of ``obj``: an int, a DeviceBuffer/DeviceArray, or any object with
    ``__cuda_array_interface__`` (CuPy array, CUDA torch tensor)."""
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (DeviceBuffer, DeviceArray)):
        return obj.ptr
    interface = cuda_array_interface(obj)
    if interface is not None:
        return int(interface["data"][0])
    raise TinyFacesError(f"cannot take a device pointer from {type(obj).__name__}; pass an int, "
                         f"a DeviceBuffer/DeviceArray or an object with __cuda_array_interface__")


def _c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether ``strides`` are C order for ``shape`` (dimensions of size 1 may have any stride)."""
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim > 1 and int(stride) != expected:
            return False
        expected *= dim
    return True


def as_device_array(obj: Any, shape: tuple[int, ...] | None = None,
                    dtype: Any = np.float32) -> DeviceArray:
    """Wraps device memory as a :class:`DeviceArray` (no copy).

    Objects with ``__cuda_array_interface__`` bring their shape and dtype and must be
    C-contiguous; the stream it names (version 3,
    :func:`~tinyfaces_trt.core.runner.interface_stream`) becomes the array's
    :attr:`~DeviceArray.stream` (wrapped, not owned). A raw int pointer
    (or DeviceBuffer) needs ``shape`` (``dtype`` defaults to float32).
    """
    if isinstance(obj, DeviceArray):
        return obj
    interface = cuda_array_interface(obj)
    if interface is not None:
        arr_shape = tuple(int(d) for d in interface["shape"])
        arr_dtype = np.dtype(interface["typestr"])
        strides = interface.get("strides")
        if strides is not None and not _c_contiguous(arr_shape, tuple(strides), arr_dtype.itemsize):
            raise TinyFacesError(f"device array must be C-contiguous, got strides {tuple(strides)}")
        producer = interface_stream(interface)
        return DeviceArray(int(interface["data"][0]), arr_shape, arr_dtype, owner=obj,
                           stream=None if producer is None else Stream(producer))
    if shape is None:
        raise TinyFacesError(f"a raw device pointer ({type(obj).__name__}) needs an explicit shape")
    return DeviceArray(device_pointer(obj), shape, dtype, owner=obj)
