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

import contextlib
import ctypes
import gc
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import host_cudart
from helpers_kernels import (CXX, REPO, KernelHarness, assert_same_detections, build_cpu_library,
                             candidate_count, collect_cases, cpu_build_missing, cpu_example_missing,
                             cpu_library_path, cuda_include, levels_at, nms_rows_reference,
                             random_maps, shared_cpu_build, square_boxes,
                             use_cpu_build_for_cuda_stages)
from helpers_run import run_folder
from kernel_abi_cases import H100_SHARED, IMAGE_HW, block_sort_case
import kernel_abi_cases
import kernel_stage_cases
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends import cuda_stages as stages
from tinyfaces_trt.runtime.postprocess import postprocess_levels

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


def test_a_gpu_without_the_shared_memory_sorts_a_small_nms_with_cub(kh, monkeypatch):
    """Where a block cannot have the one-block sort's 213 kB of shared memory (compute
    capability 8.0: 163 kB, the CPU build's default device; $TF_CPU_SHARED_OPTIN_BYTES plays
    an H100), NMS sorts with CUB at every size: the same rows."""
    monkeypatch.setenv("TF_CPU_SHARED_OPTIN_BYTES", "232448")
    config = DetectorConfig()
    maps, levels, image_hw = block_sort_case()
    run = kh.raw_run(maps, levels, config)
    launches = kh.lib.raw.tf_cpu_launches
    launches.restype = ctypes.c_ulonglong

    def nms(max_candidates):  # its rows and the kernel launches it made
        before = launches()
        rows, _ = run.nms(image_hw, max_candidates)
        return rows, launches() - before

    block, block_launches = nms(16_384)
    past, past_launches = nms(16_385)
    # the two sorts are kernels in one block each, CUB's (std::stable_sort here) none
    assert block_launches == past_launches + 2
    monkeypatch.delenv("TF_CPU_SHARED_OPTIN_BYTES")  # the default device: an A100's 166,912
    device_wide, device_wide_launches = nms(16_384)
    assert device_wide_launches == past_launches
    assert block.tobytes() == device_wide.tobytes() == past.tobytes() and len(block) > 0


def test_three_floats_made_ahead_pass_as_they_are():
    """The hot path of a caller passing the same normalisation at every resize."""
    made = binding.floats3((0.5, 1.5, 2.5), "channel_scale")
    assert binding.floats3(made, "channel_scale") is made and list(made) == [0.5, 1.5, 2.5]
    with pytest.raises(TinyFacesError, match=r"channel_bias must have 3 values, got \(2,\)"):
        binding.floats3((1.0, 2.0), "channel_bias")


def test_nms_takes_score_logit_0_or_1_only(cpu_library):
    """tf_nms_params.score_logit (ABI 4) is checked as lookahead is, before any work; the
    binding sets it from a truth value (default 0: the probability, as ABI 3 wrote)."""
    assert binding.nms_params(0.3, 1.0, True, 8, 8).score_logit == 0
    assert binding.nms_params(0.3, 1.0, True, 8, 8, score_logit=True).score_logit == 1
    for bad in (2, -1):
        with pytest.raises(binding.KernelError, match=f"score_logit = {bad} must be 0 or 1") as info:
            cpu_library.nms(16, 1, binding.NmsParams(0.3, 1.0, 1, 8, 8, 0, bad), 1, 16, 1 << 20,
                            16, 16)
        assert info.value.status == binding.Status.INVALID_VALUE


