"""The detection service's request handling, free of any web framework.

:mod:`tinyfaces_trt.scaleout.serve` (Ray Serve) calls these; they hold every rule a client
sees, so they are tested without a server:

- ``POST /detect``: body = an encoded image (JPEG, PNG, ... as ``image/*`` or
  ``application/octet-stream``) -> ``{"width", "height", "variant", "coordinate_base",
  "detections": [{"box": [x1, y1, x2, y2], "score": p}, ...]}`` (tf-detect's detection
  list). Boxes are in the variant's pixel coordinates, clipped to the image:
  ``coordinate_base`` 0 (pytorch: x in [0, W-1]) or 1 (matconvnet: x in [1, W]). It takes
  no query parameter (one is a 400: the detection settings are the server's, ``tf-serve
  --prob-thresh`` ..., not the request's).
- ``POST /anonymize[?mode=blur|pixelate|solid][&shape=box|ellipse][&mask_scale=F]
  [&blur_strength=F][&cells=N][&format=jpeg|png]``: body = an image -> the image with every
  face hidden as tf-anonymize hides it (its defaults, :func:`default_mask_style`: blur, box,
  boxes enlarged 1.3x about their centres, the unclipped boxes' masks cut at the border), as
  JPEG when the input was JPEG (else PNG) unless ``format`` says otherwise. ``mask_scale`` is
  at most :data:`MAX_MASK_SCALE` (4; tf-anonymize takes up to 100): each face is masked over
  its own enlarged region, so a larger scale multiplies a request's work by the faces.
- ``GET /healthz`` -> ``{"status": "ok", ...}``: the replica answers (liveness), not a check
  that its model detects.

Errors get ``{"error": {"status": N, "message": "..."}}``: 400 bad or corrupt image or query
(or a client gone before its body was complete), 404 unknown path, 405 wrong method, 408 a
body that did not arrive in time, 413 body too large, 413 too many pixels (decompression
bombs are refused from the header, before any pixel is decoded), 415 a body that is not an
image type, 500 the detector failed on the image (:class:`DetectionError`, naming the cause:
a NaN score map, ...) or another server fault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import ImageError, ImageTooLargeError, TinyFacesError

log = logging.getLogger("tinyfaces_trt.scaleout")

#: Default largest request body (bytes).
DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
#: Default largest image (width x height): 40 Mpixel, a full-frame camera's 36 Mpx photo
#: (7360 x 4912) fits, a 45 Mpx one does not. Detecting one such image on a CPU replica takes
#: minutes and GBs (a 6324 x 6324 PNG: 98 s, 2.45 GB peak on 2 cores); batches never run more
#: than that together (:data:`MAX_BATCH_PIXELS`), so a replica needs room for one of them.
DEFAULT_MAX_PIXELS = 40_000_000
#: Most pixels (the sum of the images' width x height) detected together in one
#: ``detect_batch`` call: a batch's working memory grows with them, so :func:`detect_images`
#: splits Serve's batches (up to ``--max-batch-size`` requests) to stay at or under it: eight
#: 1080p photos (2 Mpx each) still run together, two of 20 Mpx together, one of 40 Mpx
#: (:data:`DEFAULT_MAX_PIXELS`) alone; an image over it (a larger ``--max-pixels``) alone.
#: Unsplit, two 40 Mpx requests batched failed ONNX Runtime's allocation (then each was
#: detected again alone), and a GPU backend, which runs a whole batch at once, needed up to
#: ``--max-batch-size`` times one image's memory.
MAX_BATCH_PIXELS = 40_000_000
#: Largest ``mask_scale`` ``/anonymize`` takes (tf-anonymize's ``--mask-scale`` goes up to
#: :data:`~tinyfaces_trt.runtime.masks.MAX_SCALE`, 100). Each face is masked over its own
#: region, the box enlarged ``mask_scale`` times (up to ``mask_scale ** 2`` its area: 16x at 4,
#: 1.69x at the default 1.3) and cut at the border, so a request's masking work is the faces
#: times that area: at 100 every face's region is the whole image (2000 x 2000 with 200 faces:
#: 97 s instead of 1 s; 967 boxes of 20-200 px on 800 x 600: 55 s, 18 s at 4, 2 s at 1.3).
#: 4 already hides a face with its hair and neck.
MAX_MASK_SCALE = 4.0

ROUTES = {"/detect": "POST", "/anonymize": "POST", "/healthz": "GET"}
#: /anonymize ``mode`` values: tf-anonymize's, but for ``none`` (nothing hidden).
_ANONYMISE_MODES = ("blur", "pixelate", "solid")
#: /anonymize query parameters: ``format`` and tf-anonymize's mask options (--mode, --shape,
#: --mask-scale, --blur-strength, --cells, as snake_case names).
_ANONYMISE_PARAMETERS = ("mode", "shape", "mask_scale", "blur_strength", "cells", "format")
#: The query parameters each POST route takes (any other is a 400: :func:`check_query`).
QUERY_PARAMETERS: dict[str, tuple[str, ...]] = {"/detect": (),
                                                "/anonymize": _ANONYMISE_PARAMETERS}
_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "jpg": ("JPEG", "image/jpeg"),
            "png": ("PNG", "image/png")}
_BODY_TYPES = ("application/octet-stream",)


class RequestError(TinyFacesError):
    """A request the service refuses, with its HTTP status and any headers the status calls
    for (a 405's ``Allow``)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


class DetectionError(RequestError):
    """The detector failed on a request's image (status 500): a NaN score map
    (:class:`~tinyfaces_trt.core.errors.NonFiniteScoresError`), any other failure of the
    network or its backend. Its message names the cause, as tf-detect's per-image error."""

    def __init__(self, cause: BaseException) -> None:
        detail = str(cause) if isinstance(cause, TinyFacesError) and str(cause) \
            else f"{type(cause).__name__}: {cause}"
        super().__init__(500, f"detection failed: {detail}")
        self.cause = cause


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"status": status, "message": message}}


