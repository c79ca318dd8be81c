"""The CUDA kernel library without a GPU: build, exported ABI, host-side argument checks.

Builds libtinyfaces_kernels.so and the C example once per session with nvcc (through
``tf-build-kernels``, i.e. the package Makefile); skipped only where nvcc is absent.
Everything here runs on the host: no test launches work on a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import helpers_kernels
from helpers_run import load_script
from tinyfaces_trt.kernels import binding, build
from tinyfaces_trt.kernels.binding import KernelError, Status
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError

HEADER = binding.package_dir() / "include" / "tinyfaces_kernels.h"
FAKE = 1 << 20  # a 256-aligned, non-null "device pointer"; never dereferenced by these tests


def _nvcc_or_none() -> Path | None:
    try:
        return build.find_nvcc()
    except TinyFacesError:
        return None


@pytest.fixture(scope="session")
def built_and_said(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The build folder (library + C example), built once per session as tools/gpu_check.py
    builds (``-Xptxas -v``), and what the build printed."""
    if _nvcc_or_none() is None:
        pytest.skip("nvcc (CUDA toolkit) not found: cannot build the kernel library")
    out = tmp_path_factory.mktemp("kernels_build")
    said = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(said):
        mp.setenv("EXTRA_NVCCFLAGS", "-Xptxas -v")
        build.build(out=out, verbose=True)
    return out, said.getvalue()


@pytest.fixture(scope="session")
def built(built_and_said: tuple[Path, str]) -> Path:
    return built_and_said[0]


def test_build_names_the_architectures_it_builds_for(built_and_said) -> None:
    """The Makefile default too: before the build and on the "done" line (it said neither, so
    an ``--arch native`` build that fell back to nvcc's sm_75 went unnoticed)."""
    said = built_and_said[1]
    assert f"tf-build-kernels: building sm_80, sm_90 SASS + compute_90 PTX into {built_and_said[0]} " in said
    assert re.search(r"^tf-build-kernels: done in \d+ s: .*libtinyfaces_kernels\.so "
                     r"\(built for sm_80, sm_90 SASS \+ compute_90 PTX\)$", said, flags=re.M), said


def test_gpu_checks_register_table_names_every_kernel_of_this_build(built_and_said):
    """tools/gpu_check.py's registers-and-spills table, read off this build's real
    ``-Xptxas -v``: every ``__global__`` function of kernels/src, for each SASS architecture
    the Makefile builds (a name the parser missed would be reported as spill-free)."""
    gpu_check = load_script("tools/gpu_check.py", "tinyfaces_gpu_check")
    rows = gpu_check.parse_ptxas(built_and_said[1])
    archs = set(re.findall(r"code=(sm_\d+)", build.default_gencode()))
    assert archs and {r[1] for r in rows} == archs
    kernels = gpu_check.source_kernels()
    assert {"decode_level_kernel", "nms_resolve_kernel", "resize_vertical_kernel"} <= kernels
    for arch in archs:
        assert {r[0].split("<")[0] for r in rows if r[1] == arch} == kernels, arch
    assert "NOT IN THE TABLE" not in gpu_check.registers_summary(rows)


@pytest.fixture(scope="session")
def lib(built: Path) -> binding.KernelLibrary:
    return binding.load_library(built / binding.LIBRARY_NAME)


@pytest.fixture(scope="session")
def has_gpu(lib: binding.KernelLibrary) -> bool:
    count = ctypes.c_int(0)
    return lib.raw.tf_get_device_count(ctypes.byref(count)) == Status.SUCCESS and count.value > 0


def header_functions() -> set[str]:
    text = HEADER.read_text()
    return set(re.findall(r"^TINYFACES_API\s+[\w\s\*]+?\b(tf_\w+)\s*\(", text, flags=re.M))


def header_defines() -> dict[str, int]:
    text = HEADER.read_text()
    return {m[0]: int(m[1]) for m in re.findall(r"^#define\s+(TF_\w+)\s+(\d+)[uUlL]*\b", text, flags=re.M)}


def header_status_codes() -> dict[str, int]:
    body = re.search(r"typedef enum tf_status \{(.*?)\} tf_status;", HEADER.read_text(), flags=re.S)[1]
    return {m[0]: int(m[1]) for m in re.findall(r"TF_STATUS_(\w+)\s*=\s*(\d+)", body)}


# --- build + exported ABI -------------------------------------------------------------------

def test_header_declares_the_documented_api() -> None:
    assert header_functions() == {
        "tf_status_string", "tf_last_cuda_error", "tf_last_error_message", "tf_abi_version",
        "tf_check_abi", "tf_get_device_count", "tf_resize_workspace_size", "tf_resize_normalize",
        "tf_resize_plan_size", "tf_resize_plan", "tf_resize_normalize_planned",
        "tf_candidates_size", "tf_candidates_reset", "tf_decode_level", "tf_nms_workspace_size",
        "tf_nms"}


def test_library_exports_exactly_the_header_api(built: Path) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils nm not found")
    out = subprocess.run([nm, "-D", "--defined-only", str(built / binding.LIBRARY_NAME)],
                         capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}
    assert header_functions() <= exported
    assert {s for s in exported if s.startswith("tf_")} == header_functions()
    # The statically linked CUDA runtime stays private.
    assert not [s for s in exported if s.startswith("cuda")]


def test_library_soname_carries_the_abi_version(built: Path) -> None:
    """The library is libtinyfaces_kernels.so.<TF_KERNELS_ABI_VERSION> (its SONAME), the
    unversioned name a symlink to it: a C program linked with -ltinyfaces_kernels (the
    example) records the versioned name, so a rebuilt library of another ABI is not loaded
    in its place. It had no SONAME: the program recorded libtinyfaces_kernels.so."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("binutils readelf not found")
    versioned = f"{binding.LIBRARY_NAME}.{header_defines()['TF_KERNELS_ABI_VERSION']}"

    def dynamic(path: Path, tag: str) -> list[str]:
        out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout
        return re.findall(rf"\({tag}\)\s+.*\[(.+?)\]", out)

    assert (built / versioned).is_file() and not (built / versioned).is_symlink()
    assert (built / binding.LIBRARY_NAME).is_symlink()
    assert (built / binding.LIBRARY_NAME).readlink() == Path(versioned)
    assert dynamic(built / versioned, "SONAME") == [versioned]
    needed = dynamic(built / "decode_nms_demo", "NEEDED")
    assert versioned in needed and binding.LIBRARY_NAME not in needed


def test_header_constants_match_the_binding() -> None:
    d = header_defines()
    assert d["TF_KERNELS_ABI_VERSION"] == binding.ABI_VERSION
    assert d["TF_NUM_TEMPLATES"] == binding.NUM_TEMPLATES == 25
    assert d["TF_NUM_CHANNELS"] == 125
    assert d["TF_MAX_DIM"] == binding.MAX_DIM
    assert d["TF_MAX_CAPACITY"] == binding.MAX_CAPACITY
    assert d["TF_MAX_NMS_CANDIDATES"] == binding.MAX_NMS_CANDIDATES
    assert d["TF_OVERFLOW_CAPACITY"] == binding.OVERFLOW_CAPACITY
    assert d["TF_OVERFLOW_NMS"] == binding.OVERFLOW_NMS
    assert header_status_codes() == {s.name: s.value for s in Status}


def _c_values(tmp_path: Path, name: str, *expressions: str) -> list[int]:
    """The size_t values of C expressions, compiled against the header as strict C99."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / f"{name}.c"
    prints = "".join(f'printf("%zu\\n", (size_t)({e})); ' for e in expressions)
    src.write_text('#include "tinyfaces_kernels.h"\n#include <stddef.h>\n#include <stdio.h>\n'
                   f"int main(void) {{ {prints}return 0; }}\n")
    exe = tmp_path / name
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-pedantic", f"-I{HEADER.parent}", str(src),
                    "-o", str(exe)], check=True, capture_output=True)
    return [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()]


