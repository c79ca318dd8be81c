"""The CUDA kernels' sources, compiled for the CPU (``make -C kernels cpu``), against numpy.

kernels/cpu/ stands in for the CUDA runtime, CUB and the device built-ins; each CUDA
thread runs as a fiber, blocks interleave at barriers (kernels/cpu/grid.cpp). The cases of
tests/kernel_abi_cases.py run here exactly as on a GPU, so the kernels' logic (indexing,
workspace layout, the uncapped NMS's walks and waiting, overflow and NaN accounting) is
checked on every machine with a C++ compiler. The cases of tests/kernel_stage_cases.py run
the CUDA stages of runtime/backends (CudaPreprocessor, CudaPostprocessor, detector_for) over
host memory and this library: their buffers, key bases, batches and NMS growth, for real.
What only a GPU shows (memory model, timing, device math within its ulps) stays with
tests/test_kernels_gpu.py.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import host_cudart
from helpers_kernels import (CXX, REPO, KernelHarness, assert_same_detections, build_cpu_library,
                             candidate_count, collect_cases, cpu_build_missing, cpu_library_path,
                             levels_at, nms_rows_reference, random_maps, square_boxes,
                             use_cpu_build_for_cuda_stages)
from kernel_abi_cases import IMAGE_HW
import kernel_abi_cases
import kernel_stage_cases
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.backends import cuda_device

_MISSING = cpu_build_missing()
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)
collect_cases(globals(), kernel_abi_cases, kernel_stage_cases)  # with `kh`, `stream` below
_NO_HOST_CUDA = host_cudart.missing()


@pytest.fixture(scope="session")
def cpu_library(tmp_path_factory):
    return binding.KernelLibrary(cpu_library_path(tmp_path_factory))


@pytest.fixture
def host_cuda(cpu_library, monkeypatch, request):
    """cuda_device over host memory and the CPU build. Every case that passes must leave
    nothing allocated or created behind once its objects are gone."""
    if _NO_HOST_CUDA:
        pytest.skip(_NO_HOST_CUDA)
    host = use_cpu_build_for_cuda_stages(monkeypatch, cpu_library.path)
    failed = request.session.testsfailed
    yield host
    live = host.live()
    if any(live.values()):  # a full collection costs ~0.8 s in this heap: only when needed
        gc.collect()
        live = host.live()
    host.release_all()
    if request.session.testsfailed == failed:  # a failed case's frames keep its objects alive
        assert live == {"device": 0, "pinned": 0, "streams": 0, "events": 0}, live


@pytest.fixture
def stream(host_cuda):
    """The cases' stream: a cuda_device.Stream, as on a GPU."""
    s = cuda_device.Stream()
    yield s
    s.close()


@pytest.fixture
def kh(cpu_library, stream):
    return KernelHarness(cpu_library, cuda_device.DeviceBuffer, stream, quick=True)


def test_the_cpu_build_is_the_library_of_this_abi(cpu_library):
    assert cpu_library.raw.tf_abi_version() == binding.ABI_VERSION
    assert cpu_library.device_count() == 0  # it drives no GPU
    with pytest.raises(binding.KernelError, match="nms_thresh = nan is outside"):
        cpu_library.nms(16, 1, binding.nms_params(float("nan"), 1.0, True, 8, 8), 1, 16, 1 << 20,
                        16, 16)


