"""Shared helpers of the benchmark scripts: statistics, timing, the machine.

The test image is :func:`tinyfaces_trt.parity.images.synthetic_image` (height, width, seed),
the one parity and the tests use.

Timing method (every number in the results): ``time.perf_counter`` around the work, device
work synchronised before the clock is read, ``warmup`` untimed runs first, then ``repeat``
timed runs summarised by their median and 90th percentile (numpy's linear interpolation,
so with few repeats p90 lies between the two slowest runs).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import numpy as np

MS = 1000.0


def format_duration(ms: float | None, digits: int = 3) -> str:
    """A duration given in milliseconds, in the unit that shows it: ``"41.2 µs"``,
    ``"1.25 ms"``, ``"932 ms"``, ``"37.2 s"`` (``digits`` significant digits, or the whole
    integer part); ``"-"`` for None. A non-zero time never prints as "0.0 ms"."""
    if ms is None:
        return "-"
    value = float(ms)
    if not math.isfinite(value):
        return str(value)
    if value == 0.0:
        return "0 µs"
    for scale, unit, limit in ((1e6, "ns", 1e-3), (1e3, "µs", 1.0), (1.0, "ms", 1e4)):
        if abs(value) < limit:
            text = _significant(value * scale, digits)
            if abs(float(text)) < limit * scale:  # not rounded up into the next unit
                return f"{text} {unit}"
    return f"{_significant(value / 1e3, digits)} s"


def _significant(value: float, digits: int) -> str:
    """``value`` with ``digits`` significant digits (all integer digits), no exponent."""
    exponent = int(math.floor(math.log10(abs(value))))
    if abs(round(value, digits - 1 - exponent)) >= 10.0 ** (exponent + 1):
        exponent += 1  # 0.9996 rounds to 1.00, not 1.000
    return f"{value:.{max(0, digits - 1 - exponent)}f}"


def summarize(seconds: Iterable[float]) -> dict[str, Any]:
    """Median, p90, min and all samples of a list of durations, in milliseconds."""
    ms = np.asarray(list(seconds), dtype=np.float64) * MS
    if ms.size == 0:
        raise ValueError("no samples to summarize")
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "samples_ms": [round(float(v), 4) for v in ms],
    }


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int,
               sync: Callable[[], None] | None = None) -> tuple[list[float], Any]:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

    Returns the durations in seconds and the last result. ``sync`` (if given) is called
    before each clock read, so asynchronous device work is counted where it was queued.
    """
    result = None
    for _ in range(warmup):
        result = fn()
        if sync:
            sync()
    durations = []
    for _ in range(repeat):
        if sync:
            sync()
        start = time.perf_counter()
        result = fn()
        if sync:
            sync()
        durations.append(time.perf_counter() - start)
    return durations, result


#: The profiler's name for the span of the profiled work (its window on the GPU timeline).
PROFILED_WORK = "tinyfaces.profiled_work"


