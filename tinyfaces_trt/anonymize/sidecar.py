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

    {"format", "input", "resolved" (the input's real path),
     "input_identity": {"size", "mtime_ns", "sample_sha256"} (the input as it was read: a rerun
     redoes an output whose input changed since), "output", "kind": "video"|"image",
     "model", "config", "options" (a rerun redoes an output whose options differ),
     "image": {"width", "height"} (image) |
     "video": {"width", "height" (the stored frame's), "rotation", "boxes_frame": "upright",
               "upright_width", "upright_height" (the frame the boxes are in), "time_base",
               "rate", "frames_announced" (the container's count, or where it has none an
               estimate from the duration: "frames_estimated"; null when unknown), "frames"
               (the same, 0 when unknown: older readers), "frames_decoded", "duration",
               "codec", "pix_fmt"},
     "dropped_streams": [...], "input_problems": [...] (video),
     "summary": {"frames" (written), "frames_with_masks", "detections", "held", "filled",
                 "tracks"},
     "review": {"band": [lo, hi], "frames": [{"index", "time", "scores"}]},
     "frames": [{"index", "time", "faces": [{"track", "box", "score", "kind"}]}]}

Just before an output is renamed into place, :func:`write_claim` writes a provisional sidecar
(the header's input fields and ``"incomplete": true``) that the full one then replaces: an
output a run stopped before its sidecar was written is still known as tf-anonymize's own, and
is made again, not taken for a user's file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyfaces_trt.anonymize.tracking import DETECTED, FILLED, HELD, FrameMasks
from tinyfaces_trt.core.files import write_text_atomic
from tinyfaces_trt.runtime.results import rounded_box, rounded_score

if TYPE_CHECKING:
    from tinyfaces_trt.runtime.pipeline import Detector

FORMAT = "tinyfaces-anonymize/1"
#: Bytes of each end of an input hashed for its identity: the whole file when it is at most
#: twice as long (photos), else its first and last MiB (a video's header, index and frames).
SAMPLE_BYTES = 1 << 20
#: Header fields a provisional sidecar (:func:`write_claim`) keeps.
CLAIM_FIELDS = ("input", "resolved", "input_identity", "output", "kind")


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity of the input file ``path`` as the sidecar records it: its size, its
    modification time (ns) and the sha256 of :func:`sampled` bytes (a symbolic link followed).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        digest = hashlib.sha256()
        if sampled(stat.st_size) == "whole":
            digest.update(f.read())
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
        self.low, self.high = float(prob_thresh), min(1.0, float(prob_thresh) + float(band))
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