@pytest.mark.parametrize("schedule", [
    {"TF_CPU_RESIDENT_BLOCKS": "1"},
    {"TF_CPU_RESIDENT_BLOCKS": "16", "TF_CPU_SCHEDULE_SEED": "1"},
    {"TF_CPU_RESIDENT_BLOCKS": "3", "TF_CPU_SCHEDULE_SEED": "2", "TF_CPU_SORT_FLIP": "0"},
])
def test_interleavings_of_blocks_and_threads_keep_the_greedy_result(kh, monkeypatch, schedule):
    """Boxes wait on boxes of their own and of earlier chunks (a chain, and clusters whose
    winners sit in other chunks): whatever order the blocks and threads run in, and wherever
    CUB leaves the sorted data, the result is numpy's."""
    for name, value in schedule.items():
        monkeypatch.setenv(name, value)
    rng = np.random.default_rng(31)
    n = 1500
    chain = square_boxes(np.stack([np.arange(n // 3) * 6.0, np.zeros(n // 3)], 1), np.full(n // 3, 10.0))
    centres = rng.uniform(0, 300, (40, 2))[rng.integers(0, 40, n - n // 3)]
    sizes = np.exp(rng.uniform(2, 4, len(centres)))
    clusters = square_boxes(centres + rng.normal(0, 2, centres.shape), sizes)
    boxes = np.concatenate([chain, clusters])
    logits = np.round(rng.normal(size=n), 1)
    kh.assert_kept(boxes, logits, rng.permutation(n), 0.3, 1.0)


def test_a_cub_request_over_the_bound_fails_before_any_work(kh, monkeypatch):
    """tf_nms checks CUB's storage requests against the workspace's bound before its first
    launch: when one is over (here a stand-in CUB asking for 1 GiB more), it returns
    WORKSPACE_TOO_SMALL with nothing enqueued: out_stats keeps what it held (the prepare
    kernel, launched before the checks, had overwritten it)."""
    cand_host = kh.candidate_buffer(np.float32([[1, 2, 30, 40]]), np.float32([1.0]), np.uint32([0]), 4)
    ws_bytes = kh.lib.nms_workspace_size(4)
    sentinel = np.full(16, 0xAB, np.uint8)
    with (cuda_device.DeviceBuffer(cand_host.nbytes) as cand, cuda_device.DeviceBuffer(ws_bytes) as ws,
          cuda_device.DeviceBuffer(80) as out, cuda_device.DeviceBuffer(16) as stats):
        cand.upload(cand_host, kh.stream)
        stats.upload(sentinel, kh.stream)
        params = binding.nms_params(0.3, 1.0, True, 64, 64)
        monkeypatch.setenv("TF_CPU_CUB_EXTRA_BYTES", str(1 << 30))
        with pytest.raises(binding.KernelError, match="internal: cub::DeviceRadixSort") as info:
            kh.lib.nms(cand, 4, params, 4, ws, ws_bytes, out, stats, kh.stream)
        assert info.value.status == binding.Status.WORKSPACE_TOO_SMALL
        got = np.zeros_like(sentinel)
        stats.download(got, kh.stream)
        kh.stream.synchronize()
        assert got.tobytes() == sentinel.tobytes()
        monkeypatch.delenv("TF_CPU_CUB_EXTRA_BYTES")
        _, result = kh.nms(cand, 4, params, 4)
    assert result == {"num_kept": 1, "num_candidates": 1, "overflow": 0, "nonfinite": 0}


def test_a_failed_cuda_call_leaves_no_stale_error_for_later_calls(kh, monkeypatch):
    """A CUDA call that fails (here tf_candidates_reset's cudaMemsetAsync, refused as the
    runtime refuses a pointer it does not know: $TF_CPU_FAIL_MEMSET) leaves its error as the
    thread's last error in the library's runtime. CUB returns cudaPeekAtLastError() after its
    launches (so does the CPU build's CUB): the entry points clear that stale error after
    their argument checks, so the next decode + NMS on this thread works (every tf_nms after
    it failed at its first sort with the memset's cudaErrorInvalidValue)."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(41), levels, cls_mean=0.0)
    with cuda_device.DeviceBuffer(kh.lib.candidates_size(16)) as cand:
        monkeypatch.setenv("TF_CPU_FAIL_MEMSET", "1")
        with pytest.raises(binding.KernelError, match="cudaMemsetAsync") as info:
            kh.lib.candidates_reset(cand, kh.stream)
        monkeypatch.delenv("TF_CPU_FAIL_MEMSET")
    assert info.value.status == binding.Status.CUDA_ERROR and info.value.cuda_error == 1
    for _ in range(2):  # and again: nothing was left behind by the first run either
        got, stats = kh.detections(maps, levels, config, IMAGE_HW)
        assert stats["num_candidates"] == candidate_count(maps, levels, config) > 0
        assert_same_detections(got, nms_rows_reference(maps, levels, IMAGE_HW, config))


# Host-memory stand-ins for the cudart calls decode_nms_demo.c makes, so that it runs over the
# CPU build. $STUB_FAIL_MALLOC=N fails the N-th cudaMalloc, $STUB_FAIL_SYNC the synchronisation.
_DEMO_CUDART_STUB = r"""
#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>
#include "tinyfaces_kernels.h"
static int mallocs;
cudaError_t cudaMalloc(void** p, size_t n) {
  const char* fail = getenv("STUB_FAIL_MALLOC");
  if (fail && atoi(fail) == ++mallocs) return cudaErrorMemoryAllocation;
  *p = aligned_alloc(256, (n + 255) / 256 * 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = (cudaStream_t)malloc(8); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { free(s); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  (void)s;
  return getenv("STUB_FAIL_SYNC") ? cudaErrorLaunchFailure : cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, enum cudaMemcpyKind k, cudaStream_t st) {
  (void)k; (void)st; memcpy(d, s, n); return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, enum cudaMemcpyKind k) {
  (void)k; memcpy(d, s, n); return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t e) { return e ? "stub failure" : "no error"; }
tf_status tf_get_device_count(int* n) { *n = 1; return TF_STATUS_SUCCESS; } /* the CPU build has 0 */
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AddressSanitizer's leak check: Linux")
def test_c_example_releases_everything_on_every_path(cpu_library, tmp_path):
    """kernels/examples/decode_nms_demo.c over the CPU build (cudart stand-ins on host memory),
    built with AddressSanitizer: it prints its boxes, and when a cudaMalloc or the
    synchronisation fails it exits 1 having freed every buffer and the stream (its early
    returns leaked them)."""
    cc = os.environ.get("CC", "cc")
    include = [d for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda")
               if d and (Path(d) / "include" / "cuda_runtime_api.h").is_file()]
    if shutil.which(cc) is None or not include:
        pytest.skip("needs a C compiler and the CUDA toolkit's cuda_runtime_api.h")
    (tmp_path / "stub.c").write_text(_DEMO_CUDART_STUB)
    lib_dir = cpu_library.path.parent
    flags = [f"-I{REPO / 'kernels' / 'include'}", f"-I{Path(include[0]) / 'include'}", "-g",
             "-fsanitize=address", "-Wall", "-Wextra", "-Werror"]
    demo = tmp_path / "demo"
    steps = [[cc, "-std=c99", *flags, "-c", str(REPO / "kernels" / "examples" / "decode_nms_demo.c"),
              "-o", str(tmp_path / "demo.o")],  # C99, as the Makefile builds it
             [cc, "-std=c11", *flags, str(tmp_path / "demo.o"), str(tmp_path / "stub.c"), "-o", str(demo),
              f"-L{lib_dir}", f"-l:{cpu_library.path.name}", f"-Wl,-rpath,{lib_dir}", "-lm"]]
    for step in steps:
        build = subprocess.run(step, capture_output=True, text=True)
        if build.returncode != 0:
            break
    if build.returncode != 0 and "asan" in build.stderr:
        pytest.skip(f"{cc} cannot link AddressSanitizer: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr

    def run(**env):
        return subprocess.run([str(demo)], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1", **env))

    ok = run()
    if "LeakSanitizer has encountered a fatal error" in ok.stderr:  # e.g. under ptrace
        pytest.skip("LeakSanitizer cannot run here")
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"^\d+ candidates, [1-9]\d* kept$", ok.stdout, flags=re.M), ok.stdout
    for env, failed in [*[({"STUB_FAIL_MALLOC": str(k)}, "cudaMalloc") for k in range(1, 6)],
                        ({"STUB_FAIL_SYNC": "1"}, "cudaStreamSynchronize")]:
        proc = run(**env)
        assert proc.returncode == 1, (env, proc.stderr[-3000:])
        assert f"decode_nms_demo: {failed}" in proc.stderr, proc.stderr[-3000:]
        assert "LeakSanitizer" not in proc.stderr and "AddressSanitizer" not in proc.stderr, \
            (env, proc.stderr[-3000:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD of libasan: Linux")
def test_kernels_under_address_sanitizer(tmp_path):
    """The cases again with the library built with -fsanitize=address: the CPU analogue of
    compute-sanitizer memcheck. Device buffers are allocated at their exact size by
    AddressSanitizer's allocator (tests/host_cudart.py), so any kernel access past the end of
    one is caught."""
    if _NO_HOST_CUDA:
        pytest.skip(_NO_HOST_CUDA)
    asan = subprocess.run([CXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not asan or not Path(asan).is_file():
        pytest.skip(f"{CXX} has no libasan.so")
    lib = build_cpu_library(tmp_path / "asan", sanitize="address")
    env = dict(os.environ, LD_PRELOAD=asan, TINYFACES_KERNELS_CPU_LIB=str(lib),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=23")
    subset = ("random_score_maps and pytorch or non_finite or overflow or any_nms_size and 4097 "
              "or resize or refuses or uncapped_nested or uncapped_border or window_bounds and 12345")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "--noconftest", str(Path(__file__)), "-k", subset],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    tail = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ERROR: AddressSanitizer" not in proc.stdout + proc.stderr, tail
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
