"""Reruns of tf-anonymize: whether an existing output is what this run would make.

An output is skipped as done only when its sidecar records the same pixel-changing options
(:data:`PIXEL_OPTIONS`), the same network and the same detection settings (a
:class:`~tinyfaces_trt.detector_record.DetectorRecord`) as the run: a ``--mode none`` review
copy, or one the untrained network made, is made again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tinyfaces_trt.detector_record import DetectorRecord, shown

#: Options that change an output's pixels, per kind (``style``: each mask field): an output
#: whose sidecar records other values is not skipped as done.
PIXEL_OPTIONS = {"image": ("style", "draw"),
                 "video": ("style", "draw", "hold", "iou", "codec", "crf")}


def _pixel_options(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """The :data:`PIXEL_OPTIONS` of a JSON options record, the mask style's fields flattened."""
    flat: dict[str, Any] = {}
    for key in PIXEL_OPTIONS.get(kind, PIXEL_OPTIONS["video"]):
        value = options.get(key)
        flat.update(value if key == "style" and isinstance(value, dict) else {key: value})
    return flat


def redo_reason(sidecar: str | os.PathLike[str], kind: str, options: dict[str, Any],
                detector: DetectorRecord | None = None) -> str | None:
    """Why the existing output of ``sidecar`` (an ``kind`` input's) is not what a run with
    ``options`` (as the sidecar records options) and ``detector`` would make: its sidecar
    records other pixel-changing options, another network or other detection settings (None:
    not compared), or none at all; None when it is the same."""
    try:
        recorded = json.loads(Path(sidecar).read_text(encoding="utf-8"))
        before = _pixel_options(recorded["options"], kind)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its sidecar {sidecar} records no options"
    now = _pixel_options(options, kind)
    changed = [f"{key} {shown(before.get(key))} (now {shown(value)})"
               for key, value in now.items() if before.get(key) != value]
    if detector is not None:
        changed.extend(detector.changes(recorded))
    return f"it was made with {', '.join(changed)}" if changed else None
