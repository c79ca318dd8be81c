"""The export folder written by ``tf-export`` and read by every runtime backend (torch-free).

Layout (all names are relative to the folder, as listed in ``manifest.json``)::

    model.onnx          fp32 network, input "image" (1,3,H,W) float32, output "scores" (1,125,h,w)
    model_fp16.onnx     optional: fp16 weights and compute, float32 input/output
    model.engine        optional: TensorRT engine built from model.onnx
    model_fp16.engine   optional: TensorRT engine with fp16 kernels
    manifest.json       everything else the runtime needs (see :func:`build_manifest`)

The manifest records each file's sha256 and size (``"checksums"``); :func:`load_export_folder`
checks them, so a truncated, swapped or half-replaced model file is a clear error naming the
file, never a model that runs. The manifest carries the complete :class:`~.config.DetectorConfig` (templates, normalisation,
stride/offset, thresholds, pyramid rule), so a folder is self-contained: the runtime needs
nothing but the folder.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinyfaces_trt.core.config import NUM_CHANNELS, DetectorConfig, is_integer
from tinyfaces_trt.core.errors import ConfigError, ManifestError
from tinyfaces_trt.core.files import write_text_atomic
from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.profiles import Profile

log = logging.getLogger(__name__)

FORMAT = "tinyfaces-trt-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INPUT_NAME = "image"
OUTPUT_NAME = "scores"

#: Keys of the manifest's "files" object and the names tf-export gives them.
DEFAULT_FILE_NAMES: dict[str, str] = {
    "onnx_fp32": "model.onnx",
    "onnx_fp16": "model_fp16.onnx",
    "engine_fp32": "model.engine",
    "engine_fp16": "model_fp16.engine",
}


@dataclass(frozen=True)
class ModelIdentity:
    """Which network a detector runs; recorded in every output file.

    Attributes:
        weights_sha256: sha256 of the source checkpoint, None when unknown or untrained.
        untrained: the network has seeded RANDOM weights: its detections are meaningless.
        source: where it came from (an export folder, a checkpoint path, or the untrained
            default network), for people reading the output.
        variant, depth: the network's variant and ResNet depth (None: not known before the
            checkpoint is read).
        seed: an untrained network's seed (None otherwise, or unknown).
        precision: ``"fp32"`` or ``"fp16"``, as the detector runs it (None: not stated).
    """

    weights_sha256: str | None
    untrained: bool
    source: str
    variant: str | None = None
    depth: int | None = None
    seed: int | None = None
    precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"weights_sha256", "untrained", "source", "variant", "depth", "seed",
        "precision"}``."""
        return {"weights_sha256": self.weights_sha256, "untrained": self.untrained,
                "source": self.source, "variant": self.variant, "depth": self.depth,
                "seed": self.seed, "precision": self.precision}

    def running(self, fp16: bool) -> "ModelIdentity":
        """This identity with the precision a detector runs it at."""
        return replace(self, precision="fp16" if fp16 else "fp32")


def file_checksum(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"sha256": hex, "bytes": size}`` of a file (as the manifest records it)."""
    p = Path(path)
    return {"sha256": file_sha256(p, what="model file", error=ManifestError),
            "bytes": p.stat().st_size}


def build_manifest(*, config: DetectorConfig, files: dict[str, str], opset: int,
                   weights: dict[str, Any] | None = None, profile: Profile | None = None,
                   tools: dict[str, str] | None = None, untrained: bool = False,
                   checksums: dict[str, dict[str, Any]] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest as a JSON-ready dict.

    Args:
        config: detector config stored in full.
        files: role (a key of :data:`DEFAULT_FILE_NAMES`) -> file name inside the folder.
        opset: ONNX opset of the ONNX files, as read back from them (an integer >= 1).
        weights: ``{"path": ..., "sha256": ...}`` of the source checkpoint, or None.
        profile: the input-shape profile engines are (or should be) built for.
        tools: tool name -> version (torch, onnx, tensorrt, ...).
        untrained: True when the network has random weights (a loud flag for the runtime).
        checksums: file name -> ``{"sha256", "bytes"}`` (:func:`file_checksum`) of every
            file in ``files``.
        extra: further top-level keys (e.g. ``"engines"`` build details); may not override.
    """
    unknown = set(files) - set(DEFAULT_FILE_NAMES)
    if unknown:
        raise ManifestError(f"unknown file roles {sorted(unknown)}; expected {sorted(DEFAULT_FILE_NAMES)}")
    if not (is_integer(opset) and opset >= 1):
        raise ManifestError(f"opset must be an integer >= 1 (the ONNX files' opset), got {opset!r}")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "num_channels": NUM_CHANNELS,
        "stride": config.stride,
        "opset": int(opset),
        "weights": dict(weights) if weights else None,
        "untrained": bool(untrained),
        "files": dict(files),
        "checksums": {name: dict(v) for name, v in (checksums or {}).items()},
        "profile": profile.to_dict() if profile is not None else None,
        "tools": dict(tools or {}),
    }
    for key, value in (extra or {}).items():
        if key in manifest:
            raise ManifestError(f"extra manifest key {key!r} would override a standard key")
        manifest[key] = value
    return manifest