def test_nms_takes_pixel_base_and_drop_outside_0_or_1_only(cpu_library):
    """tf_nms_params.pixel_base and drop_outside (ABI 5) are checked before any work; the
    binding's defaults are 0.0 and 0, ABI 4's rows (kernel_abi_cases' border tests run
    them)."""
    params = binding.nms_params(0.3, 1.0, True, 8, 8)
    assert (params.pixel_base, params.drop_outside) == (0.0, 0)
    params = binding.nms_params(0.3, 1.0, True, 8, 8, pixel_base=1.0, drop_outside=True)
    assert (params.pixel_base, params.drop_outside) == (1.0, 1)
    for fields, message in [((0.0, 2), "drop_outside = 2 must be 0 or 1"),
                            ((0.0, -1), "drop_outside = -1 must be 0 or 1"),
                            ((2.0, 1), "pixel_base = 2 must be 0 or 1"),
                            ((float("nan"), 1), "pixel_base = nan must be 0 or 1")]:
        with pytest.raises(binding.KernelError, match=message) as info:
            cpu_library.nms(16, 1, binding.NmsParams(0.3, 1.0, 1, 8, 8, 0, 0, *fields), 1, 16,
                            1 << 20, 16, 16)
        assert info.value.status == binding.Status.INVALID_VALUE


