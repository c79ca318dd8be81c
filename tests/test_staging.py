"""runtime.backends.staging: images into page-locked memory in chunks, each upload queued as its
chunk is copied (numpy only: the uploads here are recorded, not sent)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from tinyfaces_trt.runtime.backends import staging


@pytest.mark.parametrize("nbytes, chunk, most, want", [
    (0, 4, 16, []),
    (3, 4, 16, [(0, 3)]),
    (8, 4, 16, [(0, 4), (4, 8)]),
    (9, 4, 16, [(0, 3), (3, 6), (6, 9)]),  # three chunks, evened out
    (100, 4, 5, [(0, 20), (20, 40), (40, 60), (60, 80), (80, 100)]),  # at most 5: larger
])
def test_chunk_ranges_cover_every_byte_once_in_order(nbytes, chunk, most, want):
    assert staging.chunk_ranges(nbytes, chunk, most) == want


def test_a_1080p_image_goes_in_six_chunks_of_about_one_mib():
    ranges = staging.chunk_ranges(1920 * 1080 * 3)
    assert len(ranges) == 6
    assert {end - start for start, end in ranges} == {1036800}
    assert len(staging.chunk_ranges(64 << 20)) == staging.MAX_CHUNKS


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("threads", [1, 3])
def test_images_land_back_to_back_and_each_chunk_is_uploaded_once_copied(threads):
    images = _images([(37, 53)] * 3)
    nbytes = sum(im.nbytes for im in images)
    pinned = np.zeros(nbytes, np.uint8)
    uploaded = []

    def upload(start, end):
        uploaded.append((start, end, pinned[start:end].copy()))  # what is there when queued

    staging.stage_and_upload(images, pinned, upload, threads=threads, chunk_bytes=1000)
    want = np.concatenate([im.reshape(-1) for im in images])
    np.testing.assert_array_equal(pinned, want)
    assert [(s, e) for s, e, _ in uploaded] == staging.chunk_ranges(nbytes, 1000)
    assert len(uploaded) == 16  # 17649 bytes: the 16-chunk cap, chunks across image borders
    for start, end, seen in uploaded:
        np.testing.assert_array_equal(seen, want[start:end])


def test_a_small_image_is_one_upload_without_helpers(monkeypatch):
    monkeypatch.setattr(staging, "_POOL", None)  # any use of the helpers would raise
    (image,) = _images([(20, 30)])
    pinned = np.zeros(image.nbytes, np.uint8)
    calls = []
    staging.stage_and_upload([image], pinned, lambda s, e: calls.append((s, e)), threads=4)
    assert calls == [(0, image.nbytes)]
    np.testing.assert_array_equal(pinned, image.reshape(-1))


def test_a_failed_upload_returns_only_once_no_helper_writes_any_more(monkeypatch):
    """The caller frees or reuses the pinned buffer after an error: every helper's copy has
    ended (or was cancelled) by the time the error comes."""
    copying, ended, started = [], [], threading.Event()
    real = staging._copy_range

    def slow_copy(pinned, sources, start, end):
        if start:  # a helper's chunk
            copying.append(start)
            started.set()
            time.sleep(0.05)
        real(pinned, sources, start, end)
        if start:
            ended.append(start)

    def upload(start, end):
        assert started.wait(10)  # fails while a helper is copying
        raise RuntimeError("cudaMemcpyAsync failed")

    monkeypatch.setattr(staging, "_copy_range", slow_copy)
    images = _images([(50, 60)])
    pinned = np.zeros(images[0].nbytes, np.uint8)
    with pytest.raises(RuntimeError, match="cudaMemcpyAsync failed"):
        staging.stage_and_upload(images, pinned, upload, threads=3, chunk_bytes=1000)
    assert copying and sorted(ended) == sorted(copying)


def test_an_interrupt_right_after_a_helper_is_submitted_still_waits_for_its_copy(monkeypatch):
    """Ctrl-C lands after the pool took a helper's chunks but before the call could record
    it: the call still returns only once that helper's copy has ended (the next image would
    refill the page-locked buffer under it)."""
    in_copy, ended = threading.Event(), []
    real_copy, real_pool = staging._copy_range, staging._POOL

    def slow_copy(pinned, sources, start, end):
        if start:  # a helper's chunk
            in_copy.set()
            time.sleep(0.2)
        real_copy(pinned, sources, start, end)
        if start:
            ended.append(start)

    class InterruptedSubmit:
        def submit(self, fn, *args):
            real_pool.submit(fn, *args)
            assert in_copy.wait(10)
            raise KeyboardInterrupt

    monkeypatch.setattr(staging, "_copy_range", slow_copy)
    monkeypatch.setattr(staging, "_POOL", InterruptedSubmit())
    images = _images([(50, 60)])
    with pytest.raises(KeyboardInterrupt):
        staging.stage_and_upload(images, np.zeros(images[0].nbytes, np.uint8),
                                 lambda s, e: None, threads=2, chunk_bytes=1000)
    assert ended == [1000]  # the chunk under way had ended; the helper began no other


def test_a_helpers_copy_error_reaches_the_caller(monkeypatch):
    real = staging._copy_range

    def failing(pinned, sources, start, end):
        if start:
            raise MemoryError("copy failed in a helper")
        real(pinned, sources, start, end)

    monkeypatch.setattr(staging, "_copy_range", failing)
    images = _images([(50, 60)])
    uploads = []
    with pytest.raises(MemoryError, match="copy failed in a helper"):
        staging.stage_and_upload(images, np.zeros(images[0].nbytes, np.uint8),
                                 lambda s, e: uploads.append(s), threads=2, chunk_bytes=1000)
    assert uploads == [0]  # the first chunk (the caller's) went; nothing after the failed one


def test_without_helpers_at_interpreter_shutdown_the_caller_copies_every_chunk(monkeypatch):
    """A thread still staging while the interpreter shuts down gets no new pool work
    ("cannot schedule new futures after interpreter shutdown"): it copies the chunks itself."""
    class ShutDown:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(staging, "_POOL", ShutDown())
    images = _images([(50, 60), (50, 60)])
    pinned = np.zeros(sum(im.nbytes for im in images), np.uint8)
    uploads = []
    staging.stage_and_upload(images, pinned, lambda s, e: uploads.append((s, e)), threads=4,
                             chunk_bytes=1000)
    np.testing.assert_array_equal(pinned, np.concatenate([im.reshape(-1) for im in images]))
    assert uploads == staging.chunk_ranges(pinned.size, 1000)


@pytest.mark.parametrize("threads, groups", [
    (1, []), (2, [[1, 3, 5]]), (3, [[1, 4], [2, 5]]),
    (9, [[1, 5], [2], [3]])])  # at most MAX_THREADS - 1 = 3 helpers
def test_threads_bound_the_helpers_a_call_uses(monkeypatch, threads, groups):
    """``threads`` counts the caller: chunk j goes to thread j % threads (at most
    MAX_THREADS), 0 being the caller, the others helper threads."""
    submitted, by = [], {}
    real_pool, real_copy = staging._POOL, staging._copy_range

    class Recording:
        def submit(self, fn, chunks):
            submitted.append(list(chunks))
            return real_pool.submit(fn, chunks)

    def recording(pinned, sources, start, end):
        by[start] = threading.current_thread().name
        real_copy(pinned, sources, start, end)

    monkeypatch.setattr(staging, "_POOL", Recording())
    monkeypatch.setattr(staging, "_copy_range", recording)
    images = _images([(20, 100)])  # 6000 bytes: 6 chunks of 1000
    pinned = np.zeros(images[0].nbytes, np.uint8)
    staging.stage_and_upload(images, pinned, lambda s, e: None, threads=threads, chunk_bytes=1000)
    np.testing.assert_array_equal(pinned, images[0].reshape(-1))
    assert submitted == groups
    theirs = {1000 * j for group in groups for j in group}
    me = threading.current_thread().name
    assert {start for start, name in by.items() if name == me} == set(by) - theirs
    assert all(by[start].startswith("tinyfaces-staging") for start in theirs)


def _stage_in_child(queue):
    images = _images([(40, 50)], seed=3)
    pinned = np.zeros(images[0].nbytes, np.uint8)
    staging.stage_and_upload(images, pinned, lambda s, e: None, threads=3, chunk_bytes=1000)
    queue.put(bool(np.array_equal(pinned, images[0].reshape(-1))))


def test_a_forked_child_gets_helpers_of_its_own():
    """A fork keeps no thread of its parent: the parent's pool would take the work and never
    run it (the child would hang)."""
    images = _images([(40, 50)])
    staging.stage_and_upload(images, np.zeros(images[0].nbytes, np.uint8), lambda s, e: None,
                             threads=3, chunk_bytes=1000)  # the parent's helpers exist now
    assert any(t.name.startswith("tinyfaces-staging") for t in threading.enumerate())
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_stage_in_child, args=(queue,))
    child.start()
    child.join(30)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in stage_and_upload")
    assert child.exitcode == 0
    assert queue.get(timeout=5) is True
