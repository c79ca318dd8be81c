"""The export cache: a checkpoint (or the seeded untrained default) exported once, then reused.

``cached_export(weights)`` exports into ``$TINYFACES_CACHE/<key>/`` (default
``~/.cache/tinyfaces_trt/``), ``<key>`` being a prefix of the checkpoint's sha256, and reuses
that folder on later calls. ``weights=None`` stands for the seeded, UNTRAINED default network
(:data:`UNTRAINED_MODEL`): its detections are meaningless, only good for plumbing tests.

Processes sharing a cache export a request once: the export holds ``<cache>/<key>.lock`` (an
OS file lock, released when its holder exits or is killed); a process that finds the key being
exported says so, waits (at most :data:`LOCK_WAIT_LIMIT_S`), then uses what the other one
wrote when it holds what this one asks for (the precision, an engine), else exports itself.

An entry is used only when its manifest records the sha256 its key was made from; a checkpoint
that changes between that hash and the end of its loading (a training run saving
``latest.pth`` meanwhile) is refused (:class:`WeightsError`), so an entry never holds other
weights than its key and manifest say. A cache that cannot be written (read-only, full) is a
:class:`TinyFacesError` naming it and :data:`CACHE_ENV`.

Exporting needs the ``export`` extra (PyTorch), imported only when an export is due; reusing a
complete cache entry does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError, ManifestError, TinyFacesError, WeightsError
from tinyfaces_trt.core.files import CACHE_ENV, cache_root, remove_stale_temporaries, staging_dir
from tinyfaces_trt.core.hashing import file_sha256
from tinyfaces_trt.core.locks import LockOutcome, LockWords, waiting_lock
from tinyfaces_trt.core.manifest import ExportFolder, load_export_folder

log = logging.getLogger(__name__)

#: The untrained default network: ``build_model(**UNTRAINED_MODEL)``.
UNTRAINED_MODEL = {"depth": 101, "variant": "pytorch", "seed": 0}
_KEY_CHARS = 16
#: How often a process waiting for another's export says so, and how long it waits at most
#: before exporting itself (a TensorRT engine build can take many minutes).
LOCK_WAIT_STEP_S = 60.0
LOCK_WAIT_LIMIT_S = 1800.0

Progress = Callable[[str], None]


def _require_export_extra() -> None:
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError(
            "this needs PyTorch (the reference model and exporter): "
            "pip install 'tinyfaces-trt[export]'")


def reference_model(weights: str | os.PathLike[str] | None, depth: int | None = None,
                    variant: str | None = None) -> tuple[Any, DetectorConfig]:
    """(torch model, its config): the checkpoint, or with ``weights=None`` the UNTRAINED
    default network (``depth``/``variant`` then ignored).

    Raises:
        BackendUnavailableError: PyTorch (the ``export`` extra) is not installed.
        WeightsError: the checkpoint is missing or does not load.
    """
    _require_export_extra()
    from tinyfaces_trt.export.weights import load_model

    if weights is None:
        return load_model(None, **UNTRAINED_MODEL)
    return load_model(weights, depth=depth, variant=variant)


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a checkpoint; :class:`WeightsError` when it cannot be read."""
    return file_sha256(path, what="weights file", error=WeightsError)


def cache_key(weights: str | os.PathLike[str] | None, depth: int | None = None,
              variant: str | None = None) -> str:
    """The cache folder name: a prefix of the checkpoint's sha256 (with the loader options
    folded in when given), or of the untrained model's description."""
    return _key(None if weights is None else weights_sha256(weights), depth, variant)


def _key(digest: str | None, depth: int | None, variant: str | None) -> str:
    """:func:`cache_key` of a checkpoint whose sha256 is ``digest`` (None: untrained)."""
    if digest is None:
        text = "untrained:" + ",".join(f"{k}={v}" for k, v in sorted(UNTRAINED_MODEL.items()))
        return "untrained-" + hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]
    if depth is not None or variant is not None:
        digest = hashlib.sha256(f"{digest}:depth={depth}:variant={variant}".encode()).hexdigest()
    return digest[:_KEY_CHARS]


def _usable(folder_path: Path, digest: str | None, fp16: bool, engine: bool) -> ExportFolder | None:
    """The cached folder if it is complete for this request, its manifest records the
    checkpoint sha256 ``digest`` its key was made from (None: the untrained network, whose key
    names no file), its thresholds are the variant's current defaults (the matconvnet
    variant's NMS threshold was 0.3, the release demo's is 0.1), and its files match the
    checksums the manifest records; else None (a damaged entry, or one of other weights, is
    logged as a warning)."""
    try:
        folder = load_export_folder(folder_path, verify=False)
        folder.onnx_path(fp16)
        if engine:
            folder.engine_path(fp16)
    except ManifestError as exc:
        log.info("export cache %s not usable (%s); exporting again", folder_path, exc)
        return None
    if not folder.has_checksums:
        log.info("export cache %s predates file checksums; exporting again", folder_path)
        return None
    recorded = folder.identity.weights_sha256
    if digest is not None and recorded != digest:
        log.warning("export cache %s holds the export of other weights (sha256 %s, not %s); "
                    "exporting it again", folder_path, recorded, digest)
        return None
    defaults = DetectorConfig.for_variant(folder.config.variant)
    stale = [f"{name} {getattr(folder.config, name)} (now {getattr(defaults, name)})"
             for name in ("prob_thresh", "nms_thresh")
             if getattr(folder.config, name) != getattr(defaults, name)]
    if stale:  # the cache exports with the variant's defaults: an older version's differed
        log.info("export cache %s records %s; exporting again", folder_path, ", ".join(stale))
        return None
    try:
        folder.verify()
    except ManifestError as exc:
        log.warning("export cache %s is damaged (%s); exporting it again", folder_path, exc)
        return None
    return folder


