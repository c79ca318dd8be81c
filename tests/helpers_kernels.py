"""Driving the kernel library's C ABI in tests, on a GPU or through its CPU build.

:class:`KernelHarness` runs resize, decode and NMS through a :class:`~tinyfaces_trt.kernels.
binding.KernelLibrary` with the buffers of a target: ``cuda_device.DeviceBuffer`` and a
``Stream``, on a GPU (tests/test_kernels_gpu.py) or, with ``cuda_device`` over host memory
(tests/host_cudart.py), with ``libtinyfaces_kernels_cpu.so`` (``make -C kernels cpu``: the same
kernel sources run on the CPU, tests/test_kernels_cpu.py). The numpy oracles of what the raw
ABI must return live here too.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit  # the sigmoid, without overflow warnings at large |logit|

from helpers_run import load_script

from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.decode import Candidates, active_templates, decode_level
from tinyfaces_trt.runtime.nms import OverlapIndex, greedy_in_blocks, nms
from tinyfaces_trt.runtime.postprocess import finish_boxes
from tinyfaces_trt.runtime.preprocess import normalize
from tinyfaces_trt.runtime.resize import resize_bilinear_aa

REPO = Path(__file__).resolve().parents[1]


# --- the CPU build ---------------------------------------------------------------------------

def build_cpu_library(out: Path, sanitize: str = "") -> Path:
    """``make -C kernels cpu`` into ``out``; returns the .so."""
    cmd = ["make", "-s", "-C", str(REPO / "kernels"), "cpu", f"BUILD={out}"]
    if sanitize:
        cmd.append(f"CPU_SANITIZE={sanitize}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "libtinyfaces_kernels_cpu.so"


#: The C++ compiler of the CPU build (the Makefile's $(CXX)).
CXX = os.environ.get("CXX", "g++")


def cpu_build_missing() -> str:
    """Why the CPU build cannot be made here ("" when it can)."""
    import shutil

    missing = [tool for tool in ("make", CXX) if shutil.which(tool) is None]
    return f"the CPU build of the kernels needs {' and '.join(missing)}" if missing else ""


def cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (cuda_runtime_api.h, for the C example), or None."""
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and (Path(d) / "include" / "cuda_runtime_api.h").is_file():
            return Path(d) / "include"
    return None


def cpu_example_missing() -> str:
    """Why ``make -C kernels cpu-example`` cannot be made here ("" when it can)."""
    import shutil

    if shutil.which(os.environ.get("CC", "cc")) is None or cuda_include() is None:
        return "needs a C compiler and the CUDA toolkit's cuda_runtime_api.h"
    return ""


_built: dict[str, Any] = {}


def cpu_library_path(tmp_root: Any) -> Path:
    """The CPU build for this test run: $TINYFACES_KERNELS_CPU_LIB (the sanitizer test's
    instrumented one), else built once into a folder of ``tmp_root`` (a tmp_path_factory)
    shared by all pytest-xdist workers (:func:`shared_cpu_build`)."""
    given = os.environ.get("TINYFACES_KERNELS_CPU_LIB")
    if given:
        return Path(given)
    return shared_cpu_build(tmp_root)[0] / "libtinyfaces_kernels_cpu.so"


def shared_cpu_build(tmp_root: Any) -> tuple[Path, str | None]:
    """(folder, example_error) of this run's CPU build, made once for all pytest-xdist workers
    (``run_folder(tmp_root, "kernels-cpu")``). Where the C example can be built
    (:func:`cpu_example_missing`) the folder is made by one ``make -C kernels cpu-example``
    into the empty folder (the library and decode_nms_demo_cpu: what
    tests/test_kernels_cpu.py's cpu-example test checks, so that the library is compiled once
    per run, not twice); ``example_error`` is its output if that failed (the library is then
    made by ``make cpu`` alone, so that only the example's test fails), else None. Elsewhere
    ``make cpu`` and an example_error saying why not."""
    if "folder" not in _built:
        from helpers_run import run_folder

        folder, lock = run_folder(tmp_root, "kernels-cpu")
        error = cpu_example_missing() or None
        with lock:  # make is a no-op for the workers that come second
            if error is None:
                proc = subprocess.run(["make", "-s", "-C", str(REPO / "kernels"), "cpu-example",
                                       f"BUILD={folder}"], capture_output=True, text=True,
                                      timeout=300)
                if proc.returncode != 0:
                    error = f"make cpu-example failed:\n{proc.stdout}{proc.stderr}"
            build_cpu_library(folder)
        _built["folder"], _built["example_error"] = folder, error
    return _built["folder"], _built["example_error"]