def check_route(path: str, method: str) -> str:
    """The route a request goes to (its path without a trailing slash).

    Raises:
        RequestError: 404 unknown path, 405 wrong method.
    """
    route = path.rstrip("/") or "/"
    if route not in ROUTES:
        raise RequestError(404, f"no such endpoint {path!r}; endpoints: "
                                + ", ".join(f"{m} {r}" for r, m in ROUTES.items()))
    if method.upper() != ROUTES[route]:
        raise RequestError(405, f"{route} takes {ROUTES[route]}, not {method.upper()}",
                           headers={"Allow": ROUTES[route]})
    return route


def check_headers(headers: Mapping[str, str], limits: Limits) -> None:
    """Refuses a body that is announced too large or not an image, before reading it.

    Raises:
        RequestError: 400 bad Content-Length, 413 too large, 415 not an image type.
    """
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        raise RequestError(415, "the body must be the image file's bytes, not a form upload "
                                "(curl: --data-binary @photo.jpg -H 'Content-Type: image/jpeg' "
                                "instead of -F)")
    if content_type and not (content_type.startswith("image/") or content_type in _BODY_TYPES):
        raise RequestError(415, f"the body must be an encoded image (Content-Type image/* or "
                                f"application/octet-stream), got {content_type!r} (curl: add "
                                f"-H 'Content-Type: image/jpeg')")
    length = headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise RequestError(400, f"bad Content-Length {length!r}") from None
        check_body_size(size, limits)


def check_body_size(size: int, limits: Limits) -> None:
    """Raises RequestError 413 when ``size`` bytes exceed the limit."""
    if size > limits.max_request_bytes:
        raise RequestError(413, f"request body too large ({size} bytes; limit "
                                f"{limits.max_request_bytes} bytes)")