def test_header_is_plain_c_and_struct_sizes_match_ctypes(tmp_path: Path) -> None:
    sizes = _c_values(tmp_path, "sizes", "sizeof(tf_decode_params)", "sizeof(tf_nms_params)",
                      "sizeof(tf_nms_stats)")
    assert sizes == [ctypes.sizeof(binding.DecodeParams), ctypes.sizeof(binding.NmsParams),
                     ctypes.sizeof(binding.NmsStats)]
    assert binding.NMS_STATS_DTYPE.itemsize == ctypes.sizeof(binding.NmsStats)


def test_nms_stats_fields_match_the_header(tmp_path: Path) -> None:
    """ABI 3: the 4th field is the non-finite count (was ``reserved``); the layout is unchanged."""
    names = ["num_kept", "num_candidates", "overflow", "nonfinite"]
    assert [f[0] for f in binding.NmsStats._fields_] == list(binding.NMS_STATS_DTYPE.names) == names
    assert ctypes.sizeof(binding.NmsStats) == binding.NMS_STATS_DTYPE.itemsize == 16
    offsets = _c_values(tmp_path, "stats", *(f"offsetof(tf_nms_stats, {n})" for n in names))
    assert offsets == [getattr(binding.NmsStats, n).offset for n in names] == \
        [binding.NMS_STATS_DTYPE.fields[n][1] for n in names] == [0, 4, 8, 12]
    stats = binding.NmsStats.from_buffer_copy(np.array([(5, 9, 0, 3)], binding.NMS_STATS_DTYPE).tobytes())
    assert (stats.num_kept, stats.num_candidates, stats.overflow, stats.nonfinite) == (5, 9, 0, 3)


def test_nms_params_fields_match_the_header(tmp_path: Path) -> None:
    """ABI 5: ``pixel_base`` and ``drop_outside`` appended to tf_nms_params (36 bytes; ABI 4
    appended ``score_logit`` to ABI 3's 24)."""
    names = ["nms_thresh", "pixel_offset", "clip", "image_height", "image_width", "lookahead",
             "score_logit", "pixel_base", "drop_outside"]
    assert [f[0] for f in binding.NmsParams._fields_] == names
    assert ctypes.sizeof(binding.NmsParams) == 36 and binding.ABI_VERSION == 5
    offsets = _c_values(tmp_path, "params", "sizeof(tf_nms_params)",
                        *(f"offsetof(tf_nms_params, {n})" for n in names))
    assert offsets == [36] + [getattr(binding.NmsParams, n).offset for n in names] == \
        [36, 0, 4, 8, 12, 16, 20, 24, 28, 32]


def test_abi_check(lib: binding.KernelLibrary) -> None:
    raw = lib.raw
    assert raw.tf_abi_version() == binding.ABI_VERSION
    good = (binding.ABI_VERSION, ctypes.sizeof(binding.DecodeParams), ctypes.sizeof(binding.NmsParams),
            ctypes.sizeof(binding.NmsStats))
    assert raw.tf_check_abi(*good) == Status.SUCCESS
    assert raw.tf_check_abi(good[0] + 1, *good[1:]) == Status.ABI_MISMATCH
    assert raw.tf_check_abi(good[0], good[1] - 4, *good[2:]) == Status.ABI_MISMATCH
    assert "ABI" in lib.last_error_message()


def test_status_strings(lib: binding.KernelLibrary) -> None:
    strings = {s: lib.status_string(s) for s in Status}
    assert strings[Status.SUCCESS] == "success"
    assert strings[Status.NULL_POINTER] == "a required pointer argument is NULL"
    assert strings[Status.WORKSPACE_TOO_SMALL] == "the workspace is too small"
    assert strings[Status.CUDA_ERROR] == "a CUDA runtime call failed"
    assert len(set(strings.values())) == len(Status)
    assert lib.status_string(99) == lib.status_string(-1) == "unknown tf_status"


# --- workspace-size queries --------------------------------------------------------------

def test_resize_workspace_is_sane_and_monotone(lib: binding.KernelLibrary) -> None:
    base = (120, 160, 60, 80)
    size = lib.resize_workspace_size(*base)
    # At least the float32 intermediate (3 x src_h x dst_w) and the per-output windows.
    assert size >= 3 * 120 * 80 * 4 + (60 + 80) * 8
    assert size < 10 * 3 * 120 * 80 * 4
    for dim in range(4):
        sizes = []
        for v in (1, 7, 60, 61, 333, 2048):
            args = list(base)
            args[dim] = v
            sizes.append(lib.resize_workspace_size(*args))
        assert sizes == sorted(sizes), (dim, sizes)
        assert sizes[-1] > sizes[0]


def test_candidate_buffer_size(lib: binding.KernelLibrary) -> None:
    sizes = [lib.candidates_size(c) for c in (1, 2, 100, 4096, 10**6)]
    assert sizes == sorted(sizes)
    assert all(s >= 4 + 24 * c for s, c in zip(sizes, (1, 2, 100, 4096, 10**6)))
    assert sizes[-1] < 25 * 10**6 + 4096


def test_nms_workspace_is_linear_in_max_candidates(lib: binding.KernelLibrary) -> None:
    # ABI >= 2: no N^2 suppression mask (tests/test_nms_uncapped.py checks the exact layout).
    ms = [1, 63, 64, 65, 1000, 4096, 65536, 650_000, binding.MAX_NMS_CANDIDATES]
    sizes = [lib.nms_workspace_size(m) for m in ms]
    assert sizes == sorted(sizes)
    for m, s in zip(ms, sizes):
        assert s >= m * (8 + 8 + 4 + 4 + 16 + 4 + 1 + 16)  # sorts, boxes twice, status
        assert s < 72 * m + (4 << 20)
    assert sizes[ms.index(650_000)] < 44 * 2**20  # the dense mask needed 53 GB there


@pytest.mark.parametrize("call, status", [
    (lambda raw, out: raw.tf_resize_workspace_size(0, 10, 10, 10, out), Status.INVALID_SIZE),
    (lambda raw, out: raw.tf_resize_workspace_size(10, -3, 10, 10, out), Status.INVALID_SIZE),
    (lambda raw, out: raw.tf_resize_workspace_size(10, 10, binding.MAX_DIM + 1, 10, out), Status.INVALID_SIZE),
    (lambda raw, out: raw.tf_resize_workspace_size(10, 10, 10, 10, None), Status.NULL_POINTER),
    (lambda raw, out: raw.tf_candidates_size(0, out), Status.INVALID_CAPACITY),
    (lambda raw, out: raw.tf_candidates_size(-5, out), Status.INVALID_CAPACITY),
    (lambda raw, out: raw.tf_candidates_size(binding.MAX_CAPACITY + 1, out), Status.INVALID_CAPACITY),
    (lambda raw, out: raw.tf_nms_workspace_size(0, out), Status.INVALID_CAPACITY),
    (lambda raw, out: raw.tf_nms_workspace_size(binding.MAX_NMS_CANDIDATES + 1, out), Status.INVALID_CAPACITY),
    (lambda raw, out: raw.tf_nms_workspace_size(64, None), Status.NULL_POINTER),
])
def test_size_queries_reject_bad_arguments(lib: binding.KernelLibrary, call, status) -> None:
    out = ctypes.c_size_t(12345)
    assert call(lib.raw, ctypes.byref(out)) == status
    assert out.value == 12345  # untouched
    assert lib.last_error_message()


