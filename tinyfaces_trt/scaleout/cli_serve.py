"""``tf-serve``: face detection and anonymisation over HTTP (Ray Serve).

    tf-serve --model export/                          # http://127.0.0.1:8000, one replica
    tf-serve --model export/ --min-replicas 1 --max-replicas 4 --host 0.0.0.0
    tf-serve --weights checkpoint_50.pth --backend torch-cuda --warmup 1920x1080   # compiled first
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/detect
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Sequence

from tinyfaces_trt.core.cli import (add_version_argument, checked, parse_image_sizes, positive_float,
                                    positive_int, run_interruptible, stderr_line)
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS as DECODER_MAX_PIXELS
from tinyfaces_trt.scaleout.serve import DEFAULT_MAX_QUEUED_REQUESTS, RunningServe
from tinyfaces_trt.scaleout.service import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES

PROG = "tf-serve"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents every option)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Serve the Tiny Faces detector over HTTP with Ray Serve: POST an encoded image "
            "to /detect for its faces as JSON, or to /anonymize for the image with every "
            "face hidden. Requests are batched; replicas are fixed or autoscaled.", 88),
        epilog=f"""\
endpoints:
  POST /detect      body: JPEG/PNG/... bytes -> {{"width", "height", "detections":
                    [{{"box": [x1, y1, x2, y2], "score": p}}, ...]}}
  POST /anonymize   ?mode=blur|pixelate (default blur) &format=jpeg|png (default: as sent)
                    -> the anonymised image (header X-Faces: number of faces)
  GET  /healthz     -> {{"status": "ok", ...}}
  bad input -> 4xx with {{"error": {{"status": N, "message": "..."}}}}

examples:
  {PROG} --model export/
  {PROG} --weights checkpoint_50.pth --backend torch-cuda --warmup 1920x1080,1280x720
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/detect
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/anonymize?mode=pixelate' -o anon.jpg