# --- inputs -------------------------------------------------------------------------------------

def levels_at(image_hw: tuple[int, int], exponents: Any) -> list[PyramidLevel]:
    """Pyramid levels at scales 2**e of an image."""
    out = []
    for i, e in enumerate(exponents):
        s = 2.0 ** e
        out.append(PyramidLevel(i, e, s, math.ceil(s * image_hw[0]), math.ceil(s * image_hw[1])))
    return out


def map_size(level: PyramidLevel) -> tuple[int, int]:
    return math.ceil(level.height / 8), math.ceil(level.width / 8)


def random_maps(rng: np.random.Generator, levels: list[PyramidLevel], cls_mean: float = -1.0,
                cls_sigma: float = 1.5, reg_sigma: float = 0.3) -> list[np.ndarray]:
    """(1, 125, h, w) float32 score maps of normal noise, one per level."""
    maps = []
    for level in levels:
        h, w = map_size(level)
        cls = rng.normal(cls_mean, cls_sigma, (NUM_TEMPLATES, h, w))
        reg = rng.normal(0.0, reg_sigma, (4 * NUM_TEMPLATES, h, w))
        maps.append(np.concatenate([cls, reg]).astype(np.float32)[None])
    return maps


def candidate_count(maps: list[np.ndarray], levels: list[PyramidLevel], config: DetectorConfig) -> int:
    """Cells above the threshold in active templates (every box of these maps is finite)."""
    total = 0
    for m, level in zip(maps, levels):
        active = active_templates(level.scale, config)
        total += int(((m[0, :NUM_TEMPLATES] > config.logit_thresh) & active[:, None, None]).sum())
    return total


def square_boxes(centres: Any, sizes: Any) -> np.ndarray:
    c = np.asarray(centres, np.float64)
    s = np.asarray(sizes, np.float64)[:, None]
    return np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)


def emulation() -> Any:
    """kernels/nms_emulation.py (a file of the checkout, not of the package)."""
    name = "tinyfaces_nms_emulation"
    if name not in sys.modules:
        load_script("kernels/nms_emulation.py", name)
    return sys.modules[name]


# --- oracles ------------------------------------------------------------------------------------

def runtime_nms_params(config: DetectorConfig, image_hw: tuple[int, int],
                       lookahead: int = binding.NMS_WALK_ORDER,
                       drop_outside: bool = True) -> binding.NmsParams:
    """``tf_nms_params`` as the CUDA postprocessor passes them for ``config``: clipped per
    ``config.clip_boxes`` in the variant's pixels (``pixel_base``), the boxes outside the
    image dropped (``drop_outside=False``: every kept box written)."""
    return binding.nms_params(config.nms_thresh, config.box_pixel_offset, config.clip_boxes,
                              *image_hw, lookahead, score_logit=config.score == "logit",
                              pixel_base=config.coordinate_base, drop_outside=drop_outside)


def nms_rows_reference(maps: list[np.ndarray], levels: list[PyramidLevel], image_hw: tuple[int, int],
                       config: DetectorConfig, drop_outside: bool = True) -> np.ndarray:
    """What ``tf_nms`` writes for these maps with :func:`runtime_nms_params`: numpy's kept rows
    in NMS order, those entirely outside the image dropped and the rest clipped when
    ``config.clip_boxes``, both in the variant's pixels (``runtime.postprocess.finish_boxes``:
    the host path's detections); ``drop_outside=False``: none dropped, every row clipped when
    ``config.clip_boxes``. Column 4: sigmoid(logit), or with ``config.score == "logit"`` the
    float32 logit itself (``tf_nms_params.score_logit``)."""
    parts, base = [], 0
    for m, level in zip(maps, levels):
        parts.append(decode_level(m, level, config, base))
        base += NUM_TEMPLATES * m.shape[2] * m.shape[3]
    c = Candidates.concatenate(parts)
    keep = nms(c.boxes, c.logits, c.keys, config.nms_thresh, config.box_pixel_offset)
    score = c.logits[keep].astype(np.float64)
    if config.score != "logit":
        with np.errstate(over="ignore"):
            score = 1.0 / (1.0 + np.exp(-score))
    rows = np.concatenate([c.boxes[keep], score[:, None]], axis=1)
    if drop_outside:
        return finish_boxes(rows, image_hw, config).astype(np.float32)
    if config.clip_boxes:
        (height, width), base = image_hw, config.coordinate_base
        np.clip(rows[:, 0:4:2], base, base + width - 1, out=rows[:, 0:4:2])
        np.clip(rows[:, 1:4:2], base, base + height - 1, out=rows[:, 1:4:2])
    return rows.astype(np.float32)