# --- argument validation of the launches (host side, before any CUDA call) ------------------

def _decode_params(**changes) -> binding.DecodeParams:
    t = np.tile(np.array([[-10.0, -12.0, 10.0, 12.0]]), (25, 1))
    p = binding.decode_params(t, np.arange(25) >= 4, 0.0, 8, -1, 1.0)
    for name, value in changes.items():
        setattr(p, name, value)
    return p


def _decode(raw, params=None, scores=FAKE, h=10, w=12, key_base=0, cand=FAKE, capacity=100):
    params = _decode_params() if params is None else params
    return raw.tf_decode_level(scores, h, w, ctypes.byref(params), key_base, cand, capacity, None)


def _nms(raw, params=None, cand=FAKE, capacity=100, m=64, ws=FAKE, ws_bytes=None, out=FAKE, stats=FAKE):
    params = binding.nms_params(0.3, 1.0, True, 100, 120) if params is None else params
    ws_bytes = (1 << 40) if ws_bytes is None else ws_bytes
    return raw.tf_nms(cand, capacity, ctypes.byref(params), m, ws, ws_bytes, out, stats, None)


def _resize(raw, src=FAKE, sh=40, sw=50, row=0, dst=FAKE, dh=20, dw=25, scale=(1, 1, 1),
            bias=(0, 0, 0), ws=FAKE, ws_bytes=1 << 30):
    s = (ctypes.c_float * 3)(*scale) if scale is not None else None
    b = (ctypes.c_float * 3)(*bias) if bias is not None else None
    return raw.tf_resize_normalize(src, sh, sw, row, dst, dh, dw, s, b, ws, ws_bytes, None)


NAN = float("nan")
INF = float("inf")


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(scores=None), Status.NULL_POINTER, "score_map"),
    (dict(cand=None), Status.NULL_POINTER, "candidates"),
    (dict(h=0), Status.INVALID_SIZE, "height = 0 is outside [1, 32768]"),
    (dict(w=-4), Status.INVALID_SIZE, "width = -4 is outside [1, 32768]"),
    (dict(h=binding.MAX_DIM + 1), Status.INVALID_SIZE, "height = 32769 is outside"),
    (dict(key_base=-1), Status.INVALID_SIZE, "key_base = -1 is negative"),
    (dict(key_base=2**32 - 1 - 25 * 10 * 12 + 1), Status.INVALID_SIZE,
     "key_base = 4294964296 plus this level's 25*height*width = 3000 keys passes the 32-bit key "
     "space (2^32 - 1)"),
    (dict(key_base=2**63 - 1), Status.INVALID_SIZE, "passes the 32-bit key space"),  # no overflow
    (dict(key_base=2**63 - 1000), Status.INVALID_SIZE, "passes the 32-bit key space"),
    (dict(capacity=0), Status.INVALID_CAPACITY, "capacity"),
    (dict(capacity=-1), Status.INVALID_CAPACITY, "capacity"),
    (dict(params=_decode_params(logit_thresh=NAN)), Status.INVALID_VALUE, "logit_thresh"),
    (dict(params=_decode_params(active_mask=1 << 25)), Status.INVALID_VALUE, "active_mask"),
    (dict(params=_decode_params(stride=0.0)), Status.INVALID_VALUE, "stride"),
    (dict(params=_decode_params(scale=-1.0)), Status.INVALID_VALUE, "scale"),
    (dict(params=_decode_params(scale=INF)), Status.INVALID_VALUE, "scale"),
    (dict(params=_decode_params(offset=NAN)), Status.INVALID_VALUE, "offset"),
    (dict(scores=FAKE + 2), Status.MISALIGNED, "score_map"),
    (dict(cand=FAKE + 8), Status.MISALIGNED, "candidates"),
])
def test_decode_rejects_bad_arguments(lib: binding.KernelLibrary, kwargs, status, words) -> None:
    assert _decode(lib.raw, **kwargs) == status
    assert words in lib.last_error_message()


def test_decode_rejects_null_params_and_bad_templates(lib: binding.KernelLibrary) -> None:
    raw = lib.raw
    assert raw.tf_decode_level(FAKE, 4, 4, None, 0, FAKE, 10, None) == Status.NULL_POINTER
    p = _decode_params()
    p.templates[7][2] = NAN
    assert _decode(raw, params=p) == Status.INVALID_VALUE
    assert "templates[7][2]" in lib.last_error_message()


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(cand=None), Status.NULL_POINTER, "candidates"),
    (dict(ws=None), Status.NULL_POINTER, "workspace"),
    (dict(out=None), Status.NULL_POINTER, "out_boxes"),
    (dict(stats=None), Status.NULL_POINTER, "out_stats"),
    (dict(capacity=0), Status.INVALID_CAPACITY, "capacity"),
    (dict(m=0), Status.INVALID_CAPACITY, "max_candidates"),
    (dict(m=binding.MAX_NMS_CANDIDATES + 1), Status.INVALID_CAPACITY, "max_candidates"),
    (dict(params=binding.nms_params(1.5, 1.0, True, 10, 10)), Status.INVALID_VALUE, "nms_thresh"),
    (dict(params=binding.nms_params(-0.1, 1.0, True, 10, 10)), Status.INVALID_VALUE, "nms_thresh"),
    (dict(params=binding.nms_params(NAN, 1.0, True, 10, 10)), Status.INVALID_VALUE, "nms_thresh"),
    (dict(params=binding.nms_params(0.3, -1.0, True, 10, 10)), Status.INVALID_VALUE, "pixel_offset"),
    (dict(params=binding.nms_params(0.3, INF, True, 10, 10)), Status.INVALID_VALUE, "pixel_offset"),
    (dict(params=binding.nms_params(0.3, 1.0, True, 0, 10)), Status.INVALID_SIZE,
     "image_height = 0 is outside [1, 32768]"),
    (dict(params=binding.nms_params(0.3, 1.0, True, binding.MAX_DIM + 1, 10)), Status.INVALID_SIZE,
     "image_height = 32769 is outside"),
    (dict(params=binding.nms_params(0.3, 1.0, True, 10, binding.MAX_DIM + 1)), Status.INVALID_SIZE,
     "image_width = 32769 is outside [1, 32768]"),
    (dict(params=binding.NmsParams(0.3, 1.0, 1, 10, 10, 3)), Status.INVALID_VALUE,
     "lookahead = 3 must be 0, 1 or 2"),
    (dict(params=binding.NmsParams(0.3, 1.0, 1, 10, 10, -1)), Status.INVALID_VALUE,
     "lookahead = -1 must be 0, 1 or 2"),
    (dict(params=binding.NmsParams(0.3, 1.0, 1, 10, 10, 0, 2)), Status.INVALID_VALUE,
     "score_logit = 2 must be 0 or 1"),
    (dict(params=binding.NmsParams(0.3, 1.0, 1, 10, 10, 0, 0, 0.5)), Status.INVALID_VALUE,
     "pixel_base = 0.5 must be 0 or 1"),
    (dict(params=binding.NmsParams(0.3, 1.0, 1, 10, 10, 0, 0, 0.0, 2)), Status.INVALID_VALUE,
     "drop_outside = 2 must be 0 or 1"),
    (dict(cand=FAKE + 4), Status.MISALIGNED, "candidates"),
    (dict(ws=FAKE + 8), Status.MISALIGNED, "workspace"),
    (dict(out=FAKE + 1), Status.MISALIGNED, "out_boxes"),
    (dict(ws_bytes=1000), Status.WORKSPACE_TOO_SMALL, "workspace_bytes = 1000"),
])
def test_nms_rejects_bad_arguments(lib: binding.KernelLibrary, kwargs, status, words) -> None:
    assert _nms(lib.raw, **kwargs) == status
    assert words in lib.last_error_message()


