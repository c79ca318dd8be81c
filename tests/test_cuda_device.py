"""runtime.backends.cuda_device against the real cuda-python, without a GPU.

Two ways in, both with the installed ``cuda.bindings.runtime``:
- as it is, on a machine with no driver: every call must fail with a clear CudaError (or
  BackendUnavailableError), never a TypeError or AttributeError;
- through tests/host_cudart.py, which converts every call's arguments with the real module
  and then carries it out on host memory: buffers, copies, streams and events run for real,
  and the double's own checks are tested here too.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import host_cudart
from helpers_cai import ForeignArray
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError, NetworkInputError, TinyFacesError
from tinyfaces_trt.core.threads import no_cycle_collection
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends.cuda_device import (CudaError, DeviceArray, DeviceBuffer, Event,
                                                        PinnedBuffer, ProducerOrder, Stream,
                                                        StreamOrder)

_MISSING = host_cudart.missing()
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)


@pytest.fixture
def real(monkeypatch):
    """The installed cuda-python as the product loads it, on a machine without a GPU."""
    monkeypatch.setattr(cuda_device, "_runtime_module", None)
    if cuda_device.gpu_available():
        pytest.skip("a GPU is visible: these are the no-driver answers")
    return cuda_device.runtime()


@pytest.fixture
def host(monkeypatch):
    h = host_cudart.install(monkeypatch)
    yield h
    h.release_all()


# --- the real module without a driver ------------------------------------------------------

def test_without_a_driver_every_constructor_fails_with_the_cuda_message(real):
    assert cuda_device.runtime().__name__ == "cuda.bindings.runtime"
    assert cuda_device.gpu_available() is False
    driver = r"CUDA driver version is insufficient for CUDA runtime version|no CUDA-capable device"
    for make, call in [(Stream, "cudaStreamCreate"), (Event, "cudaEventCreateWithFlags"),
                       (lambda: DeviceBuffer(64), r"cudaMalloc\(64 bytes\)"),
                       (lambda: PinnedBuffer(64), r"cudaMallocHost\(64 bytes\)"),
                       (lambda: cuda_device.device_name(0), "cudaGetDeviceProperties")]:
        with pytest.raises(CudaError, match=rf"^{call} failed: ({driver}) \(cudaError") as info:
            make()
        assert info.value.code in (35, 100, 34)


def test_without_a_driver_wrapped_handles_fail_at_their_first_use(real):
    """Objects made around handles from elsewhere reach the driver only when used."""
    stream = Stream(handle=0x1234)
    assert stream.handle == 0x1234 and repr(stream) == "Stream(0x1234)"
    with pytest.raises(CudaError, match="^cudaStreamSynchronize failed"):
        stream.synchronize()
    stream.close()  # not owned: nothing to destroy
    array = DeviceArray(0x1000, (2, 3), np.float32)
    with pytest.raises(CudaError, match=r"^cudaDeviceSynchronize failed"):
        array.download()


def test_without_a_driver_the_cuda_stages_say_no_gpu_is_visible(real):
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor, CudaPreprocessor

    for stage in (CudaPreprocessor, CudaPostprocessor):
        with pytest.raises(BackendUnavailableError, match="need a CUDA GPU and driver; none is visible"):
            stage(DetectorConfig())


def test_error_strings_come_from_the_runtime(real):
    assert cuda_device.error_string(2) == "out of memory"
    assert cuda_device.error_string(987654) == "CUDA error 987654"
    with pytest.raises(CudaError, match=r"^cudaFoo failed: invalid argument \(cudaErrorInvalidValue\)$"):
        cuda_device.check((real.cudaError_t.cudaErrorInvalidValue, None), "cudaFoo")
    assert cuda_device.check((real.cudaError_t.cudaSuccess, 7, 8)) == (7, 8)
    assert cuda_device.check(real.cudaError_t.cudaSuccess) is None


# --- over host memory ----------------------------------------------------------------------

def test_buffers_copy_through_streams(host):
    assert cuda_device.gpu_available() and cuda_device.device_name(0).startswith("host memory")
    stream = Stream()
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with DeviceBuffer(x.nbytes) as buf:
        buf.upload(x, stream)
        got = buf.download(np.empty_like(x), stream)
        stream.synchronize()
        np.testing.assert_array_equal(got, x)
        array = cuda_device.as_device_array(buf, x.shape)
        assert array.__cuda_array_interface__["data"] == (buf.ptr, False)
        np.testing.assert_array_equal(DeviceArray(buf.ptr, x.shape, stream=stream).download(), x)
        with pytest.raises(TinyFacesError, match="do not fit a 96-byte device buffer"):
            buf.upload(np.zeros(25, np.float32))
        buf.upload(np.full(2, -1.0, np.float32), stream, offset=8)  # elements 2 and 3
        got = buf.download(np.empty_like(x), stream)
        stream.synchronize()
        np.testing.assert_array_equal(got.reshape(-1)[:5], [0, 1, -1, -1, 4])
        with pytest.raises(TinyFacesError, match="upload: 100 bytes do not fit"):
            buf.upload(np.zeros(2, np.float32), offset=92)
        with pytest.raises(TinyFacesError, match="upload: offset -4 is negative"):
            buf.upload(np.zeros(2, np.float32), offset=-4)
        pinned = PinnedBuffer(8)
        pinned.array(2, np.float32)[:] = (-1.0, -1.0)
        buf.upload_from(pinned.ptr, 8, stream, offset=8)  # elements 2 and 3, from raw memory
        with pytest.raises(TinyFacesError, match="upload: 100 bytes do not fit"):
            buf.upload_from(pinned.ptr, 8, offset=92)
        with pytest.raises(TinyFacesError, match="offset -8 and size 8 must be >= 0"):
            buf.upload_from(pinned.ptr, 8, offset=-8)
        stream.synchronize()
        pinned.free()
        tail = buf.download(np.empty(3, np.float32), stream, offset=8)  # elements 2, 3, 4
        stream.synchronize()
        np.testing.assert_array_equal(tail, [-1, -1, 4])
        with pytest.raises(TinyFacesError, match="download: 100 bytes do not fit"):
            buf.download(np.empty(2, np.float32), offset=92)
        with pytest.raises(TinyFacesError, match="download: offset -1 is negative"):
            buf.download(np.empty(2, np.float32), offset=-1)
        buf.upload(x, stream)
        with DeviceBuffer(x.nbytes) as copy:  # device to device, from an unaligned address
            copy.copy_from_device(buf.ptr + 4, x.nbytes - 4, stream)
            got = copy.download(np.empty(23, np.float32), stream)
            stream.synchronize()
            np.testing.assert_array_equal(got, x.reshape(-1)[1:])
            with pytest.raises(TinyFacesError, match="device copy: 100 bytes do not fit"):
                copy.copy_from_device(buf.ptr, 100, stream)
        read_only = np.zeros(4, np.float32)
        read_only.setflags(write=False)
        with pytest.raises(TinyFacesError, match="destination array is read-only"):
            buf.download(read_only)
    with pytest.raises(TinyFacesError, match="upload: the device buffer has been freed"):
        buf.upload(x)
    pinned = PinnedBuffer(64)
    view = pinned.array((4, 4), np.float32)
    view[:] = 1.5
    np.testing.assert_array_equal(pinned.array(16, np.float32), np.full(16, 1.5, np.float32))
    with pytest.raises(TinyFacesError, match="does not fit this 64-byte pinned buffer"):
        pinned.array(17, np.float32)
    pinned.free()
    stream.close()
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


def test_a_page_locked_array_is_its_own_allocation_freed_with_its_last_view(host):
    """page_locked_array: an array over cudaMallocHost memory of its own, every byte of it
    (and of any view) page-locked; freed once no view is left, not before."""
    frame = cuda_device.page_locked_array((3, 4, 5))
    assert frame.shape == (3, 4, 5) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert frame.flags.writeable
    ptr = frame.ctypes.data
    assert host.pinned == {ptr: 60}
    assert cuda_device.is_page_locked(ptr, 60) and cuda_device.is_page_locked(ptr + 20, 20)
    row = frame[2]  # a view keeps the memory
    del frame
    gc.collect()
    assert host.pinned == {ptr: 60} and host.calls["cudaFreeHost"] == 0
    row[:] = 7
    assert int(row.sum()) == 7 * 20
    del row
    gc.collect()
    assert host.pinned == {} and host.calls["cudaFreeHost"] == 1
    floats = cuda_device.page_locked_array(np.int64(6), np.float32)
    assert floats.shape == (6,) and floats.dtype == np.float32
    assert host.pinned[floats.ctypes.data] == 24
    for empty in [(0, 4), (2, -1, -1), 0]:
        with pytest.raises(TinyFacesError, match="a page-locked array needs at least one element"):
            cuda_device.page_locked_array(empty)


def test_page_locked_means_every_byte_in_page_locked_memory(host):
    """is_page_locked: True inside a pinned allocation, for its first and its last byte;
    False for pageable numpy memory, device memory, a range running past the allocation's end,
    no bytes or a null pointer."""
    pinned = PinnedBuffer(64)
    pageable = np.zeros(64, np.uint8)
    device = DeviceBuffer(64)
    assert cuda_device.is_page_locked(pinned.ptr, 64)
    assert cuda_device.is_page_locked(pinned.ptr + 63, 1)
    assert not cuda_device.is_page_locked(pinned.ptr + 32, 33)  # one byte past the end
    asked = host.calls["cudaPointerGetAttributes"]
    assert not cuda_device.is_page_locked(pageable.ctypes.data, 64)
    assert host.calls["cudaPointerGetAttributes"] == asked + 1  # pageable: the first byte says
    assert not cuda_device.is_page_locked(device.ptr, 64)
    assert not cuda_device.is_page_locked(pinned.ptr, 0)
    assert not cuda_device.is_page_locked(0, 64)
    pinned.free()
    device.free()
    assert not cuda_device.is_page_locked(pinned.ptr, 64)


def test_page_locked_is_false_where_the_runtime_answers_an_error(real):
    """No driver (or an older runtime refusing pageable memory): an error answer is "no"."""
    assert not cuda_device.is_page_locked(np.zeros(8, np.uint8).ctypes.data, 8)


def test_a_download_waits_for_the_producing_stream_first(host):
    stream = Stream()
    buf = DeviceBuffer(16)
    buf.upload(np.ones(4, np.float32), stream)
    del host.log[:]
    DeviceArray(buf.ptr, (4,), owner=buf, stream=stream).download()
    assert host.log == [("cudaStreamSynchronize", stream.handle)]
    assert host.calls["cudaMemcpy"] == 1


def test_a_download_of_wrapped_memory_waits_for_the_whole_device_first(host):
    """Memory from elsewhere (a torch tensor, a CuPy array) has no known producing stream,
    and the synchronous copy's legacy stream does not wait for non-blocking streams."""
    buf = DeviceBuffer(16)
    buf.upload(np.arange(4, dtype=np.float32))
    del host.log[:]
    got = cuda_device.as_device_array(buf, (4,)).download()
    assert host.log == [("cudaDeviceSynchronize", None)]
    assert host.calls["cudaMemcpy"] >= 1
    np.testing.assert_array_equal(got, np.arange(4, dtype=np.float32))
    buf.free()


