#!/usr/bin/env python
"""End-to-end and per-stage latency of the Tiny Faces detector, per backend.

    python benchmarks/latency.py                                  # every backend present
    python benchmarks/latency.py --backend reference,torch,onnxruntime --image-size 1920x1080 --repeat 3

For one image: the pyramid resize, the network (all levels and per level), decode, NMS and
host<->device copies, median and p90 over ``--repeat`` runs after ``--warmup`` runs, for
every backend present (absent ones are listed as "skipped: <reason>"), with the reference
pipeline as tiny-faces-pytorch runs it measured side by side in the same run. Then decode
and NMS alone on synthetic clustered score maps with ``--candidates`` candidates (numpy,
the port's numpy code, and the CUDA kernels where a GPU and the library are present).

Writes ``<out>/<name>.json``, ``<name>.md`` and ``<name>.png`` (see benchmarks/README.md).
The network has seeded random weights unless ``--weights`` is given: its timings are those
of the real network, its detections are meaningless.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_common import (ContentionMeter, machine_description, now_iso, one_line,  # noqa: E402
                          summarize, today, wait_until_quiet)
from tinyfaces_trt.core.cli import parse_image_size  # noqa: E402
from tinyfaces_trt.parity.images import synthetic_image  # noqa: E402

HERE = Path(__file__).resolve().parent
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
  python benchmarks/latency.py --backend tensorrt-fp16,tensorrt-fp16-cuda --warmup 3 --repeat 20
  python benchmarks/latency.py --image photo.jpg --image-size 1280x720 --weights checkpoint_50.pth
  python benchmarks/latency.py --report-only benchmarks/results/cpu-2026-11-24.json
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench_backends import BACKENDS

    names = [b.name for b in BACKENDS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="all",
                   help=f"comma-separated backends, or 'all' (default). Known: {', '.join(names)}")
    p.add_argument("--image-size", default="640x480", type=parse_image_size, metavar="WxH",
                   help="image width x height (default 640x480; 1920x1080 is a full-HD frame)")
    p.add_argument("--image", default=None, help="an image file to use (resized to --image-size); "
                   "default: a seeded synthetic image")
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
    p.add_argument("--max-contention", type=float, default=None, metavar="SHARE",
                   help="shared machines: before each timed run wait until other processes use "
                        "at most SHARE (0..1) of the CPUs, and redo a run during which they used "
                        "more (default: off)")
    p.add_argument("--retries", type=int, default=3,
                   help="with --max-contention: redos per run at most (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: all usable cores)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                   help="decode/NMS micro-benchmark candidate counts, comma-separated "
                        f"(default {DEFAULT_CANDIDATES}; 'none' to skip it)")
    p.add_argument("--candidates-repeat", type=int, default=None,
                   help="timed runs of the decode/NMS micro-benchmark (default: --repeat)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="results folder (default benchmarks/results)")
    p.add_argument("--name", default=None, help="file name stem (default cpu-<date> / gpu-<date>)")
    p.add_argument("--export-dir", default=None,
                   help="where ONNX/TensorRT exports of the model are cached (default: "
                        "<tinyfaces cache>/bench/<model digest>)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--report-only", default=None, metavar="JSON",
                   help="measure nothing: rewrite the .md and .png of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0:
        p.error("--repeat must be >= 1 and --warmup >= 0")
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
    return args


def _load_image(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    w, h = args.image_size
    if args.image is None:
        return synthetic_image(h, w), "synthetic (seeded colour blobs, noise)"
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
        self.entry: dict[str, Any] = {"name": spec.name, "description": spec.description}
        self.spec = spec
        self.pipe: Any = None
        self.samples: list[dict[str, float]] = []
        self.boxes: np.ndarray | None = None
        self.copies_note = ""
        self.contention: list[float] = []
        self.discarded = 0

    def start(self, ctx: Any, log) -> None:
        """Probes and builds the pipeline, or marks the entry skipped with the reason."""
        from bench_backends import Skip

        reason = self.spec.probe()
        if reason:
            self.entry.update(status="skipped", reason=reason)
            return
        try:
            log(f"[{self.spec.name}] building ...")
            self.pipe = self.spec.build(ctx)
            self.copies_note = self.pipe.copies_note
        except Skip as exc:
            self.entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # present but does not start: say why, go on
            reason = f"failed to start: {one_line(exc, with_type=True)}"
            self.entry.update(status="skipped", reason=reason)

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
        log(f"[{self.spec.name}] {label}: {timings['total'] * 1000:.1f} ms{busy}")
        return timings, share

    def end_to_end(self, image: np.ndarray, repeat: int) -> None:
        """Device backends: ``repeat`` runs without per-stage synchronisation."""
        durations = []
        try:
            for _ in range(repeat):
                start = time.perf_counter()
                self.pipe.detect(image, None)
                self.pipe.synchronize()
                durations.append(time.perf_counter() - start)
        except Exception as exc:
            self.fail(exc)
            return
        self.entry["end_to_end"] = summarize(durations)

    def fail(self, exc: BaseException) -> None:
        self.entry.update(status="failed", reason=one_line(exc, with_type=True))
        self.close()

    def close(self) -> None:
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            pipe.close()

    def finish(self) -> dict[str, Any]:
        """The report entry (stages summarized when the backend ran)."""
        if "status" not in self.entry:
            self.entry.update(status="ok", stages=_summarize_stages(self.samples),
                              detections=int(len(self.boxes)))
            if self.copies_note:
                self.entry["copies_note"] = self.copies_note
            self.entry["contention"] = {
                "others_cpu_share_median": (float(np.median(self.contention))
                                            if self.contention else None),
                "others_cpu_share": [round(v, 3) for v in self.contention],
                "discarded_runs": self.discarded}
        return self.entry


def measure(benches: list[_Bench], image: np.ndarray, args: argparse.Namespace, log) -> None:
    """Warm-up per backend, then ``args.repeat`` rounds running each backend once in turn.

    Interleaving spreads slow phases of a shared machine over all backends alike. With
    ``args.max_contention``, each timed run first waits for the other processes to quiet
    down, and a run during which they used more than that share of the CPUs is discarded
    and redone (at most ``args.retries`` times; the last attempt is kept).
    """
    live = [b for b in benches if b.pipe is not None]
    for b in live:
        for i in range(args.warmup):
            if b.pipe is not None:
                b.timed_run(image, f"warm-up {i + 1}/{args.warmup}", log)
    limit = args.max_contention
    for r in range(args.repeat):
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
        if b.pipe is not None and b.pipe.uses_gpu:  # per-stage syncs serialise device work
            b.end_to_end(image, args.repeat)
        b.close()


def _summarize_stages(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = sorted({k for s in samples for k in s})
    stages = {k: summarize([s.get(k, 0.0) for s in samples]) for k in keys}
    named = ("preprocess", "network", "h2d", "d2h", "decode", "nms")
    stages["other"] = summarize([max(0.0, s["total"] - sum(s.get(k, 0.0) for k in named))
                                 for s in samples])
    return stages


def write_reports(result: dict[str, Any], out: Path, plot: bool, log) -> None:
    """Writes ``<name>.png`` (unless ``plot`` is False), ``<name>.json`` and ``<name>.md``."""
    from bench_report import render_markdown, write_json, write_plot

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
    write_json(result, out / f"{name}.json")
    (out / f"{name}.md").write_text(render_markdown(result))
    log(f"wrote {out / name}.json, .md" + (", .png" if "plot" in result else ""))


def _result(args: argparse.Namespace, argv: list[str] | None, threads: int, image_what: str,
            weights_what: str, config: Any, levels: list[Any], backends: list[dict[str, Any]],
            decode_nms: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON document of a run."""
    ran_gpu = any(b["status"] == "ok" and (b.get("end_to_end") is not None) for b in backends)
    words = sys.argv[1:] if argv is None else argv
    w, h = args.image_size
    return {
        "schema": "tinyfaces-trt-latency/1",
        "name": args.name or f"{'gpu' if ran_gpu else 'cpu'}-{today()}",
        "created": now_iso(),
        "command": "python benchmarks/latency.py " + " ".join(shlex.quote(a) for a in words),
        "machine": machine_description(threads),
        "settings": {
            "image": image_what, "image_size": [w, h], "depth": args.depth,
            "variant": config.variant, "weights": weights_what, "pyramid": config.pyramid,
            "levels": [{"index": lv.index, "exponent": lv.exponent, "scale": lv.scale,
                        "height": lv.height, "width": lv.width} for lv in levels],
            "prob_thresh": config.prob_thresh, "nms_thresh": config.nms_thresh,
            "repeat": args.repeat, "warmup": args.warmup, "threads": threads,
            "max_contention": args.max_contention, "retries": args.retries,
        },
        "backends": backends,
        "decode_nms": decode_nms,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.report_only:
        import json

        path = Path(args.report_only)
        write_reports(json.loads(path.read_text()), path.parent, not args.no_plot, log)
        return 0
    import torch

    from bench_backends import BACKENDS, BenchContext, model_digest
    from bench_scores import run_decode_nms
    from tinyfaces_trt.core.pyramid import plan_pyramid

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    image, image_what = _load_image(args)
    model, config, weights_what = _load_model(args)
    levels = plan_pyramid(image.shape[0], image.shape[1], config)
    log(f"image {image.shape[1]}x{image.shape[0]}, {len(levels)} levels: "
        + ", ".join(f"{lv.width}x{lv.height}" for lv in levels))
    if args.export_dir:
        export_root = Path(args.export_dir)
    else:
        from tinyfaces_trt.export_cache import cache_root

        export_root = cache_root() / "bench" / f"r{args.depth}-{args.variant}-{model_digest(model)}"
    ctx = BenchContext(model=model, config=config, levels=levels, image_hw=image.shape[:2],
                       threads=threads, export_root=export_root, log=log)

    specs = {b.name: b for b in BACKENDS}
    benches = [_Bench(specs[name]) for name in args.backends]
    for bench in benches:
        bench.start(ctx, log)
    measure(benches, image, args, log)
    backends = [bench.finish() for bench in benches]
    ref = next((b for b in backends if b["name"] == "reference" and b["status"] == "ok"), None)
    for b in backends:
        if ref and b["status"] == "ok":
            b["speedup_vs_reference"] = (ref["stages"]["total"]["median_ms"]
                                         / b["stages"]["total"]["median_ms"])

    decode_nms = None
    if args.candidate_counts:
        rep = args.candidates_repeat or args.repeat
        rows = run_decode_nms(args.candidate_counts, config, rep, args.warmup,
                              with_reference=config.variant == "pytorch", log=log)
        decode_nms = {"repeat": rep, "warmup": args.warmup, "rows": rows}

    result = _result(args, argv, threads, image_what, weights_what, config, levels, backends,
                     decode_nms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for b in backends:
        if b["status"] == "ok":
            t = b["stages"]["total"]
            speed = (f", {b['speedup_vs_reference']:.2f}x vs reference"
                     if "speedup_vs_reference" in b else "")
            log(f"{b['name']:>24}: median {t['median_ms']:.1f} ms, p90 {t['p90_ms']:.1f} ms{speed}")
        else:
            log(f"{b['name']:>24}: {b['status']}: {b['reason']}")
    write_reports(result, out, not args.no_plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
