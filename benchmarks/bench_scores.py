"""Decode + NMS micro-benchmark on synthetic score maps with realistic candidate clusters.

Seeded random weights give score maps unlike a trained detector's, so decode/NMS are also
timed on synthesized maps: faces are blobs. Around each face centre, the few active
templates closest to the face's size pass the threshold in a small window of cells, with
logits falling off away from the centre and regression outputs pointing at the face box,
so the decoded boxes of one face overlap heavily and NMS suppresses most of them, as on
real detector output. Faces are added until the wanted number of candidates is reached
(the actual count, a little above the target, is reported).

The map is one pyramid level: by default the 2x level of a 1920x1080 image (a 270x480
score map, scale 2), the level that dominates real 1080p images.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS, NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.decode import active_templates, decode_level
from tinyfaces_trt.runtime.nms import nms
from tinyfaces_trt.runtime.postprocess import select_detections
from tinyfaces_trt.core.pyramid import PyramidLevel

from bench_common import one_line, profiled_kernels, short_names, summarize, time_calls
from bench_parity import compare_with_reference

DEFAULT_MAP = (270, 480)   # score map (h, w) of a 3840x2160 input = the 2x level of 1080p
DEFAULT_SCALE = 2.0


@dataclass(frozen=True)
class SyntheticLevel:
    """A synthesized score map and the pyramid level it belongs to."""

    score_map: np.ndarray     # (1, 125, h, w) float32
    level: PyramidLevel
    candidates: int           # cells passing the threshold on active templates
    faces: int

    @property
    def image_hw(self) -> tuple[int, int]:
        """The image whose pyramid has this level (the CUDA stage's buffers are sized for it)."""
        return (round(self.level.height / self.level.scale), round(self.level.width / self.level.scale))


def clustered_score_map(target: int, config: DetectorConfig, map_hw: tuple[int, int] = DEFAULT_MAP,
                        scale: float = DEFAULT_SCALE, seed: int = 0) -> SyntheticLevel:
    """A score map with about ``target`` candidates in face-like clusters (see module doc)."""
    h, w = map_hw
    rng = np.random.default_rng([seed, target, 0x5C0E])
    thresh = float(config.logit_thresh)
    active = np.flatnonzero(active_templates(scale, config))
    t = config.templates
    tw_px = t[:, 2] - t[:, 0] + 1
    th_px = t[:, 3] - t[:, 1] + 1
    sm = np.empty((NUM_CHANNELS, h, w), dtype=np.float32)
    sm[:NUM_TEMPLATES] = np.minimum(rng.normal(thresh - 5.0, 1.5, (NUM_TEMPLATES, h, w)),
                                    thresh - 0.25)
    sm[NUM_TEMPLATES:] = rng.normal(0.0, 0.1, (NUM_CHANNELS - NUM_TEMPLATES, h, w))
    passing = np.zeros((NUM_TEMPLATES, h, w), dtype=bool)
    stride, offset = float(config.stride), float(config.offset)
    count = faces = 0
    while count < target:
        faces += 1
        fy, fx = rng.uniform(0, h), rng.uniform(0, w)          # face centre, in cells
        size = rng.uniform(0.6, 1.6) * np.median(tw_px[active])  # face width at this level, px
        aspect = rng.uniform(1.15, 1.4)
        k = int(rng.integers(2, 5))                              # templates firing on it
        near = active[np.argsort(np.abs(np.log(tw_px[active] / size)))[:k]]
        r = int(rng.integers(1, 4))                              # window half-size, cells
        y0, y1 = max(0, int(fy) - r), min(h, int(fy) + r + 1)
        x0, x1 = max(0, int(fx) - r), min(w, int(fx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.meshgrid(np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
        dist = np.hypot(yy + 0.5 - fy, xx + 0.5 - fx) / (r + 1)
        peak = rng.uniform(1.0, 6.0)
        cx_face, cy_face = fx * stride + offset, fy * stride + offset
        for c in near:
            logit = thresh + 0.05 + peak * np.clip(1.0 - dist, 0.05, 1.0)
            logit += rng.normal(0.0, 0.2, logit.shape)
            logit = np.maximum(logit, thresh + 0.01).astype(np.float32)
            cls = sm[c, y0:y1, x0:x1]
            np.maximum(cls, logit, out=cls)
            cx, cy = xx * stride + offset, yy * stride + offset
            noise = rng.normal(0.0, 0.03, (4,) + logit.shape)
            sm[NUM_TEMPLATES + c, y0:y1, x0:x1] = (cx_face - cx) / tw_px[c] + noise[0]
            sm[2 * NUM_TEMPLATES + c, y0:y1, x0:x1] = (cy_face - cy) / th_px[c] + noise[1]
            sm[3 * NUM_TEMPLATES + c, y0:y1, x0:x1] = np.log(size / tw_px[c]) + noise[2]
            sm[4 * NUM_TEMPLATES + c, y0:y1, x0:x1] = np.log(size * aspect / th_px[c]) + noise[3]
            added = ~passing[c, y0:y1, x0:x1]
            count += int(added.sum())
            passing[c, y0:y1, x0:x1] = True
    stride_i = int(config.stride)
    level = PyramidLevel(0, float(np.log2(scale)), scale, h * stride_i, w * stride_i)
    return SyntheticLevel(sm[None], level, count, faces)


def _numpy_rows(data: SyntheticLevel, config: DetectorConfig, repeat: int,
                warmup: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """numpy decode and numpy NMS of the runtime, timed separately."""
    decode_s, cands = time_calls(lambda: decode_level(data.score_map, data.level, config),
                                 repeat, warmup)
    nms_s, keep = time_calls(lambda: nms(cands.boxes, cands.logits, cands.keys, config.nms_thresh,
                                         config.box_pixel_offset), repeat, warmup)
    row = {"name": "numpy (runtime)", "status": "ok", "decode": summarize(decode_s),
           "nms": summarize(nms_s), "candidates": len(cands), "kept": int(len(keep))}
    return row, {"candidates": cands, "keep": keep}


def _reference_row(data: SyntheticLevel, config: DetectorConfig, repeat: int,
                   warmup: int) -> dict[str, Any]:
    """The port's decode (torch sigmoid + NHWC numpy get_bboxes) and py_cpu_nms-style NMS."""
    import torch

    from bench_reference import greedy_cpu_nms, port_decode

    output = torch.from_numpy(data.score_map)
    decode_s, dets = time_calls(lambda: port_decode(output, data.level.scale, config), repeat, warmup)
    nms_s, keep = time_calls(lambda: greedy_cpu_nms(dets, config.nms_thresh), repeat, warmup)
    return {"name": "reference (port get_bboxes + py_cpu_nms)", "status": "ok",
            "decode": summarize(decode_s), "nms": summarize(nms_s),
            "candidates": int(dets.shape[0]), "kept": int(len(keep))}


#: Counts up to this NMS size sort in one block each (kernels/README.md, "Small NMS"); the
#: table's row with CUB's device-wide sorts runs NMS at :data:`CUB_SORT_NMS_SIZE` instead.
BLOCK_SORT_MAX = 16384
CUB_SORT_NMS_SIZE = 32768


def cuda_variants(candidates: int) -> list[tuple[int, str, int | None]]:
    """(NMS rule, row name, NMS size or None for the default) of the CUDA rows at this
    count: :func:`cuda_rows`, and where the default sorts in one block, the default rule
    with CUB's device-wide sorts (a larger NMS size), side by side."""
    rows = [(rule, name, None) for rule, name in cuda_rows().items()]
    if candidates <= BLOCK_SORT_MAX:
        rows.append((rows[0][0], f"cuda, CUB's device-wide sorts (NMS size {CUB_SORT_NMS_SIZE})",
                     CUB_SORT_NMS_SIZE))
    return rows


def cuda_rows() -> dict[int, str]:
    """The CUDA rows per NMS resolve rule: the runtime's default (now) first (the targets
    read it)."""
    from tinyfaces_trt.runtime.backends.cuda_stages import DEFAULT_NMS_RULE

    default = binding.NMS_RULES[DEFAULT_NMS_RULE]
    others = sorted(((rule, name) for name, rule in binding.NMS_RULES.items()
                     if rule != default), reverse=True)
    return {default: f"cuda (CudaPostprocessor, {DEFAULT_NMS_RULE} NMS rule)",
            **{rule: f"cuda, {name} NMS rule" for rule, name in others}}



@contextlib.contextmanager
def _cuda_postprocessor(data: SyntheticLevel, config: DetectorConfig, rule: int,
                        nms_size: int | None = None
                        ) -> Iterator[Callable[[], tuple[np.ndarray, float, float]]]:
    """The runtime's :class:`CudaPostprocessor` with ``data``'s score map on the device:
    yields ``decode_nms()``, one synchronised reset + decode + NMS returning the kept boxes,
    the seconds of the decode and those of the NMS (a wait for the decode between them);
    ``decode_nms(wait_between=False)``: the kept boxes, the seconds of the whole and None
    (no wait between: what a detect does). After two untimed runs (buffers grown, NMS's CUDA
    graph captured). Raises :class:`_Skip` without a GPU."""
    from tinyfaces_trt.runtime.backends.cuda_device import (DeviceArray, DeviceBuffer, Stream,
                                                            gpu_available, runtime)

    runtime()  # BackendUnavailableError (the reason) without cuda-python
    if not gpu_available():
        raise _Skip("no CUDA GPU visible")
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor

    with contextlib.ExitStack() as made:  # closed in reverse: the postprocessor first
        stream = Stream()
        made.callback(stream.close)
        score_dev = DeviceBuffer(data.score_map.nbytes)
        made.callback(score_dev.free)
        post = CudaPostprocessor(config, stream, nms_rule=rule,
                                 **({"max_candidates": nms_size} if nms_size else {}))
        made.callback(post.close)
        score_dev.upload(np.ascontiguousarray(data.score_map), stream)
        stream.synchronize()
        scores = DeviceArray(score_dev.ptr, data.score_map.shape, np.float32, owner=score_dev)
        image_h, image_w = data.image_hw

        def decode_nms(wait_between: bool = True) -> tuple[np.ndarray, float, float | None]:
            stream.synchronize()
            start = time.perf_counter()
            post.reset(image_h, image_w)
            post.add_level(scores, data.level)
            if not wait_between:  # as a detect runs them: NMS queued behind the decode
                boxes = post.finish()
                return boxes, time.perf_counter() - start, None
            stream.synchronize()
            decoded = time.perf_counter()
            boxes = post.finish()
            return boxes, decoded - start, time.perf_counter() - decoded

        decode_nms.post = post  # type: ignore[attr-defined]
        for _ in range(2):  # sized for this count; NMS launched, then captured as a CUDA graph
            decode_nms()
        yield decode_nms


def _cuda_row(data: SyntheticLevel, config: DetectorConfig, repeat: int,
              warmup: int, rule: int, name: str, nms_size: int | None = None) -> dict[str, Any]:
    """The runtime's CUDA postprocessing (:class:`CudaPostprocessor`) on the device score map.

    ``decode`` = ``reset`` (counter reset) + ``add_level`` (decode kernel); ``nms`` =
    ``finish``: sort + NMS + clip on the device, then the download of the counters and the
    kept rows (so NMS includes that small copy), with a wait for the decode between them;
    ``together``: the same calls without that wait (a detect's decode + NMS), timed in the
    same rounds, alternating which goes first. Every run starts and ends stream-synchronised.
    ``rule``: the NMS resolve rule (``tf_nms_params.lookahead``, ``binding.NMS_RULES``; the
    same boxes with each), ``name`` its row's (:func:`cuda_rows`); ``nms_size``: the NMS
    size to start from (default: the postprocessor's).
    """
    with _cuda_postprocessor(data, config, rule, nms_size) as decode_nms:
        decode_s, nms_s, together_s = [], [], []
        boxes = np.zeros((0, 5), np.float32)
        for k in range(warmup + repeat):
            for apart in ((True, False) if k % 2 == 0 else (False, True)):
                if apart:
                    boxes, decode_seconds, nms_seconds = decode_nms()
                else:
                    whole, together_seconds, _ = decode_nms(wait_between=False)
            if not np.array_equal(whole, boxes):  # the wait changes no result
                raise AssertionError("decode + NMS without a wait between kept other boxes")
            if k >= warmup:
                decode_s.append(decode_seconds)
                nms_s.append(nms_seconds)
                together_s.append(together_seconds)
        stats = decode_nms.post.last_stats
    return {"name": name, "status": "ok",
            "decode": summarize(decode_s), "nms": summarize(nms_s),
            "together": summarize(together_s),
            "candidates": int(stats.get("num_candidates", -1)), "kept": int(len(boxes)),
            "note": "NMS includes the download of the kept boxes", "boxes": boxes}


def profile_decode_nms(targets: list[int], config: DetectorConfig,
                       map_hw: tuple[int, int] = DEFAULT_MAP, scale: float = DEFAULT_SCALE,
                       log=print) -> list[dict[str, Any]]:
    """One decode + NMS of the runtime's default rule per target count under the torch
    profiler (on the maps :func:`run_decode_nms` timed): its wall time and every GPU kernel
    and copy, so a report can say where the time goes (the resolve kernel, the sorts, or
    the gaps between launches and the host's waits)."""
    rule, name = next(iter(cuda_rows().items()))
    entries = []
    for target in targets:
        data = clustered_score_map(target, config, map_hw, scale)
        entry: dict[str, Any] = {"target": target, "candidates": data.candidates, "name": name}
        try:
            with _cuda_postprocessor(data, config, rule) as decode_nms:  # warm
                wall, kernels, timeline = profiled_kernels(decode_nms)
        except _Skip as exc:
            entries.append({**entry, "status": "skipped", "reason": str(exc)})
            continue
        except Exception as exc:  # present, but failed (the profiler too): a finding
            entries.append({**entry, "status": "failed", "reason": one_line(exc, with_type=True)})
            continue
        gpu_ms = sum(k["gpu_ms"] for k in kernels)
        log(f"decode/NMS profile at {data.candidates} candidates: {wall * 1e6:.0f} us wall, "
            f"{gpu_ms * 1e3:.0f} us of GPU kernels and copies")
        entries.append({**entry, "status": "ok", "wall_ms": wall * 1e3, "gpu_kernel_ms": gpu_ms,
                        "timeline": timeline,
                        "kernels": short_names(kernels), "groups": kernel_groups(kernels)})
    return entries


#: How the decode/NMS profile groups its kernels (first match wins; the rest is "other").
KERNEL_GROUPS = (("NMS resolve", "resolve"), ("sorts", "RadixSort|Onesweep|block_sort"),
                 ("scan", "DeviceScan"), ("decode", "decode_level"),
                 ("copies and memsets", "Memcpy|Memset"))


def kernel_groups(kernels: list[dict[str, Any]]) -> dict[str, float]:
    """GPU milliseconds per :data:`KERNEL_GROUPS` group (and "other"), in that order, groups
    with no kernel left out."""
    import re

    groups: dict[str, float] = {}
    for k in kernels:
        group = next((g for g, pattern in KERNEL_GROUPS if re.search(pattern, k["name"])),
                     "other")
        groups[group] = groups.get(group, 0.0) + k["gpu_ms"]
    order = [g for g, _ in KERNEL_GROUPS] + ["other"]
    return {g: groups[g] for g in order if g in groups}


class _Skip(Exception):
    """An implementation cannot run here; the message says why."""


def run_decode_nms(targets: list[int], config: DetectorConfig, repeat: int, warmup: int,
                   map_hw: tuple[int, int] = DEFAULT_MAP, scale: float = DEFAULT_SCALE,
                   with_reference: bool = True, with_cuda: bool = True,
                   log=print) -> list[dict[str, Any]]:
    """Times numpy / reference / CUDA decode and NMS on a clustered map per target count.

    Each CUDA row also says whether its detections are the numpy path's (``vs_numpy``: the
    parity package's comparison at fp32 tolerances, after the same clipping)."""
    results = []
    for target in targets:
        data = clustered_score_map(target, config, map_hw, scale)
        log(f"decode/NMS: {data.candidates} candidates in {data.faces} face clusters "
            f"(target {target}, map {map_hw[0]}x{map_hw[1]}, scale {scale})")
        numpy_row, numpy_out = _numpy_rows(data, config, repeat, warmup)
        expected = None  # the numpy path's detections, made once when a CUDA row ran
        rows = [numpy_row]
        if with_reference:
            rows.append(_reference_row(data, config, repeat, warmup))
        for rule, name, nms_size in (cuda_variants(data.candidates) if with_cuda else ()):
            try:
                row = _cuda_row(data, config, repeat, warmup, rule, name, nms_size)
                if expected is None:
                    expected = select_detections(numpy_out["candidates"], data.image_hw, config)
                row["vs_numpy"] = compare_with_reference(expected, row.pop("boxes"), config, "fp32")
                rows.append(row)
            except _Skip as exc:
                rows.append({"name": name, "status": "skipped", "reason": str(exc)})
            except BackendUnavailableError as exc:  # no cuda-python / library: say why
                rows.append({"name": name, "status": "skipped", "reason": one_line(exc)})
            except Exception as exc:  # present, but failed: a finding, not a skip
                rows.append({"name": name, "status": "failed",
                             "reason": one_line(exc, with_type=True)})
        results.append({"target": target, "candidates": data.candidates, "faces": data.faces,
                        "map": list(map_hw), "scale": scale, "implementations": rows,
                        "emulated": emulated_nms_work(numpy_out["candidates"], config)})
    return results


def emulated_nms_work(cands: Any, config: DetectorConfig, sample: int = 5000) -> dict[str, Any]:
    """What the CUDA NMS does on these candidates, from its numpy emulation: the rounds of
    waiting (dependency depth) under both resolve rules and the candidates a thread's walk
    reads (mean / p99 / max) under both rules (``reads_*``: walk order; ``reads_lookahead_*``:
    the lookahead rule, every pass counted, in the emulation's lock-step rounds;
    ``polls_lookahead_*``: its blocker status polls), the figures to read a GPU NMS time
    against (kernels/README.md, "Cost on dense maps")."""
    from tinyfaces_trt.kernels import nms_emulation as E

    em = E.emulate_nms(cands.boxes, cands.logits, cands.keys, config.nms_thresh,
                       config.box_pixel_offset)
    iso = E.geometry(np.asarray(cands.boxes, np.float32)[em.order], config.box_pixel_offset)[3]
    decided = E.lookahead_schedule(len(em.status), iso, em.edge_j, em.edge_i)[1]
    reads = E.walk_reads(cands.boxes, cands.logits, cands.keys, em.kept, config.nms_thresh,
                         config.box_pixel_offset, sample, decided=decided)
    return {"rounds": em.rounds, "rounds_lookahead": int(decided.max(initial=0)),
            "overlap_pairs": em.overlap_pairs, **reads.summary()}