def test_nms_workspace_check_uses_the_queried_size(lib: binding.KernelLibrary) -> None:
    need = lib.nms_workspace_size(64)
    assert _nms(lib.raw, m=64, ws_bytes=need - 1) == Status.WORKSPACE_TOO_SMALL
    assert f"need {need}" in lib.last_error_message()


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(src=None), Status.NULL_POINTER, "src"),
    (dict(dst=None), Status.NULL_POINTER, "dst"),
    (dict(scale=None), Status.NULL_POINTER, "channel_scale"),
    (dict(bias=None), Status.NULL_POINTER, "channel_bias"),
    (dict(ws=None), Status.NULL_POINTER, "workspace"),
    (dict(sh=0), Status.INVALID_SIZE, "src_height"),
    (dict(dw=binding.MAX_DIM + 1), Status.INVALID_SIZE, "dst_width"),
    (dict(row=149), Status.INVALID_SIZE, "src_row_bytes"),
    (dict(row=2**62), Status.INVALID_SIZE, "src_row_bytes"),  # 39 rows of it overflow int64
    (dict(row=(2**63 - 1 - 150) // 39 + 1), Status.INVALID_SIZE, "src_row_bytes"),
    (dict(scale=(1, NAN, 1)), Status.INVALID_VALUE, "channel 1"),
    (dict(bias=(0, 0, INF)), Status.INVALID_VALUE, "channel 2"),
    (dict(dst=FAKE + 2), Status.MISALIGNED, "dst"),
    (dict(ws=FAKE + 4), Status.MISALIGNED, "workspace"),
    (dict(ws_bytes=100), Status.WORKSPACE_TOO_SMALL, "workspace_bytes = 100"),
])
def test_resize_rejects_bad_arguments(lib: binding.KernelLibrary, kwargs, status, words) -> None:
    assert _resize(lib.raw, **kwargs) == status
    assert words in lib.last_error_message()


def test_reset_rejects_bad_arguments(lib: binding.KernelLibrary) -> None:
    assert lib.raw.tf_candidates_reset(None, None) == Status.NULL_POINTER
    assert lib.raw.tf_candidates_reset(FAKE + 4, None) == Status.MISALIGNED


def test_wrappers_raise_kernel_errors(lib: binding.KernelLibrary) -> None:
    with pytest.raises(KernelError, match="capacity = 0 is outside") as info:
        lib.candidates_size(0)
    assert info.value.status == Status.INVALID_CAPACITY
    assert isinstance(info.value, TinyFacesError)
    with pytest.raises(KernelError, match="nms_thresh") as info:
        lib.nms(FAKE, 10, binding.nms_params(2.0, 1, True, 5, 5), 64, FAKE, 1 << 40, FAKE, FAKE)
    assert info.value.status == Status.INVALID_VALUE
    with pytest.raises(TinyFacesError, match="channel_scale must have 3 values"):
        lib.resize_normalize(FAKE, 4, 4, FAKE, 2, 2, (1, 1), (0, 0, 0), FAKE, 1 << 30)


# --- valid launches on a machine without a GPU ------------------------------------------------

