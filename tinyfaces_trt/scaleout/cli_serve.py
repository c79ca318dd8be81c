"""``tf-serve``: face detection and anonymisation over HTTP (Ray Serve).

    tf-serve --model export/                          # http://127.0.0.1:8000, one replica
    tf-serve --model export/ --min-replicas 1 --max-replicas 4 --host 0.0.0.0
    tf-serve --weights checkpoint_50.pth --backend torch-cuda --warmup 1920x1080   # prepared first
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/detect
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tinyfaces_trt.core.cli import (add_version_argument, checked, parse_image_sizes, positive_float,
                                    positive_int, run_interruptible, stderr_line)
from tinyfaces_trt.core.errors import ConfigError, TinyFacesError
from tinyfaces_trt.core.hashing import not_a_file
from tinyfaces_trt.core.threads import Worker
from tinyfaces_trt.detector_options import add_detector_arguments, check_detector_arguments
from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS as DECODER_MAX_PIXELS
from tinyfaces_trt.scaleout.serve import DEFAULT_MAX_QUEUED_REQUESTS, RunningServe
from tinyfaces_trt.scaleout.service import (DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES,
                                            MAX_BATCH_PIXELS, MAX_MASK_SCALE, default_mask_style)

PROG = "tf-serve"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents every option)."""
    from tinyfaces_trt.scaleout.cluster import gpu_use_text

    mask = default_mask_style()  # tf-anonymize's defaults, which /anonymize takes
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Serve the Tiny Faces detector over HTTP with Ray Serve: POST an encoded image "
            "to /detect for its faces as JSON, or to /anonymize for the image with every "
            "face hidden. Requests are batched; replicas are fixed or autoscaled.", 88),
        epilog=f"""\
endpoints:
  POST /detect      body: JPEG/PNG/... bytes -> {{"width", "height", "variant",
                    "coordinate_base", "detections": [{{"box": [x1, y1, x2, y2],
                    "score": p}}, ...]}}; boxes in the variant's pixel coordinates, clipped
                    to the image: coordinate_base 0 (pytorch: x in [0, W-1], y in [0, H-1])
                    or 1 (matconvnet: x in [1, W], y in [1, H]); any query parameter
                    -> 400 (thresholds and face sizes are the server's: --prob-thresh ...)
  POST /anonymize   the image with every face hidden as tf-anonymize hides it (its
                    defaults in brackets): ?mode=blur|pixelate|solid ({mask.mode})
                    &shape=box|ellipse ({mask.shape}) &mask_scale=F ({mask.scale:g})
                    &blur_strength=F ({mask.blur_strength:g}) &cells=N ({mask.cells})
                    &format=jpeg|png (as sent) -> the anonymised image (header X-Faces:
                    number of faces); mask_scale 1 to {MAX_MASK_SCALE:g} (tf-anonymize's
                    100 would make every face's mask the whole image), blur_strength up
                    to 10, cells up to 10000; another parameter or a bad value -> 400
  GET  /healthz     -> {{"status": "ok", "backend", "variant", "coordinate_base", ...}}: the
                    replica is up and answering (liveness), not a check that its model
                    detects (a detector failing on an image answers that request 500)
  errors -> {{"error": {{"status": N, "message": "..."}}}}: 4xx bad input, 500 the
  detector failed on that image (the message names the cause, e.g. a NaN score map; the
  other requests of its batch are answered). Ray Serve's own answers are plain text:
  408 (--request-timeout), 503 (--max-queued reached, or no replica up) and a 500 when a
  replica process dies mid-request.

examples:
  {PROG} --model export/
  {PROG} --weights checkpoint_50.pth --backend torch-cuda --warmup 1920x1080,1280x720
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/detect
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8000/anonymize?mode=pixelate' -o anon.jpg

It listens on 127.0.0.1 unless --host says otherwise: the service has no authentication,
put it behind your gateway before exposing it. Ctrl-C (or SIGTERM) stops it.

exit status: 0 once stopped by Ctrl-C or SIGTERM; 2 for bad arguments, and for detector
settings no model can take (--max-face 5), refused before any Ray cluster starts; 1 for
any other failure (the model, the port, the cluster, a replica that does not start).""",
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
                           "ceiling: one such image is 0.5 GB decoded; default: %(default)d, a "
                           "36 Mpx camera's photos). A replica needs room to detect one image of "
                           "N pixels (GBs on a CPU at tens of Mpx) besides the decoded images "
                           "of the requests it holds (3 bytes a pixel each)")
    http.add_argument("--max-queued", type=positive_int, default=DEFAULT_MAX_QUEUED_REQUESTS,
                      metavar="N",
                      help="at most N requests wait at the HTTP proxy to be handed to a "
                           "replica; more get 503 (plain text) at once, so a burst cannot "
                           "queue without bound. Ray counts every request not yet handed "
                           "over, so a burst arriving at once counts in full even at an idle "
                           "server (6 at once with N=2: three 503s): keep N well above "
                           "replicas x 2 x --max-batch-size (at least 8 per replica), what "
                           "the replicas take at a time (default: %(default)d)")
    http.add_argument("--request-timeout", type=positive_float, metavar="S",
                      help="a request not answered within S seconds gets 408; its replica "
                           "still finishes the batch it is in (default: no limit; a large "
                           "photo on a CPU replica can take minutes)")
    scale = parser.add_argument_group("scaling")
    scale.add_argument("--replicas", type=positive_int, metavar="N",
                       help="fixed number of replicas (default: 1; or autoscaling with "
                            "--min-replicas/--max-replicas). Where the cluster's nodes cannot "
                            "hold them: refused at once (exit 1) on the local cluster tf-serve "
                            "starts; on an existing cluster (--address, $RAY_ADDRESS or "
                            "`ray start` on this machine), which an autoscaler such as KubeRay "
                            "may grow, a warning, and they wait until nodes that can hold "
                            "them join")
    scale.add_argument("--min-replicas", type=int, metavar="N",
                       help="autoscale: fewest replicas (0 allowed; default: off)")
    scale.add_argument("--max-replicas", type=positive_int, metavar="N",
                       help="autoscale: most replicas (default: off)")
    scale.add_argument("--cpus-per-replica", type=positive_float, default=1.0, metavar="N",
                       help="CPUs Ray reserves per replica (default: 1)")
    scale.add_argument("--gpus-per-replica", type=float, choices=(0.0, 1.0), default=None,
                       metavar="0|1", help=f"GPUs per replica (default: 1 when the cluster "
                                           f"has GPUs and {gpu_use_text()}, else 0)")
    scale.add_argument("--max-batch-size", type=positive_int, default=8, metavar="N",
                       help="images detected together per batch (default: 8); where "
                            f"together they pass {MAX_BATCH_PIXELS / 1e6:g} Mpx, the batch "
                            "is detected in runs under that, one after the other (an image "
                            "over it alone): a batch needs no more detection memory than one "
                            "image of that size, or its largest image where larger")
    scale.add_argument("--batch-wait-ms", type=_batch_wait_ms, default=10.0, metavar="MS",
                       help=f"longest wait for a batch to fill, at most {MAX_BATCH_WAIT_MS:g} "
                            "(every request waits up to that long; default: 10)")
    scale.add_argument("--warmup", type=parse_image_sizes, default=[], metavar="WxH[,WxH...]",
                       help="image sizes each replica gets ready for before it takes "
                            "requests (also a replica that autoscaling starts): it detects a "
                            "blank image of each size, on a GPU also in batches (torch-cuda: "
                            "2, 4, ... and --max-batch-size; the others: every size up to "
                            "it); torch-cuda prepares those shapes there (captures their CUDA "
                            "graphs, about a second each; with --torch-mode compile or aoti it "
                            "compiles them, seconds each, cached on disk for the next start) "
                            "and runs any other batch padded into the next larger one, so "
                            "nothing is prepared for these sizes while serving (without it: "
                            "at a size's third request; CUDA graph memory is kept per shape) "
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
    if args.weights and (problem := not_a_file(args.weights, "weights file")) is not None:
        raise TinyFacesError(problem)


def replicas_that_fit(nodes: Sequence[Mapping[str, float]], num_cpus: float,
                      num_gpus: float) -> int:
    """How many replicas of ``num_cpus`` CPUs and ``num_gpus`` GPUs each the nodes hold
    (each node's resources as Ray reports them, e.g. ``{"CPU": 2.0, "GPU": 1.0}``; a replica
    takes its share on one node)."""
    fit = 0
    for node in nodes:
        counts = [math.floor(node.get(name, 0.0) / need + 1e-9)
                  for name, need in (("CPU", num_cpus), ("GPU", num_gpus)) if need > 0]
        fit += min(counts) if counts else 1_000_000  # asks for nothing: never the limit
    return fit


def _resources_text(resources: Mapping[str, float]) -> str:
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    return f"{cpus:g} CPU(s), " + (f"{gpus:g} GPU(s)" if gpus else "no GPU")


def check_placement(nodes: Sequence[Mapping[str, float]], replicas: int, num_cpus: float,
                    num_gpus: float, max_replicas: int | None = None,
                    can_grow: bool = False) -> str | None:
    """Raises :class:`TinyFacesError` where the cluster's nodes (their total resources,
    :func:`node_resources`) cannot hold ``replicas`` replicas of ``num_cpus`` CPUs and
    ``num_gpus`` GPUs each and the cluster cannot grow (the local one tf-serve starts: Ray
    would wait for them for ever, repeating that they have not been scheduled); on a cluster
    that ``can_grow`` (an existing one, ``--address``: an autoscaler, KubeRay, may add nodes
    on demand) that is a warning instead. Returns a warning also where autoscaling's
    ``max_replicas`` cannot all fit, else None. What other work holds is not counted: the
    start-up warning (:func:`startup_warning`) covers that."""
    fit = replicas_that_fit(nodes, num_cpus, num_gpus)
    total = {name: sum(node.get(name, 0.0) for node in nodes) for name in ("CPU", "GPU")}
    where = f"the Ray cluster has {_resources_text(total)} on {len(nodes)} node(s)"
    if fit < replicas:
        if num_gpus and not total["GPU"]:
            problem = ("GPU replicas were asked for (--gpus-per-replica 1) but the Ray cluster "
                       "has no GPU: give --gpus-per-replica 0 with a CPU backend (--backend "
                       "onnxruntime), or a cluster with GPUs (--address)")
        else:
            each = f"{num_cpus:g} CPU(s)" + (f" and {num_gpus:g} GPU(s)" if num_gpus else "")
            problem = (f"{replicas} replica(s) of {each} each cannot be placed: {where}, room "
                       f"for {fit}; give fewer replicas (--replicas, --min-replicas), less per "
                       "replica (--cpus-per-replica, --gpus-per-replica), or a larger cluster "
                       "(--address)")
        if not can_grow:
            raise TinyFacesError(problem)
        return (f"{problem}. On this existing cluster the replicas wait until nodes that can "
                "hold them join (an autoscaler adds them on demand; `ray status` shows "
                "pending demands)")
    if max_replicas is not None and fit < max_replicas:
        return (f"--max-replicas {max_replicas}: {where}, room for {fit} replica(s); "
                "autoscaling beyond that waits for resources")
    return None


def node_resources() -> list[dict[str, float]] | None:
    """The total resources of each live node of the connected Ray cluster, or None where they
    cannot be read (not connected, or Ray's answer has changed: not checked)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return [{name: float(value) for name, value in node["Resources"].items()}
                for node in ray.nodes() if node.get("Alive")]
    except Exception as exc:  # noqa: BLE001 (a check that cannot run is skipped)
        stderr_line(f"{PROG}: warning: cannot read the Ray cluster's nodes "
                    f"({type(exc).__name__}: {exc}); whether the replicas fit is not checked")
        return None


#: Seconds after which a service not yet up whose replicas may wait for resources is reported.
STARTUP_WARNING_S = 60.0


def startup_warning(waited_s: float, free: Mapping[str, float], num_cpus: float,
                    num_gpus: float) -> str | None:
    """The warning for a service not up after ``waited_s`` seconds when the cluster's free
    resources (``ray.available_resources()``) cannot hold one more replica, else None (its
    replicas are placed and starting: loading, warming up).

    Free resources cannot tell replicas waiting for resources from this service's own
    replicas, placed and still starting (holding theirs); nor can Serve's status (both are
    STARTING; only its free-text message differs), so the warning names both causes."""
    if replicas_that_fit([free], num_cpus, num_gpus) > 0:
        return None
    each = f"{num_cpus:g} CPU(s)" + (f" and {num_gpus:g} GPU(s)" if num_gpus else "")
    return (f"{PROG}: warning: the service is not up after {waited_s:g} s; replicas may still "
            "be starting (--warmup prepares and detects first) or waiting for resources "
            f"(each takes {each}; free now: {_resources_text(free)}): those start once other "
            "work frees them or nodes join; `ray status` shows pending demands; Ctrl-C stops")


def _watch_startup(done: threading.Event, num_cpus: float, num_gpus: float) -> None:
    """Prints :func:`startup_warning` once if ``done`` is not set within
    :data:`STARTUP_WARNING_S`."""
    if done.wait(STARTUP_WARNING_S):
        return
    try:
        import ray

        free = {name: float(value) for name, value in ray.available_resources().items()}
    except Exception:  # noqa: BLE001 (the warning is a help, not a check)
        return
    warning = startup_warning(STARTUP_WARNING_S, free, num_cpus, num_gpus)
    if warning and not done.is_set():
        stderr_line(warning)


#: Longest tf-serve waits, when it stops, for its application to leave the cluster (Serve's
#: own delete waits up to 60 s, a replica's graceful stop 20 s).
STOP_TIMEOUT_S = 90.0
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_to_end(cleanup: Callable[[], object], timeout_s: float,
               on_signal: Callable[[], object] = lambda: None) -> bool:
    """Runs ``cleanup()`` on a helper thread and waits for its end, at most ``timeout_s``
    seconds, with Ctrl-C and SIGTERM deferred: each calls ``on_signal()`` instead of
    interrupting (a second Ctrl-C landing inside the cleanup left the service deployed).
    The handlers in place before are put back at the end. Outside the main thread (where no
    signal handler runs) ``cleanup()`` runs in place.

    Returns:
        True once ``cleanup()`` ended (its exception raised here), False on timeout (it may
        still run, on a daemon thread).
    """
    if threading.current_thread() is not threading.main_thread():
        cleanup()
        return True

    def deferred(signum: int, frame: object) -> None:
        on_signal()

    originals: dict[int, Any] = {}
    worker = Worker(cleanup, "tf-serve-cleanup")
    deadline = time.monotonic() + timeout_s
    started = False
    while True:
        try:  # an interrupt that lands before the handlers are in place (or while they are
            # put back) is taken as one that came during the wait: the wait goes on
            for sig in _DEFERRED_SIGNALS:
                if sig not in originals:
                    originals[sig] = signal.getsignal(sig)
                signal.signal(sig, deferred)
            if not started:
                started = True
                worker.start()
            ended = worker.wait(max(0.0, deadline - time.monotonic()))
            for sig, handler in originals.items():
                signal.signal(sig, handler)
            break
        except (KeyboardInterrupt, SystemExit):
            on_signal()
    if ended:
        worker.result()
    return ended


def remove_service(stop: Callable[[], object], address: str | None, port: int,
                   app_name: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Runs ``stop()`` (removing the application ``app_name``) to its end despite further
    Ctrl-C or SIGTERM (:func:`run_to_end`); where it fails or does not end within
    ``timeout_s``, says what may be left on the cluster and how to remove it. True when it
    ended without error."""
    said: list[bool] = []

    def on_signal() -> None:
        if not said:
            said.append(True)
            stderr_line(f"{PROG}: still removing the service from the Ray cluster (at most "
                        f"{timeout_s:g} s) ...")

    try:
        if run_to_end(stop, timeout_s, on_signal):
            return True
        problem = f"it was not removed within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 (said with what to do about it)
        problem = f"removing it failed: {type(exc).__name__}: {exc}"
    target = f"address='{address}'" if address else "address='auto'"
    stderr_line(f"{PROG}: warning: the application '{app_name}' may be left on the Ray "
                f"cluster ({problem}), its replicas holding their CPUs/GPUs and Serve port "
                f"{port}; on a cluster that outlives tf-serve (`ray start`), remove it with: "
                f"python -c \"import ray; from ray import serve; ray.init({target}); "
                f"serve.delete('{app_name}')\" (or `serve shutdown -y`, which removes every "
                "Serve application there)")
    return False


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


