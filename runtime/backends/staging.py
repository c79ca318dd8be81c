"""Host images into page-locked memory and up to the device, in chunks.

A 1080p RGB image is 6.2 MB. Copied into page-locked (pinned) memory in one piece and then
uploaded, the GPU waits for the whole host copy and then for the whole transfer. Here the
images are copied in chunks of about :data:`CHUNK_BYTES`, by the caller's thread and a few
helper threads (numpy releases the GIL while it copies), and each chunk's upload is queued as
soon as that chunk is in place: the transfer runs while the rest is still being copied.

    stage_and_upload(images, staging, upload, threads=staging_threads())

``upload(start, end)`` is always called from the caller's thread (the CUDA device current in
a thread is that thread's own), once per chunk, and returns after queueing the copy.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from tinyfaces_trt.core.threads import usable_cores

#: Bytes per chunk (the last one may be shorter); images below it go in one piece.
CHUNK_BYTES = 1 << 20
#: At most this many chunks: a larger upload gets larger chunks.
MAX_CHUNKS = 16
#: Threads that copy (the caller's included), at most.
MAX_THREADS = 4


def staging_threads() -> int:
    """The default number of copying threads: :data:`MAX_THREADS`, or fewer usable cores."""
    return min(MAX_THREADS, usable_cores())


def chunk_ranges(nbytes: int, chunk_bytes: int | None = None,
                 max_chunks: int | None = None) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges covering ``nbytes`` in order: chunks of ``chunk_bytes``
    (default :data:`CHUNK_BYTES`), larger where more than ``max_chunks`` (default
    :data:`MAX_CHUNKS`) would be needed."""
    if nbytes <= 0:
        return []
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    max_chunks = MAX_CHUNKS if max_chunks is None else max_chunks
    count = min(max(1, max_chunks), math.ceil(nbytes / max(1, chunk_bytes)))
    size = math.ceil(nbytes / count)
    return [(start, min(start + size, nbytes)) for start in range(0, nbytes, size)]


def _copy_range(staging: np.ndarray, sources: Sequence[tuple[int, np.ndarray]], start: int,
                end: int) -> None:
    """Copies bytes ``[start, end)`` of the images laid back to back into ``staging``."""
    for offset, flat in sources:
        lo, hi = max(start, offset), min(end, offset + flat.size)
        if lo < hi:
            np.copyto(staging[lo:hi], flat[lo - offset:hi - offset])


class _Pool:
    """The helper threads, made at first use and again in a forked child (a fork keeps no
    thread of its parent)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._workers = 0
        self._pid = 0

    def get(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._pid != os.getpid() or self._workers < workers:
                if self._executor is not None and self._pid == os.getpid():
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(workers, thread_name_prefix="tinyfaces-staging")
                self._workers, self._pid = workers, os.getpid()
            return self._executor


_POOL = _Pool()


def stage_and_upload(images: Sequence[np.ndarray], staging: np.ndarray,
                     upload: Callable[[int, int], None], threads: int = 1,
                     chunk_bytes: int | None = None) -> None:
    """Copies C-contiguous ``images`` back to back into the flat uint8 ``staging`` array and
    calls ``upload(start, end)`` for each copied byte range (every byte once, ranges in no
    particular order after the first).

    Chunks: :func:`chunk_ranges` (``chunk_bytes``). With ``threads`` > 1, chunks after the
    first are copied by ``threads`` - 1 helper threads while this thread copies and queues the
    first. Returns, or raises what a copy or an upload raised,
    only when no helper is writing into ``staging`` any more.
    """
    sources, offset = [], 0
    for image in images:
        flat = image.reshape(-1).view(np.uint8)
        sources.append((offset, flat))
        offset += flat.size
    ranges = chunk_ranges(offset, chunk_bytes)
    if not ranges:
        return
    futures: list[Future[None]] = []
    if threads > 1 and len(ranges) > 1:
        pool = _POOL.get(min(threads, len(ranges)) - 1)
        futures = [pool.submit(_copy_range, staging, sources, *r) for r in ranges[1:]]
    try:
        _copy_range(staging, sources, *ranges[0])
        upload(*ranges[0])
        for index, (start, end) in enumerate(ranges[1:]):
            if futures:
                futures[index].result()
            else:
                _copy_range(staging, sources, start, end)
            upload(start, end)
    finally:
        for future in futures:
            future.cancel()
        wait(futures)  # nothing writes into staging after this returns