@pytest.mark.parametrize("schedule", [
    {"TF_CPU_RESIDENT_BLOCKS": "1", **H100_SHARED},
    {"TF_CPU_RESIDENT_BLOCKS": "16", "TF_CPU_SCHEDULE_SEED": "1", **H100_SHARED},
    {"TF_CPU_RESIDENT_BLOCKS": "3", "TF_CPU_SCHEDULE_SEED": "2", "TF_CPU_SORT_FLIP": "0"},
])
def test_interleavings_of_blocks_and_threads_keep_the_greedy_result(kh, monkeypatch, schedule):
    """Boxes wait on boxes of their own and of earlier chunks (a chain, and clusters whose
    winners sit in other chunks): whatever order the blocks and threads run in (the one-block
    sorts' threads too, on the H100 played), and wherever CUB leaves the sorted data (on the
    default device, whose blocks lack that shared memory: CUB sorts), the result is numpy's."""
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AddressSanitizer's leak check: Linux")
def test_c_example_releases_everything_on_every_path(cpu_library, tmp_path):
    """kernels/examples/decode_nms_demo.c over the CPU build (kernels/cpu/cudart_host.c: its
    cudart calls on host memory), built with AddressSanitizer: it prints its boxes, and when a
    cudaMalloc or the synchronisation fails it exits 1 having freed every buffer and the
    stream (its early returns leaked them)."""
    cc = os.environ.get("CC", "cc")
    include = cuda_include()
    if shutil.which(cc) is None or include is None:
        pytest.skip("needs a C compiler and the CUDA toolkit's cuda_runtime_api.h")
    lib_dir = cpu_library.path.parent
    flags = [f"-I{REPO / 'kernels' / 'include'}", f"-I{include}", "-g",
             "-fsanitize=address", "-Wall", "-Wextra", "-Werror"]
    demo = tmp_path / "demo"
    steps = [[cc, "-std=c99", *flags, "-c", str(REPO / "kernels" / "examples" / "decode_nms_demo.c"),
              "-o", str(tmp_path / "demo.o")],  # C99, as the Makefile builds it
             [cc, "-std=c11", *flags, str(tmp_path / "demo.o"),
              str(REPO / "kernels" / "cpu" / "cudart_host.c"), "-o", str(demo),
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
    for env, failed in [*[({"TF_CPU_FAIL_MALLOC": str(k)}, "cudaMalloc") for k in range(1, 6)],
                        ({"TF_CPU_FAIL_SYNC": "1"}, "cudaStreamSynchronize")]:
        proc = run(**env)
        assert proc.returncode == 1, (env, proc.stderr[-3000:])
        assert f"decode_nms_demo: {failed}" in proc.stderr, proc.stderr[-3000:]
        assert "LeakSanitizer" not in proc.stderr and "AddressSanitizer" not in proc.stderr, \
            (env, proc.stderr[-3000:])


def _make(target: str, build: Path, *variables: str) -> subprocess.CompletedProcess:
    """``make -C kernels target BUILD=build variables...`` (CXX: the CPU build's compiler)."""
    return subprocess.run(["make", "-C", str(REPO / "kernels"), target, f"BUILD={build}",
                           f"CXX={CXX}", *variables], capture_output=True, text=True, timeout=300)


def test_cpu_example_target_builds_and_runs_the_c_example(tmp_path, tmp_path_factory):
    """``make -C kernels cpu-example`` (kernels/README.md, "The CPU build") builds the CPU
    library and decode_nms_demo_cpu (the example with kernels/cpu/cudart_host.c) into
    $(BUILD); run there, it decodes the example's map and keeps what a GPU keeps: its 16
    lattice cells (logit 2 + 0.01 (x + y)) of 32 candidates, best first. The build is this
    run's CPU build (helpers_kernels.shared_cpu_build: one ``make cpu-example`` into an empty
    folder, the library the other cases load), or, where $TINYFACES_KERNELS_CPU_LIB replaces
    that, one of its own."""
    if cpu_example_missing():
        pytest.skip(cpu_example_missing())
    if os.environ.get("TINYFACES_KERNELS_CPU_LIB"):
        build, lock = tmp_path / "build", contextlib.nullcontext()
        made = _make("cpu-example", build)
        assert made.returncode == 0, made.stdout + made.stderr
    else:
        build, error = shared_cpu_build(tmp_path_factory)
        assert error is None, error
        lock = run_folder(tmp_path_factory, build.name)[1]  # the build's: no make runs meanwhile
    demo = build / "decode_nms_demo_cpu"
    assert sorted(p.name for p in build.iterdir() if not p.name.startswith(".")) == \
        ["cpu_src", "decode_nms_demo_cpu", "libtinyfaces_kernels_cpu.so"]  # no objects left
    proc = subprocess.run([str(demo)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == "32 candidates, 16 kept", proc.stdout
    rows = [re.fullmatch(r"\s*(\d+): \[(.*)\] p=(\d\.\d{4})", line) for line in lines[2:]]
    assert len(rows) == 16 and all(rows), proc.stdout
    assert [int(r[1]) for r in rows] == list(range(16))
    lattice = [x + y for x in range(3, 32, 8) for y in range(2, 24, 6)]
    expected = sorted((f"{1 / (1 + np.exp(-(2 + 0.01 * s))):.4f}" for s in lattice), reverse=True)
    assert [r[3] for r in rows] == expected
    assert all(len(r[2].split()) == 4 for r in rows)
    with lock:
        built = {p.name: p.stat().st_mtime_ns for p in build.iterdir() if p.is_file()}
        assert _make("cpu-example", build).returncode == 0
        assert {p.name: p.stat().st_mtime_ns for p in build.iterdir() if p.is_file()} == built  # up to date


def test_the_c_example_compiles_as_c99_and_as_cpp():
    """A C++ service copies the example: its ``goto cleanup`` jumped over initialised
    declarations, which C++ refuses ("jump to label 'cleanup'"); it declares them first."""
    include = cuda_include()
    if include is None or shutil.which(CXX) is None:
        pytest.skip(f"needs {CXX} and the CUDA toolkit's cuda_runtime_api.h")
    example = REPO / "kernels" / "examples" / "decode_nms_demo.c"
    for language in (["-x", "c", "-std=c99"], ["-x", "c++", "-std=c++11"]):
        proc = subprocess.run([CXX, *language, "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                               f"-I{REPO / 'kernels' / 'include'}", f"-I{include}", str(example)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (language, proc.stderr[-3000:])


def test_cpu_build_without_trivial_auto_var_init(tmp_path, cpu_library):
    """``make cpu`` passed -ftrivial-auto-var-init=pattern (GCC >= 12, Clang >= 8) to any
    $(CXX): an older compiler failed the build. The Makefile asks the compiler first and
    leaves the flag out when it is refused (here by a wrapper of the compiler that refuses
    it); the library builds and works, and its build record says which flags it has."""
    real = shutil.which(CXX)
    wrapper = tmp_path / "old-cxx"
    # It compiles what it takes without optimisation or debug information (-O2 -g dropped: a
    # third of the time): this library has only to build, load and answer; the cases run on
    # the session's -O2 build. The Makefile's flags are unchanged (its build record below).
    wrapper.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -ftrivial-auto-var-init*)\n"
                       "  echo \"old-cxx: unrecognized command-line option '$a'\" >&2; exit 1;; esac; done\n"
                       'for a in "$@"; do shift; case "$a" in -O2|-g) ;; *) set -- "$@" "$a";; esac; done\n'
                       f'exec "{real}" -O0 "$@"\n')
    wrapper.chmod(0o755)
    build = tmp_path / "build"
    made = subprocess.run(["make", "-s", "-C", str(REPO / "kernels"), "cpu", f"BUILD={build}",
                           f"CXX={wrapper}"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    record = (build / ".cpu-config").read_text()
    assert record.startswith(f"{wrapper} -std=c++17 ") and "-ftrivial-auto-var-init" not in record
    lib = binding.KernelLibrary(build / "libtinyfaces_kernels_cpu.so")  # ABI checked
    assert lib.candidates_size(1000) == cpu_library.candidates_size(1000)
    # the compiler itself gets the flag if it takes it
    takes = subprocess.run([CXX, "-ftrivial-auto-var-init=pattern", "-x", "c++", "-E", "/dev/null"],
                           capture_output=True).returncode == 0
    session_record = (cpu_library.path.parent / ".cpu-config").read_text()  # built with CXX
    assert ("-ftrivial-auto-var-init=pattern" in session_record) == takes


# (call, status, message): each value wraps to one the library would take. Without the check,
# each call reaches the library with a NULL or misaligned pointer (refused: nothing runs).
_CUDA_ABI_INTS = [
    (lambda lib: lib.resize_workspace_size(2**32 + 10, 10, 10, 10), binding.Status.INVALID_SIZE,
     "tf_resize_workspace_size: src_height = 4294967306 is outside the range of its C type int, "
     "[-2147483648, 2147483647]"),
    (lambda lib: lib.resize_workspace_size(10, 10, 10, -2**31 - 10), binding.Status.INVALID_SIZE,
     "dst_width = -2147483658 is outside the range of its C type int,"),
    (lambda lib: lib.resize_normalize(None, 2**32 + 4, 4, None, 2, 2, (1, 1, 1), (0, 0, 0), None, 1 << 30),
     binding.Status.INVALID_SIZE, "tf_resize_normalize: src_height = 4294967300 is outside"),
    (lambda lib: lib.resize_normalize(None, 4, 4, None, 2, 2, (1, 1, 1), (0, 0, 0), None, 1 << 30,
                                      src_row_bytes=2**64 + 12), binding.Status.INVALID_SIZE,
     "src_row_bytes = 18446744073709551628 is outside the range of its C type int64_t, "
     "[-9223372036854775808, 9223372036854775807]"),
    (lambda lib: lib.resize_normalize(None, 4, 4, None, 2, 2, (1, 1, 1), (0, 0, 0), None, -1),
     binding.Status.INVALID_VALUE, "workspace_bytes = -1 is outside the range of its C type size_t, "
     "[0, 18446744073709551615]"),
    (lambda lib: lib.candidates_size(2**64 + 5), binding.Status.INVALID_CAPACITY,
     "tf_candidates_size: capacity = 18446744073709551621 is outside the range of its C type int64_t"),
    (lambda lib: lib.candidates_size(np.uint64(2**64 - 1)), binding.Status.INVALID_CAPACITY,
     "capacity = 18446744073709551615 is outside"),
    (lambda lib: lib.nms_workspace_size(2**64 + 64), binding.Status.INVALID_CAPACITY,
     "tf_nms_workspace_size: max_candidates = 18446744073709551680 is outside"),
    (lambda lib: lib.decode_level(None, 2**32 + 10, 12, binding.DecodeParams(), 0, None, 100),
     binding.Status.INVALID_SIZE, "tf_decode_level: height = 4294967306 is outside"),
    (lambda lib: lib.decode_level(None, 10, 12, binding.DecodeParams(), 2**64, None, 100),
     binding.Status.INVALID_SIZE, "tf_decode_level: key_base = 18446744073709551616 is outside"),
    (lambda lib: lib.decode_level(None, 10, 12, binding.DecodeParams(), 0, None, 2**64 + 100),
     binding.Status.INVALID_CAPACITY, "tf_decode_level: capacity = 18446744073709551716 is outside"),
    (lambda lib: lib.nms(None, 2**64 + 100, binding.nms_params(0.3, 1, True, 8, 8), 64, None, 1 << 30,
                         None, None), binding.Status.INVALID_CAPACITY, "tf_nms: capacity = "),
    (lambda lib: lib.nms(None, 100, binding.nms_params(0.3, 1, True, 8, 8), -2**64 + 64, None, 1 << 30,
                         None, None), binding.Status.INVALID_CAPACITY, "tf_nms: max_candidates = "),
    (lambda lib: lib.nms(None, 100, binding.nms_params(0.3, 1, True, 8, 8), 64, None, 2**64 + 1000,
                         None, None), binding.Status.INVALID_VALUE, "tf_nms: workspace_bytes = "),
    # pointers: -15 wraps to a misaligned address, 2**64 + 4 to 4
    (lambda lib: lib.candidates_reset(-15), binding.Status.INVALID_VALUE,
     "tf_candidates_reset: candidates = -15 is outside the range of its C type void*, "
     "[0, 18446744073709551615]"),
    (lambda lib: lib.candidates_reset(None, 2**64 + 4), binding.Status.INVALID_VALUE,
     "tf_candidates_reset: stream = 18446744073709551620 is outside"),
    (lambda lib: lib.resize_plan_size(10, 2**32 + 10, 10, 10), binding.Status.INVALID_SIZE,
     "tf_resize_plan_size: src_width = 4294967306 is outside the range of its C type int,"),
    (lambda lib: lib.resize_plan(4, 4, 2, 2, 2**64 + 16, 1 << 20), binding.Status.INVALID_VALUE,
     "tf_resize_plan: plan = 18446744073709551632 is outside the range of its C type void*"),
    (lambda lib: lib.resize_normalize_planned(None, 4, 4, None, 2, 2, (1, 1, 1), (0, 0, 0), None,
                                              -1, None, 1 << 20), binding.Status.INVALID_VALUE,
     "tf_resize_normalize_planned: plan_bytes = -1 is outside the range of its C type size_t"),
    (lambda lib: binding.nms_params(0.3, 1.0, True, 2**32 + 100, 50), binding.Status.INVALID_SIZE,
     "tf_nms_params: image_height = 4294967396 is outside the range of its C type int32_t, "
     "[-2147483648, 2147483647]"),
    (lambda lib: binding.nms_params(0.3, 1.0, True, 50, -2**31 - 1), binding.Status.INVALID_SIZE,
     "image_width = -2147483649 is outside"),
]


@pytest.mark.parametrize("call, status, message", _CUDA_ABI_INTS,
                         ids=[f"{i}-{c[1].name}" for i, c in enumerate(_CUDA_ABI_INTS)])
def test_binding_raises_for_integers_its_c_types_cannot_hold(cpu_library, call, status, message):
    """ctypes wraps a Python int that does not fit the argument's C type (2**32 + 10 passed as
    int is 10): the library's range checks never saw it, and a size query answered for
    another size. The binding raises KernelError with the status the library gives that
    argument out of range, naming the argument and its C type's range, before any call."""
    with pytest.raises(binding.KernelError) as info:
        call(cpu_library)
    assert info.value.status == status
    assert message in str(info.value)


def test_binding_passes_every_value_its_c_types_hold(cpu_library):
    """The edges of the C types reach the library, which answers with its own checks; an
    unknown status code is unknown however large."""
    with pytest.raises(binding.KernelError, match=r"capacity = 9223372036854775807 is outside \[1, "):
        cpu_library.candidates_size(2**63 - 1)
    with pytest.raises(binding.KernelError, match=r"src_height = 2147483647 is outside \[1, 32768\]"):
        cpu_library.resize_workspace_size(2**31 - 1, 10, 10, 10)
    with pytest.raises(binding.KernelError, match=r"src_width = -2147483648 is outside \[1, 32768\]"):
        cpu_library.resize_workspace_size(10, -2**31, 10, 10)
    assert cpu_library.candidates_size(np.int64(5)) == cpu_library.candidates_size(5)
    assert binding.nms_params(0.3, 1.0, True, np.int32(2**31 - 1), 5).image_height == 2**31 - 1
    assert cpu_library.status_string(2**32) == cpu_library.status_string(-2**40) == "unknown tf_status"
    assert cpu_library.status_string(0) == "success"


# --- NMS's CUDA graphs ------------------------------------------------------------------------

def _finish(post, maps, levels, image_hw, config):
    """One image through the postprocessor, checked against the host path."""
    post.reset(*image_hw)
    for m, level in zip(maps, levels):
        post.add_level(m, level)
    got = post.finish()
    assert_same_detections(got, postprocess_levels(maps, levels, image_hw, config))
    return got


class ReplayingCapture:
    """Stands in for cuda_device.CapturedWork where every call completes at once. The kernel
    library's calls made during the capture do not run: they are recorded with the values
    they were given (``CapturingLibrary``), and a launch makes exactly those calls again on
    the launch stream, as a graph replays the pointers and values it baked in. So a graph
    launched for other buffers or parameters gives wrong boxes here too."""

    made: list = []
    capturing = None

    def __init__(self, capture_stream, enqueue):
        assert capture_stream.handle in cuda_device.runtime().non_blocking  # a stream of its own
        self.calls, self.launches, self.closed = [], 0, False
        ReplayingCapture.capturing = self
        try:
            enqueue(capture_stream)
        finally:
            ReplayingCapture.capturing = None
        assert self.calls and all(args[-1] is capture_stream for _, args in self.calls)
        ReplayingCapture.made.append(self)

    def launch(self, stream):
        assert not self.closed
        self.launches += 1
        for call, args in self.calls:
            call(*args[:-1], stream)

    def close(self):
        self.closed = True


class CapturingLibrary:
    """The kernel library, its calls recorded instead of run while a ReplayingCapture
    captures."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        call = getattr(self._lib, name)
        if not callable(call):
            return call

        def maybe_captured(*args):
            if ReplayingCapture.capturing is None:
                return call(*args)
            ReplayingCapture.capturing.calls.append((call, args))
        return maybe_captured


def _graphed(post):
    post.lib = CapturingLibrary(post.lib)
    return post


@pytest.fixture
def nms_graphs(monkeypatch):
    """Makes a CudaPostprocessor capture and replay its NMS (kernel_stage_cases): host_cudart
    refuses every capture, so ReplayingCapture stands in for CUDA graphs."""
    monkeypatch.setattr(ReplayingCapture, "made", [])
    monkeypatch.setattr(cuda_device, "CapturedWork", ReplayingCapture)
    return _graphed


def test_nms_graphs_are_captured_once_per_buffers_and_sizes_and_replayed(stream, monkeypatch):
    """One graph per candidate buffer, NMS size, image size (NMS drops the boxes outside the
    image and clips the rest to it) and NMS parameters, captured at their second use (the
    first launches the kernels: lazy loading and CUB's set-up stay out of the capture) on a
    non-blocking stream of its own, replayed on the postprocessor's for every image that has
    them; a new one when the candidate buffer or the NMS size grows, the image size or a
    parameter changes; the least recently used dropped past NMS_GRAPHS; the boxes the host
    path's throughout (a graph replayed for another image size would clip to the wrong
    edges); close() closes them all."""
    monkeypatch.setattr(ReplayingCapture, "made", [])
    monkeypatch.setattr(cuda_device, "CapturedWork", ReplayingCapture)
    monkeypatch.setattr(stages, "NMS_GRAPHS", 2)
    config = DetectorConfig(prob_thresh=0.3)
    rng = np.random.default_rng(21)
    sizes = {"small": IMAGE_HW, "large": (IMAGE_HW[0] + 16, IMAGE_HW[1] + 24),
             "huge": (IMAGE_HW[0] + 40, IMAGE_HW[1] + 64)}
    levels = {name: levels_at(hw, (0.0, 1.0)) for name, hw in sizes.items()}

    def image(name, cls_mean=-1.5, maps=None):
        maps = random_maps(rng, levels[name], cls_mean=cls_mean) if maps is None else maps
        return _finish(post, maps, levels[name], sizes[name], config)

    post = _graphed(stages.CudaPostprocessor(config, stream=stream, max_candidates=4096))
    made = ReplayingCapture.made
    image("large")
    image("large")
    assert post.nms_graphs and post.nms_graphs_off is None
    assert [g.launches for g in made] == [1]  # captured at the 2nd use, launched
    image("small")
    image("small")  # the large image's candidate buffer, another image size: another graph
    image("small")
    image("large")  # both kept (NMS_GRAPHS = 2), each replayed for its size
    assert [g.launches for g in made] == [2, 2]
    image("huge", -3.0)
    image("huge", -3.0)  # its pyramid grows the candidate buffer: another graph
    assert [g.launches for g in made] == [2, 2, 1]
    assert [g.closed for g in made] == [False, True, False]  # the small size's went first
    dense = random_maps(rng, levels["huge"], cls_mean=0.0)  # more than 4096 candidates
    assert candidate_count(dense, levels["huge"], config) > 4096
    image("huge", maps=dense)
    # the overflowing run at the old NMS size replays the huge image's graph, the grown size
    # runs launch by launch, and the one used least recently (the large size's) goes
    assert [g.launches for g in made] == [2, 2, 2]
    assert [g.closed for g in made] == [True, True, False]
    assert post.max_candidates >= candidate_count(dense, levels["huge"], config)
    image("huge", maps=dense)  # the grown size's 2nd use
    assert [g.launches for g in made] == [2, 2, 2, 1]
    post.config = DetectorConfig(prob_thresh=0.3, nms_thresh=0.5)  # a parameter baked in
    config = post.config
    image("huge", maps=dense)  # launched, not replayed
    assert [g.launches for g in made] == [2, 2, 2, 1]
    post.close()
    assert all(g.closed for g in made)


def test_a_config_changed_in_clipping_or_variant_gets_its_own_nms_parameters(stream):
    """NMS's parameters are made once per config value and image size: a config changed only
    in clip_boxes or in its variant (the pixel area's first coordinate) gets its own, so the
    rows are the host path's for each (not the first config's)."""
    config = DetectorConfig(prob_thresh=0.2)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(23), levels, cls_mean=0.0, reg_sigma=1.0)
    post = stages.CudaPostprocessor(config, stream=stream)
    first = _finish(post, maps, levels, IMAGE_HW, config)
    for changed in (replace(config, clip_boxes=False), replace(config, variant="matconvnet")):
        post.config = changed
        got = _finish(post, maps, levels, IMAGE_HW, changed)  # the host path's rows
        assert got.shape != first.shape or not np.array_equal(got, first)
    post.close()


def test_each_image_of_a_batch_has_its_own_nms_graph(stream, monkeypatch):
    """Each image of a batch has a candidate buffer of its own, so a graph of its own: captured
    in the second batch, replayed in the third, each image with its own boxes."""
    monkeypatch.setattr(ReplayingCapture, "made", [])
    monkeypatch.setattr(cuda_device, "CapturedWork", ReplayingCapture)
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    rng = np.random.default_rng(22)
    batches = [[random_maps(rng, levels, cls_mean=-1.5) for _ in range(3)] for _ in range(3)]
    post = _graphed(stages.CudaPostprocessor(config, stream=stream))
    for batch in batches:
        post.reset(*IMAGE_HW, count=3)
        for level_index, level in enumerate(levels):
            post.add_level(np.concatenate([maps[level_index] for maps in batch]), level)
        got = post.finish_all()
        for g, maps in zip(got, batch, strict=True):
            assert_same_detections(g, postprocess_levels(maps, levels, IMAGE_HW, config))
    assert [g.launches for g in ReplayingCapture.made] == [2, 2, 2]  # from the 2nd batch
    post.close()


def test_nms_launches_its_kernels_where_capture_is_refused(stream, host_cuda, caplog):
    """Where the stream cannot be captured (here: the host runtime refuses, as a GPU does for
    a stream someone captures already) NMS runs launch by launch, with the same boxes, said
    once in the log and in nms_graphs_off, and is not captured again (the first image ran
    without a capture, the second tried one)."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    rng = np.random.default_rng(23)
    post = stages.CudaPostprocessor(config, stream=stream)
    assert post.nms_graphs
    with caplog.at_level("WARNING", logger=stages.__name__):
        for _ in range(3):
            _finish(post, random_maps(rng, levels, cls_mean=-1.5), levels, IMAGE_HW, config)
    assert host_cuda.calls["cudaStreamBeginCapture"] == 1
    assert not post.nms_graphs
    assert post.nms_graphs_off.startswith(
        "capturing NMS into a CUDA graph failed (cudaStreamBeginCapture failed: ")
    assert "(cudaErrorStreamCaptureUnsupported)); its kernels are launched one by one" in \
        post.nms_graphs_off
    assert [r.getMessage() for r in caplog.records] == [f"CudaPostprocessor: {post.nms_graphs_off}"]
    post.close()
    off = stages.CudaPostprocessor(config, stream=stream, nms_graphs=False)
    _finish(off, random_maps(rng, levels, cls_mean=-1.5), levels, IMAGE_HW, config)
    assert host_cuda.calls["cudaStreamBeginCapture"] == 1 and off.nms_graphs_off == "nms_graphs=False"
    off.close()


def test_a_fault_of_the_nms_call_itself_raises_and_leaves_graphs_on(stream, monkeypatch):
    """A call that fails in the capture (its buffers' second use) fails again when made
    directly: its error reaches the caller, and graphs are not switched off for it."""
    monkeypatch.setattr(ReplayingCapture, "made", [])

    class Failing:
        def __init__(self, capture_stream, enqueue):
            enqueue(capture_stream)  # the binding's argument checks fail in the capture too

    monkeypatch.setattr(cuda_device, "CapturedWork", Failing)
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    post = stages.CudaPostprocessor(config, stream=stream)
    maps = random_maps(np.random.default_rng(24), levels, cls_mean=-1.5)
    _finish(post, maps, levels, IMAGE_HW, config)  # the first use: launched, not captured
    assert ReplayingCapture.made == []
    calls = []

    def nms(*args):
        calls.append(args)
        raise binding.KernelError("tf_nms failed: workspace_bytes = 1, need 2",
                                  binding.Status.WORKSPACE_TOO_SMALL)

    monkeypatch.setattr(post.lib, "nms", nms)
    post.reset(*IMAGE_HW)
    for m, level in zip(maps, levels):
        post.add_level(m, level)
    with pytest.raises(binding.KernelError, match="workspace_bytes = 1, need 2"):
        post.finish()
    assert len(calls) == 2  # in the capture, then directly
    assert post.nms_graphs and post.nms_graphs_off is None
    post.close()


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
    record = (tmp_path / "asan" / ".cpu-config").read_text()
    assert " -fsanitize=address " in record, record  # instrumented, not a plain build
    # Fiber stacks of 64 KiB, not 256 (kernels/cpu/grid.cpp's $TF_CPU_STACK_KIB): ASan's
    # swapcontext clears the shadow of the whole stack it switches to, at every switch (a
    # half of this test's time went there); the kernels run in 16 KiB, and a fiber that
    # overflows its stack hits the guard page below it (SEGV: the run fails).
    env = dict(os.environ, LD_PRELOAD=asan, TINYFACES_KERNELS_CPU_LIB=str(lib), TF_CPU_STACK_KIB="64",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:exitcode=23")
    subset = ("random_score_maps and pytorch or non_finite or overflow or any_nms_size and 4097 "
              "or resize or refuses or uncapped_nested or uncapped_border or window_bounds and 12345 "
              "or block_sort_and_past_it and 12672")
    # --capture=sys: AddressSanitizer writes its report to fd 2 and exits at once (pytest's
    # default fd capture kept it in a temporary file: the run failed with exit 23, silently)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "--capture=sys", "--noconftest", str(Path(__file__)), "-k", subset],
                          capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    tail = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ERROR: AddressSanitizer" not in proc.stdout + proc.stderr, tail
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