def detector_spec(args: argparse.Namespace) -> "DetectorSpec":  # noqa: F821
    """The replicas' detector as the arguments ask for it, its settings checked.

    Raises:
        ConfigError: a setting no model can take (e.g. ``--max-face`` below every level).
    """
    from tinyfaces_trt.detectors import check_detector_config, spec_from_arguments

    spec = spec_from_arguments(args, lambda line: stderr_line(f"{PROG}: {line}"),
                               for_workers=True)
    check_detector_config(spec)
    return spec


def serve_options(args: argparse.Namespace, gpus_in_cluster: int,
                  spec: "DetectorSpec | None" = None) -> "ServeOptions":  # noqa: F821
    """The deployment settings the arguments ask for (``spec``: :func:`detector_spec`'s,
    made again when not given)."""
    from tinyfaces_trt.scaleout.cluster import spec_uses_gpu
    from tinyfaces_trt.scaleout.serve import ServeOptions

    spec = spec if spec is not None else detector_spec(args)
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
    from tinyfaces_trt.scaleout.cluster import _starts_local, cluster_resources, connect
    from tinyfaces_trt.scaleout.serve import APP_NAME, build_app, running_serve, stop_app

    try:
        check_network_source(args)
        try:
            spec = detector_spec(args)
        except ConfigError as exc:  # a usage error: before any cluster starts
            stderr_line(f"{PROG}: error: {exc}")
            return 2
        if args.address is None and not os.environ.get("RAY_ADDRESS"):
            check_port_free(args.host, args.port)  # the HTTP proxy will listen on this machine
        can_grow = not _starts_local(args.address)  # an existing cluster may add nodes
        with connect(args.address) as ray:  # noqa: F841
            from ray import serve

            options = serve_options(args, cluster_resources().gpus, spec)
            nodes = node_resources()
            if nodes is not None:  # before anything is deployed: Ray would wait for ever
                low = max(options.min_replicas or 0, 1) if options.max_replicas is not None \
                    else options.replicas
                note = check_placement(nodes, low, options.num_cpus, options.num_gpus,
                                       options.max_replicas, can_grow=can_grow)
                if note:
                    stderr_line(f"{PROG}: warning: {note}")
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
                started = threading.Event()  # ends the start-up watch
                try:
                    threading.Thread(target=_watch_startup, name="tf-serve-startup", daemon=True,
                                     args=(started, options.num_cpus, options.num_gpus)).start()
                    serve.run(build_app(options), name=APP_NAME, route_prefix="/",
                              logging_config=quiet)
                except RuntimeError as exc:  # a replica could not start (bad model, ...)
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    raise TinyFacesError("the service did not start: "
                                         + (lines[-1] if lines else type(exc).__name__)) from None
                finally:
                    started.set()
                # Until here SIGTERM interrupts like Ctrl-C (replicas may take minutes to
                # warm up); while serving it asks for the clean stop below
                stop = threading.Event()
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                stderr_line(f"{PROG}: serving on http://{args.host}:{args.port} "
                            "(POST /detect, POST /anonymize, GET /healthz); Ctrl-C stops")
                while not stop.wait(1.0):
                    pass
                stderr_line(f"{PROG}: stopping")
            finally:  # to its end despite a further Ctrl-C; other applications keep running
                remove_service(lambda: stop_app(APP_NAME), args.address or
                               os.environ.get("RAY_ADDRESS"), args.port, APP_NAME)
    except TinyFacesError as exc:
        stderr_line(f"{PROG}: error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
