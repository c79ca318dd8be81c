"""Reruns of tf-anonymize: whether an existing output is what this run would make.

An output is skipped as done only when its sidecar records the same input file (size,
modification time and sampled sha256: :func:`~.sidecar.input_identity`), the masking revision
of this tf-anonymize (:data:`~.sidecar.MASKS_REVISION`), the output file as it is now (its
size and sha256: :func:`~.sidecar.output_record`), the same pixel-changing options
(:data:`PIXEL_OPTIONS`), the same network and the same detection settings (a
:class:`~tinyfaces_trt.detector_record.DetectorRecord`) as the run: a clip a card dump
replaced under the same name, an output an older version with a masking bug wrote, an output
replaced by its original, a ``--mode none`` review copy, or one the untrained network made, is
made again. An output whose sidecar names another path is the same input's
when it records the identity of the file now given (:func:`same_file_elsewhere`: a card folder
moved or remounted): it is skipped or made again under its name, not written anew as ``_2``.

An output whose sidecar records another ``--review-band`` but is otherwise done is kept: only
its sidecar's review list is recomputed (:func:`review_rerun`), from the masks and scores it
records per frame; where the rounded scores cannot give that list exactly it is made again.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Container
from pathlib import Path
from typing import Any

from tinyfaces_trt.anonymize.sidecar import (MASKS_REVISION, ReviewNotRecomputable,
                                             input_identity, output_record,
                                             recomputed_review, sampled)
from tinyfaces_trt.detector_record import DetectorRecord, shown

#: Options that change an output (its pixels, or what it carries: audio, metadata), per kind
#: (``style``: each mask field): an output whose sidecar records other values is not skipped
#: as done.
PIXEL_OPTIONS = {"image": ("style", "draw"),
                 "video": ("style", "draw", "hold", "iou", "codec", "crf", "keep_audio",
                           "keep_metadata")}


def _pixel_options(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """The :data:`PIXEL_OPTIONS` of a JSON options record, the mask style's fields flattened."""
    flat: dict[str, Any] = {}
    for key in PIXEL_OPTIONS.get(kind, PIXEL_OPTIONS["video"]):
        value = options.get(key)
        flat.update(value if key == "style" and isinstance(value, dict) else {key: value})
    return flat


def redo_reason(sidecar: str | os.PathLike[str], kind: str, options: dict[str, Any],
                detector: DetectorRecord | None = None,
                source: str | os.PathLike[str] | None = None,
                output: str | os.PathLike[str] | None = None) -> str | None:
    """Why the existing output of ``sidecar`` (an ``kind`` input's) is not what a run with
    ``options`` (as the sidecar records options) and ``detector`` would make of ``source``:
    its sidecar is a run's unfinished claim, or records another input file (None: not
    compared), another masking revision than :data:`~.sidecar.MASKS_REVISION` or none (an
    older tf-anonymize), another size or sha256 than the file ``output`` has now (None: not
    compared; :func:`output_change`), other pixel-changing options, another network or other
    detection settings (None: not compared), or none at all; None when it is the same."""
    try:
        recorded = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        if recorded.get("incomplete") is True:
            return "an earlier run stopped before its sidecar was written"
        before = _pixel_options(recorded["options"], kind)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its sidecar {sidecar} records no options"
    if source is not None:
        changed_input = input_change(recorded.get("input_identity"), source)
        if changed_input:
            return changed_input
    revision = recorded.get("masks_revision")
    if revision != MASKS_REVISION:
        which = "none recorded" if revision is None else f"revision {shown(revision)}"
        age = "a newer" if isinstance(revision, int) and revision > MASKS_REVISION else \
            "an older"
        return (f"it was made by {age} masking revision ({which}; this tf-anonymize writes "
                f"revision {MASKS_REVISION}): its masks may differ from what this version "
                "writes")
    if output is not None:
        changed_output = output_change(recorded.get("output_file"), output)
        if changed_output:
            return changed_output
    now = _pixel_options(options, kind)
    changed = [f"{key} {shown(before.get(key))} (now {shown(value)})"
               for key, value in now.items() if before.get(key) != value]
    if detector is not None:
        changed.extend(detector.changes(recorded))
    return f"it was made with {', '.join(changed)}" if changed else None