def test_device_arrays_name_their_stream_in_the_cuda_array_interface(host):
    """Version 3: a consumer (CuPy, Numba) waits for the stream an array names; and an array
    from elsewhere brings its stream, which a download then waits for (not the device)."""
    stream, buf = Stream(), DeviceBuffer(16)
    interface = DeviceArray(buf.ptr, (4,), owner=buf, stream=stream).__cuda_array_interface__
    assert interface["version"] == 3 and interface["stream"] == stream.handle
    assert "stream" not in DeviceArray(buf.ptr, (4,), owner=buf).__cuda_array_interface__
    legacy = DeviceArray(buf.ptr, (4,), owner=buf, stream=Stream(0)).__cuda_array_interface__
    assert legacy["stream"] == 1  # the interface's legacy default stream (0 is disallowed)
    buf.upload(np.arange(4, dtype=np.float32), stream)
    wrapped = cuda_device.as_device_array(ForeignArray(buf.ptr, (4,), stream.handle))
    assert wrapped.stream.handle == stream.handle
    del host.log[:]
    np.testing.assert_array_equal(wrapped.download(), np.arange(4, dtype=np.float32))
    assert host.log == [("cudaStreamSynchronize", stream.handle)]
    numpy_int = cuda_device.as_device_array(ForeignArray(buf.ptr, (4,), np.int64(stream.handle)))
    assert numpy_int.stream.handle == stream.handle
    assert cuda_device.as_device_array(ForeignArray(buf.ptr, (4,), None)).stream is None
    assert cuda_device.as_device_array(ForeignArray(buf.ptr, (4,))).stream is None
    for bad, why in ((0, "names stream 0, which the interface disallows"),
                     (1.0, "names stream 1.0; the interface takes None or an integer")):
        with pytest.raises(NetworkInputError, match=why):
            cuda_device.as_device_array(ForeignArray(buf.ptr, (4,), bad))


