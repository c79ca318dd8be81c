#!/usr/bin/env python
"""End-to-end and per-stage latency of the Tiny Faces detector, per backend and image size.

    python benchmarks/latency.py                                  # every backend present
    python benchmarks/latency.py --backend reference,torch,onnxruntime --image-size 1920x1080 --repeat 3
    python benchmarks/latency.py --backend reference,torch-cuda --image-size 1920x1080,1280x720 \
        --batch 8 --parity --profile --candidates 10000,50000      # the GPU run

For one image per size: the pyramid resize, the network (all levels and per level), decode,
NMS and host<->device copies, median and p90 over ``--repeat`` runs after ``--warmup`` runs,
for every backend present (absent ones are listed as "skipped: <reason>"), with the
reference pipeline as tiny-faces-pytorch runs it measured side by side in the same run.
Optionally: batch throughput (``--batch N``: N frames through ``detect_batch`` vs one by
one), parity of every backend's detections with the CPU reference (``--parity``), a torch
profile of the main GPU backend (``--profile``). Then decode and NMS alone on synthetic
clustered score maps with ``--candidates`` candidates (numpy, the port's numpy code, and the
CUDA stages where a GPU and the kernel library are present), and the speed targets (bench_targets.py)
(measured, target, met or missed by how much, and why).

Writes ``<out>/<name>.json``, ``<name>.md`` and ``<name>.png`` (see benchmarks/README.md).
The network has seeded random weights unless ``--weights`` is given: its timings are those
of the real network, its detections are meaningless (but identical across correct backends).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# A plain checkout needs no install: the repository root (for tinyfaces_trt) and this folder
# (for the bench_* modules) go first on the path.
for _path in (str(HERE), str(HERE.parent)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

import numpy as np  # noqa: E402

from bench_common import (ContentionMeter, Deadline, format_duration, machine_description,  # noqa: E402
                          now_iso, one_line, profiled_kernels, short_names, summarize,
                          today, wait_until_quiet)
from bench_precompile import parse_part  # noqa: E402
from tinyfaces_trt.detectors import DEFAULT_TORCH_MODE, TORCH_CUDA_MODES  # noqa: E402
from tinyfaces_trt.core.cli import (EXIT_ERROR, ImageSize, fraction, parse_image_sizes,  # noqa: E402
                                    positive_float, positive_int, seed_argument)
from tinyfaces_trt.parity.images import synthetic_image  # noqa: E402

SCHEMA = "tinyfaces-trt-latency/2"
PROG = "latency.py"
#: The files of one result, ``<name><suffix>``: written, and replaced, together.
RESULT_SUFFIXES = (".json", ".md", ".png")
DEFAULT_OUT = HERE / "results"
DEFAULT_CANDIDATES = "1000,10000,50000"
DEFAULT_DEPTH = 101
DEFAULT_VARIANT = "pytorch"
EPILOG = f"""\
Without --weights the network is ResNet-{DEFAULT_DEPTH}, variant {DEFAULT_VARIANT}, with seeded
random weights (--seed 0); with --weights, depth and variant come from the checkpoint.