def write_manifest(out_dir: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Builds the manifest (keyword arguments of :func:`build_manifest`; the checksums of
    the listed files are computed here) and writes it atomically to
    ``out_dir/manifest.json``; returns that path."""
    folder = Path(out_dir)
    kwargs.setdefault("checksums", {name: file_checksum(folder / name)
                                    for name in kwargs.get("files", {}).values() if name})
    manifest = build_manifest(**kwargs)
    path = folder / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class ExportFolder:
    """A validated export folder.

    Attributes:
        path: the folder.
        config: detector config from the manifest.
        onnx_fp32, onnx_fp16, engine_fp32, engine_fp16: absolute file paths, None when absent.
        input_name, output_name: tensor names of the network.
        num_channels: channels of the score map (always 125).
        stride: score-map stride in pixels.
        opset: ONNX opset.
        profile: input-shape profile, or None.
        untrained: the network has random weights.
        manifest: the raw manifest dict.

    ``identity`` is the :class:`ModelIdentity` it records.
    """

    path: Path
    config: DetectorConfig
    onnx_fp32: Path | None
    onnx_fp16: Path | None
    engine_fp32: Path | None
    engine_fp16: Path | None
    input_name: str
    output_name: str
    num_channels: int
    stride: int
    opset: int
    profile: Profile | None
    untrained: bool
    manifest: dict[str, Any] = field(repr=False)

    @property
    def identity(self) -> ModelIdentity:
        """The network's identity: the source checkpoint's sha256 and the untrained flag."""
        weights = self.manifest.get("weights")
        sha = weights.get("sha256") if isinstance(weights, dict) else None
        model = self.manifest.get("model")
        model = model if isinstance(model, dict) else {}
        depth, seed = model.get("depth"), model.get("seed")
        return ModelIdentity(sha if isinstance(sha, str) else None, self.untrained,
                             f"export folder {self.path}", variant=self.config.variant,
                             depth=depth if isinstance(depth, int) else None,
                             seed=seed if self.untrained and isinstance(seed, int) else None)

    def verify(self) -> None:
        """Checks every listed file's size and sha256 against the manifest.

        Raises:
            ManifestError: a file is truncated, altered, or has no recorded checksum.
        """
        paths = {role: p for role, p in (("onnx_fp32", self.onnx_fp32), ("onnx_fp16", self.onnx_fp16),
                                         ("engine_fp32", self.engine_fp32),
                                         ("engine_fp16", self.engine_fp16)) if p is not None}
        _verify_checksums(self.path / MANIFEST_NAME, self.manifest, paths)

    @property
    def has_checksums(self) -> bool:
        """The manifest records file checksums (every folder this version writes does)."""
        return bool(self.manifest.get("checksums"))

    def onnx_path(self, fp16: bool = False) -> Path:
        """The ONNX file of that precision; :class:`ManifestError` naming the fix when absent."""
        path = self.onnx_fp16 if fp16 else self.onnx_fp32
        if path is None:
            hint = "re-export with tf-export --fp16" if fp16 else "re-export with tf-export"
            raise ManifestError(f"export folder {self.path} has no {'fp16' if fp16 else 'fp32'} ONNX model; {hint}")
        return path

    def engine_path(self, fp16: bool = False) -> Path:
        """The TensorRT engine of that precision; :class:`ManifestError` naming the fix when absent."""
        path = self.engine_fp16 if fp16 else self.engine_fp32
        if path is None:
            flags = "--engine --fp16" if fp16 else "--engine"
            raise ManifestError(
                f"export folder {self.path} has no {'fp16' if fp16 else 'fp32'} TensorRT engine; build one on "
                f"the target machine with tf-export {flags} (needs TensorRT >= 10)")
        return path


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder} has no {MANIFEST_NAME}; it is not a tf-export folder "
                            f"(create one with tf-export --weights W --out {folder})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    return manifest


def _file_path(folder: Path, role: str, name: Any) -> Path:
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ManifestError(f"manifest file entry {role!r} must be a file name inside the folder, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise ManifestError(f"manifest lists {role} = {name!r} but {path} is missing; re-run tf-export")
    return path


def _require(where: Path, manifest: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in manifest:
        raise ManifestError(f"{where}: manifest has no {key!r} entry; re-export the folder with "
                            "tf-export")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ManifestError(f"{where}: manifest entry {key!r} has the wrong type: {value!r}")
    return value


def _config(manifest: dict[str, Any], path: Path) -> DetectorConfig:
    """The manifest's detector config; errors name the manifest (it may have been edited)."""
    raw = _require(path, manifest, "config", dict)
    try:
        config = DetectorConfig.from_dict(raw)
    except ConfigError as exc:
        raise ManifestError(f"{path}: {exc}; re-export the folder with tf-export") from exc
    return config


def _profile(raw: Any, where: Path) -> Profile | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not {"min", "opt", "max"} <= set(raw):
        raise ManifestError(f"{where}: profile must be null or an object with min, opt and max "
                            f"shapes, got {raw!r}")
    try:
        return Profile.from_dict(raw)
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from exc


def _verify_checksums(where: Path, manifest: dict[str, Any], paths: dict[str, Path]) -> None:
    """Checks each listed file's size and sha256 against the manifest's ``checksums``."""
    checksums = manifest.get("checksums")
    if not checksums:
        log.warning("%s records no file checksums (written by an older tf-export); the model "
                    "files cannot be verified: re-export the folder", where)
        return
    if not isinstance(checksums, dict):
        raise ManifestError(f"{where}: 'checksums' must be an object, got {checksums!r}")
    for role, path in paths.items():
        expected = checksums.get(path.name)
        if not isinstance(expected, dict) or not isinstance(expected.get("sha256"), str) \
                or not isinstance(expected.get("bytes"), int):
            raise ManifestError(f"{where} records no checksum for {path.name} ({role}); "
                                "re-export the folder with tf-export")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ManifestError(
                f"{path} is {size} bytes but the manifest records {expected['bytes']}: the file "
                "is truncated or was replaced after the export; re-export the folder with "
                "tf-export")
        if file_sha256(path, what="model file", error=ManifestError) != expected["sha256"]:
            raise ManifestError(
                f"{path} does not match the sha256 its manifest records: the file is corrupt or "
                "was replaced after the export; re-export the folder with tf-export")


def load_export_folder(path: str | os.PathLike[str], verify: bool = True) -> ExportFolder:
    """Reads and validates an export folder (or its ``manifest.json``).

    Args:
        path: the folder, or its manifest.
        verify: check every listed file's size and sha256 against the manifest (reading
            the files once; a manifest from before checksums existed logs a warning).

    Raises:
        ManifestError: the folder or manifest is missing or unreadable, the format or version
            is not this one, a listed file is missing, truncated or altered, the score map is
            not 125 channels, or an entry is malformed.
    """
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent
    if not folder.exists():
        raise ManifestError(f"export folder {folder} does not exist (create it with tf-export)")
    if not folder.is_dir():
        hint = (f"pass the folder that holds it, {folder.parent}"
                if (folder.parent / MANIFEST_NAME).is_file() else "pass the folder tf-export wrote")
        raise ManifestError(f"{folder} is a file, not an export folder; {hint}")
    manifest = _read_manifest(folder)
    where = folder / MANIFEST_NAME

    fmt = manifest.get("format")
    if fmt != FORMAT:
        raise ManifestError(f"{where} has format {fmt!r}, expected {FORMAT!r}; it is not a "
                            "tf-export manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{where} has format_version {version!r}; this tinyfaces-trt reads version "
            f"{FORMAT_VERSION} only: re-export the folder with this version's tf-export")
    channels = _require(where, manifest, "num_channels", int)
    if channels != NUM_CHANNELS:
        raise ManifestError(f"{where}: num_channels is {channels}; the Tiny Faces score map has {NUM_CHANNELS} "
                            f"(25 templates x [cls, tx, ty, tw, th])")
    config = _config(manifest, where)
    stride = _require(where, manifest, "stride", int)
    if stride != config.stride:
        raise ManifestError(f"{where}: stride {stride} disagrees with its config stride {config.stride}")

    files = _require(where, manifest, "files", dict)
    unknown = set(files) - set(DEFAULT_FILE_NAMES)
    if unknown:
        raise ManifestError(f"{where} lists unknown file roles {sorted(unknown)}")
    paths = {role: _file_path(folder, role, name) for role, name in files.items() if name is not None}
    if not paths:
        raise ManifestError(f"{where} lists no model file; re-export the folder with tf-export")

    export = ExportFolder(
        path=folder,
        config=config,
        onnx_fp32=paths.get("onnx_fp32"),
        onnx_fp16=paths.get("onnx_fp16"),
        engine_fp32=paths.get("engine_fp32"),
        engine_fp16=paths.get("engine_fp16"),
        input_name=_require(where, manifest, "input_name", str),
        output_name=_require(where, manifest, "output_name", str),
        num_channels=channels,
        stride=stride,
        opset=_require(where, manifest, "opset", int),
        profile=_profile(manifest.get("profile"), where),
        untrained=_require(where, manifest, "untrained", bool) if "untrained" in manifest else False,
        manifest=manifest,
    )
    if verify:
        export.verify()
    return export