def assert_same_detections(got: np.ndarray, want: np.ndarray) -> None:
    """DESIGN.md's tolerances: same count and order, boxes 1e-3 px, probabilities 1e-6."""
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-3)
    np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=0, atol=1e-6)


# --- float32 oracles: what the kernels compute exactly, and how far that is from numpy's --------

def decode_f32(maps: list[np.ndarray], levels: list[PyramidLevel],
               config: DetectorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (N, 4) float32, logits float32, keys uint32) of ``tf_decode_level`` over the
    levels, computed on the host in float32 as decode.cu writes it, without fused
    multiply-adds (the CPU build's arithmetic; nvcc may fuse, and device ``expf`` is within 2
    ulps, so a GPU's boxes can differ in the last bits). C order over (level, c, y, x)."""
    boxes, logits, keys, base = [], [], [], 0
    f = np.float32
    for m, level in zip(maps, levels):
        sm = np.asarray(m, np.float32)[0]
        _, h, w = sm.shape
        cls = sm[:NUM_TEMPLATES]
        mask = (cls > f(config.logit_thresh)) & active_templates(level.scale, config)[:, None, None]
        c, y, x = np.nonzero(mask)
        t = np.asarray(config.templates[:, :4], np.float32)
        tx, ty, tw, th = (sm[(k + 1) * NUM_TEMPLATES + c, y, x] for k in range(4))
        stride, offset, scale = f(config.stride), f(config.offset), f(level.scale)
        cw, ch = (t[c, 2] - t[c, 0]) + f(1), (t[c, 3] - t[c, 1]) + f(1)
        with np.errstate(over="ignore", invalid="ignore"):
            rcx = (x.astype(f) * stride + offset) + cw * tx
            rcy = (y.astype(f) * stride + offset) + ch * ty
            rcw, rch = cw * np.exp(tw), ch * np.exp(th)
            b = np.stack([(rcx - rcw / f(2)) / scale, (rcy - rch / f(2)) / scale,
                          (rcx + rcw / f(2)) / scale, (rcy + rch / f(2)) / scale], 1)
        finite = np.isfinite(b).all(axis=1)
        boxes.append(b[finite])
        logits.append(cls[c, y, x][finite])
        keys.append((base + (c.astype(np.int64) * h + y) * w + x)[finite].astype(np.uint32))
        base += NUM_TEMPLATES * h * w
    return np.concatenate(boxes), np.concatenate(logits), np.concatenate(keys)


def greedy_nms_f32(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, thresh: float,
                   offset: float) -> np.ndarray:
    """What ``tf_nms`` keeps, exactly: serial greedy NMS in the kernel's order
    (``nms_emulation.nms_order``) with the kernel's float32 predicate
    (``nms_emulation.overlaps``: IoU > t, every operation rounded to float32), i.e.
    ``nms_emulation.emulate_nms(...).kept`` (tests/test_kernels_cpu.py checks that they are
    equal), computed in ``runtime.nms``'s blocks (``greedy_in_blocks``): seconds at 650k candidates where the
    emulation of the walks takes minutes. Returns indices into the inputs, NMS order."""
    e = emulation()
    b_in = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = e.nms_order(np.asarray(logits, np.float32), np.asarray(keys, np.uint32))
    b = b_in[order]
    area = e.geometry(b, offset)[2]
    columns = np.ascontiguousarray(b.T)  # (4, N): a pair's boxes gathered column by column

    def suppresses(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # b[i] row by row, as (N, 4) views of (4, N) gathers (the same float32 values, several
        # times faster than gathering 16-byte rows: tens of millions of pairs at 1080p)
        bi, bj = np.take(columns, i, axis=1).T, np.take(columns, j, axis=1).T
        with np.errstate(all="ignore"):  # boxes apart in x never suppress, whatever the t
            iw = (np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])) + np.float32(offset)
        return (iw > 0) & e.overlaps(bi, np.take(area, i), bj, np.take(area, j), thresh, offset)

    return order[greedy_in_blocks(OverlapIndex(b, offset, thresh), suppresses)].astype(np.int64)


