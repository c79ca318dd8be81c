"""The Ray Serve application: detection and anonymisation over HTTP.

    from ray import serve
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(build_app(ServeOptions(spec=DetectorSpec(model_dir="export/"))), route_prefix="/")

Each replica holds one detector. Requests are decoded (with the size limits of
:mod:`~tinyfaces_trt.scaleout.service`) as they arrive, then their images are batched
(``@serve.batch``: up to ``max_batch_size`` images, waiting at most ``batch_wait_ms`` for a
batch to fill) and detected together in a worker thread, so the replica keeps accepting
requests and answering ``/healthz`` while it computes: same-size images in runs of at most
:data:`~tinyfaces_trt.scaleout.service.MAX_BATCH_PIXELS` pixels in all (40 Mpx), one run at a
time: a batch needs no more detection memory than one 40 Mpx image (or its largest image,
where larger). Errors in one request never reach the
others: each gets its own 4xx JSON answer, an image the detector fails on a 500 JSON answer
naming the cause (the rest of its batch is detected again one by one and answered), and the
replica goes on.

A replica's detector keeps its boxes unclipped (as tf-anonymize's): ``/anonymize`` masks them
as tf-anonymize does, and ``/detect`` clips them to the image as the detector would have.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tinyfaces_trt.core.cli import ImageSize
from tinyfaces_trt.scaleout.service import (
    DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_BYTES, Limits, RequestError, anonymise,
    check_body_size, check_headers, check_query, check_route, clip_to_image, decode_body,
    detect_images, detection_body, error_body, parse_anonymise_query)

log = logging.getLogger("tinyfaces_trt.scaleout")

APP_NAME = "tinyfaces"

#: Default bound on the requests waiting for a replica: each holds its body (up to
#: ``max_request_bytes``) and, behind a CPU replica's seconds per photo, a client's patience.
DEFAULT_MAX_QUEUED_REQUESTS = 64


@dataclass(frozen=True)
class ServeOptions:
    """Everything the deployment needs (picklable).

    Attributes:
        spec: the detector recipe (:class:`~tinyfaces_trt.detectors.DetectorSpec`).
        replicas: fixed number of replicas (ignored when autoscaling).
        min_replicas, max_replicas: autoscale between these (both given: autoscaling on).
        max_batch_size: largest batch of images detected together (fewer where their pixels
            would pass :data:`~tinyfaces_trt.scaleout.service.MAX_BATCH_PIXELS`: the batch
            is then detected in runs under it, one after the other).
        batch_wait_ms: longest wait for a batch to fill.
        max_request_bytes, max_pixels: request limits.
        max_queued_requests: requests not yet handed to a replica beyond this many (at each
            HTTP proxy) get 503 at once instead of queueing without bound. Ray counts every
            request not yet assigned, so a burst arriving at once counts in full even at an
            idle server: keep it well above ``replicas x max_ongoing_requests`` (what the
            replicas take at a time: ``2 x max_batch_size``, at least 8 each).
        num_cpus, num_gpus: resources per replica; a CPU replica's ONNX Runtime uses
            ``num_cpus`` threads unless the spec sets ``threads``.
        warmup: image sizes (:class:`~tinyfaces_trt.core.cli.ImageSize`, width x height)
            each replica's detector gets ready for (``Detector.warmup`` with
            :attr:`warmup_batch_sizes`) before the replica takes requests.
    """

    spec: Any
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    num_cpus: float = 1
    num_gpus: float = 0
    warmup: tuple[ImageSize, ...] = ()

    @property
    def limits(self) -> Limits:
        return Limits(self.max_request_bytes, self.max_pixels)

    @property
    def warmup_batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a replica warms up with. torch-cuda: 1, the powers of two below
        ``max_batch_size``, and ``max_batch_size`` (it prepares exactly these and runs any
        other batch padded into the next one, less than twice its work, so nothing is
        prepared while serving). Other GPU backends: every size up to ``max_batch_size``
        (ONNX Runtime CUDA searches the convolution algorithms of each new shape at its first
        run; a TensorRT engine takes those of its profile, ``Detector.warmup`` keeps to them).
        On the CPU: 1 (nothing there is prepared per shape; a blank batch would only cost
        time). A replica reports the batch sizes it did warm up with (``/healthz``)."""
        if self.num_gpus == 0:
            return (1,)
        if self.spec.backend != "torch-cuda":
            return tuple(range(1, self.max_batch_size + 1))
        sizes = {self.max_batch_size}
        size = 1
        while size < self.max_batch_size:
            sizes.add(size)
            size *= 2
        return tuple(sorted(sizes))

    def deployment_options(self) -> dict[str, Any]:
        """``Deployment.options(...)`` for these settings."""
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            # room for a full batch plus the next one being decoded
            "max_ongoing_requests": max(2 * self.max_batch_size, 8),
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_wait_loop_s": DRAIN_POLL_S,
        }
        if self.min_replicas is not None or self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            high = self.max_replicas if self.max_replicas is not None else max(low, 1)
            options["autoscaling_config"] = {
                "min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                "target_ongoing_requests": self.max_batch_size}
        else:
            options["num_replicas"] = self.replicas
        return options


#: Seconds between a stopping replica's checks for requests still in flight (Serve's default,
#: 2 s, made every stop of tf-serve and every scale-down wait 2 s even when idle; in-flight
#: requests are still waited for, up to Serve's graceful_shutdown_timeout_s). The first wait
#: is also the time routers have to learn that the replica is going (outside Serve's direct
#: ingress mode there is no other): half a second, not less.
DRAIN_POLL_S = 0.5

#: Seconds a client has to send its whole body: a stalled upload holds one of the replica's
#: request slots (16 of them blocked every request, /healthz included).
BODY_TIMEOUT_S = 30.0


async def _read_body(request: Any, limits: Limits, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The request body, refused (413) as soon as it passes the limit, or (408) when it has
    not arrived within ``timeout_s``; a client that hung up gets a 400 nobody reads (not a
    traceback in the server's log)."""
    from starlette.requests import ClientDisconnect

    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            check_body_size(size, limits)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {timeout_s:g} s "
                                f"({sum(map(len, chunks))} bytes came); send it whole") from None
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the body was "
                                "complete") from None
    return b"".join(chunks)


def replica_spec(spec: Any) -> tuple[Any, bool]:
    """The spec a replica builds its detector from (``clip_boxes=False``: tf-anonymize's
    unclipped boxes, which ``/anonymize`` masks) and whether ``/detect`` clips them (the
    spec's own ``clip_boxes``; clipped unless it says otherwise, as tf-detect's)."""
    overrides = dict(spec.config_overrides)
    clip = overrides.pop("clip_boxes", True)
    overrides["clip_boxes"] = False
    return dataclasses.replace(spec, config_overrides=tuple(overrides.items())), bool(clip)


def internal_error(exc: BaseException) -> RequestError:
    """The 500 answer of an unexpected failure while handling a request (logged with its
    traceback on the replica)."""
    log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return RequestError(500, f"internal error: {type(exc).__name__}: {exc}")


class RequestHandler:
    """The HTTP routes of one replica, apart from Ray (tests give it a fake detector).

    Args:
        detector: the replica's detector, built with ``clip_boxes=False``
            (:func:`replica_spec`).
        backend: its backend's name (``/healthz``).
        limits: what one request may carry.
        clip: whether ``/detect`` clips the boxes to the image.
        warmed_up, warmup_batch_sizes: what the replica got ready for (``/healthz``).
    """

    def __init__(self, detector: Any, backend: str, limits: Limits, clip: bool = True,
                 warmed_up: Sequence[str] = (), warmup_batch_sizes: Sequence[int] = ()) -> None:
        self.detector = detector
        self.backend = backend
        self.limits = limits
        self.clip = clip
        self.warmed_up = list(warmed_up)
        self.warmup_batch_sizes = list(warmup_batch_sizes)

    async def __call__(self, request: Any, detect: Callable[[Any], Awaitable[Any]]) -> Any:
        """The response to ``request`` (Starlette); ``detect(image)`` gives the image's boxes
        or a :class:`~tinyfaces_trt.scaleout.service.DetectionError` (the replica's batched
        :func:`~tinyfaces_trt.scaleout.service.detect_images`). Every error is a JSON body."""
        from starlette.responses import JSONResponse

        try:
            return await self._answer(request, detect)
        except RequestError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 (a JSON 500, not Starlette's bare text)
            error = internal_error(exc)
        return JSONResponse(error_body(error.status, str(error)), status_code=error.status,
                            headers=error.headers)

    async def _answer(self, request: Any, detect: Callable[[Any], Awaitable[Any]]) -> Any:
        from starlette.responses import JSONResponse, Response

        config = self.detector.config
        route = check_route(request.url.path, request.method)
        if route == "/healthz":  # the replica's liveness, not a check of its model
            return JSONResponse({
                "status": "ok", "backend": self.backend, "variant": config.variant,
                "coordinate_base": int(config.coordinate_base), "warmed_up": self.warmed_up,
                "warmup_batch_sizes": self.warmup_batch_sizes})
        check_query(request.query_params, route)  # before the body is read
        check_headers(request.headers, self.limits)
        body = await _read_body(request, self.limits)
        stored = None
        if route == "/anonymize":
            wanted = parse_anonymise_query(request.query_params, body)
            stored = await asyncio.to_thread(decode_body, body, self.limits, True)
            image = stored.rgb  # (its alpha and grey levels kept in the copy)
        else:
            image = await asyncio.to_thread(decode_body, body, self.limits)
        boxes = await detect(image)
        if isinstance(boxes, RequestError):  # the detector failed on this image
            raise boxes
        if route == "/detect":
            if self.clip:
                boxes = clip_to_image(boxes, image.shape[:2], config)
            return JSONResponse(detection_body(image, boxes, config.variant,
                                               config.coordinate_base))
        data = await asyncio.to_thread(anonymise, image, boxes, wanted, config.coordinate_base,
                                       stored)
        return Response(data, media_type=wanted.media_type, headers={"X-Faces": str(len(boxes))})


def build_app(options: ServeOptions) -> Any:
    """The Serve application (``Deployment.bind(...)``) for ``serve.run``."""
    from ray import serve

    spec = options.spec
    if options.num_gpus == 0 and spec.threads is None and spec.backend == "onnxruntime":
        spec = dataclasses.replace(spec, threads=max(1, int(options.num_cpus)))
    spec, clip = replica_spec(spec)
    limits = options.limits

    @serve.deployment(name="TinyFaces")
    class TinyFaces:
        """One replica: a detector, batched detection, the HTTP routes."""

        def __init__(self) -> None:
            self.detector = spec.create()
            warmed_up: list[str] = []
            batch_sizes: list[int] = []
            if options.warmup:
                start = time.perf_counter()
                ran = self.detector.warmup([(size.height, size.width) for size in options.warmup],
                                           batch_sizes=options.warmup_batch_sizes)
                warmed_up = [str(size) for size in options.warmup]
                batch_sizes = list(ran)
                log.info("replica ready for %s (batches of %s) in %.1f s",
                         ", ".join(warmed_up), ", ".join(map(str, ran)),
                         time.perf_counter() - start)
            self.handler = RequestHandler(self.detector, spec.backend, limits, clip,
                                          warmed_up, batch_sizes)

        @serve.batch(max_batch_size=options.max_batch_size,
                     batch_wait_timeout_s=options.batch_wait_ms / 1000.0)
        async def detect_batch(self, images: list[Any]) -> list[Any]:
            return await asyncio.to_thread(detect_images, self.detector, images)

        async def __call__(self, request: Any) -> Any:
            return await self.handler(request, self.detect_batch)

        def check_health(self) -> None:
            if self.detector is None:
                raise RuntimeError("the replica has no detector")

    return TinyFaces.options(**options.deployment_options()).bind()


@dataclass(frozen=True)
class RunningServe:
    """Ray Serve as it already runs on a cluster.

    Attributes:
        host, port: where its HTTP proxies listen.
        request_timeout_s: its HTTP request timeout (None: no limit).
        routes: each application's name and route prefix (None: no HTTP route).
    """

    host: str
    port: int
    request_timeout_s: float | None
    routes: dict[str, str | None]


def running_serve() -> RunningServe | None:
    """Ray Serve on the connected cluster, or None where it does not run there (or where this
    Ray's private client API, read here, has changed: the check is then skipped, said in a
    warning)."""
    try:
        from ray.serve.context import _get_global_client  # no public getter of HTTP options

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is None:
            return None
        http = client.http_config
        applications = client.get_serve_details().get("applications") or {}
        return RunningServe(host=http.host, port=http.port,
                            request_timeout_s=http.request_timeout_s,
                            routes={name: app.get("route_prefix")
                                    for name, app in applications.items()})
    except (ImportError, AttributeError, TypeError, KeyError) as exc:
        log.warning("cannot tell what Ray Serve already runs on this cluster (%s: %s); "
                    "not checked", type(exc).__name__, exc)
        return None


def stop_app(name: str) -> None:
    """Deletes the application ``name``, and shuts Serve down only when no other application
    remains (``serve.shutdown`` deletes every application on the cluster)."""
    from ray import serve

    if name in serve.status().applications:
        serve.delete(name)
    if not serve.status().applications:
        serve.shutdown()