def test_producer_order_waits_on_the_gpu_for_the_stream_each_input_names_and_back(host):
    producer, consumer, buf = Stream(), Stream(), DeviceBuffer(16)
    order = ProducerOrder(consumer)
    del host.log[:]
    order.after(DeviceArray(buf.ptr, (4,), owner=buf))  # names none: the caller's to order
    order.after(DeviceArray(buf.ptr, (4,), owner=buf, stream=Stream(consumer.handle)))
    assert host.log == [] and host.calls["cudaEventCreateWithFlags"] == 0
    order.after(DeviceArray(buf.ptr, (4,), owner=buf, stream=producer))
    order.after(cuda_device.as_device_array(ForeignArray(buf.ptr, (4,), 2)))  # per-thread default
    assert host.log == [("cudaEventRecord", producer.handle), ("cudaStreamWaitEvent", consumer.handle),
                        ("cudaEventRecord", 2), ("cudaStreamWaitEvent", consumer.handle)]
    del host.log[:]
    order.release(DeviceArray(buf.ptr, (4,), owner=buf, stream=producer))  # after our reads
    order.release(DeviceArray(buf.ptr, (4,), owner=buf))
    assert host.log == [("cudaEventRecord", consumer.handle), ("cudaStreamWaitEvent", producer.handle)]
    assert host.calls["cudaEventCreateWithFlags"] == 1  # one event, reused
    assert "cudaStreamSynchronize" not in host.calls  # the host never waits
    order.close()
    assert host.live()["events"] == 0