#: The kernels decode in float32, numpy in float64 (boxes ~1e-7 relative apart): their kept
#: sets may differ where a pair's IoU lies within this of nms_thresh (pairs at IoU 0.3 - 2.5e-7 in float64
#: do, in test_uncapped_650k_from_a_1080p_pyramid) ...
IOU_MARGIN = 1e-5
#: ... on at most this fraction of numpy's kept boxes (at least 4 boxes).
MAX_UNMATCHED_FRACTION = 1e-3


def float64_discrepancies(kept_keys: np.ndarray, maps: list[np.ndarray],
                          levels: list[PyramidLevel], config: DetectorConfig) -> dict[str, Any]:
    """The float32 result's kept canonical keys against numpy's float64 decode + NMS
    (``runtime.decode`` + ``runtime.nms``): the keys kept by one only, and, for each, why.

    A box is decided differently only through an earlier box of either kept set: one whose
    float64 IoU with it lies within :data:`IOU_MARGIN` of the threshold (the pair's IoU is
    on different sides of the threshold in float32 and float64), or one itself decided
    differently that overlaps it (IoU > t - margin: the first difference cascades). Both runs
    sort identically (same float32 logits, same keys). ``unexplained`` lists the keys with
    neither; ``numpy_kept`` is numpy's count."""
    parts, base = [], 0
    for m, level in zip(maps, levels):
        parts.append(decode_level(m, level, config, base))
        base += NUM_TEMPLATES * m.shape[2] * m.shape[3]
    c = Candidates.concatenate(parts)
    t, o = float(config.nms_thresh), float(config.box_pixel_offset)
    want = c.keys[nms(c.boxes, c.logits, c.keys, t, o)]
    got = np.asarray(kept_keys, np.int64)
    differ = np.setxor1d(want, got)
    rank = np.empty(len(c.keys), np.int64)  # NMS rank of each candidate
    rank[np.lexsort((c.keys, -c.logits.astype(np.float64)))] = np.arange(len(c.keys))
    by_key = np.argsort(c.keys, kind="stable")

    def index(keys: np.ndarray) -> np.ndarray:
        """The candidates of canonical keys (KeyError for a key no candidate has)."""
        at = by_key[np.minimum(np.searchsorted(c.keys[by_key], keys), len(by_key) - 1)]
        if len(at) and not np.array_equal(c.keys[at], keys):
            raise KeyError(np.setdiff1d(keys, c.keys).tolist())
        return at

    either = np.union1d(want, got)
    at_either = index(either)
    bx = c.boxes[at_either]
    area = (bx[:, 2] - bx[:, 0] + o) * (bx[:, 3] - bx[:, 1] + o)
    unexplained, reasons = [], {}
    for key, j in zip(differ.tolist(), index(differ).tolist()):
        bj = c.boxes[j]
        iw = np.maximum(0.0, np.minimum(bx[:, 2], bj[2]) - np.maximum(bx[:, 0], bj[0]) + o)
        ih = np.maximum(0.0, np.minimum(bx[:, 3], bj[3]) - np.maximum(bx[:, 1], bj[1]) + o)
        inter = iw * ih
        iou = inter / (area + (bj[2] - bj[0] + o) * (bj[3] - bj[1] + o) - inter)
        earlier = rank[at_either] < rank[j]
        near = earlier & (np.abs(iou - t) <= IOU_MARGIN)
        cascade = earlier & np.isin(either, differ) & (iou > t - IOU_MARGIN)
        if near.any():
            reasons[key] = ("near", int(either[near][0]), float(iou[near][0]))
        elif cascade.any():
            reasons[key] = ("cascade", int(either[cascade][0]), float(iou[cascade][0]))
        else:
            unexplained.append(key)
    return {"numpy_kept": len(want), "only_numpy": np.setdiff1d(want, got).tolist(),
            "only_float32": np.setdiff1d(got, want).tolist(), "reasons": reasons,
            "unexplained": unexplained}