Examples:
  python benchmarks/latency.py                     # every backend, 640x480, 5 repeats
  python benchmarks/latency.py --backend reference,torch,onnxruntime \\
      --image-size 1920x1080 --repeat 3
  python benchmarks/latency.py --backend reference,torch-cuda --image-size 1920x1080,1280x720 \\
      --batch 8 --parity --profile --candidates 10000,50000 --warmup 2 --repeat 10
  python benchmarks/latency.py --backend tensorrt-fp16,tensorrt-fp16-cuda --warmup 3 --repeat 20
  python benchmarks/latency.py --image photo.jpg --image-size 1280x720 --weights checkpoint_50.pth
  python benchmarks/latency.py --report-only benchmarks/results/cpu-2026-11-24.json
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench_backends import BACKENDS

    names = [b.name for b in BACKENDS]
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="all",
                   help=f"comma-separated backends, or 'all' (default). Known: {', '.join(names)}")
    p.add_argument("--image-size", default=[ImageSize(640, 480)], type=parse_image_sizes,
                   metavar="WxH[,WxH...]",
                   help="image sizes, width x height, comma-separated, measured in this order "
                        "(default 640x480; full HD and 720p: 1920x1080,1280x720)")
    p.add_argument("--image", default=None, help="an image file to use (resized to each "
                   "--image-size); default: a seeded synthetic image")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per backend (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--depth", type=int, default=None, choices=(50, 101),
                   help=f"ResNet depth (default {DEFAULT_DEPTH}; with --weights: the checkpoint's)")
    p.add_argument("--variant", default=None, choices=("pytorch", "matconvnet"),
                   help=f"network variant (default {DEFAULT_VARIANT}; with --weights: the "
                        f"checkpoint's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights (default 0; unused with --weights)")
    p.add_argument("--weights", default=None, help="a checkpoint instead of random weights")
    p.add_argument("--pyramid", default="adaptive", choices=("adaptive", "fixed"),
                   help="pyramid rule for every backend (default adaptive: the runtime's)")
    p.add_argument("--torch-mode", default=DEFAULT_TORCH_MODE, choices=TORCH_CUDA_MODES,
                   help="how the torch-cuda backends (not torch-cuda-compile) prepare each "
                        "input shape, as create_detector's torch_mode (default fused: the "
                        "BatchNorm-folded network with cuDNN-fused convolution epilogues, CUDA "
                        "graphs, nothing to compile; compile: torch.compile + CUDA graphs, "
                        "several seconds per input shape the first time, then cached on disk; "
                        "aoti: AOTInductor packages per shape; graphs, eager)")
    p.add_argument("--batch", type=int, default=0, metavar="N",
                   help="also measure throughput of N frames of the first image size through "
                        "detect_batch against N single detects (default 0: off; the batch target "
                        "is set for 8)")
    p.add_argument("--parity", action="store_true",
                   help="compare every backend's detections with the CPU reference (torch "
                        "fp32 on the CPU, runtime pipeline) on the same image, per size")
    p.add_argument("--profile", action="store_true",
                   help="profile one detect of the main GPU backend at the first size with "
                        "the torch profiler (top GPU kernels in the report), and with "
                        "--candidates one CUDA decode + NMS per count (its kernels grouped)")
    p.add_argument("--budget-s", type=positive_float, default=None, metavar="SECONDS",
                   help="time budget of the whole run: work that would start after it is "
                        "spent (or is estimated not to fit) is listed as skipped with the "
                        "reason (default: no limit)")
    p.add_argument("--max-contention", type=fraction, default=None, metavar="SHARE",
                   help="shared machines: before each timed run wait until other processes use "
                        "at most SHARE (0..1) of the CPUs, and redo a run during which they used "
                        "more (default: off)")
    p.add_argument("--retries", type=seed_argument, default=3,
                   help="with --max-contention: redos per run at most (default 3)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: all usable cores)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                   help="decode/NMS micro-benchmark candidate counts, comma-separated "
                        f"(default {DEFAULT_CANDIDATES}; 'none' to skip it)")
    p.add_argument("--candidates-repeat", type=positive_int, default=None,
                   help="timed runs of the decode/NMS micro-benchmark (default: --repeat)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="results folder (default benchmarks/results)")
    p.add_argument("--name", default=None,
                   help="file name stem: its .json, .md and .png are replaced together (default "
                        "cpu-<date> / gpu-<date>, or the first of <that>-2, -3, ... whose files "
                        "do not exist yet)")
    p.add_argument("--export-dir", default=None,
                   help="where ONNX/TensorRT exports of the model are cached (default: "
                        "<tinyfaces cache>/bench/<model digest>)")
    p.add_argument("--cache-dir", default=None,
                   help="cache root for compiled torch-cuda networks (default: $TINYFACES_CACHE "
                        "or ~/.cache/tinyfaces_trt)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--precompile", action="store_true",
                   help="measure nothing: compile the torch-cuda-compile network for every "
                        "input shape this run (the same other arguments) would prepare into "
                        "the compile cache, so that the run loads them instead "
                        "(tools/gpu_check.py does this beside its GPU tests when that backend "
                        "is asked for); shapes already cached are left")
    p.add_argument("--precompile-part", default="1/1", metavar="K/N",
                   help="with --precompile: only the K-th of every N shapes (N processes "
                        "split the shapes; default 1/1: all)")
    p.add_argument("--report-only", default=None, metavar="JSON",
                   help="measure nothing: rewrite the .md and .png of an earlier run's JSON, "
                        "which is only read (an earlier schema is converted in memory)")
    p.add_argument("--save-json", default=None, metavar="FILE",
                   help="with --report-only: also write the run, converted to the current "
                        f"schema ({SCHEMA}), to FILE; never the JSON read (default: none)")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be >= 1 and --warmup >= 0")
    if args.batch < 0 or args.batch == 1:
        p.error("--batch must be 0 (off) or at least 2")
    wanted = (names if args.backend == "all"
              else [s.strip() for s in args.backend.split(",") if s.strip()])
    unknown = [n for n in wanted if n not in names]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; known: {names}")
    args.backends = wanted
    try:
        args.candidate_counts = ([] if args.candidates.strip().lower() in ("", "none") else
                                 [int(v) for v in args.candidates.split(",")])
    except ValueError:
        p.error(f"--candidates must be comma-separated integers, got {args.candidates!r}")
    if any(n < 1 for n in args.candidate_counts):
        p.error(f"--candidates must be positive integers (or 'none'), got {args.candidates!r}")
    if args.name is not None and (not args.name.strip() or Path(args.name).name != args.name
                                  or args.name in (".", "..")):
        p.error(f"--name is a file name stem without a folder, got {args.name!r}")
    try:
        args.precompile_part = parse_part(args.precompile_part)
    except ValueError as exc:
        p.error(f"--precompile-part: {exc}")
    if args.precompile_part != (1, 1) and not args.precompile:
        p.error("--precompile-part goes with --precompile")
    if args.precompile and args.report_only:
        p.error("--precompile measures nothing and --report-only rewrites a result: choose one")
    if args.save_json is not None and not args.report_only:
        p.error("--save-json goes with --report-only (a measuring run writes its JSON in --out)")
    if args.save_json is not None and _same_file(args.save_json, args.report_only):
        p.error(f"--save-json {args.save_json} is the JSON --report-only reads, which it leaves "
                "as it is; give another file")
    return args


def _same_file(a: str, b: str) -> bool:
    """Whether the paths name one file (after links; also two hard links to it)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return False


def check_files(args: argparse.Namespace) -> str | None:
    """The problem with the files the arguments name (``--report-only``, ``--image``,
    ``--weights``), in one line, or None: checked before any work."""
    if args.report_only:
        import json

        try:
            result = json.loads(Path(args.report_only).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return f"--report-only {args.report_only}: {_reason(exc)}"
        if not (isinstance(result, dict)
                and str(result.get("schema", "")).startswith("tinyfaces-trt-latency/")):
            return f"--report-only {args.report_only}: not a latency.py result (no schema " \
                   f"tinyfaces-trt-latency/N)"
        return None
    if args.image is not None:
        try:
            from PIL import Image

            with Image.open(args.image) as im:
                im.convert("RGB")
        except Exception as exc:  # missing, unreadable or no image: say which
            return f"--image {args.image}: {_reason(exc)}"
    if args.weights is not None and not Path(args.weights).is_file():
        return f"--weights {args.weights}: no such file"
    return None


def _reason(exc: BaseException) -> str:
    """An exception as a short reason (an OSError's strerror, else its first line)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return one_line(exc, with_type=True)


def unavailable(backends: list[str]) -> str | None:
    """None when at least one of ``backends`` may run here, else why each cannot (its
    probe: a missing dependency, no GPU)."""
    from bench_backends import BACKENDS

    specs = {b.name: b for b in BACKENDS}
    reasons = []
    for name in backends:
        reason = specs[name].probe()
        if not reason:
            return None
        reasons.append(f"{name}: {reason}")
    return "; ".join(reasons)


def free_name(out: Path, stem: str) -> str:
    """``stem``, or the first of ``stem-2``, ``stem-3``, ... none of whose result files
    (:data:`RESULT_SUFFIXES`) exist in ``out``: a default name never replaces another run."""
    name, k = stem, 1
    while any((out / f"{name}{suffix}").exists() for suffix in RESULT_SUFFIXES):
        k += 1
        name = f"{stem}-{k}"
    return name


def not_run(sizes: list[dict[str, Any]]) -> str | None:
    """None when some backend ran at some size, else why none did: per backend its first
    reason (per size when the size itself was skipped)."""
    if any(b.get("status") == "ok" for s in sizes for b in s.get("backends", [])):
        return None
    reasons: dict[str, str] = {}
    for s in sizes:
        if s.get("status", "ok") != "ok":
            reasons.setdefault(f"image size {s['image_size'][0]}x{s['image_size'][1]}",
                               f"skipped: {s.get('reason')}")
        for b in s.get("backends", []):
            reasons.setdefault(b["name"], f"{b.get('status')}: {b.get('reason')}")
    return "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no image size ran"


def _load_image(args: argparse.Namespace, size: ImageSize, seed: int = 0) -> tuple[np.ndarray, str]:
    w, h = size
    if args.image is None:
        return synthetic_image(h, w, seed), "synthetic (seeded colour blobs, noise)"
    from PIL import Image

    with Image.open(args.image) as im:
        rgb = im.convert("RGB").resize((w, h), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8).copy(), f"{Path(args.image).name} resized"


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from tinyfaces_trt.core.config import DetectorConfig

    if args.weights:
        from tinyfaces_trt.export.weights import load_weights

        model, config = load_weights(args.weights, depth=args.depth, variant=args.variant)
        what = f"weights {Path(args.weights).name}"
    else:
        from tinyfaces_trt.export.model import build_model

        model = build_model(depth=args.depth or DEFAULT_DEPTH,
                            variant=args.variant or DEFAULT_VARIANT, seed=args.seed)
        config = DetectorConfig.for_variant(model.variant)
        what = f"seeded random weights (seed {args.seed})"
    args.depth, args.variant = model.depth, model.variant  # as recorded in the results
    return model.eval(), config.with_(pyramid=args.pyramid), what


class _Bench:
    """One backend in the run: its report entry and, while it is measured, its pipeline."""

    def __init__(self, spec: Any) -> None:
        self.entry: dict[str, Any] = {"name": spec.name, "description": spec.description,
                                      "precision": spec.precision}
        self.spec = spec
        self.pipe: Any = None
        self.samples: list[dict[str, float]] = []
        self.boxes: np.ndarray | None = None
        self.copies_note = ""
        self.fell_back = ""  # the pipeline's fallbacks(), kept when it closes
        self.contention: list[float] = []
        self.discarded = 0

    def start(self, ctx: Any, log) -> None:
        """Probes and builds the pipeline, or marks the entry skipped (a dependency is
        missing) or failed (present but does not start), with the reason."""
        from bench_backends import Skip
        from tinyfaces_trt.core.errors import BackendUnavailableError

        reason = self.spec.probe()
        if reason:
            self.entry.update(status="skipped", reason=reason)
            return
        start = time.perf_counter()
        try:
            log(f"[{self.spec.name}] building ...")
            self.pipe = self.spec.build(ctx)
            self.copies_note = self.pipe.copies_note
        except (Skip, BackendUnavailableError) as exc:
            self.entry.update(status="skipped", reason=one_line(exc))
        except Exception as exc:  # present but does not start: say why, go on
            self.entry.update(status="failed",
                              reason=f"failed to start: {one_line(exc, with_type=True)}")
        self.entry["build_s"] = round(time.perf_counter() - start, 3)
        if self.pipe is not None:
            self.entry["uses_gpu"] = bool(self.pipe.uses_gpu)
            if self.pipe.prepare_seconds:  # compiling / capturing, inside build_s
                self.entry["prepare_s"] = round(self.pipe.prepare_seconds, 3)
            log(f"[{self.spec.name}] ready in {format_duration(self.entry['build_s'] * 1e3)}")

    def timed_run(self, image: np.ndarray, label: str,
                  log) -> tuple[dict[str, float] | None, float | None]:
        """One synchronised detect with per-stage timings, and the share of the CPUs other
        processes used meanwhile; (None, None) and the entry failed on an error."""
        timings: dict[str, float] = {}
        meter = ContentionMeter()
        try:
            self.pipe.synchronize()
            meter.start()
            start = time.perf_counter()
            self.boxes = self.pipe.detect(image, timings)
            self.pipe.synchronize()
        except Exception as exc:
            self.fail(exc)
            return None, None
        timings["total"] = time.perf_counter() - start
        share = meter.stop()
        busy = "" if share is None else f" (other processes: {share:.0%} of the CPUs)"
        log(f"[{self.spec.name}] {label}: {format_duration(timings['total'] * 1000)}{busy}")
        return timings, share

    def end_to_end(self, image: np.ndarray, repeat: int) -> None:
        """Device backends: ``repeat`` runs without per-stage synchronisation. Where the
        backend uploads page-locked images without staging, as many of the same image in
        page-locked memory (``end_to_end_page_locked``), after one untimed run of it, the two
        alternating (pageable, page-locked, page-locked, pageable, ...); that pass is dropped,
        saying why, where it fails or its image was staged after all."""
        locked: list[float] = []
        frame, runs, uploads = self._page_locked_pass(image)
        durations = []
        try:
            for k in range(repeat):
                for page_locked in ((False, True) if k % 2 == 0 else (True, False)):
                    if not page_locked:
                        durations.append(self._timed_detect(image))
                    elif frame is not None:
                        try:
                            locked.append(self._timed_detect(frame))
                            runs += 1
                        except Exception as exc:
                            self.entry["end_to_end_page_locked_note"] = (
                                f"failed: {one_line(exc, with_type=True)}")
                            frame = None
        except Exception as exc:
            self.fail(exc)
            return
        self.entry["end_to_end"] = summarize(durations)
        if frame is None:
            return
        if self.pipe.page_locked_uploads() - uploads != runs:
            self.entry["end_to_end_page_locked_note"] = ("not measured: the page-locked image "
                                                         "was staged")
        elif locked:
            self.entry["end_to_end_page_locked"] = summarize(locked)

    def _page_locked_pass(self, image: np.ndarray) -> tuple[np.ndarray | None, int, int]:
        """The image in page-locked memory where the backend takes it without staging, after
        one untimed detect of it (None, noted, where that fails), the runs so far and the
        backend's count of page-locked uploads before them."""
        uploads = self.pipe.page_locked_uploads()
        try:
            frame = self.pipe.page_locked_copy(image)
            if frame is not None:
                self._timed_detect(frame)
        except Exception as exc:
            self.entry["end_to_end_page_locked_note"] = f"failed: {one_line(exc, with_type=True)}"
            return None, 0, uploads
        return frame, int(frame is not None), uploads

    def _timed_detect(self, image: np.ndarray) -> float:
        start = time.perf_counter()
        self.pipe.detect(image, None)
        self.pipe.synchronize()
        return time.perf_counter() - start

    def fail(self, exc: BaseException) -> None:
        self.entry.update(status="failed", reason=one_line(exc, with_type=True))
        self.close()

    def close(self) -> None:
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            self.fell_back = pipe.fallbacks()
            try:
                pipe.close()
            except Exception as exc:  # report, keep going
                self.entry.setdefault("close_error", one_line(exc, with_type=True))

    def finish(self) -> dict[str, Any]:
        """The report entry (stages summarized when the backend ran)."""
        if "status" not in self.entry:
            self.entry.update(status="ok", stages=_summarize_stages(self.samples),
                              detections=int(len(self.boxes)))
            if self.copies_note:
                self.entry["copies_note"] = self.copies_note
            fell_back = self.pipe.fallbacks() if self.pipe is not None else self.fell_back
            if fell_back:  # measured in another mode than asked: gpu_check fails on it
                self.entry["fell_back"] = fell_back
            self.entry["contention"] = {
                "others_cpu_share_median": (float(np.median(self.contention))
                                            if self.contention else None),
                "others_cpu_share": [round(v, 3) for v in self.contention],
                "discarded_runs": self.discarded}
        return self.entry


def measure(benches: list[_Bench], image: np.ndarray, args: argparse.Namespace, log,
            deadline: Deadline | None = None) -> None:
    """Warm-up per backend, then ``args.repeat`` rounds running each backend once in turn.

    Interleaving spreads slow phases of a shared machine over all backends alike. With
    ``args.max_contention``, each timed run first waits for the other processes to quiet
    down, and a run during which they used more than that share of the CPUs is discarded
    and redone (at most ``args.retries`` times; the last attempt is kept). Once ``deadline``
    has passed, no further round starts (at least one always runs); GPU backends then get
    their end-to-end pass (no per-stage synchronisation) unless the deadline has passed.
    """
    deadline = deadline or Deadline(None)
    live = [b for b in benches if b.pipe is not None]
    for b in live:
        for i in range(args.warmup):
            if b.pipe is not None:
                b.timed_run(image, f"warm-up {i + 1}/{args.warmup}", log)
    limit = args.max_contention
    for r in range(args.repeat):
        if r and deadline.expired():
            log(f"time budget spent: stopping after {r} of {args.repeat} timed rounds")
            for b in live:
                b.entry["rounds_note"] = (f"{r} of {args.repeat} timed runs (--budget-s spent)")
            break
        for b in live:
            for attempt in range(args.retries + 1):
                if b.pipe is None:
                    break
                if limit is not None:
                    wait_until_quiet(limit)
                timings, share = b.timed_run(image, f"run {r + 1}/{args.repeat}", log)
                if timings is None:
                    break
                if limit is None or share is None or share <= limit or attempt == args.retries:
                    b.samples.append(timings)
                    if share is not None:
                        b.contention.append(share)
                    break
                b.discarded += 1
                log(f"[{b.spec.name}] discarded: other processes used {share:.0%} > {limit:.0%}")
    for b in live:
        if b.pipe is not None:
            stats = b.pipe.stats()
            if stats:
                b.entry["device_stats"] = stats  # candidates before NMS, kept (last run)
        if b.pipe is not None and b.pipe.uses_gpu:  # per-stage syncs serialise device work
            if deadline.expired():
                b.entry["end_to_end_note"] = "not measured: --budget-s spent"
            else:
                b.end_to_end(image, len(b.samples) or 1)


def measure_batch(bench: _Bench, images: list[np.ndarray], args: argparse.Namespace,
                  log) -> dict[str, Any]:
    """Throughput of ``len(images)`` frames through ``detect_batch`` against one ``detect``
    per frame (both synchronised at the end; ``args.warmup`` (at least 1) untimed passes
    first, as the batch shapes may compile; ``args.repeat`` timed passes each, interleaved).
    """
    pipe, n = bench.pipe, len(images)
    row: dict[str, Any] = {"backend": bench.spec.name, "batch": n}
    single_s, batched_s = [], []
    try:
        for k in range(max(1, args.warmup) + args.repeat):
            pipe.synchronize()
            start = time.perf_counter()
            for image in images:
                pipe.detect(image, None)
            pipe.synchronize()
            single = time.perf_counter() - start
            start = time.perf_counter()
            results = pipe.detect_batch(images)
            pipe.synchronize()
            batched = time.perf_counter() - start
            calls = pipe.runner_calls()
            label = "warm-up" if k < max(1, args.warmup) else "run"
            log(f"[{bench.spec.name}] batch {label}: {n} single {format_duration(single * 1e3)}, "
                f"detect_batch {format_duration(batched * 1e3)}")
            if k >= max(1, args.warmup):
                single_s.append(single / n)
                batched_s.append(batched / n)
        if len(results) != n:
            raise RuntimeError(f"detect_batch returned {len(results)} results for {n} images")
    except Exception as exc:
        row.update(status="failed", reason=one_line(exc, with_type=True))
        return row
    single, batched = summarize(single_s), summarize(batched_s)
    modes = pipe.shape_modes(n)
    if modes:  # torch-cuda: the batch shapes are new; did they compile, or fall back?
        row["shape_modes"] = modes
    row.update(status="ok", single=single, batched=batched, runner_calls=calls,
               single_images_per_s=1e3 / single["median_ms"],
               batched_images_per_s=1e3 / batched["median_ms"],
               gain=single["median_ms"] / batched["median_ms"])
    return row


def profile_detect(bench: _Bench, image: np.ndarray, log, rows: int = 12) -> dict[str, Any]:
    """The torch profiler over one synchronised detect: wall time, summed GPU kernel time,
    when the GPU was busy and idle (:func:`~bench_common.gpu_timeline`) and the top kernels
    by GPU time (CUPTI; kernels replayed from CUDA graphs included)."""
    def detect() -> None:
        bench.pipe.detect(image, None)
        bench.pipe.synchronize()

    try:
        detect()
        wall, kernels, timeline = profiled_kernels(detect)
    except Exception as exc:
        return {"backend": bench.spec.name, "status": "skipped",
                "reason": f"torch profiler: {one_line(exc, with_type=True)}"}
    total_ms = sum(k["gpu_ms"] for k in kernels)
    log(f"[{bench.spec.name}] profiled one detect: {format_duration(wall * 1e3)} wall, "
        f"{format_duration(total_ms)} of GPU kernels")
    return {"backend": bench.spec.name, "status": "ok", "wall_ms": wall * 1e3,
            "gpu_kernel_ms": total_ms, "timeline": timeline, "top": short_names(kernels[:rows]),
            "stages": short_names([k for k in kernels if stage_kernel(k["name"])])}


#: Names of the runtime's own CUDA stage kernels, the CUB calls of its NMS and the copies.
STAGE_KERNEL = re.compile(r"resize_\w*kernel|decode_level_kernel|nms_\w*kernel|cub::|"
                          r"DeviceRadixSort|DeviceScan|Onesweep|RadixSort|Memcpy|Memset")


def stage_kernel(name: str) -> bool:
    """Whether a profiled kernel is one of the CUDA stages' (resize, decode, NMS with its CUB
    sorts and scan) or a copy, rather than the network's."""
    return STAGE_KERNEL.search(name) is not None


#: About how long the profile takes (its warm-up detect and the profiled one).
PROFILE_S = 10.0
#: A profile still running after this long is taken for hung: the process ends with
#: EXIT_PROFILE_HUNG (its results saved before the profile, marked so).
PROFILE_HANG_S = 90.0
EXIT_PROFILE_HUNG = 4
#: What a result saved just before the profile says of it: the run ended during it.
PROFILE_CUT = ("the run ended while the profile was under way (a hang or crash under the "
               "profiler); everything else was saved before it")


def profile_last(to_profile: list[tuple[_Bench, np.ndarray]], entry: dict[str, Any],
                 deadline: Deadline, log,
                 give_up: Callable[[], None] = lambda: os._exit(EXIT_PROFILE_HUNG)) -> None:
    """The profile of the first size's main GPU backend, kept open until now, into that
    size's ``entry``; then the backend is closed. Last in the run: the profiler (CUPTI with
    CUDA graphs) is the step most likely to hang or crash the process, and nothing else is
    left to lose by then. A profile still running after :data:`PROFILE_HANG_S` ends the
    process (``give_up``) rather than hold the machine: the result is already saved."""
    for bench, image in to_profile:
        try:
            refused = deadline.refuse("the profile", PROFILE_S)
            if refused or bench.pipe is None:
                entry["profile"] = {"backend": bench.spec.name, "status": "skipped",
                                    "reason": refused or "the backend failed before the profile"}
            else:
                with _watchdog(f"[{bench.spec.name}] the profile", log, give_up):
                    entry["profile"] = profile_detect(bench, image, log)
        finally:
            bench.close()
    to_profile.clear()


def cuda_decode_nms_ran(result: dict[str, Any]) -> bool:
    """Whether a CUDA row of the decode/NMS table ran."""
    rows = (result.get("decode_nms") or {}).get("rows") or []
    return any(i["name"].startswith("cuda") and i.get("status") == "ok"
               for r in rows for i in r["implementations"])


@contextlib.contextmanager
def _watchdog(what: str, log, give_up: Callable[[], None]) -> Iterator[None]:
    """Ends the process (``give_up``) when the work inside runs past :data:`PROFILE_HANG_S`
    (a hang under the profiler): the results are saved before it."""
    def hung() -> None:
        log(f"{what} is still running after {PROFILE_HANG_S:.0f} s (a hang under the "
            f"profiler): ending here, exit {EXIT_PROFILE_HUNG}; the results were saved before it")
        give_up()

    watchdog = threading.Timer(PROFILE_HANG_S, hung)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def profile_decode_nms_last(result: dict[str, Any], counts: list[int], config: Any,
                            deadline: Deadline, log,
                            give_up: Callable[[], None] = lambda: os._exit(EXIT_PROFILE_HUNG)
                            ) -> None:
    """``--profile`` with ``--candidates``, where a CUDA row of the timed table ran
    (:func:`cuda_decode_nms_ran`): one decode + NMS per count under the profiler, into
    ``result["decode_nms"]["profile"]`` (last, as the detect's profile: see
    :func:`profile_last`)."""
    refused = deadline.refuse("the decode/NMS profile", PROFILE_S)
    if refused:
        result["decode_nms"]["profile"] = [{"target": c, "status": "skipped", "reason": refused}
                                           for c in counts]
        return
    from bench_scores import profile_decode_nms

    with _watchdog("the decode/NMS profile", log, give_up):
        result["decode_nms"]["profile"] = profile_decode_nms(counts, config, log=log)


def _summarize_stages(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({k for s in samples for k in s})
    stages = {k: summarize([s.get(k, 0.0) for s in samples]) for k in keys}
    named = ("preprocess", "network", "h2d", "d2h", "decode", "nms")
    stages["other"] = summarize([max(0.0, s["total"] - sum(s.get(k, 0.0) for k in named))
                                 for s in samples])
    return stages


def write_reports(result: dict[str, Any], out: Path, plot: bool, log, *,
                  with_json: bool = True) -> None:
    """Writes ``<name>.png`` (unless ``plot`` is False), ``<name>.json`` (unless
    ``with_json`` is False: ``--report-only`` leaves the JSON it reads as it is) and
    ``<name>.md``."""
    from bench_report import render_markdown, write_json, write_plot
    from tinyfaces_trt.core.files import write_text_atomic

    name = result["name"]
    result.pop("plot", None)
    result.pop("plot_skipped", None)
    if plot:
        reason = write_plot(result, out / f"{name}.png")
        if reason:
            result["plot_skipped"] = reason
            log(f"plot skipped: {reason}")
        else:
            result["plot"] = f"{name}.png"
    if with_json:
        write_json(result, out / f"{name}.json")
    write_text_atomic(out / f"{name}.md", render_markdown(result))
    suffixes = [".json"] * with_json + [".md"] + [".png"] * ("plot" in result)
    log(f"wrote {out / name}{', '.join(suffixes)}")


def _primary(benches: list[_Bench]) -> _Bench | None:
    """The backend the profile is about (the targets' choice among the live ones)."""
    from bench_targets import PRIMARY

    live = {b.spec.name: b for b in benches if b.pipe is not None and b.spec.name != "reference"}
    for name in PRIMARY:
        if name in live:
            return live[name]
    return next((b for b in live.values() if b.pipe.uses_gpu), None)


def run_size(size: ImageSize, first: bool, args: argparse.Namespace, model: Any, config: Any,
             threads: int, export_root: Path, deadline: Deadline, estimate_s: float,
             log, checkpoint: Callable[[dict[str, Any]], None] | None = None,
             to_profile: list[tuple[_Bench, np.ndarray]] | None = None) -> dict[str, Any]:
    """Everything measured at one image size (backends, batch, parity).
    ``checkpoint`` gets the entry as it stands once the backends are measured (marked
    ``partial``), so that a run killed during the batch or parity keeps them. At the first
    size with ``--profile``, the backend to profile is left open and put in ``to_profile``
    (with its image): the profile comes last in the run (:func:`profile_last`)."""
    from bench_backends import BACKENDS, BenchContext
    from bench_targets import network_flops
    from tinyfaces_trt.core.pyramid import plan_pyramid

    started = time.perf_counter()
    image, image_what = _load_image(args, size)
    levels = plan_pyramid(image.shape[0], image.shape[1], config)
    entry: dict[str, Any] = {
        "image_size": [size.width, size.height], "image": image_what,
        "levels": [{"index": lv.index, "exponent": lv.exponent, "scale": lv.scale,
                    "height": lv.height, "width": lv.width} for lv in levels]}
    refused = deadline.refuse(f"image size {size}", estimate_s)
    if refused:
        log(f"{size}: skipped: {refused}")
        entry.update(status="skipped", reason=refused, backends=[])
        return entry
    entry["status"] = "ok"
    log(f"image {size}, {len(levels)} levels: " + ", ".join(f"{lv.width}x{lv.height}" for lv in levels))
    try:
        flops = network_flops(model, [(1, 3, lv.height, lv.width) for lv in levels])
        for lv, f in zip(entry["levels"], flops):
            lv["flop"] = f
        entry["flop_per_image"] = float(sum(flops))
    except Exception as exc:  # the count is a nicety; the timings stand without it
        entry["flop_per_image"] = None
        entry["flop_note"] = f"not counted: {one_line(exc, with_type=True)}"
    ctx = BenchContext(model=model, config=config, levels=levels, image_hw=image.shape[:2],
                       threads=threads, export_root=export_root, log=log,
                       torch_mode=args.torch_mode,
                       cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                       max_batch=max(1, args.batch) if first else 1)  # the batch rows' size
    specs = {b.name: b for b in BACKENDS}
    benches = [_Bench(specs[name]) for name in args.backends]
    try:
        for bench in benches:
            refused = deadline.refuse(f"building {bench.spec.name}")
            if refused:
                bench.entry.update(status="skipped", reason=refused)
            else:
                bench.start(ctx, log)
        measure(benches, image, args, log, deadline)
        if checkpoint is not None:
            checkpoint({**entry, "partial": "the backends are measured; batch and parity were "
                        "still to come", "backends": [b.finish() for b in benches]})
        if args.batch and first:
            batch_start = time.perf_counter()
            entry["batch"] = _batch_rows(benches, args, size, len(levels), deadline, log)
            entry["batch_seconds"] = time.perf_counter() - batch_start
        if args.profile and first:
            primary = _primary(benches)
            if primary is None:
                entry["profile"] = {"status": "skipped", "reason": "no GPU backend ran"}
            elif to_profile is not None:
                to_profile.append((primary, image))
    finally:
        for bench in benches:
            if to_profile is None or all(bench is not b for b, _ in to_profile):
                bench.close()
    entry["backends"] = [bench.finish() for bench in benches]
    ref = next((b for b in entry["backends"] if b["name"] == "reference" and b["status"] == "ok"),
               None)
    for b in entry["backends"]:
        if ref and b["status"] == "ok":
            b["speedup_vs_reference"] = (ref["stages"]["total"]["median_ms"]
                                         / b["stages"]["total"]["median_ms"])
    if args.parity:
        entry["parity"] = _parity(benches, model, config, image, deadline, log)
    entry["seconds"] = time.perf_counter() - started
    return entry


def _batch_rows(benches: list[_Bench], args: argparse.Namespace, size: ImageSize,
                n_levels: int, deadline: Deadline, log) -> dict[str, Any]:
    images = [_load_image(args, size, seed=k)[0] for k in range(args.batch)]
    rows = []
    for b in benches:
        if b.pipe is None or not b.pipe.supports_batch:
            continue
        # the batch shapes are new: about as long to prepare as this backend's build
        per_image = float(np.median([s["total"] for s in b.samples])) if b.samples else 0.0
        estimate = b.entry.get("build_s", 0.0) + 2 * per_image * args.batch * (
            max(1, args.warmup) + args.repeat)
        refused = deadline.refuse(f"the batch rows of {b.spec.name}", estimate)
        if refused:
            rows.append({"backend": b.spec.name, "batch": args.batch, "status": "skipped",
                         "reason": refused})
            continue
        log(f"[{b.spec.name}] batch of {args.batch} ...")
        row = measure_batch(b, images, args, log)
        row["levels"] = n_levels
        rows.append(row)
    return {"batch": args.batch, "rows": rows}


def _parity(benches: list[_Bench], model: Any, config: Any, image: np.ndarray,
            deadline: Deadline, log) -> dict[str, Any]:
    from bench_parity import REFERENCE, compare_with_reference, reference_detections

    tested = [b for b in benches if b.spec.name != "reference" and b.entry["status"] == "ok"]
    result: dict[str, Any] = {"reference": REFERENCE, "rows": []}
    if not tested:
        result.update(status="skipped", reason="no backend to compare ran")
        return result
    refused = deadline.refuse("the parity check")
    if refused:
        result.update(status="skipped", reason=refused)
        return result
    log(f"parity: the CPU reference on the {image.shape[1]}x{image.shape[0]} image ...")
    start = time.perf_counter()
    try:
        reference = reference_detections(model, config, image)
    except Exception as exc:
        result.update(status="failed", reason=f"CPU reference: {one_line(exc, with_type=True)}")
        return result
    result.update(status="ok", reference_detections=int(len(reference)),
                  reference_seconds=time.perf_counter() - start)
    for b in tested:
        try:
            row = compare_with_reference(reference, b.boxes, config, b.spec.precision)
        except Exception as exc:
            row = {"passed": False, "failures": [f"comparison failed: {one_line(exc, True)}"]}
        row["backend"] = b.spec.name
        log(f"parity [{b.spec.name}]: {'pass' if row['passed'] else 'FAIL'} "
            f"({row.get('test')} vs {row.get('reference')} detections, {row.get('matched')} matched)")
        result["rows"].append(row)
    return result


def _settings(args: argparse.Namespace, threads: int, weights_what: str,
              config: Any) -> dict[str, Any]:
    return {
        "image_sizes": [[s.width, s.height] for s in args.image_size],
        "depth": args.depth, "variant": config.variant, "weights": weights_what,
        "pyramid": config.pyramid, "prob_thresh": config.prob_thresh,
        "nms_thresh": config.nms_thresh, "repeat": args.repeat, "warmup": args.warmup,
        "threads": threads, "max_contention": args.max_contention, "retries": args.retries,
        "torch_mode": args.torch_mode, "batch": args.batch, "parity": args.parity,
        "budget_s": args.budget_s,
    }


def upgrade(result: dict[str, Any]) -> dict[str, Any]:
    """A result of an earlier schema in the current one (for ``--report-only``)."""
    if result.get("schema") == "tinyfaces-trt-latency/1":
        s = result["settings"]
        result["sizes"] = [{"image_size": s["image_size"], "image": s["image"],
                            "levels": s["levels"], "status": "ok",
                            "backends": result.pop("backends")}]
        s["image_sizes"] = [s.pop("image_size")]
        result["schema"] = SCHEMA
    if "targets" not in result:
        from bench_targets import evaluate_targets

        result["targets"] = evaluate_targets(result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark: 0 when done, 1 (one line on stderr, nothing written) when a file
    the arguments name is unusable or no requested backend can run, 2 on bad arguments."""
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def error(msg: str) -> int:
        log(f"{PROG}: error: {msg}")
        return EXIT_ERROR

    problem = check_files(args)
    if problem:
        return error(problem)
    if args.report_only:
        import json

        from bench_report import write_json

        path = Path(args.report_only)
        try:  # the JSON read is never written: it may be a committed result
            result = upgrade(json.loads(path.read_text()))
            write_reports(result, path.parent, not args.no_plot, log, with_json=False)
            if args.save_json is not None:
                write_json(result, Path(args.save_json))
                log(f"wrote {args.save_json} ({result['schema']})")
        except OSError as exc:
            return error(f"cannot rewrite the reports of {path}: {_reason(exc)}")
        return 0
    if args.precompile:
        from bench_precompile import precompile
        from tinyfaces_trt.core.errors import TinyFacesError

        try:
            model, config, _ = _load_model(args)
        except TinyFacesError as exc:  # a checkpoint that does not load
            return error(one_line(exc))
        return precompile(args, model, config, log)
    reasons = unavailable(args.backends)
    if reasons:
        return error(f"no requested backend can run here: {reasons}")
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.core.files import prepare_output_dir, removed_if_left_empty

    with removed_if_left_empty(args.out):  # a run that writes nothing leaves no new folder
        try:
            out = prepare_output_dir(args.out, f"--out {args.out}")
        except TinyFacesError as exc:
            return error(str(exc))
        return _run(args, argv, out, log, error)


def _run(args: argparse.Namespace, argv: list[str] | None, out: Path, log,
         error: Callable[[str], int]) -> int:
    """:func:`main` once the arguments, files and ``out`` folder are checked."""
    deadline = Deadline(args.budget_s)
    import torch

    from bench_backends import model_digest
    from bench_scores import run_decode_nms
    from bench_upload import run_upload
    from bench_targets import evaluate_targets
    from tinyfaces_trt.core.errors import TinyFacesError

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    try:
        model, config, weights_what = _load_model(args)
    except TinyFacesError as exc:  # a checkpoint that does not load: its own one line
        return error(one_line(exc))
    if args.export_dir:
        export_root = Path(args.export_dir)
    else:
        from tinyfaces_trt.export_cache import cache_root

        export_root = cache_root() / "bench" / f"r{args.depth}-{args.variant}-{model_digest(model)}"

    words = sys.argv[1:] if argv is None else argv
    machine = machine_description(threads)
    name = args.name
    if name is None:
        stem = f"{'gpu' if machine['gpu'] else 'cpu'}-{today()}"
        name = free_name(out, stem)
        if name != stem:
            log(f"{out / stem}.* exist (another run): this run writes {name}.* "
                "(--name NAME to choose, or to replace a result)")
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "complete": False,
        "created": now_iso(),
        "command": "python benchmarks/latency.py " + " ".join(shlex.quote(a) for a in words),
        "machine": machine,
        "settings": _settings(args, threads, weights_what, config),
        "sizes": [],
        "decode_nms": None,
        "upload": None,
    }
    saved: list[bool] = []

    def save(final: bool = False) -> None:
        """Writes the reports; before the end without the PNG and marked incomplete, so a
        run that dies later (a crash in a GPU library, a kill) still leaves its numbers.
        The name's files are this run's from the first save on: a PNG not written is
        removed (an earlier run's)."""
        result["seconds"] = deadline.elapsed()
        result["complete"] = final
        result["targets"] = evaluate_targets(result)
        write_reports(result, out, final and not args.no_plot, log if final else (lambda _: None))
        if "plot" not in result:
            (out / f"{name}.png").unlink(missing_ok=True)
        saved.append(final)

    refused = deadline.refuse("the decode/NMS micro-benchmark")
    if args.candidate_counts and refused:
        log(f"decode/NMS: skipped: {refused}")
    elif args.candidate_counts:  # first: seconds, and two of the targets
        rep = args.candidates_repeat or args.repeat
        rows = run_decode_nms(args.candidate_counts, config, rep, args.warmup,
                              with_reference=config.variant == "pytorch", log=log)
        result["decode_nms"] = {"repeat": rep, "warmup": args.warmup, "rows": rows}
        save()

    refused = deadline.refuse("the image upload micro-benchmark")
    if refused:
        result["upload"] = {"status": "skipped", "reason": refused}
    else:  # seconds on a GPU; skipped (said in the JSON only) without one
        result["upload"] = run_upload([(s.width, s.height) for s in args.image_size],
                                      args.repeat, args.warmup, log)
        save()

    sizes: list[dict[str, Any]] = result["sizes"]

    def checkpoint(partial: dict[str, Any]) -> None:
        """Saves the sizes done so far and ``partial``, the size under way (best effort: the
        size's own save comes later)."""
        result["sizes"] = sizes + [partial]
        try:
            save()
        except Exception as exc:
            log(f"could not save the partial results: {one_line(exc, with_type=True)}")
        finally:
            result["sizes"] = sizes

    to_profile: list[tuple[_Bench, np.ndarray]] = []  # the first size's, profiled last
    # and then one CUDA decode + NMS per count: marked running in every save before it
    decode_profile = bool(args.profile and args.candidate_counts and cuda_decode_nms_ran(result))
    if decode_profile:
        result["decode_nms"]["profile"] = [{"target": c, "status": "running",
                                            "reason": PROFILE_CUT}
                                           for c in args.candidate_counts]
    try:
        for i, size in enumerate(args.image_size):
            # leave the profiles their time
            estimate = (PROFILE_S if to_profile else 0.0) + (PROFILE_S if decode_profile else 0.0)
            if sizes and sizes[-1].get("status") == "ok":  # the previous size, scaled by pixels
                prev = sizes[-1]
                build = sum(b.get("build_s", 0.0) for b in prev["backends"])
                pixels = (size.width * size.height) / (prev["image_size"][0]
                                                       * prev["image_size"][1])
                batch_s = prev.get("batch_seconds", 0.0)
                estimate += build + max(0.0, prev["seconds"] - build - batch_s) * pixels
            sizes.append(run_size(size, i == 0, args, model, config, threads, export_root,
                                  deadline, estimate, log, checkpoint, to_profile))
            save()
        _log_summary(sizes, log)
        if to_profile:
            sizes[0]["profile"] = {"backend": to_profile[0][0].spec.name, "status": "running",
                                   "reason": PROFILE_CUT}
            save(final=True)  # complete but for the profile, should it hang or crash
            log(f"[{to_profile[0][0].spec.name}] the profile, last ...")
            profile_last(to_profile, sizes[0], deadline, log)
        if decode_profile:
            save(final=True)  # complete but for this profile, should it hang or crash
            profile_decode_nms_last(result, args.candidate_counts, config, deadline, log)
    finally:
        for bench, _ in to_profile:  # a later size failed: the kept backend is closed too
            bench.close()
    why = not_run(sizes)
    measured = bool((result["decode_nms"] or {}).get("rows"))
    cut = any(str(s.get("reason", "")).startswith("time budget") for s in sizes)
    if why and not measured and not cut:  # nothing to report: this run's partial files go
        if saved:
            for suffix in RESULT_SUFFIXES:
                (out / f"{name}{suffix}").unlink(missing_ok=True)
        return error(f"no requested backend ran: {why}")
    save(final=True)  # what ran, and what the budget left out (the GPU check reads both)
    if why:
        log(f"{PROG}: no requested backend ran: {why}")
    return 0


def _log_summary(sizes: list[dict[str, Any]], log) -> None:
    for s in sizes:
        for b in s.get("backends", []):
            if b["status"] == "ok":
                t = b["stages"]["total"]
                speed = (f", {b['speedup_vs_reference']:.2f}x vs reference"
                         if "speedup_vs_reference" in b else "")
                log(f"{s['image_size'][0]}x{s['image_size'][1]} {b['name']:>24}: median "
                    f"{format_duration(t['median_ms'])}, p90 {format_duration(t['p90_ms'])}{speed}")
            else:
                log(f"{s['image_size'][0]}x{s['image_size'][1]} {b['name']:>24}: {b['status']}: "
                    f"{b['reason']}")


if __name__ == "__main__":
    sys.exit(main())
