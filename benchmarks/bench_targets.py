"""The speed targets of issue 8, and how a latency run measures up to them.

Targets (benchmarks, not timed tests; H100/H200, 1080p, fp16, adaptive pyramid):

======================  =====================================================  ========
key                     what                                                   target
======================  =====================================================  ========
``speedup``             end to end vs the reference pipeline, same GPU/run     >= 40x
``overhead``            end to end / network time (stages + copies <= 15%)     <= 1.15
``network_tflops``      network FLOP per image / network time                  >= 250
``decode_nms_10k``      CUDA decode + NMS at 10k candidates                    <= 0.3 ms
``decode_nms_50k``      CUDA decode + NMS at 50k candidates                    <= 3 ms
``batch_gain``          batch-of-8 throughput / single-image throughput        >= 1.3x
======================  =====================================================  ========

They are evaluated for one backend (the first of :data:`PRIMARY` that ran, else the
fastest GPU backend) at 1920x1080 when the run has it (else its first image size, said in
the table). End-to-end times are those measured without per-stage synchronisation where
the backend has them (GPU backends), else the per-stage-timed totals; likewise decode + NMS
are read without a wait between them where the run has that time; the speed-up only
counts where the reference ran on the GPU too. The batch target is read where the batch ran
(``--batch`` measures the first image size), said in the table. A missed target says
by how much, and why as far as the run's own numbers tell (the stage, level or kernel
that takes the time); a profile (``--profile``) adds the top GPU kernels. Where variants of
torch-cuda ran beside it (:data:`VARIANTS`: levels side by side, torch.compile), their values
of the speed-up, overhead and FLOP-rate targets follow its numbers, for a default to be
chosen on.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench_common import decode_nms_profile_text, emulated_work_text, format_duration

#: The backends the targets are about, in order of preference.
PRIMARY = ("torch-cuda", "tensorrt-fp16-cuda", "onnxruntime-cuda")
#: Variants of the primary backend whose value of each target is given beside its own (the
#: measurement a change of torch-cuda's defaults would rest on).
VARIANTS = ("torch-cuda-in-turn", "torch-cuda-compile")
#: The variant running torch-cuda's network level by level: its per-level times explain the
#: FLOP rate where torch-cuda ran its levels side by side.
IN_TURN = "torch-cuda-in-turn"
TARGET_SIZE = [1920, 1080]
#: Candidate counts of the decode + NMS targets.
DECODE_NMS_TARGETS = {"decode_nms_10k": 10000, "decode_nms_50k": 50000}


@dataclass(frozen=True)
class Target:
    key: str
    title: str
    unit: str
    goal: float
    higher_is_better: bool

    @property
    def relation(self) -> str:
        return ">=" if self.higher_is_better else "<="


TARGETS: tuple[Target, ...] = (
    Target("speedup", "end to end vs the reference pipeline (same GPU, same run)", "x", 40.0, True),
    Target("overhead", "end to end / network time (stages and copies <= 15%)", "x", 1.15, False),
    Target("network_tflops", "network, effective FLOP rate", "TFLOP/s", 250.0, True),
    Target("decode_nms_10k", "CUDA decode + NMS, 10k candidates", "ms", 0.3, False),
    Target("decode_nms_50k", "CUDA decode + NMS, 50k candidates", "ms", 3.0, False),
    Target("batch_gain", "batch-of-8 throughput / single-image throughput", "x", 1.3, True),
)


def network_flops(model: Any, shapes: list[tuple[int, int, int, int]]) -> list[float]:
    """FLOP of one forward pass per input shape, counted by torch's FlopCounterMode on a
    meta-device copy of the model (no arithmetic runs; 2 FLOP per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    counts = []
    with torch.no_grad():
        for shape in shapes:
            with FlopCounterMode(display=False) as counter:
                meta(torch.empty(shape, device="meta"))
            counts.append(float(counter.get_total_flops()))
    return counts


def format_value(value: float, unit: str) -> str:
    if unit == "ms":
        return format_duration(value)
    if unit == "x":
        return f"{value:.3g}x" if value < 100 else f"{value:.0f}x"
    return f"{value:.3g} {unit}"


def _ok(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("status") == "ok"]


def _median(stat: dict[str, Any] | None) -> float | None:
    return None if not stat else float(stat["median_ms"])


def end_to_end_ms(backend: dict[str, Any]) -> float:
    """The backend's end-to-end median: without per-stage sync where measured, else the
    per-stage-timed total."""
    return _median(backend.get("end_to_end")) or float(backend["stages"]["total"]["median_ms"])


def pick_size(result: dict[str, Any]) -> dict[str, Any] | None:
    """The image size the targets are read at: 1920x1080 if it ran, else the first that did."""
    sizes = [s for s in result.get("sizes", []) if s.get("status", "ok") == "ok"]
    for s in sizes:
        if list(s["image_size"]) == TARGET_SIZE:
            return s
    return sizes[0] if sizes else None


def pick_backend(size: dict[str, Any]) -> dict[str, Any] | None:
    """The first backend of :data:`PRIMARY` that ran at this size, else the fastest GPU one."""
    ok = {b["name"]: b for b in _ok(size["backends"]) if b["name"] != "reference"}
    for name in PRIMARY:
        if name in ok:
            return ok[name]
    gpu = [b for b in ok.values() if b.get("uses_gpu")]
    return min(gpu, key=end_to_end_ms) if gpu else None


def _stage_list(backend: dict[str, Any], skip: tuple[str, ...] = ("network",)) -> str:
    stages = backend["stages"]
    named = [(k, _median(stages.get(k))) for k in ("preprocess", "h2d", "d2h", "decode", "nms",
                                                    "other") if k not in skip]
    named = sorted(((k, v) for k, v in named if v), key=lambda kv: -kv[1])
    titles = {"preprocess": "pyramid resize", "h2d": "h2d copy", "d2h": "d2h copy",
              "decode": "decode", "nms": "NMS", "other": "other"}
    return ", ".join(f"{titles[k]} {format_duration(v)}" for k, v in named)


def _speedup(size, backend, ref) -> tuple[float | None, str, str]:
    if ref is None:
        return None, "the reference did not run at this size", ""
    if not ref.get("uses_gpu"):
        return None, "the reference ran on the CPU here, not on the GPU (same GPU, same run)", ""
    # A GPU backend's per-stage total includes a sync per stage; its latency is the no-sync
    # pass, which a run out of time may lack: then both per-stage totals, like with like.
    if all(b.get("end_to_end") or not b.get("uses_gpu") for b in (backend, ref)):
        e2e, ref_e2e = end_to_end_ms(backend), end_to_end_ms(ref)
        how = ""
    else:
        e2e, ref_e2e = (float(b["stages"]["total"]["median_ms"]) for b in (backend, ref))
        how = " (both timed per stage)"
    detail = f"{format_duration(ref_e2e)} / {format_duration(e2e)}{how}"
    net = _median(backend["stages"].get("network"))
    why = (f"network {format_duration(net)} of {format_duration(e2e)}; the rest: "
           f"{_stage_list(backend)}" if net else "")
    goal = next(t.goal for t in TARGETS if t.key == "speedup")
    needed = ref_e2e / goal
    if net and needed < net:  # no stage work can close the gap: the network must get faster
        why += (f"; {goal:g}x of this reference ({format_duration(ref_e2e)}) needs "
                f"{format_duration(needed)} end to end, less than the network alone")
    return ref_e2e / e2e, detail, why


def _overhead(size, backend, ref) -> tuple[float | None, str, str]:
    net = _median(backend["stages"].get("network"))
    if not net:
        return None, "no network time", ""
    e2e = end_to_end_ms(backend)
    detail = f"{format_duration(e2e)} / network {format_duration(net)}"
    locked = _median(backend.get("end_to_end_page_locked"))
    if locked:
        detail += (f"; from a page-locked image (no staging copy) {format_duration(locked)}, "
                   f"{locked / net:.2f}x")
    why = (f"stages and copies add {format_duration(max(e2e - net, 0.0))} "
           f"({(e2e - net) / net:.0%} of the network; per-stage medians: {_stage_list(backend)})")
    return e2e / net, detail, why


def _level_rates(size: dict[str, Any], backend: dict[str, Any]) -> list[tuple[float, str]]:
    """(network ms, "Lk WxH: time, rate") of each level the backend timed alone, slowest
    first (none where its levels ran side by side)."""
    parts = []
    for lv in size["levels"]:
        t = _median(backend["stages"].get(f"network[L{lv['index']}]"))
        if t and lv.get("flop"):
            parts.append((t, f"L{lv['index']} {lv['width']}x{lv['height']}: {format_duration(t)}, "
                             f"{lv['flop'] / t / 1e9:.3g} TFLOP/s"))
    return sorted(parts, key=lambda p: -p[0])


def _tflops(size, backend, ref) -> tuple[float | None, str, str]:
    flop = size.get("flop_per_image")
    net = _median(backend["stages"].get("network"))
    if not flop or not net:
        return None, "no FLOP count or network time", ""
    amount = f"{flop / 1e12:.2f} TFLOP" if flop >= 1e11 else f"{flop / 1e9:.2f} GFLOP"
    detail = f"{amount} in {format_duration(net)}"
    parts, timed = _level_rates(size, backend), ""
    in_turn = next((b for b in _ok(size["backends"]) if b["name"] == IN_TURN), None)
    if not parts and in_turn is not None:  # its levels ran side by side
        parts, timed = _level_rates(size, in_turn), f", in turn in `{IN_TURN}`"
    why = (f"per level (slowest first{timed}): " + "; ".join(p[1] for p in parts)
           if parts else "")
    if size.get("profile", {}).get("status") == "ok":
        why += "; top GPU kernels in the profile below"
    return flop / (net / 1e3) / 1e12, detail, why


def _decode_nms(count: int):
    def measure(result, _backend) -> tuple[float | None, str, str]:
        dn = result.get("decode_nms") or {}
        row = next((r for r in dn.get("rows", []) if r.get("target") == count), None)
        if row is None:
            return None, f"no {count}-candidate row (--candidates)", ""
        impl = next((i for i in row["implementations"] if i["name"].startswith("cuda")), None)
        if impl is None or impl.get("status") != "ok":
            return None, f"CUDA row {impl['status']}: {impl['reason']}" if impl else "no CUDA row", ""
        d, n = _median(impl["decode"]), _median(impl["nms"])
        apart = f"decode {format_duration(d)} + NMS {format_duration(n)}"
        if impl.get("together"):  # as a detect runs them, without a wait between
            value = _median(impl["together"])
            detail = (f"{row['candidates']} candidates: {format_duration(value)} without a wait "
                      f"between ({apart} timed apart)")
        else:  # results made before that timing: the two timed apart
            value = d + n
            detail = f"{row['candidates']} candidates: {apart}"
        why = (f"decode {format_duration(d)}, NMS {format_duration(n)} (host clock around "
               "the calls: launches and the boxes' download included)")
        for other in row["implementations"]:  # the other NMS rules' rows
            if other["name"].startswith("cuda") and other is not impl and other.get("status") == "ok":
                why += f" ({other['name']}: NMS {format_duration(_median(other['nms']))})"
        if row.get("emulated"):
            why += f" (NMS work, emulated: {emulated_work_text(row['emulated'])})"
        profiled = next((p for p in dn.get("profile") or []
                         if p.get("target") == count and p.get("status") == "ok"), None)
        if profiled:
            why += f" (profiled once: {decode_nms_profile_text(profiled)})"
        return value, detail, why
    return measure


def batch_size_entry(result: dict[str, Any], size: dict[str, Any]) -> dict[str, Any] | None:
    """The image size the batch target is read at: ``size`` when its batch was measured,
    else the one that was (``--batch`` measures the first image size only); None: no batch."""
    if size.get("batch"):
        return size
    return next((s for s in result.get("sizes", [])
                 if s.get("status", "ok") == "ok" and s.get("batch")), None)


def _batch_gain(size, backend, ref) -> tuple[float | None, str, str]:
    if not size.get("batch"):
        return None, "no batch rows in this run (--batch N)", ""
    row = next((r for r in size["batch"].get("rows", []) if r["backend"] == backend["name"]),
               None)
    if row is None:
        return None, (f"the batch rows at {size['image_size'][0]}x{size['image_size'][1]} have "
                      f"none of `{backend['name']}` (it takes no batches there)"), ""
    if row.get("status") != "ok":
        return None, f"batch {row.get('status')}: {row.get('reason')}", ""
    detail = (f"{row['batched_images_per_s']:.1f} vs {row['single_images_per_s']:.1f} images/s "
              f"(batch {row['batch']})")
    why = ""
    if row.get("runner_calls") == row["batch"] * row["levels"]:
        why = (f"detect_batch made {row['runner_calls']} network calls for {row['batch']} images "
               f"x {row['levels']} levels: it does not batch the levels")
    else:
        why = (f"{row['runner_calls']} network calls per batch; per image {format_duration(row['batched']['median_ms'])} "
               f"batched vs {format_duration(row['single']['median_ms'])} alone")
    if row.get("shape_modes"):
        why += f"; the batch shapes ran as {row['shape_modes']}"
    return row["batched_images_per_s"] / row["single_images_per_s"], detail, why


def _variants(size: dict[str, Any], backend: dict[str, Any],
              measure: Callable[[dict[str, Any]], float | None]) -> dict[str, float]:
    """The target's value for each of :data:`VARIANTS` that ran at this size (the primary
    backend itself left out), by name."""
    values = {}
    for b in _ok(size["backends"]):
        if b["name"] in VARIANTS and b["name"] != backend["name"]:
            value = measure(b)
            if value is not None:
                values[b["name"]] = value
    return values


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: measured value, verdict ("met" / "missed by ..." / "not
    measured: ..."), where it was measured, and why when missed."""
    size = pick_size(result)
    backend = pick_backend(size) if size else None
    ref = None
    if size:
        ref = next((b for b in _ok(size["backends"]) if b["name"] == "reference"), None)
    where = (f"`{backend['name']}` at {size['image_size'][0]}x{size['image_size'][1]}"
             if backend else "")
    rows = []
    for t in TARGETS:
        row: dict[str, Any] = {"key": t.key, "title": t.title, "unit": t.unit, "goal": t.goal,
                               "relation": t.relation, "measured": None, "met": None,
                               "where": where, "detail": "", "why": ""}
        if t.key in DECODE_NMS_TARGETS:
            value, detail, why = _decode_nms(DECODE_NMS_TARGETS[t.key])(result, backend)
            row["where"] = "synthetic clustered score map (decode/NMS table)"
        elif backend is None:
            value, detail, why = None, ("no GPU backend ran" if size else "no image size ran"), ""
        elif t.key == "batch_gain":
            batched = batch_size_entry(result, size) or size
            value, detail, why = _batch_gain(batched, backend, None)
            if batched is not size:
                w, h = batched["image_size"]
                row["where"] = (f"`{backend['name']}` at {w}x{h} (where the batch ran: "
                                "--batch measures the first image size)")
        else:
            measure = {"speedup": _speedup, "overhead": _overhead,
                       "network_tflops": _tflops}[t.key]
            value, detail, why = measure(size, backend, ref)
            others = _variants(size, backend, lambda b: measure(size, b, ref)[0])
            if others:
                row["variants"] = others
                detail += ("; " if detail else "") + ", ".join(
                    f"`{name}`: {format_value(v, t.unit)}" for name, v in others.items())
        if value is None:
            row["verdict"] = f"not measured: {detail}"
            rows.append(row)
            continue
        row["detail"] = detail
        met = value >= t.goal if t.higher_is_better else value <= t.goal
        factor = (t.goal / value if t.higher_is_better else value / t.goal) if value > 0 else float("inf")
        row.update(measured=value, met=bool(met), factor=factor)
        if met:
            row["verdict"] = "met" + (f" ({1 / factor:.2f}x better)" if factor > 0 else "")
        else:
            row["verdict"] = (f"missed by {factor:.2f}x (measured {format_value(value, t.unit)}, "
                              f"target {t.relation} {format_value(t.goal, t.unit)})")
            row["why"] = why
        rows.append(row)
    return rows