It listens on 127.0.0.1 unless --host says otherwise: the service has no authentication,
put it behind your gateway before exposing it. Ctrl-C (or SIGTERM) stops it.""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_detector_arguments(parser, title="detector (as tf-detect)",
                           backend_note="; GPU backends get one GPU per replica",
                           threads_default="--cpus-per-replica, per replica")
    http = parser.add_argument_group("HTTP")
    http.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default: 127.0.0.1, this machine only)")
    http.add_argument("--port", type=_port, default=8000, help="port (default: 8000)")
    http.add_argument("--max-request-mb", type=positive_float, default=DEFAULT_MAX_REQUEST_BYTES
                      / 2 ** 20, metavar="MB",
                      help="largest request body; larger ones get 413 (default: %(default)g)")
    http.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                      help="largest image, width x height; larger ones (decompression bombs) "
                           f"get 413 before decoding (at most {DECODER_MAX_PIXELS}, the service's "
                           "ceiling: one such image is 0.5 GB decoded; default: %(default)d)")
    http.add_argument("--max-queued", type=positive_int, default=DEFAULT_MAX_QUEUED_REQUESTS,
                      metavar="N",
                      help="requests waiting for a free replica beyond N get 503 at once, "
                           "so a burst cannot queue without bound "
                           "(default: %(default)d)")
    http.add_argument("--request-timeout", type=positive_float, metavar="S",
                      help="a request not answered within S seconds gets 408; its replica "
                           "still finishes the batch it is in (default: no limit; a large "
                           "photo on a CPU replica can take minutes)")
    scale = parser.add_argument_group("scaling")
    scale.add_argument("--replicas", type=positive_int, metavar="N",
                       help="fixed number of replicas (default: 1; or autoscaling with "
                            "--min-replicas/--max-replicas)")
    scale.add_argument("--min-replicas", type=int, metavar="N",
                       help="autoscale: fewest replicas (0 allowed; default: off)")
    scale.add_argument("--max-replicas", type=positive_int, metavar="N",
                       help="autoscale: most replicas (default: off)")
    scale.add_argument("--cpus-per-replica", type=positive_float, default=1.0, metavar="N",
                       help="CPUs Ray reserves per replica (default: 1)")
    scale.add_argument("--gpus-per-replica", type=float, choices=(0.0, 1.0), default=None,
                       metavar="0|1", help="GPUs per replica (default: 1 for tensorrt or CUDA "
                                           "providers when the cluster has GPUs, else 0)")
    scale.add_argument("--max-batch-size", type=positive_int, default=8, metavar="N",
                       help="images detected together per batch (default: 8)")
    scale.add_argument("--batch-wait-ms", type=_batch_wait_ms, default=10.0, metavar="MS",
                       help=f"longest wait for a batch to fill, at most {MAX_BATCH_WAIT_MS:g} "
                            "(every request waits up to that long; default: 10)")
    scale.add_argument("--warmup", type=parse_image_sizes, default=[], metavar="WxH[,WxH...]",
                       help="image sizes each replica gets ready for before it takes "
                            "requests (also a replica that autoscaling starts): it detects a "
                            "blank image of each size, on a GPU also in batches (torch-cuda: "
                            "2, 4, ... and --max-batch-size; the others: every size up to "
                            "it); torch-cuda compiles those shapes there "
                            "(seconds each, cached on disk for the next start) and runs any "
                            "other batch padded into the next larger one, so nothing is "
                            "compiled for these sizes while serving (without it: at a size's "
                            "third request; CUDA graph memory is kept per shape) "
                            "(default: none)")
    scale.add_argument("--address", metavar="ADDRESS",
                       help="Ray cluster to run on (default: $RAY_ADDRESS, a `ray start` "
                            "cluster on this machine, else a new local one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    add_version_argument(parser)
    return parser


#: Longest --batch-wait-ms: a lone request waits that long for others to join its batch.
MAX_BATCH_WAIT_MS = 1000.0


def _port(text: str) -> int:
    return checked(text, int, lambda v: 1 <= v <= 65535, "a port number", "1 to 65535")


def _max_pixels(text: str) -> int:
    return checked(text, int, lambda v: 1 <= v <= DECODER_MAX_PIXELS, "an integer",
                   f"1 to {DECODER_MAX_PIXELS} (the service's ceiling: one such image is 0.5 GB "
                   "decoded, per request in flight)")


def _batch_wait_ms(text: str) -> float:
    return checked(text, float, lambda v: 0 < v <= MAX_BATCH_WAIT_MS, "a number",
                   f"> 0 and at most {MAX_BATCH_WAIT_MS:g}")


def check_port_free(host: str, port: int) -> None:
    """Raises :class:`TinyFacesError` where nothing can listen on ``host:port`` here (a server
    is there already, or the address is not this machine's), before a cluster starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise TinyFacesError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
        try:
            probe.bind(address)
        except OSError as exc:
            hint = " (another server there? give another --port)" \
                if exc.errno == errno.EADDRINUSE else ""
            raise TinyFacesError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") \
                from None


def check_network_source(args: argparse.Namespace) -> None:
    """Raises :class:`TinyFacesError` for a --model or --weights that cannot be read, before a
    cluster starts (its replicas would each fail, after seconds, in Ray's logs)."""
    from tinyfaces_trt.core.manifest import load_export_folder

    if args.model:
        load_export_folder(args.model)  # sizes and sha256 too: a truncated model.onnx failed
        # every replica, the cause buried in Ray's logs
    if args.weights and not os.path.isfile(args.weights):
        raise TinyFacesError(f"weights file not found: {args.weights}")


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.min_replicas is not None and args.min_replicas < 0:
        parser.error("--min-replicas must be >= 0")
    if (args.min_replicas is None) != (args.max_replicas is None):
        parser.error("autoscaling needs both --min-replicas and --max-replicas")
    if args.replicas is not None and args.min_replicas is not None:
        parser.error("--replicas (a fixed number) and --min/--max-replicas (autoscaling) "
                     "exclude each other")
    if args.max_replicas is not None and args.min_replicas > args.max_replicas:
        parser.error("--min-replicas is larger than --max-replicas")
    for size in args.warmup:
        if size.width * size.height > args.max_pixels:
            parser.error(f"--warmup {size} has more pixels than --max-pixels "
                         f"({size.width * size.height} > {args.max_pixels}): the service "
                         f"would refuse such an image")
    check_detector_arguments(parser, args)


def serve_options(args: argparse.Namespace, gpus_in_cluster: int) -> "ServeOptions":  # noqa: F821
    """The deployment settings the arguments ask for."""
    from tinyfaces_trt.scaleout.cluster import spec_uses_gpu
    from tinyfaces_trt.detectors import spec_from_arguments
    from tinyfaces_trt.scaleout.serve import ServeOptions

    spec = spec_from_arguments(args, lambda line: stderr_line(f"{PROG}: {line}"),
                               for_workers=True)
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if gpus_in_cluster and spec_uses_gpu(spec) else 0.0
    return ServeOptions(spec, replicas=args.replicas or 1, min_replicas=args.min_replicas,
                        max_replicas=args.max_replicas, max_batch_size=args.max_batch_size,
                        batch_wait_ms=args.batch_wait_ms,
                        max_request_bytes=int(args.max_request_mb * 2 ** 20),
                        max_pixels=args.max_pixels, max_queued_requests=args.max_queued,
                        num_cpus=args.cpus_per_replica,
                        num_gpus=gpus, warmup=tuple(dict.fromkeys(args.warmup)))


def http_options(args: argparse.Namespace) -> dict[str, object]:
    """Ray Serve's HTTP options (``serve.start``) the arguments ask for."""
    options: dict[str, object] = {"host": args.host, "port": args.port}
    if args.request_timeout is not None:
        options["request_timeout_s"] = args.request_timeout
    return options


def check_running_serve(running: RunningServe | None, args: argparse.Namespace,
                        app_name: str) -> None:
    """Raises :class:`TinyFacesError` where Ray Serve already runs on the cluster in a way
    this service cannot join: an application at route "/" or named ``app_name`` (it would be
    replaced), or HTTP proxies on another address or request timeout than asked (Ray would
    ignore ours)."""
    if running is None:
        return
    where = f"http://{running.host}:{running.port}"
    taken = [f"'{name}' at {route}" for name, route in sorted(running.routes.items())
             if name == app_name or route == "/"]
    if taken:
        raise TinyFacesError(
            f"Ray Serve on this cluster already serves {', '.join(taken)} on {where}: stop "
            "that service first, or run tf-serve on another Ray cluster (--address)")
    if (running.host, running.port) != (args.host, args.port):
        raise TinyFacesError(
            f"Ray Serve on this cluster already listens on {where}, not on "
            f"{args.host}:{args.port} (one HTTP address per cluster): give --host "
            f"{running.host} --port {running.port}, or run tf-serve on another Ray cluster "
            "(--address)")
    if running.request_timeout_s != args.request_timeout:
        raise TinyFacesError(
            f"Ray Serve on this cluster already runs with request timeout "
            f"{_timeout_text(running.request_timeout_s)}, not "
            f"{_timeout_text(args.request_timeout)} (one per cluster): give --request-timeout "
            "to match, or run tf-serve on another Ray cluster (--address)")


def _timeout_text(seconds: float | None) -> str:
    return "none" if seconds is None else f"{seconds:g} s"


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-serve`` entry point: serves until Ctrl-C or SIGTERM; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    return run_interruptible(PROG, lambda: _run(args), verbose=args.verbose,
                             interrupted="stopped", status=0)


def _run(args: argparse.Namespace) -> int:
    from tinyfaces_trt.scaleout.cluster import cluster_resources, connect
    from tinyfaces_trt.scaleout.serve import APP_NAME, build_app, running_serve, stop_app

    try:
        check_network_source(args)
        if args.address is None and not os.environ.get("RAY_ADDRESS"):
            check_port_free(args.host, args.port)  # the HTTP proxy will listen on this machine
        with connect(args.address) as ray:  # noqa: F841
            from ray import serve

            options = serve_options(args, cluster_resources().gpus)
            check_running_serve(running_serve(), args, APP_NAME)  # before anything is deployed
            quiet = None if args.verbose else {"log_level": "WARNING"}
            try:
                try:
                    serve.start(http_options=http_options(args), logging_config=quiet)
                except (RuntimeError, OSError) as exc:  # the port was taken meanwhile, ...
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    raise TinyFacesError(f"cannot serve on {args.host}:{args.port}: "
                                         + (lines[-1] if lines else type(exc).__name__)) from None
                if options.warmup:
                    stderr_line(f"{PROG}: each replica gets ready for "
                                f"{', '.join(map(str, options.warmup))} (batches of up to "
                                f"{max(options.warmup_batch_sizes)}) before serving ...")
                try:
                    serve.run(build_app(options), name=APP_NAME, route_prefix="/",
                              logging_config=quiet)
                except RuntimeError as exc:  # a replica could not start (bad model, ...)
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    raise TinyFacesError("the service did not start: "
                                         + (lines[-1] if lines else type(exc).__name__)) from None
                # Until here SIGTERM interrupts like Ctrl-C (replicas may take minutes to
                # warm up); while serving it asks for the clean stop below
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                stderr_line(f"{PROG}: serving on http://{args.host}:{args.port} "
                            "(POST /detect, POST /anonymize, GET /healthz); Ctrl-C stops")
                while not stop.wait(1.0):
                    pass
                stderr_line(f"{PROG}: stopping")
            finally:
                stop_app(APP_NAME)  # other applications on the cluster keep running
    except TinyFacesError as exc:
        stderr_line(f"{PROG}: error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