def review_rerun(sidecar: str | os.PathLike[str], band: float) -> tuple[str, str | None] | None:
    """How the review band ``band`` (``--review-band``) differs from the one ``sidecar``
    records, for an output that is otherwise done (:func:`redo_reason` gives none): None when
    it records ``band``; else ``(change, None)`` where the review list of ``band`` can be
    recomputed exactly from the sidecar (:func:`~.sidecar.recomputed_review`: the output is
    kept, the sidecar rewritten), or ``(change, reason)`` with why it cannot (then the output
    is made again). ``change`` reads ``review_band 0.1 (now 0.3)``."""
    try:
        recorded = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        before = recorded["options"].get("review_band")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        before, recorded = None, None
    if before == band and not isinstance(before, bool):
        return None
    change = f"review_band {shown(before)} (now {shown(band)})"
    try:
        recomputed_review(recorded, band)
    except ReviewNotRecomputable as exc:
        return change, f"it was made with {change}, and {exc}"
    return change, None


def input_change(recorded: Any, source: str | os.PathLike[str]) -> str | None:
    """Why ``source`` may not be the file whose identity a sidecar ``recorded``
    (its ``input_identity``); None when it is.

    It is when the size and sampled sha256 match and, for a file hashed only at its ends
    (over 2 MiB), the modification time too: a photo copied again with a new time is the same,
    a video copied again without its time (``cp`` without ``-p``) is made again.
    """
    # Sidecars written before the input's identity was recorded cannot show that the file under
    # that name is still the one anonymised (dashcams reuse FILE0001.MP4 on every card): their
    # outputs are made again, once.
    if not isinstance(recorded, dict):
        return ("its sidecar records no input size, time or hash (an older tf-anonymize wrote "
                "it), so the input may have changed since")
    try:
        now = input_identity(source)
    except OSError as exc:
        return f"its input cannot be read ({exc.strerror or exc})"
    if recorded.get("size") != now["size"]:
        return (f"its input changed since it was made (size {now['size']} bytes, was "
                f"{shown(recorded.get('size'))})")
    if recorded.get("sample_sha256") != now["sample_sha256"]:
        return "its input changed since it was made (same size, other content)"
    if recorded.get("mtime_ns") != now["mtime_ns"] and sampled(now["size"]) == "ends":
        return (f"its input was modified since it was made (modified {_when(now['mtime_ns'])}, "
                f"was {_when(recorded.get('mtime_ns'))})")
    return None


def output_change(recorded: Any, output: str | os.PathLike[str]) -> str | None:
    """Why the file ``output`` may not be the one a sidecar ``recorded`` (its
    ``output_file``: size and sha256) as written; None when it is. The file is read (hashed)
    only when its size matches."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return (f"its sidecar records no size or sha256 of {output}, so that file may not be "
                "the one written")
    try:
        size = os.stat(output).st_size
        if size != recorded.get("size"):
            return (f"{output} is not the file tf-anonymize wrote (size {size} bytes, was "
                    f"{shown(recorded.get('size'))}): it was replaced or changed since")
        if output_record(output)["sha256"] != recorded["sha256"]:
            return (f"{output} is not the file tf-anonymize wrote (same size, other sha256): "
                    "it was replaced or changed since")
    except OSError as exc:
        return f"{output} cannot be read ({exc.strerror or exc})"
    return None


def same_file_elsewhere(sidecar: str | os.PathLike[str], source: str | os.PathLike[str],
                        claimed: Container[str] = ()) -> str | None:
    """The input path that ``sidecar`` (one written for another path than ``source``'s)
    records, where it records the identity of the file ``source`` is now (:func:`input_change`:
    size, sampled sha256 and, for a file over 2 MiB, modification time): the same file, moved
    or remounted; None otherwise (no such sidecar, no identity recorded, another file, or a
    recorded real path in ``claimed``: an input of this run, which takes its own output).

    Only a sidecar recording ``source``'s size has its sha256 compared (``source`` is read
    then).
    """
    try:
        recorded = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        found, path = recorded.get("input_identity"), recorded.get("input")
        resolved = recorded.get("resolved")
        size = os.stat(source).st_size
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(found, dict) or found.get("size") != size or \
            (isinstance(resolved, str) and resolved in claimed):
        return None
    if input_change(found, source) is not None:
        return None
    shown_path = path if isinstance(path, str) else resolved
    return shown_path if isinstance(shown_path, str) else str(sidecar)


def _when(mtime_ns: Any) -> str:
    """A recorded modification time as a message shows it (local time)."""
    if not isinstance(mtime_ns, int):
        return "unknown"
    return datetime.datetime.fromtimestamp(mtime_ns / 1e9).isoformat(sep=" ",
                                                                       timespec="seconds")