def test_launches_without_gpu_return_cuda_error(lib: binding.KernelLibrary, has_gpu: bool) -> None:
    if has_gpu:
        pytest.skip("a GPU is present (these calls would run on fake pointers)")
    raw = lib.raw
    calls = [  # each call's first CUDA call fails; the detail names it
        ("cudaGetDeviceCount", lambda: raw.tf_get_device_count(ctypes.byref(ctypes.c_int()))),
        ("cudaMemsetAsync(candidate counters)", lambda: raw.tf_candidates_reset(FAKE, None)),
        ("decode kernel launch", lambda: _decode(raw)),
        ("decode kernel launch", lambda: _decode(raw, key_base=2**32 - 1 - 25 * 10 * 12)),  # last key
        # CUB's size queries (they ask the device) come before the first launch
        ("cub::DeviceRadixSort::SortPairs (size query)", lambda: _nms(raw)),
        ("cub::DeviceRadixSort::SortPairs (size query)",
         lambda: _nms(raw, params=binding.nms_params(0.3, 1.0, True, binding.MAX_DIM, binding.MAX_DIM))),
        ("resize coefficients kernel launch", lambda: _resize(raw)),
        # the largest row pitch whose 40 rows still fit in int64 passes the checks
        ("resize coefficients kernel launch", lambda: _resize(raw, row=(2**63 - 1 - 150) // 39)),
    ]
    for what, call in calls:
        assert raw.tf_candidates_size(10, ctypes.byref(ctypes.c_size_t())) == Status.SUCCESS
        assert raw.tf_last_cuda_error() == 0 and lib.last_error_message() == ""
        assert call() == Status.CUDA_ERROR, what
        assert raw.tf_last_cuda_error() != 0, what
        assert re.fullmatch(re.escape(what) + r": .+ \(cudaError\w+\)", lib.last_error_message()), \
            lib.last_error_message()
    with pytest.raises(KernelError) as info:
        lib.device_count()
    assert info.value.status == Status.CUDA_ERROR and info.value.cuda_error != 0


def test_c_example_fails_cleanly_without_gpu(built: Path, has_gpu: bool) -> None:
    if has_gpu:
        pytest.skip("a GPU is present (tests/test_kernels_gpu.py runs the example)")
    proc = subprocess.run([str(built / "decode_nms_demo")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "decode_nms_demo: tf_get_device_count(&devices) failed: a CUDA runtime call failed" in proc.stderr
    assert "cudaGetDeviceCount" in proc.stderr


# --- loader and build helper ------------------------------------------------------------------

def test_load_library_explains_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailableError, match="tf-build-kernels"):
        binding.load_library(tmp_path / "missing.so")
    monkeypatch.setenv(binding.ENV_LIBRARY, str(tmp_path / "nowhere.so"))
    with pytest.raises(BackendUnavailableError, match=r"\$TINYFACES_KERNELS_LIB points to .*nowhere.so"):
        binding.load_library()
    bogus = tmp_path / "libtinyfaces_kernels.so"
    bogus.write_text("not a shared library")
    with pytest.raises(BackendUnavailableError, match="cannot load the CUDA kernel library"):
        binding.load_library(bogus)


def test_library_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(binding.ENV_LIBRARY, str(tmp_path / "a.so"))
    monkeypatch.setenv(binding.ENV_CACHE, str(tmp_path / "cache"))
    assert binding.library_candidates() == [
        tmp_path / "a.so", binding.package_dir() / "build" / binding.LIBRARY_NAME,
        tmp_path / "cache" / "kernels" / binding.LIBRARY_NAME]
    monkeypatch.delenv(binding.ENV_LIBRARY)
    monkeypatch.delenv(binding.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert binding.cache_dir() == tmp_path / "xdg" / "tinyfaces_trt" / "kernels"


def test_build_cli_without_nvcc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main(["--nvcc", str(tmp_path / "no-nvcc"), "--out", str(tmp_path)]) == 1
    assert "tf-build-kernels: error: nvcc not found at" in capsys.readouterr().err


@pytest.mark.parametrize("make_out", [
    lambda tmp: Path("/proc/tinyfaces_x"),            # cannot be created
    lambda tmp: tmp / "file.txt" / "sub",             # parent is a file
    lambda tmp: tmp / "file.txt",                     # exists, not a folder
], ids=["uncreatable", "parent-is-a-file", "is-a-file"])
def test_build_cli_unusable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            make_out) -> None:
    (tmp_path / "file.txt").write_text("x")
    out = make_out(tmp_path)
    # checked before nvcc is looked for: the same one line with or without a CUDA toolkit
    assert build.main(["--out", str(out), "--nvcc", str(tmp_path / "no-nvcc"), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("tf-build-kernels: error: ") and f"--out {out}" in line
    assert "Traceback" not in captured.err and "nvcc" not in line


UNSAFE_NAMES = ["my dir", "tab\tdir", "a:b", "a%b", "a$b", "a;b", "a(b", "a'b", "a\\b", "b*", "a?b",
                "a[b"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_build_cli_refuses_a_folder_make_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    name: str) -> None:
    """``--out "my dir"``: the Makefile got BUILD=.../my dir unquoted, failed, and wrote into
    ./dir. Now one line, exit 1, before anything is created or nvcc is looked for."""
    out = tmp_path / name
    assert build.main(["--out", str(out), "--nvcc", str(tmp_path / "no-nvcc"), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"tf-build-kernels: error: --out {out}: make cannot use a folder whose "
                            f"path ({str(out)!r}) holds whitespace or any of "
                            ": ; & | < > ( ) ` ' \" \\ % $ * ? [; choose another folder\n")
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_a_cache_folder_make_cannot_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default folder (the cache) is checked as --out is."""
    monkeypatch.setenv(binding.ENV_CACHE, str(tmp_path / "my cache"))
    with pytest.raises(TinyFacesError, match=r"^the kernel cache folder .*my cache/kernels: make cannot "
                                             r"use .*; set \$TINYFACES_CACHE elsewhere or pass --out DIR$"):
        build.build(nvcc=str(tmp_path / "no-nvcc"), verbose=False)
    assert list(tmp_path.iterdir()) == []


def _package_in(folder: Path) -> Path:
    """A copy of the package's kernels folder (no build outputs) in ``folder``."""
    package = folder / "kernels"
    shutil.copytree(binding.package_dir(), package,
                    ignore=shutil.ignore_patterns("build", "__pycache__"))
    return package


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_package_in_a_folder_make_cannot_use_builds_from_a_copy_of_its_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A virtual environment in "site packages" was told to install the package elsewhere; now
    the Makefile, header, sources and example are copied into the output folder, built there
    and the copy removed: a fresh one each build (what a killed build left is replaced), with
    the files' times (an unchanged package rebuilds nothing) but not their modes (the copy of a
    read-only package stays removable)."""
    package = _package_in(tmp_path / "site packages")
    for path in [package, *package.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # read-only, as a hardened image installs it
    monkeypatch.setattr(build, "package_dir", lambda: package)
    nvcc = _stand_in_nvcc(tmp_path / "tools" / "nvcc")
    calls = tmp_path / "tools" / "calls"
    nvcc.write_text(nvcc.read_text().replace(
        "\n", f'\nfor a; do case "$a" in *.cu) stat -c "%a %Y %n" "$a" >> {calls}.cu;; esac; done\n', 1))
    out = tmp_path / "out"
    staged = out / build.STAGED_SOURCES
    (staged / "src").mkdir(parents=True)
    (staged / "src" / "removed.cu").write_text("an older package's source")
    assert build.main(["--nvcc", str(nvcc), "--arch", "90", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert (f"tf-build-kernels: sources {staged} (a copy of {package}, whose path make cannot "
            f"use)\n") in said
    assert (out / binding.LIBRARY_NAME).resolve().is_file() and (out / "decode_nms_demo").is_file()
    assert not staged.exists()
    expected = sorted(p.name for p in (package / "src").glob("*.cu"))
    seen = [line.split(" ", 2) for line in Path(f"{calls}.cu").read_text().splitlines()]
    assert sorted(Path(name).name for _, _, name in seen) == expected
    for mode, mtime, name in seen:
        assert Path(name).parent == staged / "src"
        assert int(mode, 8) & 0o200, name  # the owner may write (and remove) the copy
        assert int(mtime) == int((package / "src" / Path(name).name).stat().st_mtime)
    # an unchanged package: the next build's fresh copy is not newer than the library
    assert build.main(["--nvcc", str(nvcc), "--arch", "90", "--out", str(out), "-q"]) == 0
    assert len(Path(f"{calls}.cu").read_text().splitlines()) == len(expected)  # no compile
    assert not staged.exists()


def test_a_copy_that_fails_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    package = _package_in(tmp_path / "site packages")
    monkeypatch.setattr(build, "package_dir", lambda: package)
    copied = []

    def copyfile(src, dst):
        if len(copied) == 3:
            raise OSError(28, "No space left on device", str(dst))
        copied.append(dst)
        return real_copyfile(src, dst)

    real_copyfile = shutil.copyfile
    monkeypatch.setattr(build.shutil, "copyfile", copyfile)
    out = tmp_path / "new" / "out"
    nvcc = _stand_in_nvcc(tmp_path / "tools" / "nvcc")
    assert build.main(["--nvcc", str(nvcc), "--arch", "90", "--out", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"tf-build-kernels: error: cannot copy the kernel sources into "
                            f"{out / build.STAGED_SOURCES} (the package's path holds a character "
                            f"make cannot use): No space left on device\n")
    assert not (tmp_path / "new").exists()  # the folders this call created: removed again


def test_makefile_and_build_refuse_the_same_characters() -> None:
    text = (binding.package_dir() / "Makefile").read_text()
    (listed,) = re.findall(r"^BUILD_FORBIDDEN := (.*)$", text, flags=re.M)
    assert listed.replace("$$", "$").split() == list(build.MAKE_UNSAFE_CHARACTERS)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("name", UNSAFE_NAMES + [""])
def test_makefile_refuses_a_build_folder_it_cannot_use(tmp_path: Path, name: str) -> None:
    """``make BUILD="$PWD/out dir"`` split the path: it failed having written the library into
    ./dir (the source folder, with -C kernels). Now an error before any rule runs, nothing
    written (make runs in an empty folder here; a stand-in nvcc would write its -o file)."""
    work = tmp_path / "work"
    work.mkdir()
    nvcc = _stand_in_nvcc(tmp_path / "tools" / "nvcc")
    value = str(work / name) if name else ""
    proc = subprocess.run(["make", "-f", str(binding.package_dir() / "Makefile"), "lib", "cpu",
                           f"BUILD={value}", f"NVCC={nvcc}", f"CXX={nvcc}"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = (f"*** BUILD = '{value}': make cannot build in a folder whose path holds whitespace "
                "or any of : ; & | < > ( ) ` ' \" \\ % $ * ? [ (choose another folder).  Stop.") if name \
        else "*** BUILD is empty: name the build folder.  Stop."
    assert expected in proc.stderr and proc.stdout == ""
    assert list(work.iterdir()) == [] and not (tmp_path / "tools" / "calls").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_refuses_sources_in_a_folder_whose_path_holds_whitespace(tmp_path: Path) -> None:
    """``make -C kernels`` in a checkout under "my dir" read its own folder as ".../ dir/kernels"
    and blamed the header it could not find there."""
    kernels = tmp_path / "my dir" / "kernels"
    shutil.copytree(binding.package_dir() / "include", kernels / "include")
    shutil.copy(binding.package_dir() / "Makefile", kernels)
    proc = subprocess.run(["make", "-C", str(kernels), "cpu", f"BUILD={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert (f"*** make cannot build from a folder whose path holds whitespace (this Makefile's "
            f"folder, read as '{tmp_path} dir/kernels'): move the checkout, or build with "
            "tf-build-kernels, which copies the sources to a folder make can use.  Stop.") \
        in proc.stderr
    assert not (tmp_path / "out").exists()


def test_package_data_ships_every_kernel_source() -> None:
    """pyproject.toml's package data covers every file of the kernel folders (the new
    kernels/cpu/cudart_host.c with them), so the installed package builds what the checkout
    does."""
    import fnmatch
    import tomllib

    project = tomllib.loads((helpers_kernels.REPO / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]
    kernels = binding.package_dir()
    for package in project["tool"]["setuptools"]["packages"]:
        if not package.startswith("tinyfaces_trt.kernels."):
            continue
        folder = kernels.joinpath(*package.split(".")[2:])
        files = [p.name for p in folder.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
        assert files, folder
        for name in files:
            assert any(fnmatch.fnmatch(name, g) for g in data.get(package, [])), (package, name)
    assert "cudart_host.c" in [p.name for p in (kernels / "cpu").iterdir()]


def test_build_cli_help_is_plain_text_with_examples_and_defaults(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text
    assert "Examples:\n  tf-build-kernels " in text
    assert "tf-build-kernels --arch 86 --out ./build" in text
    assert f"(default: {binding.cache_dir()})" in " ".join(text.split())
    assert "default: sm_80 + sm_90 SASS and compute_90 PTX" in " ".join(text.split())
    # the search order, not "the default output folder is where the binding looks"
    assert ("load_library() looks for the library in this order: $TINYFACES_KERNELS_LIB, "
            "kernels/build/ next to the package (make -C kernels), then the default output "
            "folder.") in " ".join(text.split())
    assert "is where the Python binding looks" not in " ".join(text.split())
    header = build.package_dir() / "include" / "tinyfaces_kernels.h"
    assert header.is_file() and f"From C or C++: include {header} and link" in " ".join(text.split())


def test_find_nvcc_reports_missing_toolkit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("NVCC", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("CUDA_PATH", str(tmp_path))
    monkeypatch.setattr(build, "DEFAULT_CUDA_HOMES", (str(tmp_path / "cuda"),))
    with pytest.raises(TinyFacesError, match="nvcc .* was not found .* Install the CUDA toolkit"):
        build.find_nvcc()
    # a $NVCC that is set but unusable is named (it was skipped silently)
    monkeypatch.setenv("NVCC", str(tmp_path / "missing-nvcc"))
    with pytest.raises(TinyFacesError) as info:
        build.find_nvcc()
    assert str(info.value).startswith(f"$NVCC is set to {tmp_path / 'missing-nvcc'}, which is not "
                                      "an executable file; nvcc (the CUDA compiler) was not found")


def _script(path: Path, body: str) -> Path:
    """An executable shell script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _fake_nvidia_smi(monkeypatch: pytest.MonkeyPatch, folder: Path, body: str, keep_path: bool = True) -> None:
    """An ``nvidia-smi`` running ``body``, first on the PATH (alone on it: ``keep_path=False``)."""
    _script(folder / "nvidia-smi", body)
    monkeypatch.setenv("PATH", str(folder) + (os.pathsep + os.environ["PATH"] if keep_path else ""))


def test_arch_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert build.gencode_for(None) is None
    assert build.gencode_for("80,86") == ("-gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,"
                                          "code=sm_86 -gencode arch=compute_86,code=compute_86")
    assert build.gencode_for("80,86,") == build.gencode_for("80,86")  # PTX of 86, not of ""
    for bad in ("sm_80", "0", "80,7"):
        with pytest.raises(TinyFacesError, match="compute capabilities"):
            build.gencode_for(bad)
    # native: each distinct GPU's compute capability, as explicit archs (was "-arch=native",
    # which nvcc turns into its default sm_75 where it sees no GPU)
    _fake_nvidia_smi(monkeypatch, tmp_path, 'echo "$@" > ' + str(tmp_path / "args") +
                     '\nprintf "9.0\\n8.6\\n9.0\\n"\n', keep_path=False)
    assert build.native_archs() == ["86", "90"]
    assert build.gencode_for("native") == build.gencode_for("86,90")
    assert (tmp_path / "args").read_text() == "--query-gpu=compute_cap --format=csv,noheader\n"


def test_arch_summary() -> None:
    assert build.arch_summary(build.default_gencode()) == "sm_80, sm_90 SASS + compute_90 PTX"
    assert build.arch_summary(build.gencode_for("75,120")) == "sm_75, sm_120 SASS + compute_120 PTX"
    assert build.arch_summary("-gencode arch=compute_86,code=[sm_86,compute_86]") == \
        "sm_86 SASS + compute_86 PTX"
    assert build.arch_summary("-arch=sm_86") == "GENCODE '-arch=sm_86'"


HINT = ("pass the target GPUs' compute capabilities instead, e.g. --arch 90 (H100/H200), "
        "--arch 80 (A100), --arch 86 (A10, RTX 30xx), --arch 89 (L4, RTX 40xx)")


@pytest.mark.parametrize("smi, reason", [
    (None, "nvidia-smi not found"),
    ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2\n'
     "exit 9\n",
     "nvidia-smi: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."),
    ('echo "No devices were found"\nexit 6\n', "nvidia-smi: No devices were found"),
    ("exit 0\n", "nvidia-smi: exit 0"),
], ids=["no-nvidia-smi", "no-driver", "no-device", "empty"])
def test_arch_native_without_a_gpu_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        smi: str | None, reason: str) -> None:
    """No GPU visible: exit 1 before anything is created (it built nvcc's default sm_75 and
    said "done")."""
    if smi is None:
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    else:
        _fake_nvidia_smi(monkeypatch, tmp_path / "bin", smi, keep_path=False)
    out = tmp_path / "out"
    assert build.main(["--arch", "native", "--out", str(out), "--nvcc", str(tmp_path / "nvcc")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"tf-build-kernels: error: --arch native: no GPU is visible ({reason}); {HINT}\n"
    assert not out.exists()


def test_arch_native_unreadable_compute_capability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(monkeypatch, tmp_path, 'echo "[N/A]"\n', keep_path=False)
    with pytest.raises(TinyFacesError) as info:
        build.gencode_for("native")
    assert str(info.value) == ("--arch native: cannot read a compute capability from nvidia-smi's "
                               f"'[N/A]'; {HINT}")


def _stand_in_nvcc(path: Path, write: str = "elf") -> Path:
    """An nvcc that compiles nothing: records its arguments in ``calls`` beside it and writes
    the ``-o`` file as ``write`` says: "elf" (an ELF shared-object header), "text", or nothing
    ("none", as ``--nvcc /usr/bin/true``)."""
    content = {"elf": r"\177ELF\2\1\1\0\0\0\0\0\0\0\0\0\3\0", "text": "not a library"}.get(write)
    out = f'printf \'{content}\' > "$2"' if content else ":"
    return _script(path, f'echo "$@" >> {path.parent / "calls"}\n'
                         f'while [ $# -gt 1 ]; do [ "$1" = -o ] && {out}; shift; done\n')


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_arch_native_builds_for_the_gpus_and_records_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The build record (.lib-config) names the resolved architectures, so a later
    ``--arch native`` on another GPU rebuilds (it held "-arch=native": "done in 0 s")."""
    nvcc = _stand_in_nvcc(tmp_path / "tools" / "nvcc")
    _fake_nvidia_smi(monkeypatch, tmp_path / "bin", 'printf "9.0\\n"\n')
    out = tmp_path / "out"
    argv = ["--arch", "native", "--nvcc", str(nvcc), "--out", str(out), "--no-example"]
    assert build.main(argv) == 0
    said = capsys.readouterr().out
    assert f"tf-build-kernels: building sm_90 SASS + compute_90 PTX into {out} (a minute or two) ..." in said
    assert f"{out / binding.LIBRARY_NAME} (built for sm_90 SASS + compute_90 PTX)\n" in said
    gencode = "-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"
    stamp = (out / ".lib-config").read_text()
    assert gencode in stamp and "-arch=native" not in stamp
    (call,) = [c for c in (tmp_path / "tools" / "calls").read_text().splitlines() if "-o" in c.split()]
    assert gencode in call and "-arch=native" not in call
    _fake_nvidia_smi(monkeypatch, tmp_path / "bin", 'printf "8.0\\n"\n')  # another machine
    assert build.main(argv) == 0
    assert "arch=compute_80,code=sm_80" in (out / ".lib-config").read_text()
    assert len((tmp_path / "tools" / "calls").read_text().splitlines()) == 4  # 2x --version, 2 builds


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_build_that_writes_no_library_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--nvcc /usr/bin/true`` exited 0 and said "done", leaving a dangling .so link."""
    out = tmp_path / "out"
    out.mkdir()

    def run(write: str) -> str:
        nvcc = _stand_in_nvcc(tmp_path / write / "nvcc", write)
        assert build.main(["--nvcc", str(nvcc), "--arch", "90", "--out", str(out), "-q"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        (line,) = captured.err.splitlines()
        prefix = "tf-build-kernels: error: the build ended without error but produced no library: "
        assert line.startswith(prefix) and line.endswith("; is --nvcc / $NVCC the CUDA toolkit's nvcc?")
        return line[len(prefix):].split(";")[0]

    versioned = out / f"{binding.LIBRARY_NAME}.{binding.ABI_VERSION}"
    assert run("none") == f"{out / binding.LIBRARY_NAME} is a link to the missing {versioned}"
    assert out.is_dir()  # it existed before: kept
    assert run("text") == f"{versioned} is not an ELF shared library"
    versioned.write_bytes(b"")
    assert run("none") == f"{versioned} is empty"
    good = _stand_in_nvcc(tmp_path / "good" / "nvcc")
    assert build.main(["--nvcc", str(good), "--arch", "90", "--out", str(out), "-q"]) == 0
    # another nvcc that writes nothing leaves the earlier library, older than the new record
    assert run("none") == f"{versioned} was not rewritten (it is older than .lib-config)"


def test_failed_build_removes_only_the_folders_it_created(tmp_path: Path) -> None:
    """The output folder was created before nvcc was looked for and left behind empty."""
    missing = str(tmp_path / "no-nvcc")
    assert build.main(["--nvcc", missing, "--out", str(tmp_path / "a" / "b"), "-q"]) == 1
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    assert build.main(["--nvcc", missing, "--out", str(tmp_path / "kept" / "new"), "-q"]) == 1
    assert build.main(["--nvcc", missing, "--out", str(tmp_path / "kept"), "-q"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_build_says_when_load_library_would_load_another_library(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A build into the default folder (the cache) is shadowed by ``kernels/build/`` next to the
    package or by $TINYFACES_KERNELS_LIB: it said "done" and load_library() kept the other."""
    nvcc = _stand_in_nvcc(tmp_path / "tools" / "nvcc")
    package = tmp_path / "package"
    monkeypatch.setattr(binding, "package_dir", lambda: package)
    monkeypatch.setenv(binding.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(binding.ENV_LIBRARY, raising=False)
    new = tmp_path / "cache" / "kernels" / binding.LIBRARY_NAME
    old = package / "build" / binding.LIBRARY_NAME
    old.parent.mkdir(parents=True)
    old.write_text("the make -C kernels build")
    argv = ["--nvcc", str(nvcc), "--arch", "90", "--no-example", "-q"]

    def warning(*extra: str) -> str:
        assert build.main(argv + list(extra)) == 0
        captured = capsys.readouterr()
        assert captured.out == ""
        return captured.err

    assert warning() == (f"tf-build-kernels: warning: load_library() will load {old}, not this build "
                         f"(it comes first in its search order); set TINYFACES_KERNELS_LIB={new} or "
                         f"remove {old} to use this build\n")
    assert [p for p in binding.library_candidates() if p.is_file()][0] == old  # what load_library takes
    monkeypatch.setenv(binding.ENV_LIBRARY, str(new))
    assert warning() == ""
    other = tmp_path / "other.so"
    other.write_text("x")
    monkeypatch.setenv(binding.ENV_LIBRARY, str(other))
    assert warning() == (f"tf-build-kernels: warning: load_library() will load {other}, which "
                         f"$TINYFACES_KERNELS_LIB names; set TINYFACES_KERNELS_LIB={new} to use this build\n")
    monkeypatch.setenv(binding.ENV_LIBRARY, str(tmp_path / "gone.so"))
    assert warning() == (f"tf-build-kernels: warning: $TINYFACES_KERNELS_LIB is set to {tmp_path / 'gone.so'}, "
                         "which does not exist, so load_library() fails; set "
                         f"TINYFACES_KERNELS_LIB={new} or unset it\n")
    monkeypatch.delenv(binding.ENV_LIBRARY)
    assert warning("--out", str(old.parent)) == ""  # into kernels/build/: it is the one loaded
    old.unlink()
    old.parent.joinpath(f"{binding.LIBRARY_NAME}.{binding.ABI_VERSION}").unlink()
    assert warning() == ""
    # verbose, and a folder the binding does not search: how to load it
    assert build.main(argv[:-1] + ["--out", str(tmp_path / "elsewhere")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.endswith(f"tf-build-kernels: load it with TINYFACES_KERNELS_LIB="
                                 f"{tmp_path / 'elsewhere' / binding.LIBRARY_NAME} (or load_library(path))\n")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_another_arch_or_compiler_rebuilds_the_library(tmp_path: Path) -> None:
    """make compared only file times: after a build, ``tf-build-kernels --arch 75`` (or another
    nvcc) said "Nothing to be done" and kept sm_80/sm_90 code, and ``make cpu
    CPU_SANITIZE=address`` the plain CPU build. A stand-in compiler records its calls and
    writes the library (nothing is compiled)."""
    calls = tmp_path / "calls"
    nvcc = tmp_path / "nvcc"
    nvcc.write_text('#!/bin/sh\necho "$@" >> ' + str(calls) + '\n'
                    'while [ $# -gt 1 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n')
    nvcc.chmod(0o755)

    def make(*variables: str, target: str = "lib") -> list[str]:
        """The compiler calls of one make run, less the CPU targets' probe of the compiler
        (``-ftrivial-auto-var-init=pattern -x c++ -E /dev/null``)."""
        before = calls.read_text().splitlines() if calls.exists() else []
        subprocess.run(["make", "-s", "-C", str(binding.package_dir()), target,
                        f"BUILD={tmp_path / 'build'}", f"NVCC={nvcc}", *variables],
                       check=True, capture_output=True, text=True)
        made = calls.read_text().splitlines()[len(before):] if calls.exists() else []
        return [c for c in made if not c.endswith(" -E /dev/null")]

    assert len(make()) == 1  # built
    assert make() == []  # up to date
    (rebuilt,) = make("GENCODE=-gencode arch=compute_75,code=sm_75")
    assert "arch=compute_75,code=sm_75" in rebuilt
    assert make("GENCODE=-gencode arch=compute_75,code=sm_75") == []
    assert make("GENCODE=-gencode arch=compute_75,code=sm_75", "EXTRA_NVCCFLAGS=-Xptxas -v") == []
    assert len(make()) == 1  # back to the default architectures
    quoted = "NVCCFLAGS=-O3 -Xcompiler '-DNAME=\"a b\"'"  # quotes in a flag: written as given
    assert len(make(quoted)) == 1 and make(quoted) == []
    # the CPU build too: `make cpu CPU_SANITIZE=address` after `make cpu` kept the plain one
    assert len(make("CXX=" + str(nvcc), target="cpu")) == 1
    assert make("CXX=" + str(nvcc), target="cpu") == []
    (rebuilt,) = make("CXX=" + str(nvcc), "CPU_SANITIZE=address", target="cpu")
    assert "-fsanitize=address" in rebuilt
    assert make("CXX=" + str(nvcc), "CPU_SANITIZE=address", target="cpu") == []


# --- host side of the CUDA stages without cuda-python ------------------------------------------

@pytest.fixture
def no_cuda_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``cuda`` unimportable, whatever is installed."""
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(cuda_device, "_runtime_module", None)


def test_gpu_available_is_false_without_cuda_python(no_cuda_python: None) -> None:
    assert cuda_device.gpu_available() is False
    with pytest.raises(BackendUnavailableError, match="needs cuda-python"):
        cuda_device.DeviceBuffer(16)
    with pytest.raises(BackendUnavailableError, match="needs cuda-python"):
        cuda_device.Stream()


def test_cuda_stages_need_cuda_python(no_cuda_python: None) -> None:
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor, CudaPreprocessor
    from tinyfaces_trt.core.config import DetectorConfig

    for stage in (CudaPreprocessor, CudaPostprocessor):
        with pytest.raises(BackendUnavailableError, match="cuda-python"):
            stage(DetectorConfig())


class _ForeignArray:
    """Stands in for a CuPy array / CUDA torch tensor (only the interface is read)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str = "<f4", strides=None) -> None:
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape, "typestr": typestr,
                                         "strides": strides, "version": 3}


def test_foreign_device_memory_is_accepted() -> None:
    assert cuda_device.device_pointer(0xABC00) == 0xABC00
    arr = cuda_device.as_device_array(_ForeignArray(0x1000, (1, 125, 4, 6)))
    assert (arr.ptr, arr.shape, arr.dtype, arr.nbytes) == (0x1000, (1, 125, 4, 6), np.float32, 125 * 24 * 4)
    assert cuda_device.device_pointer(arr) == 0x1000
    assert arr.__cuda_array_interface__ == {"shape": (1, 125, 4, 6), "typestr": "<f4",
                                            "data": (0x1000, False), "strides": None, "version": 3}
    strided = _ForeignArray(0x2000, (1, 125, 4, 6), strides=(12000, 96, 24, 4))
    assert cuda_device.as_device_array(strided).ptr == 0x2000
    with pytest.raises(TinyFacesError, match="C-contiguous"):
        cuda_device.as_device_array(_ForeignArray(0x2000, (1, 125, 4, 6), strides=(12000, 96, 4, 16)))
    raw = cuda_device.as_device_array(0x3000, shape=(1, 125, 2, 2))
    assert (raw.ptr, raw.shape, raw.dtype) == (0x3000, (1, 125, 2, 2), np.float32)
    with pytest.raises(TinyFacesError, match="needs an explicit shape"):
        cuda_device.as_device_array(0x3000)
    with pytest.raises(TinyFacesError, match="cannot take a device pointer"):
        cuda_device.device_pointer("0x10")


# --- the uncapped NMS's host side (tests/test_nms_uncapped.py checks its emulation) -------------

def test_nms_workspace_query_matches_the_emulated_layout(lib: binding.KernelLibrary) -> None:
    emulation = helpers_kernels.emulation()
    assert binding.MAX_NMS_CANDIDATES == binding.MAX_CAPACITY == 2**31 - 1
    for m in (1, 63, 1000, 131073, 650_000, 10**7, binding.MAX_NMS_CANDIDATES):
        assert lib.nms_workspace_size(m) == emulation.workspace_bytes(m), m


def test_nms_host_checks_accept_any_count_up_to_the_limit(lib: binding.KernelLibrary,
                                                          has_gpu: bool) -> None:
    params = binding.nms_params(0.3, 1.0, True, 1080, 1920)
    raw = lib.raw
    size = ctypes.c_size_t(0)
    assert raw.tf_nms_workspace_size(binding.MAX_NMS_CANDIDATES + 1, ctypes.byref(size)) \
        == Status.INVALID_CAPACITY
    assert "max_candidates = 2147483648 is outside [1, 2147483647]" in lib.last_error_message()
    need = lib.nms_workspace_size(650_000)
    # too small a workspace is refused on the host; the right size passes every host check
    assert raw.tf_nms(FAKE, 650_000, ctypes.byref(params), 650_000, FAKE, need - 1, FAKE, FAKE,
                      None) == Status.WORKSPACE_TOO_SMALL
    assert f"need {need}" in lib.last_error_message()
    if has_gpu:
        pytest.skip("a GPU is present (a launch on fake pointers would run)")
    status = raw.tf_nms(FAKE, 650_000, ctypes.byref(params), 650_000, FAKE, need, FAKE, FAKE, None)
    assert status == Status.CUDA_ERROR
    # the first CUDA call: CUB's size query, before any launch
    assert lib.last_error_message().startswith("cub::DeviceRadixSort::SortPairs (size query): ")
    with pytest.raises(KernelError, match="max_candidates = 0"):
        lib.nms(FAKE, 10, params, 0, FAKE, need, FAKE, FAKE)
