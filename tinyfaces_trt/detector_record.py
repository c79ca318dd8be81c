"""What an output records of the detector that made it, and how a rerun's detector differs.

tf-detect's detections JSON and tf-anonymize's sidecar record the network (``model``) and the
detection settings (``config``) of the detector that made them; a rerun keeps an output as
done only when this run's :class:`DetectorRecord` is the same (:meth:`DetectorRecord.changes`
is empty): results of the untrained network, or made with another threshold, are made again.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.manifest import ModelIdentity

#: What tells networks of the same weights apart (an untrained one's seed): a detail recorded
#: on both sides and different there makes an output again; one not known on a side (a
#: checkpoint's variant before it is read) is not compared, except an untrained network's.
NETWORK_DETAILS = ("variant", "depth", "seed", "precision")

#: Detector settings that change detections (the flags --prob-thresh, --nms-thresh,
#: --min-face, --max-face, --pyramid set them): an output recorded with other values is made
#: again. ``DetectorConfig.score`` is none of them: it says what column 4 holds (tf-detect
#: ``--wider-dir`` switches it to the logit internally) and moves no box.
DETECTION_FIELDS = ("prob_thresh", "nms_thresh", "min_face", "max_face", "pyramid")

#: Detection fields that outputs of older versions do not record: no option changed them then,
#: so such an output ran the network's own value (its export's or checkpoint's config).
LATER_FIELDS = ("pyramid",)


@dataclass(frozen=True)
class DetectorRecord:
    """What an output records of the detector that decides where the faces are.

    Attributes:
        model: the network as a detector's ``identity.to_dict()`` gives it (``weights_sha256``,
            ``untrained``, :data:`NETWORK_DETAILS`); None where it cannot be known (every
            output is then made again).
        config: the :data:`DETECTION_FIELDS` of its config.
        own: the network's own values of :data:`LATER_FIELDS` (before the flags): what an
            output that does not record one of them ran.
    """

    model: dict[str, Any] | None
    config: dict[str, Any]
    own: dict[str, Any] = field(default_factory=dict)

    def changes(self, recorded: Any) -> list[str]:
        """How an output's JSON ``recorded`` (its ``model`` and ``config``) differs from this
        detector, one phrase per difference (``"prob_thresh 0.5 (now 0.03)"``); empty when
        it is the same. An unknown network on either side differs."""
        recorded = recorded if isinstance(recorded, dict) else {}
        model = recorded.get("model")
        model = model if isinstance(model, dict) else {}
        changed = _network_changes(model, self.model)
        config = recorded.get("config")
        if not isinstance(config, dict):  # written before outputs recorded their settings
            return changed + ["no recorded detection settings (an older version wrote it)"]
        for key, value in self.config.items():
            before = config.get(key, self.own.get(key))
            if before != value:
                changed.append(f"{key} {shown(before)} (now {shown(value)})")
        return changed


def detector_record(model_dir: str | os.PathLike[str] | None,
                    weights: str | os.PathLike[str] | None,
                    overrides: dict[str, Any] | None = None,
                    precision: str | None = None) -> DetectorRecord:
    """The :class:`DetectorRecord` of the detector these arguments build (an export folder, a
    checkpoint or, with neither, the untrained default network; config ``overrides`` as
    ``--prob-thresh`` ...; ``precision`` as :func:`precision_of` gives it), without building
    it: planning comes first, and under ``--ray`` only the workers build one. A checkpoint is
    hashed here (once per run: its sha256 is what the detector records); an export folder's
    manifest gives its identity and config.

    Raises:
        TinyFacesError: the export folder's manifest or the checkpoint cannot be read.
    """
    from tinyfaces_trt.runtime.backends import apply_overrides

    identity, own = _identity_and_config(model_dir, weights)
    config = apply_overrides(own, overrides)
    known = identity.untrained or identity.weights_sha256 is not None
    model = {key: value for key, value in identity.to_dict().items() if key != "source"}
    return DetectorRecord({**model, "precision": precision} if known else None,
                          {f: getattr(config, f) for f in DETECTION_FIELDS},
                          {f: getattr(own, f) for f in LATER_FIELDS})


def expected_identity(model_dir: str | os.PathLike[str] | None,
                      weights: str | os.PathLike[str] | None, backend: str,
                      fp16: bool | None) -> dict[str, Any]:
    """The identity (``identity.to_dict()``) that ``create_detector(backend, model_dir,
    weights, fp16=fp16)`` will report, without building it (``--ray`` records it for the
    workers' detectors)."""
    identity, _ = _identity_and_config(model_dir, weights)
    return {**identity.to_dict(), "precision": run_precision(backend, model_dir, fp16)}


def _identity_and_config(model_dir: str | os.PathLike[str] | None,
                         weights: str | os.PathLike[str] | None
                         ) -> tuple[ModelIdentity, DetectorConfig]:
    """The identity and config of an export folder's manifest, or of a checkpoint (or
    the untrained default network, with neither) before it is loaded."""
    from tinyfaces_trt.core.config import DetectorConfig

    if model_dir is not None:
        from tinyfaces_trt.core.manifest import load_export_folder

        folder = load_export_folder(model_dir, verify=False)
        return folder.identity, folder.config
    from tinyfaces_trt.detectors import torch_identity

    identity = torch_identity(weights)  # the variant the loader reads the file as
    return identity, DetectorConfig.for_variant(identity.variant or "pytorch")


def run_precision(backend: str, model_dir: str | os.PathLike[str] | None,
                  fp16: bool | None) -> str:
    """:func:`precision_of` the backend a detector of these arguments runs on (``"auto"``
    resolved as :func:`~tinyfaces_trt.detectors.create_detector` resolves it)."""
    from tinyfaces_trt.detectors import resolve_backend

    return precision_of(resolve_backend(backend, model_dir, fp16=bool(fp16)), fp16)


def precision_of(backend: str, fp16: bool | None) -> str:
    """The precision ``create_detector(backend, fp16=fp16)`` runs at (``backend`` resolved:
    not ``"auto"``): fp16 where asked for, or by default
    (:func:`~tinyfaces_trt.detectors.runs_fp16`: on torch-cuda)."""
    from tinyfaces_trt.detectors import runs_fp16

    return "fp16" if runs_fp16(backend, fp16) else "fp32"


def record_from_arguments(args: argparse.Namespace) -> DetectorRecord:
    """:func:`detector_record` of a tool's ``--model``/``--weights``, ``--backend``/``--fp16``
    (``auto`` resolved as the detector will resolve it) and detection flags."""
    return detector_record(args.model, args.weights,
                           {f: getattr(args, f, None) for f in DETECTION_FIELDS},
                           run_precision(args.backend, args.model, args.fp16))


def shown(value: Any) -> str:
    """A recorded value as a message shows it (``default`` for None)."""
    return "default" if value is None else value if isinstance(value, str) else json.dumps(value)


def _network_changes(model: dict[str, Any], expected: dict[str, Any] | None) -> list[str]:
    """How the recorded network ``model`` differs from ``expected`` (None: not known, so it
    differs), one phrase per difference."""
    if expected is None or model.get("untrained") is not expected["untrained"] or (
            not expected["untrained"] and model.get("weights_sha256") != expected["weights_sha256"]):
        return [f"model {_network(model)} (now {_network(expected or {})})"]
    changed = []
    for key in NETWORK_DETAILS:
        before, now = model.get(key), expected.get(key)
        unknown = before is None or now is None
        if before != now and (not unknown or (expected["untrained"] and key != "precision")):
            changed.append(f"{key} {_detail(before)} (now {_detail(now)})")
    return changed


def _detail(value: Any) -> str:
    return "unknown" if value is None else shown(value)


def _network(model: dict[str, Any]) -> str:
    if model.get("untrained") is True:
        return "untrained"
    sha = model.get("weights_sha256")
    return f"sha256 {sha[:12]}" if isinstance(sha, str) else "unknown"
