"""Scale-out figures: batch throughput of the Ray pool (1 vs 2 workers, against one process)
and Ray Serve latency under a bounded load.

    python benchmarks/scaleout.py --model export/ --out benchmarks/results/

Batch: ``--images`` generated images of ``--size``, the tf-detect job (detect, draw, JSON
sidecar) run ``--repeat`` times per configuration into a fresh folder; images/s is the
median over repeats of images / job wall time, the pool's start-up (actors building their
detectors) included, since a user waits for it too. Configurations: one process with one
detector using every core (``run_serial``), the pool with 1 worker (all cores) and with N
workers (one core each). Serving: ``--requests`` POST /detect requests from ``--concurrency``
client threads on this machine, per replica count; latency p50/p99 per request.

The cluster is local (127.0.0.1); on a 2-core machine the client, the Ray system processes
and the workers share the same two cores, so these numbers show the overheads, not what
more machines give.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import io
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout first

from bench_common import machine_description, now_iso, one_line, today  # noqa: E402
from tinyfaces_trt.core.cli import EXIT_ERROR, parse_image_size, positive_int  # noqa: E402
from tinyfaces_trt.parity.images import synthetic_image  # noqa: E402

PROG = "scaleout.py"


def _images(folder: Path, count: int, width: int, height: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(synthetic_image(height, width, seed=i)).save(folder / f"img{i:04d}.jpg",
                                                                     quality=90)


def _batch(spec: Any, images: Path, work: Path, repeat: int, cores: int) -> list[dict[str, Any]]:
    import dataclasses

    from tinyfaces_trt.cli.detect_plan import collect_images
    from tinyfaces_trt.cli.detect_ray import (
        DetectOptions, outputs_exist, plan_tasks, process_detect_task)
    from tinyfaces_trt.scaleout.pool import run_serial, run_tasks

    jobs, _ = collect_images([str(images)])
    configs = [("one process (run_serial)", None, cores)]
    configs += [(f"Ray pool, {w} worker(s)", w, max(1, cores // w)) for w in (1, cores)]
    rows = []
    for name, workers, threads in configs:
        rates = []
        for r in range(repeat):
            options = DetectOptions("onnxruntime", work / f"{len(rows)}-{r}")
            options.out_dir.mkdir(parents=True)
            tasks, _ = plan_tasks(jobs, options)
            start = time.perf_counter()
            if workers is None:
                results = run_serial(tasks, dataclasses.replace(spec, threads=threads),
                                     process_detect_task, options, is_done=outputs_exist,
                                     progress=False)
            else:
                results = run_tasks(tasks, spec, process_detect_task, options,
                                    is_done=outputs_exist, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            assert all(res.status == "done" for res in results), [res.error for res in results]
            rates.append(len(tasks) / seconds)
            print(f"  {name}: repeat {r + 1}: {len(tasks) / seconds:.2f} images/s", flush=True)
        rows.append({"config": name, "workers": workers, "threads_per_detector": threads,
                     "images_per_s_median": statistics.median(rates), "images_per_s": rates})
    return rows


def _post(port: int, body: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", "/detect", body=body, headers={"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        connection.close()


def _serving(spec: Any, replica_counts: list[int], requests: int, concurrency: int,
             width: int, height: int, max_batch: int) -> list[dict[str, Any]]:
    from PIL import Image
    from ray import serve

    from tinyfaces_trt.scaleout.serve import APP_NAME, ServeOptions, build_app

    bodies = []
    for i in range(8):
        buffer = io.BytesIO()
        Image.fromarray(synthetic_image(height, width, seed=100 + i)).save(buffer, "JPEG")
        bodies.append(buffer.getvalue())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING"})
    rows = []
    try:
        for replicas in replica_counts:
            serve.run(build_app(ServeOptions(spec, replicas=replicas, max_batch_size=max_batch)),
                      name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
            for body in bodies[:2]:  # warm-up
                _post(port, body)
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                answers = list(pool.map(lambda k: _post(port, bodies[k % len(bodies)]),
                                        range(requests)))
            wall = time.perf_counter() - start
            latencies = sorted(seconds for _, seconds in answers)
            errors = sum(1 for status, _ in answers if status != 200)
            row = {"replicas": replicas, "requests": requests, "concurrency": concurrency,
                   "errors": errors, "requests_per_s": requests / wall,
                   "p50_ms": 1000 * statistics.median(latencies),
                   "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                   "max_ms": 1000 * latencies[-1]}
            print(f"  serve, {replicas} replica(s): {row['requests_per_s']:.1f} req/s, "
                  f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, {errors} errors",
                  flush=True)
            rows.append(row)
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()
    return rows


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    gpu = m.get("gpu")
    if report["ran_on"] == "gpu":
        gpu_text = f"GPU {gpu['name'] if gpu else '(unnamed)'}"
    else:
        gpu_text = "no GPU used" + (f" ({gpu['name']} idle)" if gpu else "")
    network = ("the seeded UNTRAINED default network (timings are the real network's, "
               "detections meaningless)" if report["untrained"] else f"`{report['model']}`")
    lines = [f"# Scale-out on {m['cpu_model']} ({m['usable_cores']} cores, "
             f"{m['memory_gib']} GiB, {gpu_text}), {report['date']}", "",
             f"Detector: {report['backend']} on the {report['ran_on'].upper()}, {network}.", "",
             f"Batch: {report['batch_images']} images of {report['batch_size']}, tf-detect job "
             f"(detect + drawn copy + JSON), median of {report['repeat']} runs, start-up included.",
             "", "| configuration | threads per detector | images/s (median) |", "|---|---|---|"]
    for row in report["batch"]:
        lines.append(f"| {row['config']} | {row['threads_per_detector']} | "
                     f"{row['images_per_s_median']:.2f} |")
    lines += ["", f"Serving: {report['serve_requests']} POST /detect of {report['serve_size']} "
              f"JPEGs, {report['serve_concurrency']} concurrent clients on the same machine, "
              f"max batch {report['serve_max_batch']}.", "",
              "| replicas | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|"]
    for row in report["serve"]:
        lines.append(f"| {row['replicas']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.0f} | "
                     f"{row['p99_ms']:.0f} | {row['errors']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="export folder (default: the untrained default export)")
    parser.add_argument("--images", type=positive_int, default=32,
                        help="generated images of the batch job")
    parser.add_argument("--size", type=parse_image_size, default="128x96",
                        help="batch image size WxH")
    parser.add_argument("--repeat", type=positive_int, default=3,
                        help="runs of the batch job per configuration (images/s: their median)")
    parser.add_argument("--requests", type=positive_int, default=200,
                        help="POST /detect requests per replica count")
    parser.add_argument("--concurrency", type=positive_int, default=8,
                        help="client threads sending the requests")
    parser.add_argument("--serve-size", type=parse_image_size, default="64x48",
                        help="size WxH of the JPEGs sent to the service")
    parser.add_argument("--max-batch", type=positive_int, default=8,
                        help="the service's max batch size")
    parser.add_argument("--out", type=Path, default=None,
                        help="write <cpu|gpu>-<date>-scaleout.json and .md here (default: "
                             "print the Markdown only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark: 0 when done, 1 (one line on stderr) when the output folder or the
    detector is unusable, 2 on bad arguments."""
    args = parse_args(argv)

    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.core.files import prepare_output_dir, write_text_atomic
    from tinyfaces_trt.detectors import DetectorSpec
    from tinyfaces_trt.export_cache import cached_export
    from tinyfaces_trt.scaleout.cluster import import_ray, spec_uses_gpu

    try:
        out = prepare_output_dir(args.out, f"--out {args.out}") if args.out else None
        ray = import_ray()
        model = args.model or str(cached_export(None).path)
    except TinyFacesError as exc:
        print(f"{PROG}: error: {one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    cores = len(os.sched_getaffinity(0))
    spec = DetectorSpec(model_dir=model)
    kind = "gpu" if spec_uses_gpu(spec) else "cpu"
    width, height = args.size
    sw, sh = args.serve_size
    ray.init(address="local", num_cpus=cores, include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _images(Path(tmp) / "images", args.images, width, height)
            print("batch:", flush=True)
            batch = _batch(spec, Path(tmp) / "images", Path(tmp) / "out", args.repeat, cores)
        print("serving:", flush=True)
        serving = _serving(spec, sorted({1, cores}), args.requests, args.concurrency, sw, sh,
                           args.max_batch)
    finally:
        ray.shutdown()
    report = {"date": now_iso(), "machine": machine_description(cores), "model": model,
              "untrained": args.model is None, "backend": spec.backend, "ran_on": kind,
              "batch_images": args.images, "batch_size": str(args.size), "repeat": args.repeat,
              "batch": batch, "serve_requests": args.requests,
              "serve_concurrency": args.concurrency, "serve_size": str(args.serve_size),
              "serve_max_batch": args.max_batch, "serve": serving}
    text = _markdown(report)
    print(text)
    if out is not None:
        stem = f"{kind}-{today()}-scaleout"
        write_text_atomic(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(out / f"{stem}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
