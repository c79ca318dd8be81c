"""The audit trail: one JSON sidecar per anonymised input.

It records, per frame, every mask (box, detection score, track id and whether it was
detected, held after the last detection or back-filled before the first), the model and
settings that produced it, and a review list: the frames with a detection whose score lies
within ``band`` above the threshold, where a face was nearly missed and a human should look.
A video's ``dropped_streams`` names what its output does not carry over: streams the
container cannot hold, a second video track, attachments that are not fonts, and in one line
what the privacy defaults left out (audio, metadata tags, subtitle and data streams); and
``input_problems`` what went wrong reading the input (undecodable packets skipped, fewer
frames than announced or than the video's duration holds, frames missing mid-file where a
stretch of it could not be read): the same lines tf-anonymize prints as warnings (and as a
note, the privacy defaults' line). Boxes are in the upright frame (a rotated video's display
rotation applied): its ``video`` record gives that frame's size beside the stored one.

Layout (``format: "tinyfaces-anonymize/1"``)::

    {"format",
     "anonymised": false with ``--mode none`` (the output shows every face: boxes only),
     else true; "mode": the mask mode (also in "options"),
     "masks_revision" (:data:`MASKS_REVISION`: a rerun redoes an output of another one, or of
     none: an older tf-anonymize), "version" (the tinyfaces-trt version that wrote it; for
     audit only, not compared),
     "input", "resolved" (the input's real path),
     "input_identity": {"size", "mtime_ns", "sample_sha256"} (the input as it was read: a rerun
     redoes an output whose input changed since), "output", "kind": "video"|"image",
     "output_file": {"size", "sha256"} (the output as written, hashed from the finished file
     just before its rename: a rerun redoes an output that no longer matches, e.g. replaced
     by the original),
     "model", "config", "options" (a rerun redoes an output whose options differ),
     "run": {"backend" (as tf-detect --json records it; null when unknown), "providers" (the
     ONNX Runtime execution providers in use, null for other backends), "command" (the
     process's command line, ``sys.argv``), "started", "finished" (UTC, ISO 8601, this input's
     processing)},
     "pyramid": {"rule", "scales" (of the levels that ran, in run order),
     "smallest_face", "largest_face" (the face sizes, longer box side in input pixels, those
     levels' templates can find with the config's size_refinement; null when none ran),
     "nominal_smallest_face", "nominal_largest_face" (the same without refinement: the
     templates' own sizes), "size_refinement", "no_level" (why no level ran, else null; only
     an image, or a video whose frames are, too small to hold a face the detector can find
     passes so, with a note: a larger one fails, with no output)},
     "image": {"width", "height"}, "image_frames": {"in_file" (the pictures the file holds:
     pages, animation frames), "kept" (1: only the first is anonymised and written, the
     others are left out, with a warning)} (image) |
     "video": {"width", "height" (the stored frame's), "rotation", "boxes_frame": "upright",
               "upright_width", "upright_height" (the frame the boxes are in), "time_base",
               "rate", "frames_announced" (the container's count, or where it has none an
               estimate from the duration: "frames_estimated"; null when unknown), "frames"
               (the same, 0 when unknown: older readers), "frames_decoded", "duration",
               "codec", "pix_fmt"},
     "dropped_streams": [...], "input_problems": [...] (video),
     "review_updates": [{"updated" (UTC), "review_band", "band", "review_frames" (each
     {"was", "now"}), "command", "version"}] (only once a rerun with another --review-band
     recomputed the review list: :func:`with_review_band`; the output was kept),
     "summary": {"frames" (written), "frames_with_masks", "detections", "held", "filled",
                 "tracks", "review_frames"},
     "review": {"band": [lo, hi], "frames": [{"index", "time", "scores"}]},
     "frames": [{"index", "time", "faces": [{"track", "box", "score", "kind"}]}]}

A frame is listed for review when one of its detections scores ``lo < score <= hi``; the
listed and recorded scores are probabilities (sigmoid, at most 1), rounded to 1e-5. As every
frame's detections are recorded with their scores, the list of another band is recomputed from
the sidecar (:func:`recomputed_review`) where the rounding cannot change it.

Just before an output is renamed into place, :func:`write_claim` writes a provisional sidecar
(the header's input fields and ``"incomplete": true``) that the full one then replaces: an
output a run stopped before its sidecar was written is still known as tf-anonymize's own, and
is made again, not taken for a user's file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyfaces_trt.anonymize.tracking import DETECTED, FILLED, HELD, FrameMasks
from tinyfaces_trt.core.files import open_regular, write_text_atomic
from tinyfaces_trt.core.hashing import file_digest
from tinyfaces_trt.runtime.results import SCORE_DIGITS, rounded_box, rounded_score

if TYPE_CHECKING:
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.runtime.pipeline import Detector

FORMAT = "tinyfaces-anonymize/1"
#: The revision of what tf-anonymize writes for a given input, options and detector: bump it
#: whenever a change makes those pixels differ (masks in ``runtime/masks.py``, the tracker's
#: held and back-filled masks in ``tracking.py``, ``jobs.render``, the video writer), so that
#: a rerun makes again every output an older revision wrote (a masking bug fixed there would
#: otherwise stay in outputs a rerun keeps). Sidecars recording none were written before it was
#: recorded (revision 1 and earlier: held masks that slid off a still face among them).
MASKS_REVISION = 2
#: Bytes of each end of an input hashed for its identity: the whole file when it is at most
#: twice as long (photos), else its first and last MiB (a video's header, index and frames).
SAMPLE_BYTES = 1 << 20
#: Header fields a provisional sidecar (:func:`write_claim`) keeps.
CLAIM_FIELDS = ("input", "resolved", "input_identity", "output", "kind")
#: How far a detection's score can be from the one recorded (rounded to ``SCORE_DIGITS``
#: decimals), with a margin for the float arithmetic.
SCORE_ROUNDING = 0.5 * 10.0 ** -SCORE_DIGITS + 1e-12


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity of the input file ``path`` as the sidecar records it: its size, its
    modification time (ns) and the sha256 of :func:`sampled` bytes (a symbolic link followed).

    The file is opened once (:func:`~tinyfaces_trt.core.files.open_regular`: without waiting
    for a named pipe's writer) and what was opened
    is checked: only a regular file is read, at most the size it had then.

    Raises:
        OSError: the file cannot be read, or is not a regular file (a named pipe, which would
            block, or a device such as ``/dev/zero``, endless, a socket, a directory).
    """
    f, stat = open_regular(path)
    with f:
        digest = hashlib.sha256()
        if sampled(stat.st_size) == "whole":
            digest.update(f.read(stat.st_size))
        else:
            digest.update(f.read(SAMPLE_BYTES))
            f.seek(-SAMPLE_BYTES, os.SEEK_END)
            digest.update(f.read(SAMPLE_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sample_sha256": digest.hexdigest()}


def sampled(size: int) -> str:
    """Which bytes of a ``size``-byte input its identity hashes: ``"whole"`` or ``"ends"``."""
    return "whole" if size <= 2 * SAMPLE_BYTES else "ends"


def write_claim(path: str | Path, **header: Any) -> None:
    """Writes the provisional sidecar of an output about to be renamed into place: the
    :data:`CLAIM_FIELDS` of ``header`` and ``"incomplete": true`` (atomically)."""
    claim = {"format": FORMAT, **{k: header[k] for k in CLAIM_FIELDS if k in header},
             "incomplete": True}
    write_text_atomic(path, json.dumps(claim, indent=1) + "\n")


def software_version() -> str:
    """The tinyfaces-trt version writing the sidecar (``tinyfaces_trt.__version__``)."""
    import tinyfaces_trt

    return str(tinyfaces_trt.__version__)


def utc_now() -> str:
    """The current UTC time as a sidecar records it: ISO 8601, milliseconds, ``Z``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def output_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sidecar's record of a finished output file: its ``size`` (bytes) and ``sha256``
    (hex), from one read of the file.

    Raises:
        OSError: the file cannot be read.
    """
    size, sha256 = file_digest(path)
    return {"size": size, "sha256": sha256}


def pyramid_record(height: int, width: int, config: DetectorConfig) -> dict[str, Any]:
    """The sidecar's ``pyramid`` record of a ``height`` x ``width`` image (a video's upright
    frame): the scales of the levels the detector runs (:func:`~tinyfaces_trt.core.pyramid.
    plan_pyramid`), the smallest and largest face (longer box side, input pixels) their
    templates can find (:func:`~tinyfaces_trt.core.pyramid.active_templates`,
    :func:`~tinyfaces_trt.core.pyramid.template_face_sizes`: with the config's
    ``size_refinement``, and nominal: the templates' own sizes), and why no level runs
    (:func:`~tinyfaces_trt.core.pyramid.no_level_reason`; None when some do)."""
    import numpy as np

    from tinyfaces_trt.core.pyramid import (active_templates, no_level_reason, plan_pyramid,
                                            template_face_sizes)

    levels = plan_pyramid(height, width, config)
    small: list[float] = []
    large: list[float] = []
    nominal_small: list[float] = []
    nominal_large: list[float] = []
    r = config.size_refinement
    for level in levels:
        active = active_templates(level.scale, config)
        if not active.any():
            continue
        smallest, largest = template_face_sizes(level.scale, config)
        small.append(float(np.min(smallest[active])))
        large.append(float(np.max(largest[active])))
        nominal_small.append(small[-1] * r)  # L / s, where smallest is L / (R s)
        nominal_large.append(large[-1] / r)

    def size(values: list[float], pick: Any) -> float | None:
        return round(float(pick(values)), 1) if values else None

    return {"rule": config.pyramid, "scales": [round(level.scale, 6) for level in levels],
            "smallest_face": size(small, min), "largest_face": size(large, max),
            "nominal_smallest_face": size(nominal_small, min),
            "nominal_largest_face": size(nominal_large, max),
            "size_refinement": r,
            "no_level": None if levels else no_level_reason(height, width, config)}


def model_identity(detector: Detector) -> dict[str, Any] | None:
    """The detector's model identity (weights sha256, untrained flag...) as JSON; None for a
    detector built from a bare runner (no identity)."""
    identity = detector.identity
    return None if identity is None else identity.to_dict()


class AuditLog:
    """Collects one input's frames; :meth:`write` saves the sidecar atomically.

    Args:
        prob_thresh: the detector's threshold (the review band starts there).
        band: width of the review band above it.
    """

    def __init__(self, prob_thresh: float, band: float) -> None:
        self.low, self.high = review_band_of(band, prob_thresh)
        self.frames: list[dict[str, Any]] = []
        self.review: list[dict[str, Any]] = []
        self.counts = {DETECTED: 0, HELD: 0, FILLED: 0}
        self.tracks: set[int] = set()

    def add(self, frame: FrameMasks, time: float | None) -> None:
        """Records one frame's masks (``time`` in seconds, None for an image)."""
        faces = []
        near = []
        for m in frame.masks:
            score = None if m.score is None else rounded_score(m.score)
            faces.append({"track": m.track, "box": rounded_box(m.box), "score": score,
                          "kind": m.kind})
            self.counts[m.kind] += 1
            self.tracks.add(m.track)
            if m.score is not None and self.low < m.score <= self.high:
                near.append(score)
        record = {"index": frame.index, "time": None if time is None else round(time, 6),
                  "faces": faces}
        self.frames.append(record)
        if near:
            self.review.append({"index": frame.index, "time": record["time"],
                                "scores": sorted(near)})

    def summary(self) -> dict[str, int]:
        """Counts over the frames so far."""
        return {"frames": len(self.frames),
                "frames_with_masks": sum(1 for f in self.frames if f["faces"]),
                "detections": self.counts[DETECTED], "held": self.counts[HELD],
                "filled": self.counts[FILLED], "tracks": len(self.tracks),
                "review_frames": len(self.review)}

    def document(self, **header: Any) -> dict[str, Any]:
        """The whole sidecar, ``header`` fields first."""
        return {"format": FORMAT, **header, "summary": self.summary(),
                "review": {"band": [self.low, self.high], "frames": self.review},
                "frames": self.frames}

    def write(self, path: str | Path, **header: Any) -> None:
        """Writes :meth:`document` as JSON to ``path`` (atomically)."""
        write_text_atomic(path, json.dumps(self.document(**header), indent=1) + "\n")


class ReviewNotRecomputable(ValueError):
    """A sidecar's review list cannot be recomputed exactly for another band: the sidecar
    lacks the records it takes, or a recorded (rounded) score is too close to a band edge to
    tell on which side the detection's score was."""


def review_band_of(band: float, low: float) -> list[float]:
    """The review band ``[lo, hi]`` that :class:`AuditLog` gives ``band`` above the threshold
    ``low``."""
    return [float(low), min(1.0, float(low) + float(band))]


def _above(score: float, edge: float) -> bool | None:
    """Whether a detection recorded with ``score`` (rounded) scored above ``edge``: True or
    False where the rounding cannot change the answer, else None."""
    if score - edge > SCORE_ROUNDING:
        return True
    if edge - score > SCORE_ROUNDING:
        return False
    return None


def _within_top(score: float, top: float) -> bool | None:
    """Whether a detection recorded with ``score`` (rounded) scored at most ``top``, a review
    band's top: always where ``top`` is 1 or more (no probability exceeds 1, so such a band has
    no upper edge to be near), else as :func:`_above` tells it."""
    if top >= 1.0:
        return True
    return _above(top, score)


def recomputed_review(recorded: Any, band: float) -> dict[str, Any]:
    """The ``review`` record (``{"band", "frames"}``) that the run which wrote the sidecar
    ``recorded`` (parsed JSON) would have written with the review band ``band``: its frames
    with a detection scoring within ``(lo, hi]``, from the masks and scores each frame
    records.

    The recorded scores are rounded (:data:`SCORE_ROUNDING`): a detection whose recorded score
    is that close to the threshold is settled by the recorded review list (where its band's
    top is clearly above the score: the detector keeps scores at the threshold too, e.g.
    float32 sigmoids that round to it, so the threshold is a real edge), one that close to the
    new band's top cannot be, unless that top is 1 or more (:func:`_within_top`: every
    probability lies below it).

    Raises:
        ReviewNotRecomputable: the sidecar records no review band and list, or not every
            frame with its masks and their scores, or a score that is no probability (outside
            [0, 1]: the band's edges mean nothing for it); or a recorded score too close to
            the new band's top (or to the threshold, with the recorded list unable to settle
            it).
    """
    try:
        old = recorded["review"]
        low, old_high = (float(v) for v in old["band"])
        listed = {_int(f["index"]): [float(v) for v in f["scores"]] for f in old["frames"]}
        frames = [(_int(f["index"]), f["time"], _scores(f["faces"])) for f in recorded["frames"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReviewNotRecomputable(
            "its sidecar does not record the review band and list and every frame's masks "
            "with their scores, which the new review list is computed from") from exc
    hi = review_band_of(band, low)[1]
    review = []
    for index, time, scores in frames:
        near: list[float] = []
        settled_by_list: dict[float, int] = {}
        for score in scores:
            if not 0.0 <= score <= 1.0:
                raise ReviewNotRecomputable(
                    f"a detection of frame {index} is recorded with the score {score:g}, which "
                    "is no probability (outside [0, 1])")
            above, below = _above(score, low), _within_top(score, hi)
            if above is False or below is False or hi <= low:
                continue
            if below is None:
                raise ReviewNotRecomputable(
                    f"a detection of frame {index} is recorded with the score {score:g} (rounded "
                    f"to 1e-{SCORE_DIGITS}), too close to the new review band's top {hi:g} to "
                    "tell whether it lies within the band")
            if above:
                near.append(score)
            elif _within_top(score, old_high):  # was it listed? only one above the threshold was
                settled_by_list[score] = settled_by_list.get(score, 0) + 1
            else:
                raise ReviewNotRecomputable(
                    f"a detection of frame {index} is recorded with the score {score:g} (rounded "
                    f"to 1e-{SCORE_DIGITS}), too close to the threshold {low:g} to tell whether it "
                    "lies above it")
        for score, count in settled_by_list.items():
            was_listed = listed.get(index, []).count(score)
            if was_listed > count:
                raise ReviewNotRecomputable(
                    f"its review list names the score {score:g} in frame {index} more often than "
                    "the frame records it")
            near.extend([score] * was_listed)
        if near:
            review.append({"index": index, "time": time, "scores": sorted(near)})
    return {"band": [low, hi], "frames": review}


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"not a frame index: {value!r}")
    return value


def _scores(faces: Any) -> list[float]:
    """The recorded scores of a frame's masks (every detected mask has one; held and
    back-filled ones have none)."""
    scores = []
    for face in faces:
        score = face["score"]
        if score is None and face["kind"] != DETECTED:
            continue
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            raise TypeError(f"not a score: {score!r}")
        scores.append(float(score))
    return scores


def with_review_band(recorded: dict[str, Any], band: float, **note: Any) -> dict[str, Any]:
    """The sidecar ``recorded`` (parsed JSON) with the review list of ``band``
    (:func:`recomputed_review`) and every other field kept, but ``options.review_band``,
    ``summary.review_frames`` and, added to ``review_updates`` (before ``summary``), a note of
    the change: its time, the band, the review frames (each ``{"was", "now"}``) and ``note``'s
    fields (e.g. ``command``, ``version``).

    Raises:
        ReviewNotRecomputable: :func:`recomputed_review`'s, or a sidecar with no options or
            summary record.
    """
    review = recomputed_review(recorded, band)
    options, summary = recorded.get("options"), recorded.get("summary")
    if not isinstance(options, dict) or not isinstance(summary, dict):
        raise ReviewNotRecomputable("its sidecar records no options or summary")
    old = recorded["review"]
    change = {"updated": utc_now(),
              "review_band": {"was": options.get("review_band"), "now": band},
              "band": {"was": old["band"], "now": review["band"]},
              "review_frames": {"was": len(old["frames"]), "now": len(review["frames"])},
              **note}
    updates = recorded.get("review_updates")
    updates = [*updates, change] if isinstance(updates, list) else [change]
    document: dict[str, Any] = {}
    for key, value in recorded.items():
        if key == "review_updates":
            continue
        if key == "summary":
            document["review_updates"] = updates
            value = {**value, "review_frames": len(review["frames"])}
        document[key] = value
    document.setdefault("review_updates", updates)
    document["options"] = {**options, "review_band": band}
    document["review"] = review
    return document
