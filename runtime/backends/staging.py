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
from concurrent.futures import Future, ThreadPoolExecutor

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
    """The helper threads (:data:`MAX_THREADS` - 1), made at first use and never shut down
    (their threads start only as work comes); a forked child gets a new one (a fork keeps no
    thread of its parent, and maybe a lock held by one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., None], *args: object) -> Future[None]:
        """Raises RuntimeError once the interpreter is shutting down."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(MAX_THREADS - 1,
                                                    thread_name_prefix="tinyfaces-staging")
            return self._executor.submit(fn, *args)


_POOL = _Pool()


def _new_pool_after_fork() -> None:
    global _POOL
    _POOL = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pool_after_fork)


def stage_and_upload(images: Sequence[np.ndarray], staging: np.ndarray,
                     upload: Callable[[int, int], None], threads: int = 1,
                     chunk_bytes: int | None = None) -> None:
    """Copies C-contiguous ``images`` back to back into the flat uint8 ``staging`` array and
    calls ``upload(start, end)`` for each copied byte range, in order, every byte once.

    Chunks: :func:`chunk_ranges` (``chunk_bytes``). With ``threads`` > 1 (at most
    :data:`MAX_THREADS` count), chunk j is copied by thread j % ``threads``: this thread
    (0) and ``threads`` - 1 helper threads, this one queueing each upload in order as its
    chunk is there; where no helper can be had (the interpreter is shutting down) this
    thread copies their chunks too. Returns, or raises what a copy or an upload raised, only when no
    helper is writing into ``staging`` any more.
    """
    sources, offset = [], 0
    for image in images:
        flat = image.reshape(-1).view(np.uint8)
        sources.append((offset, flat))
        offset += flat.size
    ranges = chunk_ranges(offset, chunk_bytes)
    helpers = min(threads, MAX_THREADS, len(ranges)) - 1
    copied = [threading.Event() for _ in ranges] if helpers > 0 else []
    failed: list[BaseException] = []
    # the helpers' copies in progress, and whether more may begin: a helper's copy begins
    # only under this condition, so once `stopped` is set and `copying` is 0 nothing writes
    # into `staging` (whichever helpers were submitted: an interrupt may land between a
    # submit and anything recording it)
    busy = threading.Condition()
    copying, stopped = 0, False

    def copy_chunks(chunks: list[int]) -> None:
        nonlocal copying
        for j in chunks:
            try:
                with busy:
                    if stopped or failed:
                        continue
                    copying += 1
                try:
                    _copy_range(staging, sources, *ranges[j])
                finally:
                    with busy:
                        copying -= 1
                        busy.notify_all()
            except BaseException as exc:  # the caller raises it
                failed.append(exc)
            finally:
                copied[j].set()

    workers = max(helpers, 0) + 1  # chunk j goes to worker j % workers; this thread is 0
    mine = set(range(0, len(ranges), workers))
    try:
        for helper in range(1, workers):
            chunks = list(range(helper, len(ranges), workers))
            try:
                _POOL.submit(copy_chunks, chunks)
            except RuntimeError:  # no new threads at interpreter shutdown: copied here
                mine.update(chunks)
        for j, (start, end) in enumerate(ranges):
            if j in mine:
                _copy_range(staging, sources, start, end)
            else:
                copied[j].wait()
                if failed:
                    raise failed[0]
            upload(start, end)
    finally:
        with busy:  # nothing writes into staging after this returns
            stopped = True
            while copying:
                busy.wait()
