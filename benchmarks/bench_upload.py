"""Image upload micro-benchmark: the CUDA preprocessor's staging copy into page-locked memory
and the host-to-device transfer, each way :mod:`tinyfaces_trt.runtime.backends.staging` can
do them, side by side (the GPU waits for this before the pyramid's first resize).

Per image size and way, two medians, the ways interleaved round by round:
- ``copy``: the staging copy alone (the uploads not queued);
- ``copy + upload``: the staging copy with each chunk's upload queued as it is copied, until
  the stream has finished the transfer (what a detect waits for before its first resize).
A last way, :data:`PAGE_LOCKED`, has no staging copy: the image already lies in page-locked
memory (``Detector.image_buffer``) and one transfer is queued from it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench_common import one_line, summarize

#: Timed rounds at least (one round is a few milliseconds at 1080p).
MIN_ROUNDS = 20
#: The way without a staging copy: the image filled into page-locked memory by its producer.
PAGE_LOCKED = "page-locked image (Detector.image_buffer): no staging copy"


def ways() -> list[tuple[str, int, int | None]]:
    """(name, threads, chunk bytes; None: one piece) of each way timed, the runtime's first."""
    from tinyfaces_trt.runtime.backends import staging

    threads = staging.staging_threads()
    mib = staging.CHUNK_BYTES / (1 << 20)
    ways = [(f"{mib:g} MiB chunks, {threads} threads (runtime default)", threads, None)]
    if threads > 1:
        ways.append((f"{mib:g} MiB chunks, 1 thread", 1, None))
    ways.append(("one piece, 1 thread (the runtime before 2026-12-04)", 1, 1 << 62))
    return ways


def upload_page_locked(device: Any, frame: np.ndarray, stream: Any) -> None:
    """The :data:`PAGE_LOCKED` way, as ``CudaPreprocessor`` takes it: the image's memory
    found page-locked (two pointer queries), then one transfer from it."""
    from tinyfaces_trt.runtime.backends.cuda_device import is_page_locked

    ptr = frame.ctypes.data
    if not is_page_locked(ptr, frame.nbytes):
        raise RuntimeError(f"{PAGE_LOCKED}: the runtime does not see the image as page-locked")
    device.upload_from(ptr, frame.nbytes, stream)


def run_upload(sizes: list[tuple[int, int]], repeat: int, warmup: int,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Times each way of :func:`ways` per (width, height); ``status`` "skipped" with the
    reason where no GPU (or cuda-python) is at hand, "failed" where the GPU work failed."""
    from tinyfaces_trt.core.errors import BackendUnavailableError
    from tinyfaces_trt.runtime.backends import cuda_device

    try:
        cuda_device.runtime()
        if not cuda_device.gpu_available():
            return {"status": "skipped", "reason": "no CUDA GPU visible"}
    except BackendUnavailableError as exc:
        return {"status": "skipped", "reason": one_line(exc)}
    rounds = max(MIN_ROUNDS, repeat)
    rows = []
    try:
        for width, height in sizes:
            log(f"image upload: {width}x{height}, {len(ways())} ways, {rounds} rounds")
            rows.append(_time_size(width, height, rounds, warmup))
    except Exception as exc:
        return {"status": "failed", "reason": one_line(exc, with_type=True), "rows": rows}
    return {"status": "ok", "rounds": rounds, "warmup": warmup, "rows": rows}


def _time_size(width: int, height: int, rounds: int, warmup: int) -> dict[str, Any]:
    from tinyfaces_trt.runtime.backends import staging
    from tinyfaces_trt.runtime.backends.cuda_device import DeviceBuffer, PinnedBuffer, Stream

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    nbytes = image.nbytes
    timed = ways()
    copy_s: list[list[float]] = [[] for _ in timed]
    both_s: list[list[float]] = [[] for _ in timed]
    direct_s: list[float] = []
    with contextlib.ExitStack() as made:
        stream = Stream()
        made.callback(stream.close)
        pinned_buffer = PinnedBuffer(nbytes)
        made.callback(pinned_buffer.free)
        device = DeviceBuffer(nbytes)
        made.callback(device.free)
        pinned = pinned_buffer.array(nbytes)
        frame_buffer = PinnedBuffer(nbytes)  # Detector.image_buffer's kind of memory
        made.callback(frame_buffer.free)
        frame = frame_buffer.array(nbytes)
        frame[:] = image.reshape(-1)

        def upload(start: int, end: int) -> None:
            device.upload(pinned[start:end], stream, offset=start)

        for k in range(warmup + rounds):
            for i, (_, threads, chunk) in enumerate(timed):
                stream.synchronize()
                start = time.perf_counter()
                staging.stage_and_upload([image], pinned, lambda s, e: None, threads, chunk)
                copied = time.perf_counter()
                staging.stage_and_upload([image], pinned, upload, threads, chunk)
                stream.synchronize()
                done = time.perf_counter()
                if k >= warmup:
                    copy_s[i].append(copied - start)
                    both_s[i].append(done - copied)
            stream.synchronize()
            start = time.perf_counter()
            upload_page_locked(device, frame, stream)
            stream.synchronize()
            if k >= warmup:
                direct_s.append(time.perf_counter() - start)
        blank = np.zeros(nbytes, np.uint8)
        for name, threads, chunk in timed:  # each way's landing, from a cleared page-locked
            stream.synchronize()              # buffer (a chunk left uncopied shows) onto a
            pinned[:] = 0                     # cleared device buffer
            device.upload(blank, stream)
            staging.stage_and_upload([image], pinned, upload, threads, chunk)
            landed = device.download(np.empty(nbytes, np.uint8), stream)
            stream.synchronize()
            if not np.array_equal(landed, image.reshape(-1)):
                raise RuntimeError(f"{name}: the uploaded image differs from the host image")
        device.upload(blank, stream)
        upload_page_locked(device, frame, stream)
        landed = device.download(np.empty(nbytes, np.uint8), stream)
        stream.synchronize()
        if not np.array_equal(landed, image.reshape(-1)):
            raise RuntimeError(f"{PAGE_LOCKED}: the uploaded image differs from the host image")
    return {"image_size": [width, height], "bytes": nbytes,
            "ways": [{"name": name, "threads": threads,
                      "chunks": len(staging.chunk_ranges(nbytes, chunk)),
                      "copy": summarize(copy_s[i]), "copy_upload": summarize(both_s[i])}
                     for i, (name, threads, chunk) in enumerate(timed)]
            + [{"name": PAGE_LOCKED, "threads": 0, "chunks": 1, "copy": None,
                "copy_upload": summarize(direct_s)}]}