def test_stream_order_between_two_streams_is_an_event_record_and_wait(host):
    producer, consumer = Stream(), Stream()
    order = StreamOrder(producer, consumer)
    del host.log[:]
    order.after()
    assert host.log == [("cudaEventRecord", producer.handle), ("cudaStreamWaitEvent", consumer.handle)]
    order.close()
    assert host.live()["events"] == 0
    StreamOrder(producer, producer.handle).after()  # one stream: nothing to order
    assert host.calls["cudaEventCreateWithFlags"] == 1


def test_destroyed_streams_and_events_are_invalid_handles(host):
    stream, event = Stream(), Event()
    handle = stream.handle
    stream.close()
    event.record(0)
    event.close()
    event.close()  # idempotent
    with pytest.raises(CudaError, match=r"cudaStreamSynchronize failed: .*cudaErrorInvalidResourceHandle"):
        Stream(handle=handle).synchronize()
    with pytest.raises(CudaError, match="cudaEventRecord failed"):
        cuda_device.check(host.cudaEventRecord(0x999, 0), "cudaEventRecord")


def test_a_closed_stream_or_event_refuses_use_instead_of_reaching_cuda_as_null(host):
    """A closed stream's None would reach CUDA as the legacy default stream (a synchronize of
    the wrong stream, silently); a closed event's as a NULL event."""
    stream, event = Stream(), Event()
    stream.close()
    event.close()
    before = dict(host.calls)
    with pytest.raises(TinyFacesError, match="this CUDA stream is closed"):
        stream.synchronize()
    for use in (lambda: event.record(0), lambda: event.make_wait(0), event.synchronize):
        with pytest.raises(TinyFacesError, match="this CUDA event is closed"):
            use()
    assert host.calls == before  # nothing reached the runtime


