"""The whole export: torch model -> export folder (ONNX fp32 [+ fp16], manifest [+ TensorRT engine]).

:func:`export_model` is what ``tf-export`` runs and what ``tf-detect`` calls to export a
default model into a cache folder. Every step logs a line when it starts and one with its
duration when it ends. The manifest is written as soon as the ONNX files exist and rewritten
after an engine build, so a failed or impossible engine build still leaves a usable folder.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError, WeightsError
from tinyfaces_trt.core.manifest import DEFAULT_FILE_NAMES, MANIFEST_NAME, write_manifest
from tinyfaces_trt.core.profiles import Profile, default_profile, profile_for_image_sizes

from tinyfaces_trt.export.onnx_export import DEFAULT_OPSET, check_onnx, simplify_onnx, torch_to_onnx, verify_against_torch
from tinyfaces_trt.export.onnx_fp16 import convert_to_fp16
from tinyfaces_trt.export.trt_build import (DEFAULT_WORKSPACE_GB, TensorRTUnavailableError, build_engine, tensorrt_version,
                        trtexec_command)

Log = Callable[[str], None]
_logger = logging.getLogger(__name__)

UNTRAINED_WARNING = ("WARNING: exporting a network with RANDOM (untrained) weights: its detections are "
                     "meaningless; the manifest marks it \"untrained\": true")


@contextmanager
def step(log: Log, what: str) -> Iterator[dict[str, str]]:
    """Logs ``what ...`` then ``what: done in X s (detail)``; the body may set ``detail``."""
    info: dict[str, str] = {}
    log(f"{what} ...")
    start = time.perf_counter()
    yield info
    detail = f" ({info['detail']})" if info.get("detail") else ""
    log(f"{what}: done in {time.perf_counter() - start:.1f} s{detail}")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tool_versions() -> dict[str, str]:
    tools = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    for dist in ("tinyfaces-trt", "onnxruntime"):
        version = _version(dist)
        if version:
            tools[dist] = version
    return tools


def _cpu_float_model(model: nn.Module) -> nn.Module:
    first = next(model.parameters(), None)
    if first is not None and (first.device.type != "cpu" or first.dtype != torch.float32):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    return model.eval()


def resolve_profile(config: DetectorConfig, image_sizes: Iterable[tuple[int, int]] | None = None,
                    profile: Profile | None = None) -> Profile:
    """The explicit ``profile``, else one covering ``image_sizes`` ((height, width) pairs), else
    :func:`~tinyfaces_trt.core.profiles.default_profile`."""
    if profile is not None and image_sizes:
        raise TinyFacesError("give either image sizes or an explicit min/opt/max profile, not both")
    if profile is not None:
        return profile
    if image_sizes:
        return profile_for_image_sizes(image_sizes, config)
    return default_profile(config)


def _remove_stale(out: Path, keep: Iterable[str], log: Log) -> None:
    """Deletes model files an earlier export left in this folder that this export does not write."""
    if not (out / MANIFEST_NAME).is_file():
        return  # not an earlier export folder: touch nothing
    keep = set(keep)
    for name in DEFAULT_FILE_NAMES.values():
        path = out / name
        if name not in keep and path.is_file():
            path.unlink()
            log(f"removed {path} left by an earlier export")


def _verify(model: nn.Module, path: Path, precision: str) -> str:
    try:
        err = verify_against_torch(model, path, precision)
    except BackendUnavailableError:
        return "ONNX Runtime check skipped: onnxruntime is not installed"
    return f"ONNX Runtime vs torch max abs error {err:.2e}"


def export_model(model: nn.Module, config: DetectorConfig, out_dir: str | Path, *, fp16: bool = False,
                 opset: int = DEFAULT_OPSET, engine: bool | None = None,
                 image_sizes: Iterable[tuple[int, int]] | None = None, profile: Profile | None = None,
                 workspace_gb: float = DEFAULT_WORKSPACE_GB, timing_cache: str | Path | None = None,
                 simplify: bool = False, weights_path: str | Path | None = None, untrained: bool = False,
                 verify: bool = True, hints: bool = True, log: Log | None = None) -> Path:
    """Exports ``model`` into the folder ``out_dir`` and returns the manifest path.

    Args:
        model: the torch network (TinyFacesNet); exported from CPU float32 (a copy is made
            if it lives elsewhere).
        config: detector config stored in the manifest.
        out_dir: export folder (created if missing).
        fp16: also write ``model_fp16.onnx`` (float32 I/O); implies an fp16 engine build
            when TensorRT imports.
        opset: ONNX opset.
        engine: True: build a TensorRT engine, raising :class:`TensorRTUnavailableError`
            (after writing the ONNX files and manifest) when TensorRT is missing;
            None: build one only if ``fp16`` and TensorRT imports; False: never.
        image_sizes: (height, width) image sizes whose pyramid levels the profile covers.
        profile: explicit min/opt/max profile (exclusive with ``image_sizes``).
        workspace_gb: TensorRT WORKSPACE memory-pool limit.
        timing_cache: TensorRT timing-cache file (loaded if present, saved after the build).
        simplify: run onnxslim/onnxsim on the fp32 graph.
        weights_path: source checkpoint; its path and SHA-256 go into the manifest.
        untrained: the weights are random (loud warning; ``"untrained": true`` in the manifest).
        verify: compare ONNX Runtime with torch on two small odd-sized inputs after each export.
        hints: for a user running the export (``tf-export``): repeat the untrained warning at
            the end and log the ``trtexec`` command that would build an engine. False for an
            export made on the user's behalf (``tf-detect``'s cache): the warning once, no hint.
        log: progress sink, one line a call (default: the ``tinyfaces_trt.export`` logger
            at INFO).

    Raises:
        TinyFacesError: invalid arguments, export or check failure, numeric mismatch.
        TensorRTUnavailableError: ``engine=True`` without TensorRT (the ONNX folder is complete).
        EngineBuildError: TensorRT failed (the ONNX folder is complete).
    """
    log = log or _logger.info
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TinyFacesError(f"--out {out} exists and is not a folder")
    if opset < 13:
        raise TinyFacesError(f"opset {opset} is too old; use 13 or newer (default {DEFAULT_OPSET})")
    prof = resolve_profile(config, image_sizes, profile)
    out.mkdir(parents=True, exist_ok=True)
    model = _cpu_float_model(model)
    if untrained:
        log(UNTRAINED_WARNING)

    weights = None
    if weights_path is not None:
        with step(log, f"hashing {weights_path}") as info:
            sha256 = file_sha256(weights_path, what="weights file", error=WeightsError)
            weights = {"path": str(Path(weights_path).resolve()), "sha256": sha256}
            info["detail"] = f"sha256 {weights['sha256'][:16]}..."
    tools = _tool_versions()
    files: dict[str, str] = {}

    with step(log, f"exporting fp32 ONNX (opset {opset})") as info:
        proto = check_onnx(torch_to_onnx(model, opset, log))
        info["detail"] = f"{len(proto.graph.node)} nodes, checker and shape inference passed"
    if simplify:
        with step(log, "simplifying") as info:
            before = len(proto.graph.node)
            simplified, tools["simplifier"] = simplify_onnx(proto)
            proto = check_onnx(simplified)
            info["detail"] = f"{tools['simplifier']}: {before} -> {len(proto.graph.node)} nodes"
    onnx_fp32 = out / DEFAULT_FILE_NAMES["onnx_fp32"]
    onnx.save(proto, str(onnx_fp32))
    files["onnx_fp32"] = onnx_fp32.name
    if verify:
        with step(log, f"checking {onnx_fp32.name}") as info:
            info["detail"] = _verify(model, onnx_fp32, "fp32")

    onnx_fp16 = None
    if fp16:
        with step(log, "converting to fp16 ONNX (float32 input/output)") as info:
            proto16 = check_onnx(convert_to_fp16(proto))
            onnx_fp16 = out / DEFAULT_FILE_NAMES["onnx_fp16"]
            onnx.save(proto16, str(onnx_fp16))
            files["onnx_fp16"] = onnx_fp16.name
            info["detail"] = f"{len(proto16.graph.node)} nodes"
        if verify:
            with step(log, f"checking {onnx_fp16.name}") as info:
                info["detail"] = _verify(model, onnx_fp16, "fp16")

    engine_key = "engine_fp16" if fp16 else "engine_fp32"
    engine_path = out / DEFAULT_FILE_NAMES[engine_key]
    want_engine = engine if engine is not None else fp16
    build_now = want_engine and tensorrt_version() is not None
    _remove_stale(out, list(files.values()) + ([engine_path.name] if build_now else []), log)

    extra = {"model": {"depth": getattr(model, "depth", None), "variant": getattr(model, "variant", None)}}
    manifest_args: dict[str, Any] = dict(config=config, opset=opset, weights=weights, profile=prof, tools=tools,
                                         untrained=untrained, extra=extra)
    manifest = write_manifest(out, files=files, **manifest_args)
    log(f"wrote {manifest} (profile min {list(prof.min)}, opt {list(prof.opt)}, max {list(prof.max)})")

    trtexec = trtexec_command(onnx_fp32, engine_path, prof, fp16=fp16, workspace_gb=workspace_gb,
                              timing_cache=timing_cache)
    if want_engine and not build_now:
        message = ("TensorRT is not installed: wrote ONNX only; build the engine on a machine with TensorRT 10 "
                   f"by re-running tf-export with --engine, or with: {trtexec}")
        if engine:
            raise TensorRTUnavailableError(message)
        log(message)
    elif build_now:
        with step(log, f"building TensorRT engine {engine_path.name}"):
            details = build_engine(onnx_fp32, engine_path, prof, fp16=fp16, onnx_fp16=onnx_fp16,
                                   workspace_gb=workspace_gb, timing_cache=timing_cache, log=log)
        files[engine_key] = engine_path.name
        tools["tensorrt"] = details["tensorrt"]
        extra["engines"] = {engine_key: details}
        manifest = write_manifest(out, files=files, **manifest_args)
        log(f"wrote {manifest} with {engine_path.name}")
    elif hints:
        log(f"to build a TensorRT engine: {trtexec}")
    if untrained and hints:  # a long export's first lines may have scrolled away
        log(UNTRAINED_WARNING)
    return manifest