def assert_near_float64_nms(kept_keys: np.ndarray, maps: list[np.ndarray],
                            levels: list[PyramidLevel], config: DetectorConfig) -> dict[str, Any]:
    """DESIGN.md's float32-vs-float64 contract of the kept set: every box kept by one of the
    float32 result and numpy's float64 decode + NMS only is explained by a pair within
    :data:`IOU_MARGIN` of the threshold (or a cascade of one), and there are at most
    ``max(4, MAX_UNMATCHED_FRACTION * numpy's kept)`` of them. Returns the discrepancies."""
    d = float64_discrepancies(kept_keys, maps, levels, config)
    unmatched = len(d["only_numpy"]) + len(d["only_float32"])
    assert not d["unexplained"], d
    assert unmatched <= max(4, MAX_UNMATCHED_FRACTION * d["numpy_kept"]), d
    return d


def assert_kernel_keeps_float32_greedy(harness: "KernelHarness", run: "RawRun", got: np.ndarray,
                                       maps: list[np.ndarray], levels: list[PyramidLevel],
                                       config: DetectorConfig,
                                       image_hw: tuple[int, int]) -> dict[str, Any]:
    """The kernel's contract on its own decode: the candidates ``run`` decoded equal the host
    float32 decode (:func:`decode_f32`; same keys and logits, boxes within 1e-3 px: a GPU may
    fuse multiply-adds); ``tf_nms`` unclipped with none dropped writes exactly
    :func:`greedy_nms_f32`'s kept boxes, in its order (bit for bit); and its rows ``got``
    (:func:`runtime_nms_params`) are exactly those finished as the host finishes float32
    rows (``finish_boxes``). Against numpy's float64 decode + NMS,
    :func:`assert_near_float64_nms`, whose discrepancies are returned (with
    ``float32_kept``: the boxes NMS kept, before any was dropped)."""
    boxes, logits, keys = harness.candidates(run.cand, run.capacity)
    host_boxes, host_logits, host_keys = decode_f32(maps, levels, config)
    by_key, host_by_key = np.argsort(keys), np.argsort(host_keys)
    np.testing.assert_array_equal(keys[by_key], host_keys[host_by_key])
    np.testing.assert_array_equal(logits[by_key], host_logits[host_by_key])
    np.testing.assert_allclose(boxes[by_key], host_boxes[host_by_key], rtol=0, atol=1e-3)
    kept = greedy_nms_f32(boxes, logits, keys, config.nms_thresh, config.box_pixel_offset)
    every_params = runtime_nms_params(replace(config, clip_boxes=False), image_hw, drop_outside=False)
    every, _ = harness.nms(run.cand, run.capacity, every_params, max(1, len(boxes)))
    assert every.shape == (len(kept), 5)
    np.testing.assert_array_equal(every[:, :4], boxes[kept])
    np.testing.assert_allclose(every[:, 4], expit(logits[kept].astype(np.float64)), rtol=0, atol=1e-6)
    assert 0 < len(got)
    np.testing.assert_array_equal(got, finish_boxes(every, image_hw, config))  # (-0.0 == 0.0)
    return {**assert_near_float64_nms(keys[kept], maps, levels, config), "float32_kept": len(kept)}


# --- the harness --------------------------------------------------------------------------------