def decode_body(body: bytes, limits: Limits, stored: bool = False) -> Any:
    """The request's image as (H, W, 3) uint8 RGB; with ``stored``, a
    :class:`~tinyfaces_trt.runtime.imageio.StoredImage` (its alpha and grey levels too, for
    :func:`anonymise`).

    Raises:
        RequestError: 400 empty / not an image / corrupt, 413 more pixels than allowed.
    """
    from tinyfaces_trt.runtime.imageio import decode_image, decode_image_stored

    check_body_size(len(body), limits)
    try:
        return (decode_image_stored if stored else decode_image)(
            body, limits.max_pixels, name="request body")
    except ImageTooLargeError as exc:
        raise RequestError(413, str(exc)) from None
    except ImageError as exc:
        raise RequestError(400, str(exc)) from None


def pixel_batches(members: Sequence[int], pixels: int,
                  max_batch_pixels: int = MAX_BATCH_PIXELS) -> list[list[int]]:
    """``members`` (indices of images of ``pixels`` pixels each) in order, cut into as few runs
    as keep each run's pixels at or under ``max_batch_pixels``, of sizes as even as possible
    (a GPU backend pads a batch into its next prepared size); an image over it runs alone."""
    per = max(1, max_batch_pixels // max(1, pixels))
    parts = -(-len(members) // per)
    size, extra = divmod(len(members), max(1, parts))
    runs, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        runs.append(list(members[start:end]))
        start = end
    return runs


def detect_images(detector: Any, images: Sequence[np.ndarray],
                  max_batch_pixels: int = MAX_BATCH_PIXELS) -> list[np.ndarray | DetectionError]:
    """Boxes of several images, in their order: same-size images go through ``detect_batch``
    together, in runs of at most ``max_batch_pixels`` pixels in all (:func:`pixel_batches`,
    :data:`MAX_BATCH_PIXELS`), one run after the other.

    An image the detector fails on gets a :class:`DetectionError` in its place instead of
    boxes; when a run of several fails, its images are detected again one by one, so only
    the requests whose own image fails get the error (not every request batched with it).
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    results: list[np.ndarray | DetectionError] = [np.zeros((0, 5), np.float32)] * len(images)
    for members in groups.values():
        height, width = images[members[0]].shape[:2]
        for run in pixel_batches(members, height * width, max_batch_pixels):
            _detect_run(detector, images, run, results)
    return results


def _detect_run(detector: Any, images: Sequence[np.ndarray], members: list[int],
                results: list[np.ndarray | DetectionError]) -> None:
    """Puts the boxes (or :class:`DetectionError`) of ``images[i]`` for ``i`` in ``members``
    (one size) at ``results[i]``: one ``detect_batch`` call, one per image where it fails."""
    try:
        found = detector.detect_batch([images[i] for i in members])
    except Exception as exc:  # noqa: BLE001 (answered as that request's 500)
        if len(members) == 1:
            results[members[0]] = DetectionError(exc)
            return
        log.warning("detection of a batch of %d images failed (%s: %s); detecting them "
                    "one by one", len(members), type(exc).__name__, exc)
        for i in members:
            try:
                results[i] = detector.detect_batch([images[i]])[0]
            except Exception as single:  # noqa: BLE001
                results[i] = DetectionError(single)
        return
    for i, boxes in zip(members, found):
        results[i] = boxes


def clip_to_image(boxes: np.ndarray, image_hw: tuple[int, int], config: Any) -> np.ndarray:
    """A copy of a detector's unclipped boxes (its config with ``clip_boxes=False``, as
    tf-anonymize masks them) clipped to the image's pixel area as the detector itself clips
    (``runtime.postprocess.finish_boxes``, in the variant's coordinates of ``config``)."""
    from tinyfaces_trt.runtime.postprocess import finish_boxes

    return finish_boxes(np.array(boxes, copy=True), image_hw, replace(config, clip_boxes=True))


def detection_body(image: np.ndarray, boxes: np.ndarray, variant: str = "pytorch",
                   base: float = 0.0) -> dict[str, Any]:
    """The ``/detect`` answer: image size, the boxes' coordinate convention (``variant`` and
    ``coordinate_base``: the first pixel's coordinate, 0 or 1) and tf-detect's detection
    list."""
    from tinyfaces_trt.runtime.results import detections_to_list

    return {"width": int(image.shape[1]), "height": int(image.shape[0]), "variant": variant,
            "coordinate_base": int(base), "detections": detections_to_list(boxes)}


def check_query(query: Mapping[str, str], route: str) -> None:
    """Refuses the query parameters ``route`` does not take (:data:`QUERY_PARAMETERS`): one
    ignored would leave the client thinking it applied (a misspelt ``mask_scale`` the default
    mask, ``/detect?prob_thresh=0.8`` the server's threshold). Where a parameter may be meant
    as a detection setting (every one on ``/detect``, which takes none), the message says
    those are the server's, set when tf-serve starts.

    A parameter given twice (``?mode=blur&mode=solid``) or empty (``?mode=``) is refused too:
    the last value, or the default, would apply without a word.

    Raises:
        RequestError: 400 naming the unknown parameters and those the route takes, or the
            repeated or empty one.
    """
    from tinyfaces_trt.detector_record import DETECTION_FIELDS

    taken = QUERY_PARAMETERS[route]
    unknown = sorted(set(query) - set(taken))
    for name in sorted(set(query) & set(taken)):
        # a multi-dict (Starlette's QueryParams) keeps each; a plain mapping holds one
        values = query.getlist(name) if hasattr(query, "getlist") else [query[name]]
        if len(values) > 1:  # else the last one would win without a word
            raise RequestError(400, f"{name} is given {len(values)} times "
                                    f"({', '.join(map(repr, values))}); give it once")
        if not values[0].strip():  # else the default would apply without a word
            raise RequestError(400, f"{name} is empty; leave it out for the default")
    if not unknown:
        return
    message = (f"unknown query parameter(s) {', '.join(map(repr, unknown))}; {route} takes "
               + (", ".join(taken) if taken else "no query parameters"))
    if not taken or any(name.lower().replace("-", "_") in DETECTION_FIELDS for name in unknown):
        options = ", ".join("--" + name.replace("_", "-") for name in DETECTION_FIELDS)
        message += ("; the detection settings (thresholds, face sizes, pyramid) are the "
                    f"server's, set when it starts (tf-serve {options})")
    raise RequestError(400, message)


def default_mask_style() -> Any:
    """tf-anonymize's default mask (:data:`~tinyfaces_trt.runtime.masks.ANONYMIZE_STYLE`:
    blur, box, boxes enlarged 1.3x, blur strength 0.25, 5 x 5 cells), which ``/anonymize``
    applies unless its query says otherwise."""
    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE

    return ANONYMIZE_STYLE


@dataclass(frozen=True)
class AnonymiseRequest:
    """The ``/anonymize`` query: how to hide faces and how to encode the answer."""

    style: Any  # runtime.masks.MaskStyle
    format: str  # Pillow format name
    media_type: str

    @property
    def mode(self) -> str:
        return self.style.mode


def _number(query: Mapping[str, str], name: str, field: str, convert: Any, what: str,
            top: float | None = None) -> Any:
    """The query's ``name`` as ``convert`` makes it, None if absent; a 400 saying it must be
    ``what`` unless :class:`~tinyfaces_trt.runtime.masks.MaskStyle` takes it as its ``field``
    (its checks, the only statement of the mask limits: finite, >= 1 or > 0, at most its
    largest) and it is at most ``top``, where the service's limit is lower."""
    from tinyfaces_trt.runtime.masks import MaskStyle

    text = query.get(name)
    if text is None:
        return None
    try:
        value = convert(text)
        MaskStyle(**{field: value})
    except (ValueError, TinyFacesError):
        raise RequestError(400, f"{name} must be {what}, got {text!r}") from None
    if top is not None and value > top:
        raise RequestError(400, f"{name} must be {what}, got {text!r}")
    return value


def parse_anonymise_query(query: Mapping[str, str], body: bytes) -> AnonymiseRequest:
    """The mask of tf-anonymize's options (``mode`` blur|pixelate|solid, ``shape``
    box|ellipse, ``mask_scale`` 1 <= F <= :data:`MAX_MASK_SCALE` (4), ``blur_strength``
    0 < F <= 10, ``cells`` N 1..10000: MaskStyle checks them all, the service's own top of
    ``mask_scale`` (MaskStyle's is 100) aside; each left
    out takes tf-anonymize's default, :func:`default_mask_style`) and ``format`` (jpeg|png;
    default: JPEG for a JPEG body, else PNG).

    Raises:
        RequestError: 400 an unknown parameter (a misspelt ``mask_scale`` would otherwise
            leave the default mask silently), mode, shape or format, or a bad number.
    """
    check_query(query, "/anonymize")
    from tinyfaces_trt.runtime.masks import MAX_BLUR_STRENGTH, MAX_CELLS, SHAPES

    mode = (query.get("mode") or default_mask_style().mode).lower()
    if mode not in _ANONYMISE_MODES:
        raise RequestError(400, f"mode must be one of {', '.join(_ANONYMISE_MODES)}, "
                                f"got {mode!r}")
    shape = (query.get("shape") or default_mask_style().shape).lower()
    if shape not in SHAPES:
        raise RequestError(400, f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    changes = {"mode": mode, "shape": shape,
               "scale": _number(query, "mask_scale", "scale", float,
                                f"a number >= 1 (1 = the detected box) and <= "
                                f"{MAX_MASK_SCALE:g}", MAX_MASK_SCALE),
               "blur_strength": _number(query, "blur_strength", "blur_strength", float,
                                        f"a number > 0 and <= {MAX_BLUR_STRENGTH:g}"),
               "cells": _number(query, "cells", "cells", int,
                                f"a whole number 1..{MAX_CELLS}")}
    try:
        style = replace(default_mask_style(),
                        **{k: v for k, v in changes.items() if v is not None})
    except TinyFacesError as exc:  # any other limit of MaskStyle: the client's mistake too
        raise RequestError(400, str(exc)) from None
    from tinyfaces_trt.runtime.imageio import JPEG_MAGIC

    default = "jpeg" if body.startswith(JPEG_MAGIC) else "png"
    name = (query.get("format") or default).lower()
    if name not in _FORMATS:
        raise RequestError(400, f"format must be jpeg or png, got {name!r}")
    return AnonymiseRequest(style, *_FORMATS[name])


def anonymise(image: np.ndarray, boxes: np.ndarray, request: AnonymiseRequest,
              base: float = 0.0, stored: Any = None) -> bytes:
    """The image with every box hidden as the request's style says (tf-anonymize's
    ``apply_masks``), encoded as it asks (``base``: the first pixel's coordinate in
    ``boxes``, 1.0 for the matconvnet variant's). Give the detector's unclipped boxes, as
    tf-anonymize does: an enlarged mask of a face cut by the border is then the same. With
    ``stored`` (the body's :class:`~tinyfaces_trt.runtime.imageio.StoredImage`), its alpha
    channel and grey levels are kept where the format holds them, as tf-anonymize keeps
    them (:func:`~tinyfaces_trt.runtime.imageio.as_stored`)."""
    from tinyfaces_trt.runtime.imageio import as_stored, encode_image
    from tinyfaces_trt.runtime.masks import apply_masks

    masked = as_stored(apply_masks(image, boxes, request.style, base=base), stored,
                       "." + request.format.lower())
    return encode_image(masked, request.format)
