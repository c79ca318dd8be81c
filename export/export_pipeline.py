"""The whole export: torch model -> export folder (ONNX fp32 [+ fp16], manifest [+ TensorRT engine]).

:func:`export_model` is what ``tf-export`` runs and what ``tf-detect`` calls to export a
default model into a cache folder. Every step logs a line when it starts and one with its
duration when it ends.

Everything is written into a hidden staging folder beside ``out_dir`` and swapped in whole
when complete (:func:`~tinyfaces_trt.core.files.replace_folder`), so an interrupted export or
a full disk leaves the previous folder untouched, never a mix of old and new files. Where
``out_dir`` cannot be swapped (a mount point such as a container's volume, another file system
than its parent, a read-only parent: decided before any work) the staging folder is made
inside it and the files are moved in one by one, the manifest last; a failed move puts the
previous files back (a kill during those moves leaves a mix its manifest's checksums refuse).
A failed or impossible engine build leaves a previous folder as it was too (its engine may be
hours of work); only a new (or empty) ``out_dir`` gets the complete ONNX folder before the error.
An ``out_dir`` that is a symbolic link is followed: the folder it points to is replaced, the
link kept. The manifest records each file's sha256 and size, which loading checks.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
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

from tinyfaces_trt.core.files import (TEMP_PREFIX, atomic_output, check_future_folder,
                                      discard_temporary, is_text_path, remove_stale_temporaries, replace_folder, staging_dir,
                                      staging_inside_reason)
from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.config import DetectorConfig, is_integer, is_real
from tinyfaces_trt.core.errors import BackendUnavailableError, ConfigError, TinyFacesError, WeightsError
from tinyfaces_trt.core.manifest import DEFAULT_FILE_NAMES, MANIFEST_NAME, write_manifest
from tinyfaces_trt.core.profiles import Profile, default_profile, profile_for_image_sizes

from tinyfaces_trt.export.opset import DEFAULT_OPSET, opset_problem
from tinyfaces_trt.export.onnx_export import (check_onnx, read_onnx_opset, simplify_onnx, torch_to_onnx,
                                              verify_against_torch)
from tinyfaces_trt.export.onnx_fp16 import convert_to_fp16
from tinyfaces_trt.export.trt_build import (DEFAULT_WORKSPACE_GB, EngineBuildError, TensorRTUnavailableError, build_engine,
                        tensorrt_problem, trtexec_command)

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
                    profile: Profile | None = None, max_batch: int = 1) -> Profile:
    """The explicit ``profile``, else one covering ``image_sizes`` ((height, width) pairs), else
    :func:`~tinyfaces_trt.core.profiles.default_profile`; the last two for batches of 1 to
    ``max_batch`` images (an explicit profile has its own)."""
    if profile is not None and image_sizes:
        raise TinyFacesError("give either image sizes or an explicit min/opt/max profile, not both")
    if profile is not None:
        if max_batch != 1:
            raise TinyFacesError("an explicit min/opt/max profile carries its own batch sizes; "
                                 "give max_batch only with image sizes or the default profile")
        return profile
    if image_sizes:
        return profile_for_image_sizes(image_sizes, config, max_batch)
    return default_profile(config, max_batch=max_batch)


#: Names an export folder may hold besides its model files, and still be swapped whole.
_EXPORT_NAMES = frozenset({MANIFEST_NAME, *DEFAULT_FILE_NAMES.values()})


def _commit(staging: Path, out: Path, log: Log) -> None:
    """Moves the finished export in ``staging`` to ``out``.

    ``staging`` beside ``out`` and ``out`` missing, empty or an export folder (manifest and
    model files only): swapped in whole. ``staging`` inside ``out`` (a mount point, ...: see
    :func:`~tinyfaces_trt.core.files.staging_inside_reason`), or ``out`` holding other files
    (the user's, which are kept): the files are moved in one by one, manifest last
    (:func:`_move_in`).

    Raises:
        TinyFacesError: a rename failed, naming ``out`` and the reason; ``out`` is as it was
            (else the message says what is left).
    """
    others = [p.name for p in out.iterdir() if p.name not in _EXPORT_NAMES
              and not p.name.startswith(TEMP_PREFIX)] if out.is_dir() else []
    if staging.parent != out and not others:
        existed = os.path.lexists(out)
        try:
            replace_folder(staging, out)
        except OSError as exc:
            if not existed:
                left = "nothing was exported"
            elif os.path.lexists(out):
                left = f"{out} is left as it was"
            else:  # the put-back failed too: the cleanup of the next export restores it
                left = (f"the previous {out} could not be put back: it is in a hidden "
                        f"{TEMP_PREFIX}* folder beside it, which the next tf-export puts back")
            raise _write_error(out, exc, left) from exc
        return
    if others:
        log(f"{out} also holds other files ({', '.join(sorted(others)[:3])}...): replacing the "
            "export files one by one, manifest last")
    _move_in(staging, out, log)


def _write_error(out: Path, exc: OSError, left: str) -> TinyFacesError:
    """The one-line error of a failed commit into ``out``."""
    hint = ""
    if exc.errno in (errno.EXDEV, errno.EBUSY):
        hint = (" (a mount point, or on another file system than the folder above it: if this "
                "persists, export into a new folder inside it)")
    return TinyFacesError(f"cannot write the export folder {out}: {exc.strerror or exc}{hint}; "
                          f"{left}")


def _move_in(staging: Path, out: Path, log: Log) -> None:
    """Moves the files of ``staging`` (on ``out``'s file system) into ``out`` one by one.

    The previous export's file of each name, and its model files the new export lacks, are
    first moved into a hidden folder inside ``staging``; the previous manifest stays in place
    until the new one replaces it in one rename, last. Until then the folder loads as the
    previous export or not at all (a mix: its manifest's checksums refuse the new files), and
    any failure (an OSError, an interrupt) moves the previous files back before it propagates.
    """
    new = sorted(p.name for p in staging.iterdir()
                 if p.name != MANIFEST_NAME and not p.name.startswith(TEMP_PREFIX))
    stale = [name for name in DEFAULT_FILE_NAMES.values()
             if name not in new and (out / name).is_file()]
    aside = staging / ".previous"
    put_aside: list[str] = []  # the previous export's files, now in ``aside``
    moved_in: list[str] = []  # the new files, now in ``out``
    try:
        aside.mkdir()
        for name in new:
            if os.path.lexists(out / name):
                os.replace(out / name, aside / name)
                put_aside.append(name)
            os.replace(staging / name, out / name)
            moved_in.append(name)
        for name in stale:
            os.replace(out / name, aside / name)
            put_aside.append(name)
        os.replace(staging / MANIFEST_NAME, out / MANIFEST_NAME)  # the new export is in
    except BaseException as exc:
        problem = _move_back(out, aside, put_aside, moved_in)
        if problem is not None:
            left = (f"moving the previous files back failed too ({problem.strerror or problem}): "
                    f"{out} holds a mix that loading refuses (its manifest's checksums); export "
                    f"again")
        else:
            left = f"the previous export in {out} is left as it was"
        if isinstance(exc, OSError):
            raise _write_error(out, exc, left) from exc
        raise
    for name in stale:
        log(f"removed {out / name} left by an earlier export")
    discard_temporary(staging)


def _move_back(out: Path, aside: Path, put_aside: list[str],
               moved_in: list[str]) -> OSError | None:
    """Undoes :func:`_move_in`'s renames: the new files out, the previous ones back; the first
    error, if any (the rest is still tried)."""
    problem = None
    for name in moved_in:
        if name not in put_aside:  # the previous export had no such file
            try:
                (out / name).unlink()
            except OSError as exc:
                problem = problem or exc
    for name in put_aside:
        try:
            os.replace(aside / name, out / name)
        except OSError as exc:
            problem = problem or exc
    return problem


def _holds_anything(folder: Path) -> bool:
    """Whether ``folder`` is a folder with something in it (a previous export, the user's
    files; not another run's temporaries)."""
    return folder.is_dir() and any(not p.name.startswith(TEMP_PREFIX) for p in folder.iterdir())


def _engines_in(folder: Path) -> list[str]:
    """The TensorRT engine files of an export in ``folder`` (by their default names)."""
    return [name for key, name in DEFAULT_FILE_NAMES.items()
            if key.startswith("engine") and (folder / name).is_file()]


def _export_folder(given: Path, log: Log) -> Path:
    """The absolute folder to replace: ``given``, or the folder it links to (the link is kept,
    as a blue/green ``current -> v1`` layout needs; replacing the link would leave ``v1`` stale)."""
    if not given.is_symlink():
        return given.absolute()
    real = Path(os.path.realpath(given))
    log(f"{given} is a symbolic link: exporting into the folder it points to, {real}")
    return real


def checkpoint_sha256(path: str | Path, log: Log, what: str | None = None) -> str:
    """Hex sha256 of a checkpoint, logged as a step (``what``, default ``hashing <path>``);
    :class:`WeightsError` when it cannot be read."""
    with step(log, what or f"hashing {path}") as info:
        sha256 = file_sha256(path, what="weights file", error=WeightsError)
        info["detail"] = f"sha256 {sha256[:16]}..."
    return sha256


def _weights_record(path: str | Path, sha256_before: str | None, log: Log) -> dict[str, str]:
    """The manifest's ``weights`` entry of the checkpoint the model was loaded from.

    With ``sha256_before`` (the file's hash taken before the model was loaded) the file is
    hashed again and must still match: a checkpoint replaced while it was loaded (a training
    run saving ``latest.pth``) would otherwise be recorded, and cached, as weights it does not
    hold. The model was read between the two hashes, so equal hashes mean it is of those bytes.
    """
    sha256 = checkpoint_sha256(path, log, None if sha256_before is None
                               else f"checking that {path} is unchanged")
    if sha256_before is not None and sha256 != sha256_before:
        raise WeightsError(
            f"{path} changed while it was being read (sha256 {sha256_before[:16]}... before "
            f"loading, {sha256[:16]}... now): is a training run writing it? Nothing was "
            f"exported; run again once the file is complete")
    return {"path": str(Path(path).resolve()), "sha256": sha256}


def _save_onnx(proto: onnx.ModelProto, path: Path, opset: int) -> int:
    """Saves ``proto`` at ``path`` and returns the opset read back from the file, which must
    be ``opset`` (else :class:`TinyFacesError`)."""
    with atomic_output(path) as tmp:
        onnx.save(proto, str(tmp))
    written = read_onnx_opset(path)
    if written != opset:
        raise TinyFacesError(f"{path} was written with ONNX opset "
                             f"{written if written is not None else 'unknown'}, not the requested "
                             f"{opset}; nothing exported")
    return written


def _check_path(name: str, value: object) -> None:
    if value is not None and not is_text_path(value):
        raise ConfigError(f"{name} must be a path (str or os.PathLike) or None, got {value!r} "
                          f"({type(value).__name__})")


def _image_sizes(value: object) -> list[tuple[int, int]] | None:
    """``image_sizes`` as a list of (height, width) pairs of positive integers; ConfigError
    for anything else (a "WxH" string is the command line's form, not the function's)."""
    if value is None:
        return None
    example = "e.g. [(1080, 1920)] for 1920x1080 images"
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"image_sizes must be a list of (height, width) pairs, {example}; got "
                          f"{value!r} ({type(value).__name__})")
    sizes = []
    for size in value:
        pair = None if isinstance(size, (str, bytes)) or not isinstance(size, Iterable) else tuple(size)
        if pair is None or len(pair) != 2 or not all(is_integer(v) and v >= 1 for v in pair):
            raise ConfigError(f"image_sizes must be (height, width) pairs of positive integers, "
                              f"{example}; got {size!r} in {value!r}")
        sizes.append((int(pair[0]), int(pair[1])))
    return sizes


def _check_export_arguments(*, model: object, config: object, out_dir: object, opset: object,
                            flags: dict[str, object], engine: object, profile: object,
                            max_batch: object, workspace_gb: object,
                            paths: dict[str, object], weights_sha256: object, log: object) -> None:
    """export_model's arguments, checked before any work (a wrong one was taken by its truth
    value -- ``fp16="no"`` wrote fp16 -- or failed deep inside as a bare TypeError/ValueError)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, DetectorConfig):
        raise ConfigError(f"config must be a DetectorConfig, got {type(config).__name__}")
    for name, value in {"out_dir": out_dir, **paths}.items():
        _check_path(name, value)
    if out_dir is None:
        raise ConfigError("out_dir must be a path (str or os.PathLike), got None")
    if (problem := opset_problem(opset)) is not None:
        raise ConfigError(problem)
    if opset > (newest := onnx.defs.onnx_opset_version()):  # type: ignore[operator]
        raise ConfigError(f"opset {opset} is newer than the installed onnx {onnx.__version__} "
                          f"knows (up to {newest}); use {newest} or older, or upgrade onnx")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    if engine is not None and not isinstance(engine, bool):
        raise ConfigError(f"engine must be True, False or None, got {engine!r} ({type(engine).__name__})")
    if profile is not None and not isinstance(profile, Profile):
        raise ConfigError(f"profile must be a Profile (min/opt/max shapes) or None, got {profile!r}")
    if not (is_integer(max_batch) and max_batch >= 1):  # type: ignore[operator]
        raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if not (is_real(workspace_gb) and math.isfinite(workspace_gb) and workspace_gb > 0):  # type: ignore[arg-type,operator]
        raise ConfigError(f"workspace_gb must be a number of GiB > 0, got {workspace_gb!r}")
    if weights_sha256 is not None and not isinstance(weights_sha256, str):
        raise ConfigError(f"weights_sha256 must be a hex string or None, got {weights_sha256!r}")
    if log is not None and not callable(log):
        raise ConfigError(f"log must be a function taking a line of text, or None; got {log!r}")


def _verify(model: nn.Module, path: Path, precision: str, config: DetectorConfig) -> str:
    try:
        err = verify_against_torch(model, path, precision, config.normalization)
    except BackendUnavailableError:
        return "ONNX Runtime check skipped: onnxruntime is not installed"
    return f"ONNX Runtime vs torch max abs error {err:.2e}"


def export_model(model: nn.Module, config: DetectorConfig, out_dir: str | Path, *, fp16: bool = False,
                 opset: int = DEFAULT_OPSET, engine: bool | None = None,
                 image_sizes: Iterable[tuple[int, int]] | None = None, profile: Profile | None = None,
                 max_batch: int = 1, workspace_gb: float = DEFAULT_WORKSPACE_GB, timing_cache: str | Path | None = None,
                 simplify: bool = False, weights_path: str | Path | None = None,
                 weights_sha256: str | None = None, untrained: bool = False,
                 verify: bool = True, hints: bool = True, log: Log | None = None) -> Path:
    """Exports ``model`` into the folder ``out_dir`` and returns the manifest path.

    Args:
        model: the torch network (TinyFacesNet); exported from CPU float32 (a copy is made
            if it lives elsewhere).
        config: detector config stored in the manifest.
        out_dir: export folder (created if missing; a symbolic link: the folder it points to).
        fp16: also write ``model_fp16.onnx`` (float32 I/O); implies an fp16 engine build
            when TensorRT imports.
        opset: ONNX opset, :data:`~tinyfaces_trt.export.opset.MIN_OPSET` to
            :data:`~tinyfaces_trt.export.opset.MAX_OPSET`; each written model is read back and
            must have it (else :class:`TinyFacesError`, nothing exported), and the manifest
            records the opset read back.
        engine: True: build a TensorRT engine, raising :class:`TensorRTUnavailableError`
            when TensorRT is missing (after writing the ONNX files and manifest into a new
            ``out_dir``; at once, writing nothing, where ``out_dir`` holds a previous export);
            None: build one only if ``fp16`` and TensorRT imports; False: never.
        image_sizes: (height, width) image sizes whose pyramid levels the profile covers.
        profile: explicit min/opt/max profile (exclusive with ``image_sizes``).
        max_batch: the engine takes batches of 1 to this many images (of one size:
            ``Detector.detect_batch``); for ``image_sizes`` or the default profile.
        workspace_gb: TensorRT WORKSPACE memory-pool limit.
        timing_cache: TensorRT timing-cache file (loaded if present, saved after the build).
        simplify: run onnxslim/onnxsim on the fp32 graph.
        weights_path: source checkpoint; its path and SHA-256 go into the manifest.
        weights_sha256: the checkpoint's SHA-256 taken before ``model`` was loaded from it:
            the file must still have it (else :class:`WeightsError`, nothing exported), so the
            manifest records the bytes the model holds. None: the file is only hashed.
        untrained: the weights are random (loud warning; ``"untrained": true`` in the manifest).
        verify: compare ONNX Runtime with torch on two small odd-sized inputs after each export.
        hints: for a user running the export (``tf-export``): repeat the untrained warning at
            the end and log the ``trtexec`` command that would build an engine. False for an
            export made on the user's behalf (``tf-detect``'s cache): the warning once, no hint.
        log: progress sink, one line a call (default: the ``tinyfaces_trt.export`` logger
            at INFO).

    Raises:
        ConfigError: an invalid argument (a wrong type, ``max_batch`` not an integer >= 1,
            ``image_sizes`` not (height, width) pairs, an unsupported ``opset``), before any work.
        TinyFacesError: ``out_dir`` is a file or cannot be created or written (before any
            work); export or check failure (the exporter wrote another opset than ``opset``),
            numeric mismatch.
        WeightsError: the checkpoint changed since ``weights_sha256`` was taken.
        TensorRTUnavailableError: ``engine=True`` without TensorRT (a new ``out_dir`` holds
            the complete ONNX folder; an existing one is left as it was).
        EngineBuildError: TensorRT failed (likewise).
    """
    _check_export_arguments(
        model=model, config=config, out_dir=out_dir, opset=opset, engine=engine, profile=profile,
        flags={"fp16": fp16, "simplify": simplify, "untrained": untrained, "verify": verify,
               "hints": hints},
        max_batch=max_batch, workspace_gb=workspace_gb, weights_sha256=weights_sha256, log=log,
        paths={"timing_cache": timing_cache, "weights_path": weights_path})
    image_sizes = _image_sizes(image_sizes)
    opset, max_batch = int(opset), int(max_batch)
    log = log or _logger.info
    given = Path(out_dir)
    check_future_folder(given, f"out_dir {given}")  # one clear line, before any work
    prof = resolve_profile(config, image_sizes, profile, max_batch)
    model = _cpu_float_model(model)
    out = _export_folder(given, log)
    # first: it may put back the previous folder a killed run had moved aside
    for folder in (out.parent, out):  # in out: a killed in-place export's staging folder
        for stale in remove_stale_temporaries(folder):
            log(f"removed {stale} left by an interrupted run")
    previous = _holds_anything(out)
    if engine and previous and (problem := tensorrt_problem()) is not None:
        raise TensorRTUnavailableError(  # an export without the engine may not replace one
            f"{problem}: no engine can be built here, so {out} is left as it was (nothing "
            f"exported); re-run with --engine on a machine with TensorRT >= 10, or without "
            f"--engine to replace its ONNX files")
    held = _engines_in(out)
    if engine is None and fp16 and held and (problem := tensorrt_problem()) is not None:
        raise TensorRTUnavailableError(  # --fp16 implies the engine it would remove
            f"{problem}: no engine can be built here, and {out} holds {', '.join(held)} (maybe "
            f"hours of building), which an export without one would remove: it is left as it "
            f"was (nothing exported); re-run on a machine with TensorRT >= 10, or give another "
            f"--out for the ONNX files alone")
    out.parent.mkdir(parents=True, exist_ok=True)
    # decided before the work: a commit that cannot happen must not fail after an hour's build
    inside = staging_inside_reason(out)
    if inside is not None:
        log(f"{out}: {inside}; building the export in a hidden folder inside it, then moving "
            f"the files in one by one, manifest last")
    staging = staging_dir(out if inside is not None else out.parent, "export")
    say = (lambda line: log(line.replace(str(staging), str(out))))
    try:
        manifest, pending = _export_into(
            model, config, staging, out, fp16=fp16, opset=opset, engine=engine, prof=prof,
            workspace_gb=workspace_gb, timing_cache=timing_cache, simplify=simplify,
            weights_path=weights_path, weights_sha256=weights_sha256, untrained=untrained,
            verify=verify, hints=hints, log=say)
        if pending is not None and previous:  # keep the previous folder (and any engine in it)
            pending.args = (f"{pending.args[0]}; {out} is left as it was (the previous export: "
                            f"the new ONNX files were not written)", *pending.args[1:])
            raise pending
        _commit(staging, out, log)
    except TinyFacesError as exc:  # its message may name the staging folder
        discard_temporary(staging)
        exc.args = tuple(a.replace(str(staging), str(out)) if isinstance(a, str) else a
                         for a in exc.args)
        raise
    except BaseException:
        discard_temporary(staging)
        raise
    log(f"export folder complete: {out}")
    if pending is not None:
        pending.args = tuple(a.replace(str(staging), str(out)) if isinstance(a, str) else a
                             for a in pending.args)
        raise pending
    if untrained and hints:  # a long export's first lines may have scrolled away
        log(UNTRAINED_WARNING)
    return given / MANIFEST_NAME


def _export_into(model: nn.Module, config: DetectorConfig, out: Path, final: Path, *, fp16: bool,
                 opset: int, engine: bool | None, prof: Profile, workspace_gb: float,
                 timing_cache: str | Path | None, simplify: bool,
                 weights_path: str | Path | None, weights_sha256: str | None, untrained: bool,
                 verify: bool, hints: bool, log: Log) -> tuple[Path, TinyFacesError | None]:
    """Writes the export into the staging folder ``out`` (``final`` is where it will live);
    returns the manifest path and the engine error to raise once the folder is in place."""
    if untrained:
        log(UNTRAINED_WARNING)

    weights = None if weights_path is None else _weights_record(weights_path, weights_sha256, log)
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
    written_opset = _save_onnx(proto, onnx_fp32, opset)  # what the manifest records
    log(f"wrote {onnx_fp32.name}: ONNX opset {written_opset} (read back from the file)")
    files["onnx_fp32"] = onnx_fp32.name
    if verify:
        with step(log, f"checking {onnx_fp32.name}") as info:
            info["detail"] = _verify(model, onnx_fp32, "fp32", config)

    onnx_fp16 = None
    if fp16:
        with step(log, "converting to fp16 ONNX (float32 input/output)") as info:
            proto16 = check_onnx(convert_to_fp16(proto))
            onnx_fp16 = out / DEFAULT_FILE_NAMES["onnx_fp16"]
            _save_onnx(proto16, onnx_fp16, written_opset)
            files["onnx_fp16"] = onnx_fp16.name
            info["detail"] = f"{len(proto16.graph.node)} nodes, ONNX opset {written_opset} read back"
        if verify:
            with step(log, f"checking {onnx_fp16.name}") as info:
                info["detail"] = _verify(model, onnx_fp16, "fp16", config)

    engine_key = "engine_fp16" if fp16 else "engine_fp32"
    engine_path = out / DEFAULT_FILE_NAMES[engine_key]
    want_engine = engine if engine is not None else fp16
    trt_problem = tensorrt_problem() if want_engine else None
    build_now = want_engine and trt_problem is None

    extra = {"model": {"depth": getattr(model, "depth", None), "variant": getattr(model, "variant", None)}}
    if untrained and getattr(model, "seed", None) is not None:
        extra["model"]["seed"] = model.seed
    manifest_args: dict[str, Any] = dict(config=config, opset=written_opset, weights=weights, profile=prof, tools=tools,
                                         untrained=untrained, extra=extra)
    manifest = write_manifest(out, files=files, **manifest_args)
    log(f"wrote {manifest} (profile min {list(prof.min)}, opt {list(prof.opt)}, max {list(prof.max)})")

    # the command names the files where they will live, not the staging folder
    source = onnx_fp16 if fp16 else onnx_fp32  # what build_engine builds from
    trtexec = trtexec_command(final / source.name, final / engine_path.name, prof, fp16=fp16,
                              workspace_gb=workspace_gb, timing_cache=timing_cache)
    if want_engine and not build_now:
        message = (f"{trt_problem}: wrote ONNX only; build the engine on a machine with TensorRT >= 10 "
                   f"by re-running tf-export with --engine, or with: {trtexec}")
        if engine:
            return manifest, TensorRTUnavailableError(message)
        log(message)
    elif build_now:
        try:
            with step(log, f"building TensorRT engine {engine_path.name}"):
                details = build_engine(onnx_fp32, engine_path, prof, fp16=fp16, onnx_fp16=onnx_fp16,
                                       workspace_gb=workspace_gb, timing_cache=timing_cache, log=log)
        except EngineBuildError as exc:
            engine_path.unlink(missing_ok=True)
            return manifest, exc
        files[engine_key] = engine_path.name
        tools["tensorrt"] = details["tensorrt"]
        extra["engines"] = {engine_key: details}
        manifest = write_manifest(out, files=files, **manifest_args)
        log(f"wrote {manifest} with {engine_path.name}")
    elif hints:
        log(f"to build a TensorRT engine: {trtexec}")
    return manifest, None