class RawRun:
    """decode + NMS through the raw C API on one candidate buffer (kept for re-runs)."""

    def __init__(self, harness: "KernelHarness", maps: list[np.ndarray], levels: list[PyramidLevel],
                 config: DetectorConfig, capacity: int | None = None) -> None:
        lib, self.harness, self.config = harness.lib, harness, config
        self.capacity = capacity or max(1, sum(25 * m.shape[2] * m.shape[3] for m in maps))
        self.cand = harness.buffer(lib.candidates_size(self.capacity))
        self._inputs = []
        lib.candidates_reset(self.cand, harness.stream)
        key_base = 0
        templates = config.templates[:, :4]
        for m, level in zip(maps, levels):
            d = harness.buffer(m.nbytes)
            d.upload(np.ascontiguousarray(m), harness.stream)
            self._inputs.append(d)
            h, w = m.shape[2:]
            params = binding.decode_params(templates, active_templates(level.scale, config),
                                           config.logit_thresh, config.stride, config.offset, level.scale)
            lib.decode_level(d, h, w, params, key_base, self.cand, self.capacity, harness.stream)
            key_base += 25 * h * w

    def nms(self, image_hw: tuple[int, int], max_candidates: int,
            lookahead: int = binding.NMS_WALK_ORDER,
            drop_outside: bool = True) -> tuple[np.ndarray, dict[str, int]]:
        """(rows, stats) of ``tf_nms`` over the buffer with :func:`runtime_nms_params`."""
        params = runtime_nms_params(self.config, image_hw, lookahead, drop_outside)
        return self.harness.nms(self.cand, self.capacity, params, max_candidates)


#: The CPU build runs the warp NMS rule (each box a warp of 32 fibers, switching at every
#: collective) on at most this many boxes of a crafted case: its first ones.
QUICK_WARP_BOXES = 600