def test_captured_work_needs_a_runtime_that_captures_and_runs_nothing_without_one(host):
    stream, ran = Stream(non_blocking=True), []
    assert stream.handle in host.non_blocking and host.calls["cudaStreamCreateWithFlags"] == 1
    with pytest.raises(CudaError, match=r"^cudaStreamBeginCapture failed: .*"
                                        r"\(cudaErrorStreamCaptureUnsupported\)"):
        cuda_device.CapturedWork(stream, ran.append)
    assert ran == [] and host.log[-1] == ("cudaStreamBeginCapture", stream.handle)
    assert gc.isenabled()
    stream.close()


def _capturing(host, monkeypatch, fail: str = ""):
    """host_cudart with stream capture recorded (calls, in order) and one call failing."""
    rt, calls = host._real, []

    def answer(name, *values):
        def call(*args):
            calls.append((name, *args))
            if name == fail:
                return (rt.cudaError_t.cudaErrorInvalidValue, *([None] * len(values)))
            return (rt.cudaError_t.cudaSuccess, *values)
        monkeypatch.setattr(host, name, call, raising=False)

    answer("cudaStreamBeginCapture")
    answer("cudaStreamEndCapture", "graph")
    answer("cudaGraphInstantiate", "exec")
    for name in ("cudaGraphDestroy", "cudaGraphLaunch", "cudaGraphExecDestroy"):
        answer(name)
    return calls


def test_captured_work_captures_one_call_thread_locally_and_replays_it(host, monkeypatch):
    """Begin (thread-local mode), the call's work queued on the capture stream with Python's
    cyclic collector off, end, instantiate, the graph itself dropped; each launch one
    cudaGraphLaunch on the given stream; close() destroys it once, and a closed one refuses
    to launch."""
    calls = _capturing(host, monkeypatch)
    stream, other = Stream(non_blocking=True), Stream()

    def enqueue(on):
        assert on is stream and not gc.isenabled()
        calls.append("enqueue")

    work = cuda_device.CapturedWork(stream, enqueue)
    assert gc.isenabled()
    mode = host._real.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    assert [c[0] if isinstance(c, tuple) else c for c in calls] == [
        "cudaStreamBeginCapture", "enqueue", "cudaStreamEndCapture", "cudaGraphInstantiate",
        "cudaGraphDestroy"]
    assert int(calls[0][1]) == stream.handle and calls[0][2] == mode
    assert calls[3][1:] == ("graph", 0) and calls[4][1:] == ("graph",)
    del calls[:]
    work.launch(other)
    work.launch(stream.handle)
    assert calls == [("cudaGraphLaunch", "exec", other.handle),
                     ("cudaGraphLaunch", "exec", stream.handle)]
    work.close()
    work.close()
    assert calls[2:] == [("cudaGraphExecDestroy", "exec")]
    with pytest.raises(TinyFacesError, match="this captured CUDA work is closed"):
        work.launch(stream)
    stream.close()
    other.close()


def test_captured_work_ends_the_capture_when_the_call_or_the_graph_fails(host, monkeypatch):
    """The stream leaves capture mode whatever fails: the call's own error is re-raised with
    its partial graph destroyed, and a graph that cannot be instantiated is destroyed too."""
    calls = _capturing(host, monkeypatch)
    stream = Stream()

    def fails(on):
        raise ValueError("the call's own error")

    with pytest.raises(ValueError, match="the call's own error"):
        cuda_device.CapturedWork(stream, fails)
    assert [c[0] for c in calls] == ["cudaStreamBeginCapture", "cudaStreamEndCapture",
                                     "cudaGraphDestroy"]
    assert gc.isenabled()
    calls = _capturing(host, monkeypatch, fail="cudaGraphInstantiate")
    with pytest.raises(CudaError, match="^cudaGraphInstantiate failed"):
        cuda_device.CapturedWork(stream, lambda on: None)
    assert [c[0] for c in calls] == ["cudaStreamBeginCapture", "cudaStreamEndCapture",
                                     "cudaGraphInstantiate", "cudaGraphDestroy"]
    calls = _capturing(host, monkeypatch, fail="cudaStreamEndCapture")  # an invalidated capture
    with pytest.raises(CudaError, match="^cudaStreamEndCapture failed"):
        cuda_device.CapturedWork(stream, lambda on: None)
    assert [c[0] for c in calls] == ["cudaStreamBeginCapture", "cudaStreamEndCapture"]
    assert gc.isenabled()
    gc.disable()  # a caller's choice is kept
    try:
        with pytest.raises(CudaError, match="^cudaStreamEndCapture failed"):
            cuda_device.CapturedWork(stream, lambda on: None)
        assert not gc.isenabled()
    finally:
        gc.enable()
    stream.close()


