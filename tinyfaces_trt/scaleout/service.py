"""The detection service's request handling, free of any web framework.

:mod:`tinyfaces_trt.scaleout.serve` (Ray Serve) calls these; they hold every rule a client
sees, so they are tested without a server:

- ``POST /detect``: body = an encoded image (JPEG, PNG, ... as ``image/*`` or
  ``application/octet-stream``) -> ``{"width", "height", "detections": [{"box": [x1, y1,
  x2, y2], "score": p}, ...]}`` (tf-detect's JSON record).
- ``POST /anonymize[?mode=blur|pixelate][&format=jpeg|png]``: body = an image -> the image
  with every face blurred (default) or pixelated, as JPEG when the input was JPEG (else
  PNG) unless ``format`` says otherwise.
- ``GET /healthz`` -> ``{"status": "ok", ...}``.

Bad input gets a 4xx status and ``{"error": {"status": N, "message": "..."}}``: 400 bad or
corrupt image or query (or a client gone before its body was complete), 404 unknown path,
405 wrong method, 408 a body that did not arrive in time, 413 body too large, 413 too many pixels (decompression bombs are refused from the header,
before any pixel is decoded), 415 a body that is not an image type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import ImageError, ImageTooLargeError, TinyFacesError

#: Default largest request body (bytes).
DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
#: Default largest image (width x height): 40 Mpixel, well above any camera frame.
DEFAULT_MAX_PIXELS = 40_000_000

ROUTES = {"/detect": "POST", "/anonymize": "POST", "/healthz": "GET"}
_ANONYMISE_MODES = ("blur", "pixelate")
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


def decode_body(body: bytes, limits: Limits) -> np.ndarray:
    """The request's image as (H, W, 3) uint8 RGB.

    Raises:
        RequestError: 400 empty / not an image / corrupt, 413 more pixels than allowed.
    """
    from tinyfaces_trt.runtime.imageio import decode_image

    check_body_size(len(body), limits)
    try:
        return decode_image(body, limits.max_pixels, name="request body")
    except ImageTooLargeError as exc:
        raise RequestError(413, str(exc)) from None
    except ImageError as exc:
        raise RequestError(400, str(exc)) from None


def detect_images(detector: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Boxes of several images: same-size images go through ``detect_batch`` together."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    boxes: list[np.ndarray] = [np.zeros((0, 5), np.float32)] * len(images)
    for members in groups.values():
        for i, found in zip(members, detector.detect_batch([images[i] for i in members])):
            boxes[i] = found
    return boxes


def detection_body(image: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
    """The ``/detect`` answer: image size and tf-detect's detection list."""
    from tinyfaces_trt.runtime.results import detections_to_list

    return {"width": int(image.shape[1]), "height": int(image.shape[0]),
            "detections": detections_to_list(boxes)}


@dataclass(frozen=True)
class AnonymiseRequest:
    """The ``/anonymize`` query: how to hide faces and how to encode the answer."""

    mode: str
    format: str  # Pillow format name
    media_type: str


def parse_anonymise_query(query: Mapping[str, str], body: bytes) -> AnonymiseRequest:
    """``mode`` (blur|pixelate, default blur) and ``format`` (jpeg|png; default: JPEG for a
    JPEG body, else PNG).

    Raises:
        RequestError: 400 unknown mode or format.
    """
    mode = (query.get("mode") or "blur").lower()
    if mode not in _ANONYMISE_MODES:
        raise RequestError(400, f"mode must be one of {', '.join(_ANONYMISE_MODES)}, "
                                f"got {mode!r}")
    default = "jpeg" if body[:3] == b"\xff\xd8\xff" else "png"
    name = (query.get("format") or default).lower()
    if name not in _FORMATS:
        raise RequestError(400, f"format must be jpeg or png, got {name!r}")
    return AnonymiseRequest(mode, *_FORMATS[name])


def anonymise(image: np.ndarray, boxes: np.ndarray, request: AnonymiseRequest,
              base: float = 0.0) -> bytes:
    """The image with every box hidden, encoded as the request asks (``base``: the first
    pixel's coordinate in ``boxes``, 1.0 for the matconvnet variant's)."""
    from tinyfaces_trt.runtime.draw import blur_boxes, pixelate_boxes
    from tinyfaces_trt.runtime.imageio import encode_image

    hide = blur_boxes if request.mode == "blur" else pixelate_boxes
    return encode_image(hide(image, boxes, base=base), request.format)