class KernelHarness:
    """The raw C ABI of one kernel library with one kind of buffer and stream.

    ``quick``: the CPU build (each CUDA thread a fiber) runs the largest cases smaller.
    """

    def __init__(self, lib: Any, buffer: Any, stream: Any, quick: bool = False) -> None:
        self.lib, self.buffer, self.stream, self.quick = lib, buffer, stream, quick

    def nms(self, candidates: Any, capacity: int, params: Any,
            max_candidates: int) -> tuple[np.ndarray, dict[str, int]]:
        """``tf_nms`` over a candidate buffer: the (num_kept, 5) rows and the stats."""
        lib, stream, new = self.lib, self.stream, self.buffer
        ws_bytes = lib.nms_workspace_size(max_candidates)
        with new(ws_bytes) as ws, new(max_candidates * 20) as out, new(16) as stats_buf:
            lib.nms(candidates, capacity, params, max_candidates, ws, ws_bytes, out, stats_buf, stream)
            stats = np.zeros(1, binding.NMS_STATS_DTYPE)
            stats_buf.download(stats, stream)
            stream.synchronize()
            rows = np.empty((int(stats[0]["num_kept"]), 5), np.float32)
            if len(rows):
                out.download(rows, stream)
                stream.synchronize()
        return rows, {k: int(stats[0][k]) for k in binding.NMS_STATS_DTYPE.names}

    def raw_run(self, maps: list[np.ndarray], levels: list[PyramidLevel], config: DetectorConfig,
                capacity: int | None = None) -> RawRun:
        return RawRun(self, maps, levels, config, capacity)

    def detections(self, maps: list[np.ndarray], levels: list[PyramidLevel], config: DetectorConfig,
                   image_hw: tuple[int, int], max_candidates: int | None = None,
                   lookahead: int = binding.NMS_WALK_ORDER,
                   drop_outside: bool = True) -> tuple[np.ndarray, dict[str, int]]:
        """decode + NMS of the maps (:meth:`RawRun.nms`); asserts no overflow."""
        run = RawRun(self, maps, levels, config)
        m = max_candidates or max(1, candidate_count(maps, levels, config))
        boxes, stats = run.nms(image_hw, m, lookahead, drop_outside)
        assert stats["overflow"] == 0, stats
        return boxes, stats

    def candidates(self, candidates: Any, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (N, 4) float32, logits float32, canonical keys uint32) that ``tf_decode_level``
        wrote into a candidate buffer, N = min(count, capacity), in slot order (arbitrary)."""
        raw = np.empty(self.lib.candidates_size(capacity), np.uint8)
        candidates.download(raw, self.stream)
        self.stream.synchronize()
        n = min(int(raw[:4].view(np.uint32)[0]), capacity)
        sort_keys = raw[256:256 + 8 * n].view("<u8")
        start = 256 + (8 * capacity + 255) // 256 * 256
        boxes = raw[start:start + 16 * n].view(np.float32).reshape(n, 4).copy()
        ascending = ~(sort_keys >> np.uint64(32)).astype(np.uint32)  # inverse of tf::sort_key
        bits = np.where(ascending & np.uint32(0x80000000), ascending & np.uint32(0x7FFFFFFF),
                        ~ascending)
        return boxes, bits.astype(np.uint32).view(np.float32), (sort_keys & 0xFFFFFFFF).astype(np.uint32)

    def candidate_buffer(self, boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray,
                         capacity: int) -> np.ndarray:
        """Host image of a candidate buffer (layout of kernels/src/candidates.cuh)."""
        n = len(boxes)
        raw = np.zeros(self.lib.candidates_size(capacity), np.uint8)
        raw[:4] = np.array([n], np.uint32).view(np.uint8)
        key_bytes = emulation().sort_keys(logits, keys).astype("<u8").view(np.uint8)
        raw[256:256 + key_bytes.size] = key_bytes
        start = 256 + (8 * capacity + 255) // 256 * 256
        box_bytes = np.ascontiguousarray(boxes, np.float32).view(np.uint8).ravel()
        raw[start:start + box_bytes.size] = box_bytes
        return raw

    def nms_on(self, boxes: Any, logits: Any, keys: Any, thresh: float, offset: float,
               max_candidates: int | None = None, lookahead: int = binding.NMS_WALK_ORDER,
               score_logit: bool = False, image_hw: tuple[int, int] | None = None,
               clip: bool = False, pixel_base: float = 0.0,
               drop_outside: bool = False) -> np.ndarray:
        """``tf_nms`` rows of a crafted candidate buffer (row[4] the logit with
        ``score_logit``, else its sigmoid); by default unclipped and none dropped, else
        clipped to / dropped outside the ``image_hw`` image (``pixel_base``: its first
        pixel's coordinate)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        logits = np.asarray(logits, np.float32)
        keys = np.asarray(keys, np.uint32)
        n = len(boxes)
        m = max_candidates or max(1, n)
        capacity = max(1, n)
        host = self.candidate_buffer(boxes, logits, keys, capacity)
        with self.buffer(host.nbytes) as cand:
            cand.upload(host, self.stream)
            params = binding.nms_params(thresh, offset, clip,
                                        *(image_hw or (binding.MAX_DIM, binding.MAX_DIM)),
                                        lookahead, score_logit, pixel_base, drop_outside)
            rows, stats = self.nms(cand, capacity, params, m)
        assert stats["overflow"] == 0 and stats["num_candidates"] == n, stats
        return rows

    def assert_kept(self, boxes: Any, logits: Any, keys: Any, thresh: float, offset: float) -> None:
        """The kernel keeps runtime.nms's boxes with every resolve rule
        (tf_nms_params.lookahead)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        logits = np.asarray(logits, np.float32)
        keys = np.asarray(keys, np.int64)
        for lookahead in binding.NMS_RULES.values():
            if lookahead == binding.NMS_WARP and self.quick:  # 32 fibers a box: a prefix
                boxes, logits, keys = (a[:QUICK_WARP_BOXES] for a in (boxes, logits, keys))
            want = nms(boxes.astype(np.float64), logits, keys, thresh, offset)
            rows = self.nms_on(boxes, logits, keys, thresh, offset, lookahead=lookahead)
            assert rows.shape == (len(want), 5), lookahead
            np.testing.assert_array_equal(rows[:, :4], boxes[want])  # copies, unclipped: exact
            np.testing.assert_allclose(rows[:, 4], expit(logits[want].astype(np.float64)),
                                       rtol=0, atol=1e-6)

    def resize(self, image: np.ndarray, dst_hw: tuple[int, int], config: DetectorConfig,
               row_bytes: int = 0, planned: bool = False) -> np.ndarray:
        """``tf_resize_normalize`` of an (h, w, 3) uint8 image (rows ``row_bytes`` apart);
        ``planned``: ``tf_resize_plan`` + ``tf_resize_normalize_planned`` instead."""
        h, w = image.shape[:2]
        a, b = config.normalization.scale_and_bias()
        host = image if not row_bytes else np.zeros((h, row_bytes), np.uint8)
        if row_bytes:
            host[:, : 3 * w] = image.reshape(h, 3 * w)
        lib, stream, new = self.lib, self.stream, self.buffer
        plan_bytes, rows_bytes = lib.resize_plan_size(h, w, *dst_hw)
        ws_bytes = rows_bytes if planned else lib.resize_workspace_size(h, w, *dst_hw)
        with new(host.nbytes) as src, new(3 * dst_hw[0] * dst_hw[1] * 4) as dst, \
                new(ws_bytes) as ws, new(plan_bytes) as plan:
            src.upload(np.ascontiguousarray(host), stream)
            if planned:
                lib.resize_plan(h, w, *dst_hw, plan, plan_bytes, stream)
                lib.resize_normalize_planned(src, h, w, dst, *dst_hw, a, b, plan, plan_bytes,
                                             ws, ws_bytes, stream, src_row_bytes=row_bytes)
            else:
                lib.resize_normalize(src, h, w, dst, *dst_hw, a, b, ws, ws_bytes, stream,
                                     src_row_bytes=row_bytes)
            out = np.empty((1, 3, *dst_hw), np.float32)
            dst.download(out, stream)
            stream.synchronize()
        return out


def resize_reference(image: np.ndarray, dst_hw: tuple[int, int], config: DetectorConfig) -> np.ndarray:
    return normalize(resize_bilinear_aa(image, *dst_hw), config)


# --- the shared cases ----------------------------------------------------------------------------

def collect_cases(namespace: dict[str, Any], *modules: Any) -> None:
    """Puts the cases of ``modules`` (their ``__all__``: tests/kernel_abi_cases.py,
    tests/kernel_stage_cases.py) into a test module's ``namespace``, where pytest collects them
    with that module's fixtures (``kh``, ``stream``); a case added to a case file runs in every
    module that collects it."""
    for module in modules:
        namespace.update({name: getattr(module, name) for name in module.__all__})


# --- the CUDA layer over host memory and the CPU build -----------------------------------------

def use_cpu_build_for_cuda_stages(monkeypatch: Any, library_path: Path,
                                  finalizers: bool = True) -> Any:
    """Points ``runtime.backends.cuda_device`` at host memory (tests/host_cudart.py) and the
    kernel loader at the CPU build, so that DeviceBuffer, Stream, Event, CudaPreprocessor,
    CudaPostprocessor and detector_for run unchanged without a GPU. Returns the
    :class:`~host_cudart.HostCudart` (its ledger of allocations, streams and events);
    ``finalizers``: see :func:`host_cudart.install`.

    The CPU build runs each lane of the warp NMS rule as a fiber (minutes for the thousands of
    candidates a pipeline test makes): CudaPostprocessor's default rule there is the lookahead
    rule (the same boxes; the warp rule's own cases run on their first
    :data:`QUICK_WARP_BOXES` boxes, and in full on a GPU)."""
    import host_cudart

    from tinyfaces_trt.runtime.backends import cuda_stages

    monkeypatch.setenv(binding.ENV_LIBRARY, str(library_path))
    monkeypatch.setattr(cuda_stages, "DEFAULT_NMS_RULE", "lookahead")
    return host_cudart.install(monkeypatch, finalizers=finalizers)


def kernel_constants(*sources: str) -> dict[str, object]:
    """The ``constexpr`` constants of kernels/src files, evaluated (float ones as float32,
    integer ones with integer division)."""
    values: dict[str, object] = {}
    for source in sources:
        text = (REPO / "kernels" / "src" / source).read_text()
        for type_, body in re.findall(r"constexpr\s+(int|uint8_t|uint32_t|float|size_t)\s+([^;]+);",
                                      text):
            for declaration in body.split(","):
                if "=" not in declaration or "(" in declaration.split("=", 1)[0]:
                    continue  # a constexpr function, not a constant
                name, expr = (part.strip() for part in declaration.split("=", 1))
                expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+(?:\.\d+)?)(?:f|u)\b", r"\1", expr)
                if type_ != "float":  # C's integer division (of these non-negative constants)
                    expr = expr.replace("/", "//")
                value = eval(expr, {"__builtins__": {}}, dict(values))  # noqa: S307 (our source)
                bits = {"uint8_t": 8, "uint32_t": 32}.get(type_)
                values[name] = (np.float32(value) if type_ == "float" else
                                value & ((1 << bits) - 1) if bits else value)
    return values