def cached_export(weights: str | os.PathLike[str] | None, *, fp16: bool = False,
                  engine: bool = False, depth: int | None = None, variant: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = None,
                  progress: Progress | None = None, verify: bool = True) -> ExportFolder:
    """The export folder of ``weights`` (None: the untrained network) in the cache.

    Reuses ``<cache>/<key>/`` when it is complete (the requested precision, and an engine
    when ``engine``) and its files match their recorded sha256; otherwise (also for a
    truncated or damaged entry) exports into a staging folder beside it and swaps that into
    place, so an interrupted export never leaves a half-written cache entry. Staging folders
    of killed runs are removed. Processes sharing the cache export a request once: the
    others wait on its lock (saying so through ``progress``, else a logged warning), then
    reuse the folder. ``verify`` checks each new ONNX file against torch (see
    ``export_model``).

    Raises:
        WeightsError: the checkpoint is missing, does not load, or changed while it was read.
        TinyFacesError: the cache cannot be written (naming it and :data:`CACHE_ENV`).
    """
    say = progress or log.info
    root = cache_root(cache_dir)
    for stale in remove_stale_temporaries(root):
        log.info("removed %s left in the export cache by an interrupted run", stale)
    digest = None if weights is None else weights_sha256(weights)
    key = _key(digest, depth, variant)
    target = root / key
    if target.exists():
        folder = _usable(target, digest, fp16, engine)
        if folder is not None:
            log.info("using cached export %s", target)
            return folder
    _require_export_extra()
    _check_writable(root)
    from tinyfaces_trt.export.export_pipeline import export_model

    # the wait is said even without a progress callback (it may be long)
    with _export_lock(root, key, progress or log.warning) as lock:
        if target.exists():  # exported by another run (process or thread) while this one waited
            folder = _usable(target, digest, fp16, engine)
            if folder is not None:
                (say if lock.waited else log.info)(f"using the export another run wrote: {target}")
                return folder
        what = f"weights {weights}" if weights is not None else "the UNTRAINED default network"
        say(f"exporting {what} to ONNX{' (fp32 + fp16)' if fp16 else ''}"
            f"{' and a TensorRT engine' if engine else ''} into the cache {target} (one time) ...")
        start = time.perf_counter()
        model, config = reference_model(weights, depth, variant)
        try:  # staged beside the target, swapped in whole; the weights' hash checked again
            export_model(model, config, target, fp16=fp16, engine=engine, weights_path=weights,
                         weights_sha256=digest, untrained=weights is None, verify=verify,
                         hints=False, log=say)
        except OSError as exc:  # export_model removed what it had written
            raise _cache_error(root, exc) from exc
        say(f"export done in {time.perf_counter() - start:.1f} s: {target}")
        return load_export_folder(target, verify=False)  # its checksums were just computed


def _cache_error(root: Path, exc: OSError) -> TinyFacesError:
    """The one-line error of a cache that cannot be written (read-only, full, not a folder)."""
    return TinyFacesError(f"cannot write the export cache {root}: {exc.strerror or exc} "
                          f"(set {CACHE_ENV} to a writable folder with free space)")


def _check_writable(root: Path) -> None:
    """Creates the cache folder if needed and a staging folder in it (removed at once), so a
    read-only cache fails before the weights are loaded; :func:`_cache_error` when it cannot."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging_dir(root, "probe").rmdir()
    except OSError as exc:
        raise _cache_error(root, exc) from exc


def _export_lock(root: Path, key: str,
                 say: Progress) -> contextlib.AbstractContextManager[LockOutcome]:
    """Holds ``<root>/<key>.lock``; yields whether it waited for another process (and holds it).

    The wait is bounded: it says every :data:`LOCK_WAIT_STEP_S` that it is still waiting,
    and after :data:`LOCK_WAIT_LIMIT_S` (a holder hung, or a file system whose lock never
    clears) it goes on without the lock, as it does where the file system refuses the lock:
    concurrent exports then each write a complete folder (staged and swapped in whole), only
    duplicating the work.
    """
    words = LockWords(doing=f"exporting into the cache {root / key}", other="the other export",
                      alone="exports itself", unlocked="exporting")
    return waiting_lock(root / f"{key}.lock", words, say=say, warn=log.warning,
                        step_s=LOCK_WAIT_STEP_S, limit_s=LOCK_WAIT_LIMIT_S)


__all__ = ["CACHE_ENV", "UNTRAINED_MODEL", "Progress", "cache_key", "cache_root", "cached_export",
           "reference_model", "weights_sha256"]