def profiled_kernels(work: Callable[[], Any]
                     ) -> tuple[float, list[dict[str, Any]], dict[str, Any] | None]:
    """``work`` (which synchronises its device work) once under the torch profiler (CUPTI:
    kernels replayed from CUDA graphs and those the kernel library launches included).

    Returns its wall seconds; the GPU kernels and copies it ran, by GPU time (most first):
    ``{"name", "calls", "gpu_ms", "share"}`` (``share`` of the summed kernel time; ``name``
    in full: :func:`short_names` for a report); and :func:`gpu_timeline` of the work's span
    (None where no kernel was recorded or the events carry no times).

    Raises:
        Exception: what the profiler or ``work`` raised.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    # one cycle; acc_events: torch 2.11 otherwise warns that a cycle clears the events
    with profile(activities=activities, acc_events=True) as prof:
        start = time.perf_counter()
        with record_function(PROFILED_WORK):
            work()
        wall = time.perf_counter() - start
    return wall, kernel_rows(prof.key_averages()), _timeline_of(prof)


def _annotation(e: Any) -> bool:
    """Whether a profiler event is a span someone named (``record_function``: PROFILED_WORK,
    Inductor's), which torch also books on the GPU's timeline with the device time it spans:
    not a kernel, and it would cover every gap between the kernels."""
    return bool(getattr(e, "is_user_annotation", False)) or \
        getattr(e, "key", getattr(e, "name", None)) == PROFILED_WORK


def _on_gpu(e: Any) -> bool:
    return "cuda" in str(getattr(e, "device_type", "")).lower()


def _device_us(e: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(e, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def kernel_rows(events: Iterable[Any]) -> list[dict[str, Any]]:
    """The GPU kernels and copies among a profile's averaged events (``key_averages()``), by
    GPU time: :func:`profiled_kernels`' rows. Named spans are left out (:func:`_annotation`)."""
    timed = [e for e in events if _device_us(e) > 0 and not _annotation(e)]
    kernels = [e for e in timed if getattr(e, "cpu_time_total", 0) == 0]
    if not kernels:  # some versions also book CPU time on kernel rows
        kernels = timed
    kernels.sort(key=lambda e: -_device_us(e))
    total_us = sum(_device_us(e) for e in kernels)
    return [{"name": e.key, "calls": int(e.count), "gpu_ms": _device_us(e) / 1e3,
             "share": _device_us(e) / total_us if total_us else 0.0} for e in kernels]


def _timeline_of(prof: Any) -> dict[str, Any] | None:
    """:func:`gpu_timeline` of a profile's device events within its PROFILED_WORK span
    (None where the events do not say: a torch without these fields, no kernel)."""
    try:
        return timeline_of_events(list(prof.events()))
    except Exception:  # optional detail: the kernel table stands without it
        return None


def timeline_of_events(events: list[Any]) -> dict[str, Any] | None:
    """:func:`gpu_timeline` of the GPU's kernels and copies among a profile's events
    (``prof.events()``) within the host's PROFILED_WORK span; named spans are not GPU work
    (:func:`_annotation`). None without that span or a kernel in it."""
    window = next((e.time_range for e in events
                   if e.name == PROFILED_WORK and not _on_gpu(e)), None)
    if window is None:
        return None
    spans = [(e.time_range.start, e.time_range.end, e.name) for e in events
             if _on_gpu(e) and not _annotation(e) and e.time_range.end > e.time_range.start]
    return gpu_timeline(spans, (window.start, window.end))


def gpu_timeline(spans: list[tuple[float, float, str]], window: tuple[float, float],
                 gaps: int = 3) -> dict[str, Any] | None:
    """When the GPU was busy within ``window`` (start, end), from its kernels' and copies'
    ``(start, end, name)`` spans (microseconds, one clock; streams may overlap): the union
    busy, the time before the first and after the last, the time between, and the ``gaps``
    largest holes, each with the kernel that ended before it and the one that started after
    it. Milliseconds; None without a span in the window."""
    w0, w1 = window
    inside = sorted((max(s, w0), min(e, w1), name) for s, e, name in spans if e > w0 and s < w1)
    if not inside:
        return None
    busy, holes = 0.0, []
    first, end, ended = inside[0][0], inside[0][1], inside[0][2]
    block = first
    for s, e, name in inside[1:]:
        if s > end:
            busy += end - block
            holes.append({"ms": (s - end) / 1e3, "after": ended, "before": name})
            block, end, ended = s, e, name
        elif e > end:
            end, ended = e, name
    busy += end - block
    holes.sort(key=lambda h: -h["ms"])
    return {"window_ms": (w1 - w0) / 1e3, "busy_ms": busy / 1e3, "lead_ms": (first - w0) / 1e3,
            "tail_ms": (w1 - end) / 1e3, "gap_ms": sum(h["ms"] for h in holes),
            "gaps": holes[:gaps]}


def timeline_text(timeline: dict[str, Any] | None, chars: int = 60) -> str:
    """One sentence of :func:`gpu_timeline` ('' for None)."""
    if not timeline:
        return ""
    t = timeline
    text = (f"GPU busy {format_duration(t['busy_ms'])} of the {format_duration(t['window_ms'])} "
            f"profiled: {format_duration(t['lead_ms'])} before its first kernel, "
            f"{format_duration(t['tail_ms'])} after its last, {format_duration(t['gap_ms'])} "
            f"idle between")
    if t["gaps"]:
        text += "; largest gaps: " + "; ".join(
            f"{format_duration(g['ms'])} after `{g['after'][:chars]}` "
            f"before `{g['before'][:chars]}`" for g in t["gaps"])
    return text


def short_names(kernels: list[dict[str, Any]], chars: int = 120) -> list[dict[str, Any]]:
    """:func:`profiled_kernels`' rows with each name cut to ``chars`` characters (a CUB
    kernel's template arguments run to thousands)."""
    return [{**k, "name": k["name"][:chars]} for k in kernels]


def _proc_stat_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class ContentionMeter:
    """Share of the machine's CPU time used by OTHER processes between start() and stop().

    Busy jiffies of all CPUs (/proc/stat) minus this process's own CPU time, divided by
    the CPU time available (cores x wall time). None where /proc/stat is missing.
    """

    def start(self) -> None:
        self._stat = _proc_stat_jiffies()
        self._own = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> float | None:
        end = _proc_stat_jiffies()
        if self._stat is None or end is None:
            return None
        busy, total = end[0] - self._stat[0], end[1] - self._stat[1]
        if total <= 0:
            return 0.0
        tick = total / ((time.perf_counter() - self._wall) * (os.cpu_count() or 1))  # jiffies/s
        own = (time.process_time() - self._own) * tick
        return max(0.0, min(1.0, (busy - own) / total))


def wait_until_quiet(max_share: float, timeout_s: float = 120.0, window_s: float = 1.0) -> float:
    """Waits until other processes use at most ``max_share`` of the CPUs over a ``window_s``
    window (or ``timeout_s`` passes); returns the seconds waited."""
    meter = ContentionMeter()
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        meter.start()
        time.sleep(window_s)
        share = meter.stop()
        if share is None or share <= max_share:
            break
    return time.perf_counter() - start


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _gpu() -> dict[str, Any] | None:
    """Name and driver-visible details of GPU 0, or None (never raises)."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "torch_cuda": torch.version.cuda}
    except Exception:  # a broken CUDA install means "no GPU" here
        pass
    try:
        from tinyfaces_trt.runtime.backends.cuda_device import device_name, gpu_available

        if gpu_available():
            return {"name": device_name(0)}
    except Exception:
        pass
    return None


def machine_description(threads: int) -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), cores, memory, GPU and library versions."""
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scipy", "pillow", "torch", "onnxruntime", "onnxruntime-gpu",
                 "tensorrt", "cuda-python", "cuda-bindings", "cupy-cuda13x", "matplotlib",
                 "tinyfaces-trt"):
        v = _version(dist)
        if v:
            versions[dist] = v
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "threads_used": threads,
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "gpu": _gpu(),
        "versions": versions,
    }


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (for "skipped: <reason>")."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if with_type or not text:
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def today() -> str:
    """The local date as YYYY-MM-DD (names the committed result files)."""
    return _dt.date.today().isoformat()


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class Deadline:
    """A time budget for a whole run: later work is skipped (with the reason) once it is spent.

    Args:
        budget_s: seconds from now; None means no limit.
    """

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds left (infinity without a budget)."""
        return float("inf") if self.budget_s is None else self.budget_s - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0

    def refuse(self, what: str, estimate_s: float = 0.0) -> str | None:
        """None when ``what`` (taking about ``estimate_s``) fits in what is left, else the
        "skipped" reason."""
        left = self.left()
        if left > estimate_s and left > 0:
            return None
        need = f"about {estimate_s:.0f} s needed, " if estimate_s > 0 else ""
        return (f"time budget: {need}{max(left, 0.0):.0f} s left of --budget-s "
                f"{self.budget_s:g} before {what}")


def emulated_work_text(work: dict[str, Any]) -> str:
    """One line of ``bench_scores.emulated_nms_work``: what the CUDA NMS does on an input (both
    rules' reads side by side; walk-order reads only in results made before they were both
    counted)."""
    rounds = (f"{work['rounds']} rounds of boxes waiting on earlier ones "
              f"({work['rounds_lookahead']} with the lookahead rule), ")
    if "reads_lookahead_mean" not in work:
        reads = (f"candidates read per box mean {work['reads_mean']:g} / p99 "
                 f"{work['reads_p99']:g} / max {work['reads_max']}, ")
    else:
        reads = (f"candidates read per box (walk order / lookahead) mean {work['reads_mean']:g} / "
                 f"{work['reads_lookahead_mean']:g}, p99 {work['reads_p99']:g} / "
                 f"{work['reads_lookahead_p99']:g}, max {work['reads_max']} / "
                 f"{work['reads_lookahead_max']}, lookahead blocker polls per box mean "
                 f"{work['polls_lookahead_mean']:g} / max {work['polls_lookahead_max']}, ")
    return rounds + reads + f"{work['rows']:g} grid rows per box"


def decode_nms_profile_text(entry: dict[str, Any]) -> str:
    """One profiled decode + NMS in a line: wall, GPU kernels, the groups' times."""
    groups = ", ".join(f"{g} {format_duration(ms)}" for g, ms in entry["groups"].items())
    timeline = timeline_text(entry.get("timeline"))
    return (f"{format_duration(entry['wall_ms'])} wall, {format_duration(entry['gpu_kernel_ms'])} "
            f"of GPU kernels and copies ({groups}); the rest is launches, gaps between "
            "kernels and the host's waits" + (f"; {timeline}" if timeline else ""))