def test_captured_work_leaves_the_collector_off_for_a_capture_begun_meanwhile(host, monkeypatch):
    """Another thread's capture (a second detector's NMS, a torch-cuda shape) that began while
    this one captured and outlasts it keeps the collector off: the pause is the process's."""
    _capturing(host, monkeypatch)
    stream, other = Stream(non_blocking=True), no_cycle_collection()

    cuda_device.CapturedWork(stream, lambda on: other.__enter__())
    assert not gc.isenabled()
    other.__exit__(None, None, None)
    assert gc.isenabled()
    stream.close()


def test_the_double_refuses_what_a_gpu_refuses(host):
    """host_cudart's own checks: a copy whose kind does not match where its pointers lie or
    that runs past a device allocation, a double free, and wrong argument types, which the
    real module refuses."""
    buf = DeviceBuffer(16)
    host_array = np.zeros(4, np.float32)
    kinds = host.cudaMemcpyKind
    invalid = host.cudaError_t.cudaErrorInvalidValue
    assert host.cudaMemcpy(host_array.ctypes.data, buf.ptr, 16, kinds.cudaMemcpyHostToDevice)[0] == invalid
    assert host.cudaMemcpy(buf.ptr, host_array.ctypes.data, 16, kinds.cudaMemcpyDeviceToHost)[0] == invalid
    assert host.cudaMemcpy(buf.ptr + 8, host_array.ctypes.data, 16, kinds.cudaMemcpyHostToDevice)[0] == invalid
    host_array[:] = [1, 2, 3, 4]
    success = host.cudaError_t.cudaSuccess
    assert host.cudaMemcpy(buf.ptr, host_array.ctypes.data, 16, kinds.cudaMemcpyDefault)[0] == success
    other = DeviceBuffer(16)
    assert host.cudaMemcpy(other.ptr, buf.ptr + 8, 16, kinds.cudaMemcpyDeviceToDevice)[0] == invalid
    assert host.cudaMemcpy(other.ptr, buf.ptr, 16, kinds.cudaMemcpyDeviceToDevice)[0] == success
    assert host.cudaMemcpy(host_array.ctypes.data, host_array.ctypes.data, 16,
                           kinds.cudaMemcpyDeviceToDevice)[0] == invalid
    np.testing.assert_array_equal(other.download(np.zeros(4, np.float32)), [1, 2, 3, 4])
    event = Event()
    assert host.cudaStreamWaitEvent(0, event._event, 2)[0] == invalid  # no such flag
    assert host.cudaFreeHost(0)[0] == success  # as cudaFree(0): nothing to do
    ptr = buf.ptr
    buf.free()
    assert host.cudaFree(ptr)[0] == invalid
    with pytest.raises(TypeError):
        host.cudaMemcpyAsync("dst", ptr, 16, kinds.cudaMemcpyHostToDevice, 0)
    with pytest.raises(TypeError):
        host.cudaStreamWaitEvent(0, "event", 0)


def test_a_stream_destroyed_late_cannot_hit_a_later_tests_stream(monkeypatch):
    """Streams and events keep the runtime they were made with, and the doubles never reuse
    a handle: an earlier test's stream collected during a later test leaves its streams be."""
    first = host_cudart.install(monkeypatch)
    early = Stream()
    second = host_cudart.install(monkeypatch)
    late = Stream()
    assert early.handle != late.handle
    del early  # destroyed now, through the first runtime
    late.synchronize()
    assert first.live()["streams"] == 0 and second.live()["streams"] == 1
    late.close()
