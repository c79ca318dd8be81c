"""Reruns of tf-anonymize: whether an existing output is what this run would make.

An output is skipped as done only when its sidecar records the same pixel-changing options
(:data:`PIXEL_OPTIONS`), the same network and the same detection settings
(:data:`DETECTION_FIELDS`) as the run: a ``--mode none`` review copy, or one the untrained
network made, is made again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Options that change an output's pixels, per kind (``style``: each mask field): an output
#: whose sidecar records other values is not skipped as done.
PIXEL_OPTIONS = {"image": ("style", "draw"),
                 "video": ("style", "draw", "hold", "iou", "codec", "crf")}

#: Detector settings that change detections (a sidecar's ``config``): an output whose sidecar
#: records other values, or another network (``model``), is not skipped as done either.
DETECTION_FIELDS = ("prob_thresh", "nms_thresh", "min_face", "max_face")


@dataclass(frozen=True)
class DetectorRecord:
    """What a sidecar records of the detector that decides where the masks go.

    Attributes:
        model: the network as :func:`~.sidecar.model_identity` records it (``weights_sha256``,
            ``untrained``); None where it cannot be known (any output is then made again).
        config: the :data:`DETECTION_FIELDS` of its config.
    """

    model: dict[str, Any] | None
    config: dict[str, Any]


def detector_record(model_dir: str | os.PathLike[str] | None,
                    weights: str | os.PathLike[str] | None,
                    overrides: dict[str, Any] | None = None) -> DetectorRecord:
    """The :class:`DetectorRecord` of the detector these arguments build (an export folder, a
    checkpoint or, with neither, the untrained default network; config ``overrides`` as
    ``--prob-thresh`` ...), without building it: planning comes first, and under ``--ray``
    only the workers build one. A checkpoint is hashed here (once per run: its sha256 is what
    the detector records); an export folder's manifest gives its identity and config.

    Raises:
        TinyFacesError: the export folder's manifest or the checkpoint cannot be read.
    """
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.runtime.backends import apply_overrides

    if model_dir is not None:
        from tinyfaces_trt.core.manifest import load_export_folder

        folder = load_export_folder(model_dir, verify=False)
        identity, config = folder.identity, folder.config
    else:
        from tinyfaces_trt.detectors import torch_identity

        # a checkpoint's config is its variant's defaults, where these fields are the same
        identity, config = torch_identity(weights), DetectorConfig()
    config = apply_overrides(config, overrides)
    known = identity.untrained or identity.weights_sha256 is not None
    return DetectorRecord({"weights_sha256": identity.weights_sha256,
                           "untrained": identity.untrained} if known else None,
                          {f: getattr(config, f) for f in DETECTION_FIELDS})


def _pixel_options(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """The :data:`PIXEL_OPTIONS` of a JSON options record, the mask style's fields flattened."""
    flat: dict[str, Any] = {}
    for key in PIXEL_OPTIONS.get(kind, PIXEL_OPTIONS["video"]):
        value = options.get(key)
        flat.update(value if key == "style" and isinstance(value, dict) else {key: value})
    return flat


def _shown(value: Any) -> str:
    return "default" if value is None else value if isinstance(value, str) else json.dumps(value)


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
    changed = [f"{key} {_shown(before.get(key))} (now {_shown(value)})"
               for key, value in now.items() if before.get(key) != value]
    if detector is not None:
        changed.extend(_detector_changes(recorded, detector))
    return f"it was made with {', '.join(changed)}" if changed else None


def _detector_changes(recorded: dict[str, Any], detector: DetectorRecord) -> list[str]:
    """How a sidecar's ``model`` and ``config`` differ from ``detector`` (an unknown network on
    either side differs)."""
    model = recorded.get("model")
    model = model if isinstance(model, dict) else {}
    changed = [] if _same_network(model, detector.model) else \
        [f"model {_network(model)} (now {_network(detector.model or {})})"]
    config = recorded.get("config")
    config = config if isinstance(config, dict) else {}
    return changed + [f"{key} {_shown(config.get(key))} (now {_shown(value)})"
                      for key, value in detector.config.items() if config.get(key) != value]


def _same_network(model: dict[str, Any], expected: dict[str, Any] | None) -> bool:
    if expected is None:
        return False
    if expected["untrained"]:  # the seeded default network is always the same one
        return model.get("untrained") is True
    return model.get("untrained") is False and model.get("weights_sha256") == \
        expected["weights_sha256"]


def _network(model: dict[str, Any]) -> str:
    if model.get("untrained") is True:
        return "untrained"
    sha = model.get("weights_sha256")
    return f"sha256 {sha[:12]}" if isinstance(sha, str) else "unknown"
